-- tap.lua — a small TAP producer for the Lua tests (read by prove).
local M = {}
local count, failed = 0, 0

function M.ok(cond, name, detail)
  count = count + 1
  if not cond then failed = failed + 1 end
  io.write(("%sok %d - %s\n"):format(cond and "" or "not ", count, name or ""))
  if not cond and detail then io.write("# " .. tostring(detail):gsub("\n", "\n# ") .. "\n") end
  io.flush()
  return cond
end

function M.diag(msg) io.write("# " .. tostring(msg) .. "\n") end

function M.skip(name, why)
  count = count + 1
  io.write(("ok %d - %s # SKIP %s\n"):format(count, name, why))
  io.stderr:write(("skipped: %s (%s)\n"):format(name, why))
end

function M.eq(got, want, name)
  return M.ok(got == want, name, ("got %s, want %s"):format(tostring(got), tostring(want)))
end

-- Relative error max|a-b| / max|b| of two tensors (or of a tensor and a
-- nested table), the measure the fixtures use.
function M.rel_err(a, b)
  local T = require("fmseg.tensor")
  if not T.is_tensor(b) then b = T.from_table(b) end
  if not T.is_tensor(a) then a = T.from_table(a) end
  local sa, sb = a:shape(), b:shape()
  if #sa ~= #sb then return math.huge end
  for i = 1, #sa do if sa[i] ~= sb[i] then return math.huge end end
  local diff = (a:float() - b:float()):abs():max()
  local scale = b:float():abs():max()
  if diff ~= diff then return math.huge end
  return scale > 0 and diff / scale or diff
end

function M.near(a, b, tol, name)
  local e = M.rel_err(a, b)
  return M.ok(e <= tol, name, ("relative error %.3g > %.3g"):format(e, tol))
end

-- Runs fn expecting an error whose message matches `pattern` (plain find).
function M.raises(fn, pattern, name)
  local ok, err = pcall(fn)
  if ok then return M.ok(false, name, "no error raised") end
  return M.ok(tostring(err):find(pattern, 1, true) ~= nil, name, "error was: " .. tostring(err))
end

-- The fixtures directory, or nil after a visible skip; with CI set, a
-- missing directory is a failure.
function M.fixtures(sub)
  local root = os.getenv("FMSEG_FIXTURES") or "../shared/fixtures"
  local dir = sub and (root .. "/" .. sub) or root
  local f = io.open(dir .. (sub and "/config.json" or "/README.md"), "r")
    or io.open(dir .. "/model_index.json", "r")
  if f then f:close(); return dir end
  if os.getenv("CI") then
    M.ok(false, "fixtures present at " .. dir, "CI is set and the fixtures are missing")
  else
    M.skip("fixtures at " .. dir, "missing; set FMSEG_FIXTURES")
  end
  return nil
end

-- A scratch copy of the model directory `dir`: its config.json edited by
-- cfg_edit(cfg) and its weights (name -> tensor) by edit(tensors), both
-- optional. Returns the path; M.remove_model deletes it.
function M.scratch_model(dir, edit, cfg_edit)
  local hf, safetensors = require("fmseg.io.hf"), require("fmseg.io.safetensors")
  local tmp = os.tmpname()
  os.remove(tmp)
  os.execute("mkdir -p '" .. tmp .. "'")
  local cfg = hf.read_json(dir .. "/config.json")
  if cfg_edit then cfg_edit(cfg) end
  local out = assert(io.open(tmp .. "/config.json", "wb"))
  out:write(require("fmseg.io.json").encode(cfg))
  out:close()
  local tensors = safetensors.open(dir .. "/model.safetensors"):load_all()
  if edit then edit(tensors) end
  safetensors.save(tmp .. "/model.safetensors", tensors)
  return tmp
end

function M.remove_model(tmp)
  os.remove(tmp .. "/config.json")
  os.remove(tmp .. "/model.safetensors")
  os.remove(tmp)
end

function M.done()
  io.write(("1..%d\n"):format(count))
  io.flush()
  return failed == 0 and 0 or 1
end

return M
