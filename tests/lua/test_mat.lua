-- fmseg.io.mat against scipy: every file of tests/fixtures/mat/ (made by
-- tests/tools/make_mat_fixtures.py) read with mat.load and, value by value,
-- mat.read, compared with what scipy.io.loadmat read from it (manifest.json
-- and the .ref.safetensors files: structure, dtypes, shapes, every byte);
-- then truncated and corrupted copies, each refused naming the file.
local tap = require("tap")
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")
local json = require("fmseg.io.json")
local mat = require("fmseg.io.mat")
local safetensors = require("fmseg.io.safetensors")
local T = require("fmseg.tensor")
local ffi = core.ffi

local dir = core.root .. "/tests/fixtures/mat/"
local manifest = json.decode(assert(fs.read(dir .. "manifest.json")), "manifest.json")

local tmp = os.tmpname()

local function write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

-- ---- values against scipy's -------------------------------------------------------

local function shape_str(s) return "[" .. table.concat(s, ", ") .. "]" end

-- Same dtype and shape as the manifest says, and the same bytes as the
-- reference (safetensors reads U8 as I32; floats compare bit for bit, so
-- NaN, -0 and infinities count).
local function tensor_problem(got, node, ref)
  if not T.is_tensor(got) then return "not a tensor but a " .. type(got) end
  if got:dtype() ~= node.dtype then return ("dtype %s, scipy's class %s wants %s"):format(got:dtype(), node.class, node.dtype) end
  if shape_str(got:shape()) ~= shape_str(node.shape) then
    return ("shape %s, scipy's %s"):format(shape_str(got:shape()), shape_str(node.shape))
  end
  if not ref then return "no reference tensor " .. node.tensor end
  local a, b = got:to(ref:dtype()), ref:contiguous()
  local n = a:numel() * 4
  if ffi.string(a:ptr(), n) ~= ffi.string(b:ptr(), n) then
    return ("values differ from scipy's: %s vs %s"):format(
      table.concat(a:values(), " "):sub(1, 200), table.concat(b:values(), " "):sub(1, 200))
  end
  return nil
end

-- The first difference between a value mat.load gave and the manifest's
-- node for it, as "where: what", or nil.
local function problem(got, node, refs, where)
  if node.tensor then
    local p = tensor_problem(got, node, refs[node.tensor])
    return p and where .. ": " .. p
  elseif node.string then
    return got ~= node.string and ("%s: %q, scipy read %q"):format(where, tostring(got), node.string) or nil
  elseif node.struct or node.structs then
    local elems = node.struct and { node.struct } or node.structs
    local list = node.struct and { got } or got
    if type(got) ~= "table" or #list ~= #elems then return where .. ": not a list of " .. #elems .. " structs" end
    for e, fields in ipairs(elems) do
      local t = list[e]
      if type(t) ~= "table" then return where .. ": element " .. e .. " is not a table" end
      local n = 0
      for _ in pairs(t) do n = n + 1 end
      if n ~= #node.fields then return ("%s: %d fields, scipy has %d"):format(where, n, #node.fields) end
      for _, f in ipairs(node.fields) do
        local p = problem(t[f], fields[f], refs, where .. (node.struct and "" or "[" .. e .. "]") .. "." .. f)
        if p then return p end
      end
    end
  elseif node.cell then
    if type(got) ~= "table" or T.is_tensor(got) or #got ~= #node.cell then
      return where .. ": not a list of " .. #node.cell .. " values"
    end
    for k, child in ipairs(node.cell) do
      local p = problem(got[k], child, refs, where .. "[" .. k .. "]")
      if p then return p end
    end
  else
    return where .. ": manifest node of no known kind"
  end
  return nil
end

-- Every path mat.read accepts below node, with its node: { {path, node} }.
local function paths(node, path, out)
  out[#out + 1] = { path, node }
  if node.struct then
    for _, f in ipairs(node.fields) do paths(node.struct[f], path .. "." .. f, out) end
  elseif node.structs then
    for e, fields in ipairs(node.structs) do
      for _, f in ipairs(node.fields) do paths(fields[f], path .. "[" .. e .. "]." .. f, out) end
    end
  elseif node.cell then
    for k, child in ipairs(node.cell) do paths(child, path .. "[" .. k .. "]", out) end
  end
  return out
end

local function has_refused(node)
  if node.refused then return true end
  for _, child in pairs(node.struct or {}) do if has_refused(child) then return true end end
  for _, elem in ipairs(node.structs or {}) do
    for _, child in pairs(elem) do if has_refused(child) then return true end end
  end
  for _, child in ipairs(node.cell or {}) do if has_refused(child) then return true end end
  return false
end

local REFUSAL = { int32 = "does not fit int32", complex = "complex" }

local names = {}
for name in pairs(manifest.files) do names[#names + 1] = name end
table.sort(names)
tap.ok(#names >= 10, #names .. " fixture files in the manifest")

for _, name in ipairs(names) do
  local entry, path = manifest.files[name], dir .. name
  local refs = safetensors.open(dir .. entry.reference):load_all()
  local vars, refused = {}, false
  for var, node in pairs(entry.vars) do
    vars[#vars + 1] = var
    refused = refused or has_refused(node)
  end
  table.sort(vars)
  if refused then
    tap.raises(function() mat.load(path) end, path .. ": ", name .. ": mat.load refuses a value fmseg cannot hold")
  else
    local ok, got = pcall(mat.load, path)
    tap.ok(ok, name .. ": mat.load", got)
    if ok then
      local n = 0
      for _ in pairs(got) do n = n + 1 end
      tap.eq(n, #vars, name .. ": as many variables as scipy reads")
      for _, var in ipairs(vars) do
        local p = problem(got[var], entry.vars[var], refs, var)
        tap.ok(p == nil, name .. ": " .. var .. " as scipy reads it", p)
      end
    end
  end
  -- every value by its path, converted alone
  local bad, count = {}, 0
  for _, var in ipairs(vars) do
    for _, pn in ipairs(paths(entry.vars[var], var, {})) do
      local what, node = pn[1], pn[2]
      count = count + 1
      local ok, got = pcall(mat.read, path, what)
      if node.refused then
        local want = path .. ": " .. what .. ": "
        if ok or not tostring(got):find(want, 1, true) or not tostring(got):find(REFUSAL[node.refused], 1, true) then
          bad[#bad + 1] = what .. " not refused as " .. node.refused .. ": " .. tostring(got)
        end
      elseif not ok then
        bad[#bad + 1] = what .. ": " .. tostring(got)
      elseif not has_refused(node) then
        local p = problem(got, node, refs, what)
        if p then bad[#bad + 1] = p end
      end
    end
  end
  tap.ok(#bad == 0, ("%s: mat.read of each of its %d values"):format(name, count), table.concat(bad, "\n"))
end

-- ---- SBD's use, in one line ----------------------------------------------------------

do
  local path = dir .. "sbd_inst.mat"
  local seg = mat.read(path, "GTinst.Segmentation")
  local ref = safetensors.open(dir .. "sbd_inst.ref.safetensors"):get("GTinst.Segmentation")
  tap.ok(seg:dtype() == "uint8" and tensor_problem(seg, { dtype = "uint8", shape = ref:shape() }, ref) == nil,
         "mat.read(path, 'GTinst.Segmentation') is scipy's loadmat(path)['GTinst'][0][0][0]")
  local matlab, info = mat.read(dir .. "sbd_matlab.mat", "GTinst.Categories")
  tap.eq(matlab:dtype(), "float32", "a double stored as miUINT8 (as MATLAB writes) is still a double: float32")
  tap.eq(info and (info.class .. " as " .. info.storage), "double as uint8",
         "read: a numeric value's class and the type it is stored as (what scipy's loadmat returns)")
  local _, plain = mat.read(path, "GTinst.Segmentation")
  tap.eq(plain.class .. " as " .. plain.storage, "uint8 as uint8", "read: uint8 stored as uint8")
  tap.eq(select(2, mat.read(path, "GTinst")), nil, "read: no storage for a struct")
end

-- ---- read: paths that name nothing ------------------------------------------------------

do
  local path = dir .. "shapes.mat"
  tap.raises(function() mat.read(path, "nothing") end, path .. ": no variable nothing (variables: ",
             "read: a missing variable is named")
  tap.raises(function() mat.read(path, "outer.nope") end, path .. ": outer: no field nope (fields: inner, list)",
             "read: a missing field, with the fields there are")
  tap.raises(function() mat.read(path, "s2.name") end, "a struct array of 2 elements: index it with [k] first",
             "read: a struct array's field needs an element")
  tap.raises(function() mat.read(path, "cell23[7]") end, path .. ": cell23: [7] out of range (6 elements)",
             "read: an index past the end")
  tap.raises(function() mat.read(path, "cube[1]") end, "cube: not a cell or struct array", "read: a matrix is not a list")
  tap.raises(function() mat.read(path, "cube.x") end, "cube: not a struct, no field x", "read: a matrix has no fields")
  tap.raises(function() mat.read(path, "cube..x") end, "malformed path", "read: a malformed path raises")
  tap.raises(function() mat.read(path) end, "what must be a string", "read: what is required")
  tap.raises(function() mat.load(42) end, "path must be a string", "load: a path that is not a string")
  local ok, err = pcall(function() local v = mat.read(path, "cube["); return v end)  -- no tail call
  tap.ok(not ok and tostring(err):find("test_mat.lua", 1, true) ~= nil, "read: misuse is reported at the caller", err)
  tap.raises(function() mat.load(dir .. "no_such.mat") end, dir .. "no_such.mat: cannot open", "a missing file is named")
end

-- ---- truncated and corrupt files ---------------------------------------------------------

local function refused_naming(bytes, label, bad)
  write(tmp, bytes)
  local ok, err = pcall(mat.load, tmp)
  if ok or tostring(err):find(tmp .. ": ", 1, true) ~= 1 then
    bad[#bad + 1] = ("%s: %s"):format(label, ok and "accepted" or tostring(err))
  end
end

-- Every cut of a one-variable file is refused but the header alone (a
-- file of no variables, checked below).
for _, name in ipairs({ "sbd_plain.mat", "sbd_inst.mat", "sbd_inst_be.mat" }) do
  local bytes, bad = assert(fs.read(dir .. name)), {}
  for n = 0, #bytes - 1 do
    if n ~= 128 then refused_naming(bytes:sub(1, n), "cut at " .. n, bad) end
  end
  tap.ok(#bad == 0, ("%s: each of its %d cuts refused, naming the file"):format(name, #bytes - 1), table.concat(bad, "\n"))
end

-- n as 4 little-endian bytes (sbd_plain.mat's order)
local function u32(n)
  return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256, math.floor(n / 16777216))
end
local function put(bytes, at, word) return bytes:sub(1, at) .. word .. bytes:sub(at + 5) end

-- Every tag of sbd_plain.mat (little-endian, uncompressed) broken in turn:
-- sizes past any end, a type no element has, small elements over 4 bytes.
do
  local bytes, bad, count = assert(fs.read(dir .. "sbd_plain.mat")), {}, 0
  for _, tag in ipairs(manifest.tags["sbd_plain.mat"]) do
    local at, small = tag[1], tag[2] == 1
    if small then
      local typ = bytes:byte(at + 1) + 256 * bytes:byte(at + 2)
      refused_naming(put(bytes, at, u32(0xFFFF0000 + typ)), "small tag at " .. at .. " of 65535 bytes", bad)
      refused_naming(put(bytes, at, u32(0x00050000 + typ)), "small tag at " .. at .. " of 5 bytes", bad)
      count = count + 2
    else
      refused_naming(put(bytes, at + 4, u32(0xFFFFFFF0)), "tag at " .. at .. " of 2^32 - 16 bytes", bad)
      refused_naming(put(bytes, at + 4, u32(0x7FFFFFFF)), "tag at " .. at .. " of 2^31 - 1 bytes", bad)
      count = count + 2
    end
    refused_naming(put(bytes, at, u32(0xFF)), "tag at " .. at .. " of type 255", bad)
    count = count + 1
  end
  tap.ok(#manifest.tags["sbd_plain.mat"] > 20 and #bad == 0,
         ("sbd_plain.mat: %d broken tags, each refused naming the file"):format(count), table.concat(bad, "\n"))
end

-- Every byte of a compressed file flipped: what still inflates and parses
-- may load; anything else is refused naming the file (never a crash).
do
  local bytes, bad, loaded = assert(fs.read(dir .. "sbd_inst.mat")), {}, 0
  for at = 0, #bytes - 1 do
    local flipped = bytes:sub(1, at) .. string.char(255 - bytes:byte(at + 1)) .. bytes:sub(at + 2)
    write(tmp, flipped)
    local ok, err = pcall(mat.load, tmp)
    if ok then loaded = loaded + 1
    elseif tostring(err):find(tmp .. ": ", 1, true) ~= 1 then bad[#bad + 1] = at .. ": " .. tostring(err) end
  end
  tap.ok(#bad == 0, ("sbd_inst.mat: %d bytes flipped one at a time, %d still load, the rest refused naming the file")
         :format(#bytes, loaded), table.concat(bad, "\n"))
end

-- The header.
do
  local bytes = assert(fs.read(dir .. "sbd_plain.mat"))
  local function header_refused(b, pattern, label)
    write(tmp, b)
    local ok, err = pcall(mat.load, tmp)
    err = tostring(err)
    tap.ok(not ok and err:find(tmp .. ": ", 1, true) == 1 and err:find(pattern, 1, true) ~= nil, label, err)
  end
  header_refused(bytes:sub(1, 126) .. "XX" .. bytes:sub(129), "not a MAT-file of level 5", "no endian indicator")
  header_refused(bytes:sub(1, 124) .. "\0\2" .. bytes:sub(127), "MATLAB 7.3 MAT-file (HDF5)", "a 7.3 file is named as HDF5")
  header_refused(bytes:sub(1, 124) .. "\1\1" .. bytes:sub(127), "version 0x0101", "another version")
  header_refused(bytes:sub(1, 128) .. "\14\0\0\0", "4 stray bytes after the last variable", "a partial tag at the end")
  write(tmp, bytes:sub(1, 128))
  local ok, v = pcall(mat.load, tmp)
  tap.ok(ok and next(v) == nil, "a header and no variables is an empty file", v)
  -- the offset of a broken element is reported: the array flags' tag of
  -- the one variable, at 136, given a type of 255
  header_refused(put(bytes, 136, u32(0xFF)), "offset 136 (in #1): array flags: data type 255",
                 "the message gives the offset and the element")
end

os.remove(tmp)
os.exit(tap.done())
