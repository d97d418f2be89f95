-- `fmseg segment` with every CLIP recipe's VOC21 config on clip-tiny's
-- image: the published protocols (crops of 224-448, short sides of 336-512)
-- on a tiny 64 x 64 CLIP, through the command line; the files it writes
-- must agree with each other.
local tap = require("tap")
local image = require("fmseg.image")
local json = require("fmseg.io.json")
local safetensors = require("fmseg.io.safetensors")
local classes_mod = require("fmseg.method.classes")
local config = require("fmseg.io.config")

local dir = tap.fixtures("clip-tiny")
if not dir then os.exit(tap.done()) end
local dino = tap.fixtures("dino-tiny")

local tmp = os.tmpname()
os.remove(tmp)
os.execute(("mkdir -p '%s'"):format(tmp))

local read = require("fmseg.io.fs").read

local RECIPES = { "clip_vanilla", "maskclip", "sclip", "clearclip", "naclip", "proxyclip", "gem" }
for _, name in ipairs(RECIPES) do
  local cfg_path = ("configs/%s/%s_vitb16_voc21.yaml"):format(name, name)
  local out = tmp .. "/" .. name
  local sets = { "models.clip=" .. dir }
  if name == "proxyclip" then sets[2] = "models.vfm=" .. tostring(dino) end
  if name ~= "proxyclip" or dino then
    local cmd = ("./fmseg segment %s %s/input.png --set %s -o %s --dump %s/dump.safetensors 2>%s/stderr"):format(
      cfg_path, dir, table.concat(sets, " --set "), out, out, tmp)
    local ok = os.execute(cmd)
    tap.ok(ok == 0 or ok == true, name .. ": fmseg segment exits 0", read(tmp .. "/stderr"))

    local summary_text = read(out .. "/input.json")
    tap.ok(summary_text and read(out .. "/input_overlay.png") ~= nil, name .. ": label PNG, overlay and JSON written")
    if summary_text then
      local summary = json.decode(summary_text)
      local classes = classes_mod.from_config(config.get(config.load(cfg_path), "classes"))
      local labels = image.load_indices(out .. "/input.png")
      local img = image.load(dir .. "/input.png")
      tap.ok(labels:size(1) == img:size(1) and labels:size(2) == img:size(2), name .. ": labels at the image's size")
      local counts, n, bad = {}, labels:numel(), 0
      for _, l in ipairs(labels:values()) do
        if l >= #classes.names then bad = bad + 1 end
        counts[l] = (counts[l] or 0) + 1
      end
      tap.eq(bad, 0, name .. ": every label is one of the " .. #classes.names .. " classes")
      local agree, total = true, 0
      for label, c in pairs(counts) do
        local share = summary.pixel_shares[summary.classes[label + 1]]
        agree = agree and share ~= nil and math.abs(share - c / n) < 1e-9
      end
      for _, share in pairs(summary.pixel_shares) do total = total + share end
      tap.ok(agree and math.abs(total - 1) < 1e-9, name .. ": JSON pixel shares match the PNG read back")
      tap.eq(summary.recipe, name, name .. ": the JSON names the recipe")

      local dump = safetensors.open(out .. "/dump.safetensors")
      local pf, pl, lg = dump:get("patch_features"), dump:get("patch_logits"), dump:get("logits")
      tap.ok(pf:dim() == 2 and pl:dim() == 3 and pf:size(1) == pl:size(2) * pl:size(3)
             and pl:size(1) == #classes.queries and lg:size(1) == #classes.queries
             and lg:size(2) == img:size(1) and lg:size(3) == img:size(2),
             name .. ": dump holds patch features [h*w, dim], patch logits [queries, h, w], logits [queries, H, W]")
      local norms = pf:norm(2)
      tap.ok(math.abs(norms:min() - 1) < 1e-4 and math.abs(norms:max() - 1) < 1e-4, name .. ": patch features are unit vectors")
    end
  end
end

os.execute(("rm -rf '%s'"):format(tmp))
os.exit(tap.done())
