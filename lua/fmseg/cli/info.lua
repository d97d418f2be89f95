-- fmseg.cli.info — `fmseg info PATH`: what a safetensors file, a model
-- directory (a diffusers pipeline included) or an image holds. With
-- --check every tensor's values are read: NaN, Inf and all-zero tensors
-- are listed (half-precision exports go wrong that way); the exit status is
-- 1 when a tensor is not finite. All zeros is only reported: some tensors
-- are zero by design (DINOv2's untrained mask_token).
local fs = require("fmseg.io.fs")
local safetensors = require("fmseg.io.safetensors")
local hf = require("fmseg.io.hf")
local T = require("fmseg.tensor")
local args = require("fmseg.cli.args")

local M = {}

local DTYPE_BYTES = { F64 = 8, I64 = 8, F32 = 4, I32 = 4, F16 = 2, BF16 = 2, I16 = 2,
                      U16 = 2, I8 = 1, U8 = 1, BOOL = 1 }

local function human(bytes)
  local units = { "B", "KiB", "MiB", "GiB" }
  local i = 1
  while bytes >= 1024 and i < #units do bytes = bytes / 1024; i = i + 1 end
  return ("%.1f %s"):format(bytes, units[i])
end

-- What is wrong with tensor t's values: nil, or "3 NaN, 1 Inf of N values"
-- (second result true: not finite) / "all zeros" (false)
function M.value_problem(t)
  local x = t:float()
  local n = x:numel()
  if n == 0 then return nil end
  local nan = n - x:eq(x):sum()
  local inf = x:abs():eq(math.huge):sum()
  local parts = {}
  if nan > 0 then parts[#parts + 1] = ("%d NaN"):format(nan) end
  if inf > 0 then parts[#parts + 1] = ("%d Inf"):format(inf) end
  if #parts > 0 then return table.concat(parts, ", ") .. (" of %d values"):format(n), true end
  if x:abs():max() == 0 then return "all zeros", false end
  return nil
end

-- Lists path's tensors; with check, also their value problems.
-- → tensors, bytes, problems = {bad = not finite, zero = all zeros} counts
local function describe_file(path, prefix, check)
  local f = safetensors.open(path)
  local total, count, problems = 0, 0, { bad = 0, zero = 0 }
  for _, name in ipairs(f:names()) do
    local shape, dtype = f:shape(name), f:dtype(name)
    local numel = 1
    for _, s in ipairs(shape) do numel = numel * s end
    total = total + numel * (DTYPE_BYTES[dtype] or 0)
    count = count + 1
    local note = ""
    if check then
      local problem, bad = M.value_problem(f:get(name))
      if problem then
        local k = bad and "bad" or "zero"
        problems[k], note = problems[k] + 1, "  <- " .. problem
      end
      collectgarbage()
    end
    print(("%s%-60s %-5s %s%s"):format(prefix or "", name, dtype, T.shape_string(shape), note))
  end
  f:close()
  return count, total, problems
end


local function describe_dir(path, check)
  local dir = hf.open(path)
  local cfg = dir.config
  local kind = cfg.model_type or cfg._class_name or (cfg.architectures and cfg.architectures[1]) or "?"
  print(("%s: %s"):format(path, kind))
  local count, total, problems = 0, 0, { bad = 0, zero = 0 }
  local function add(sub)
    local w = hf.open_weights(sub)
    for file in pairs(w.files) do
      local c, t, p = describe_file(file, "  ", check)
      count, total = count + c, total + t
      problems.bad, problems.zero = problems.bad + p.bad, problems.zero + p.zero
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
  return count, total, problems
end

local function summary(count, total, problems, check)
  print(("%d tensors, %s"):format(count, human(total)))
  if not check then return 0 end
  print(("check: %d tensor(s) with NaN or Inf, %d all zeros"):format(problems.bad, problems.zero))
  return problems.bad == 0 and 0 or 1
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

-- inspect(path, opts): opts.check scans the values too (see the top)
function M.inspect(path, opts)
  local check = opts and opts.check
  path = hf.resolve(path)   -- a hub id in the cache names its snapshot
  if fs.is_dir(path) then
    local count, total, problems = describe_dir(path, check)
    return summary(count, total, problems, check)
  elseif path:match("%.safetensors$") or M.looks_like_safetensors(path) then
    local count, total, problems = describe_file(path, nil, check)
    return summary(count, total, problems, check)
  else
    if check then error(path .. ": --check reads safetensors files and model directories", 0) end
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

local parser = args.parser("info", "info PATH [--check]", {
  { "--check", type = "flag", help = "scan every tensor for NaN, Inf and all zeros; exit 1 on NaN or Inf" },
}, { { "path", label = "path", required = true } })

M.usage = parser.usage
M.help = "tensors of a safetensors file or model directory; image size"

function M.run(argv)
  local opts = parser:parse(argv)
  if not opts then return 0 end
  return M.inspect(opts.path, { check = opts.check })
end

return M
