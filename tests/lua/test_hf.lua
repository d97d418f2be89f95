-- Hugging Face directories as they come: sharded checkpoints (an
-- index.json naming several files) and BF16 weights load to the same model.
local tap = require("tap")
local clip = require("fmseg.models.clip")
local hf = require("fmseg.io.hf")
local json = require("fmseg.io.json")
local safetensors = require("fmseg.io.safetensors")
local ffi = require("ffi")

local dir = tap.fixtures("clip-tiny")
if not dir then os.exit(tap.done()) end

local tmp = os.tmpname()
os.remove(tmp)
os.execute("mkdir -p " .. tmp .. "/sharded " .. tmp .. "/bf16")
local function cp(src, dst) os.execute(("cp '%s' '%s'"):format(src, dst)) end

local src = safetensors.open(dir .. "/model.safetensors")
local names = src:names()
table.sort(names)

-- Sharded: first half of the names in one file, the rest in another.
local shard1, shard2, map = {}, {}, {}
for i, n in ipairs(names) do
  local part = i <= #names / 2 and shard1 or shard2
  part[n] = src:get(n)
  map[n] = part == shard1 and "model-00001-of-00002.safetensors" or "model-00002-of-00002.safetensors"
end
safetensors.save(tmp .. "/sharded/model-00001-of-00002.safetensors", shard1)
safetensors.save(tmp .. "/sharded/model-00002-of-00002.safetensors", shard2)
local f = io.open(tmp .. "/sharded/model.safetensors.index.json", "w")
f:write(json.encode({ metadata = { total_size = 0 }, weight_map = map }))
f:close()
cp(dir .. "/config.json", tmp .. "/sharded/config.json")

local w = hf.open_weights(tmp .. "/sharded")
tap.eq(#w:names(), #names, "a sharded checkpoint lists every tensor of its shards")

-- the index decides: a name it maps to a shard that lacks it is not there
do
  local odd = tmp .. "/odd"
  os.execute("mkdir -p " .. odd)
  cp(tmp .. "/sharded/model-00001-of-00002.safetensors", odd .. "/model-00001-of-00002.safetensors")
  local in_shard = safetensors.open(odd .. "/model-00001-of-00002.safetensors"):names()
  local g = io.open(odd .. "/model.safetensors.index.json", "w")
  g:write(json.encode({ weight_map = { [in_shard[1]] = "model-00001-of-00002.safetensors",
                                       ["ghost.weight"] = "model-00001-of-00002.safetensors" } }))
  g:close()
  local ow = hf.open_weights(odd)
  tap.ok(ow:has(in_shard[1]) and not ow:has("ghost.weight") and not ow:has(in_shard[2])
         and #ow:names() == 1, "a sharded checkpoint holds what its index maps to a shard that has it")
  tap.raises(function() ow:get("ghost.weight") end,
             "maps it to " .. odd .. "/model-00001-of-00002.safetensors, which does not hold it",
             "a name mapped to a shard without it is refused, naming the shard")
end

-- an index that points outside its directory is refused, naming the entry
do
  local bad = tmp .. "/outside"
  os.execute("mkdir -p " .. bad)
  local name = next(map)
  for _, file in ipairs({ "../sharded/model-00001-of-00002.safetensors", "/etc/passwd", "" }) do
    local g = io.open(bad .. "/model.safetensors.index.json", "w")
    g:write(json.encode({ weight_map = { [name] = file } }))
    g:close()
    tap.raises(function() hf.open_weights(bad) end, "must name a shard file in " .. bad,
               ("a weight_map entry %q is refused"):format(file))
  end
end

local ref = safetensors.open(dir .. "/ref.safetensors")
local px = ref:get("pixel_values")
local base = clip.load(dir):get_image_features(px)
local sharded = clip.load(tmp .. "/sharded"):get_image_features(px)
tap.eq((base - sharded):abs():max(), 0, "the sharded checkpoint gives the same image features")

-- BF16: written by hand (upper 16 bits of each float32, round to nearest
-- even), as torch saves bfloat16.
local function to_bf16_bytes(t)
  local c = t:contiguous()
  local n = c:numel()
  local out = ffi.new("uint16_t[?]", n)
  local bits = ffi.cast("uint32_t *", c.data)
  for i = 0, n - 1 do
    local b = bits[i]
    local rounding = 0x7FFF + bit.band(bit.rshift(b, 16), 1)
    out[i] = bit.rshift(b + rounding, 16)
  end
  return ffi.string(out, 2 * n)
end

local header, blobs, offset = {}, {}, 0
for _, n in ipairs(names) do
  local t = src:get(n)
  local bytes = to_bf16_bytes(t)
  header[n] = { dtype = "BF16", shape = t:shape(), data_offsets = { offset, offset + #bytes } }
  blobs[#blobs + 1] = bytes
  offset = offset + #bytes
end
local htext = json.encode(header)
htext = htext .. string.rep(" ", (8 - #htext % 8) % 8)
local len = ffi.new("uint64_t[1]", #htext)
f = io.open(tmp .. "/bf16/model.safetensors", "wb")
f:write(ffi.string(len, 8), htext, table.concat(blobs))
f:close()
cp(dir .. "/config.json", tmp .. "/bf16/config.json")

local st = safetensors.open(tmp .. "/bf16/model.safetensors")
tap.eq(st:dtype(names[1]), "BF16", "the hand-written file is BF16")
local bf = clip.load(tmp .. "/bf16"):get_image_features(px)
local rel = (bf - base):abs():max() / base:abs():max()
tap.ok(rel < 1e-2, "BF16 weights give image features within 1e-2 relative of F32", rel)
tap.ok(rel > 0, "and they are really rounded (not the F32 values)", rel)

os.execute("rm -rf " .. tmp)
os.exit(tap.done())
