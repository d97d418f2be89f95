-- Helpers of tests/tools/methods/diffsegmenter.py (run with ./fmseg run):
--
--   ./fmseg run tests/tools/methods/diffsegmenter_dump.lua tokenize TOKENIZER_DIR IN.json OUT.json
--       IN: a list of texts → OUT: their ids (start and end tokens, no padding)
--   ./fmseg run tests/tools/methods/diffsegmenter_dump.lua encode PIPELINE IN.json OUT.safetensors
--       IN: a list of id rows → OUT: "z", our text encoder's last hidden state (N, L, D)
--   ./fmseg run tests/tools/methods/diffsegmenter_dump.lua attn FIXTURE_DIR OUT_PREFIX
--       runs recipes/diffusion_crossattn.lua as FIXTURE_DIR/method.json
--       configures it, up to the UNet: per present class k, OUT_PREFIX.k.safetensors
--       holds "text" (the compel-weighted prompt embedding the UNet read)
--       and every attn1 / attn2 probability map as "<order>.<module path>"
--       ([heads, queries, keys], the order the layers ran); OUT_PREFIX.json
--       lists the classes, their prompts and token positions.
local json = require("fmseg.io.json")
local fs = require("fmseg.io.fs")
local T = require("fmseg.tensor")
local image = require("fmseg.image")
local safetensors = require("fmseg.io.safetensors")

local function read_json(path) return json.decode(fs.read(path)) end
local function write_json(path, v)
  local f = assert(io.open(path, "w"))
  f:write(json.encode(v))
  f:close()
end

local mode = arg[1]
if mode == "tokenize" then
  local tok = require("fmseg.text.tokenizer").load(arg[2])
  local out = {}
  for i, text in ipairs(read_json(arg[3])) do out[i] = tok:encode(text) end
  write_json(arg[4], out)
elseif mode == "encode" then
  local sd = require("fmseg.models.sd")
  local pipe = sd.load(arg[2], { parts = { "text_encoder", "tokenizer" } })
  local z = pipe:encode_prompt(T.from_table(read_json(arg[3]), "int32"))
  safetensors.save(arg[4], { z = z:contiguous() })
elseif mode == "attn" then
  local dir, prefix = arg[2], arg[3]
  local meta = read_json(dir .. "/method.json")
  local function at(p) return p:sub(1, 1) == "/" and p or (dir .. "/" .. p) end
  local cfg = { recipe = meta.recipe, params = meta.params, models = {}, classes = at(meta.classes) }
  for k, p in pairs(meta.models) do cfg.models[k] = at(p) end
  for _, k in ipairs(meta.param_files or {}) do
    if type(cfg.params[k]) == "string" then cfg.params[k] = at(cfg.params[k]) end
  end
  local session = require("fmseg.method.segment").session(cfg)
  local recipe, state = session.recipe, session.state
  local A = require("fmseg.models.sd_attention")
  local path = dir .. "/" .. (meta.image or "image.png")
  local img = image.load(path)
  local source = { path = path }
  local present = recipe.present(state, img, source)
  local noisy = recipe.noisy_latents(state, img)
  local info = { classes = {}, names = state.names }
  for k, c in ipairs(present) do
    local pass = recipe.class_pass(state, c, source)
    local cap = A.capture({ kinds = { "attn1", "attn2" } })
    state.pipe.unet:forward(noisy, state.params.timestep, pass.text, { capture = cap }):free()
    local tensors = { text = pass.text:contiguous() }
    local layers = {}
    for i, name in ipairs(cap.names) do
      tensors[("%02d.%s"):format(i, name)] = cap.maps[name]:contiguous()
      layers[i] = name
    end
    safetensors.save(("%s.%d.safetensors"):format(prefix, k), tensors)
    cap:clear()
    info.classes[k] = { index = c, name = state.names[c], prompt = pass.cp.text, positions = pass.positions[1],
                        layers = layers }
  end
  write_json(prefix .. ".json", info)
else
  error("diffsegmenter_dump.lua: tokenize | encode | attn", 0)
end
