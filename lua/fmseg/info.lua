-- fmseg.info — `fmseg info PATH`: what a safetensors file, a model
-- directory (a diffusers pipeline included) or an image holds.
local fs = require("fmseg.fs")
local safetensors = require("fmseg.safetensors")
local hf = require("fmseg.hf")
local T = require("fmseg.tensor")

local M = {}

local DTYPE_BYTES = { F64 = 8, I64 = 8, F32 = 4, I32 = 4, F16 = 2, BF16 = 2, I16 = 2,
                      U16 = 2, I8 = 1, U8 = 1, BOOL = 1 }

local function human(bytes)
  local units = { "B", "KiB", "MiB", "GiB" }
  local i = 1
  while bytes >= 1024 and i < #units do bytes = bytes / 1024; i = i + 1 end
  return ("%.1f %s"):format(bytes, units[i])
end

local function describe_file(path, prefix)
  local f = safetensors.open(path)
  local total, count = 0, 0
  for _, name in ipairs(f:names()) do
    local shape, dtype = f:shape(name), f:dtype(name)
    local numel = 1
    for _, s in ipairs(shape) do numel = numel * s end
    total = total + numel * (DTYPE_BYTES[dtype] or 0)
    count = count + 1
    print(("%s%-60s %-5s %s"):format(prefix or "", name, dtype, T.shape_string(shape)))
  end
  f:close()
  return count, total
end


local function describe_dir(path)
  local dir = hf.open(path)
  local cfg = dir.config
  local kind = cfg.model_type or cfg._class_name or (cfg.architectures and cfg.architectures[1]) or "?"
  print(("%s: %s"):format(path, kind))
  local count, total = 0, 0
  local function add(sub)
    local w = hf.open_weights(sub)
    for file in pairs(w.files) do
      local c, t = describe_file(file, "  ")
      count, total = count + c, total + t
    end
  end
  if hf.exists(path .. "/model_index.json") and not hf.exists(path .. "/config.json") then
    local names = {}
    for name, value in pairs(cfg) do
      if type(value) == "table" and hf.exists(path .. "/" .. name .. "/config.json") then names[#names + 1] = name end
    end
    table.sort(names)
    for _, name in ipairs(names) do
      print(("[%s]"):format(name))
      local ok = pcall(hf.open_weights, path .. "/" .. name)
      if ok then add(path .. "/" .. name) end
    end
  else
    add(path)
  end
  print(("%d tensors, %s"):format(count, human(total)))
end

local function describe_image(path)
  local img = require("fmseg.image").load(path)
  local h, w, c = unpack(img:shape())
  print(("%s: image %dx%d (width x height), %d channels as loaded (RGB)"):format(path, w, h, c))
end

-- A safetensors file starts with an 8-byte little-endian header length
-- and then the JSON header's "{".
function M.looks_like_safetensors(path)
  local f = io.open(path, "rb")
  if not f then return false end
  local head = f:read(9)
  f:close()
  return head ~= nil and #head == 9 and head:sub(9, 9) == "{" and head:byte(8) == 0
end

function M.run(path)
  if fs.is_dir(path) then
    describe_dir(path)
  elseif path:match("%.safetensors$") or M.looks_like_safetensors(path) then
    local count, total = describe_file(path)
    print(("%d tensors, %s"):format(count, human(total)))
  else
    local f = io.open(path, "rb")
    if not f then error(path .. ": no such file or directory", 0) end
    f:close()
    local ok, err = pcall(describe_image, path)
    if not ok then
      error(("%s: not a safetensors file, model directory or readable image (%s)"):format(
        path, tostring(err)), 0)
    end
  end
  return 0
end

return M
