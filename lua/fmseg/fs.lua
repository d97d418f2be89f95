-- fmseg.fs — the few things the Lua side asks of the filesystem: does a
-- path exist, is it a directory, read a whole file, make a directory with
-- its parents, which Lua modules a folder holds. Reading returns nil and the reason; each caller raises its
-- own message naming the file.
local M = {}

-- s quoted for the shell (os.execute, io.popen)
function M.quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Can `path` be opened for reading? (true for directories on Linux too)
function M.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- The whole file as a string, or nil and io.open's reason
function M.read(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

function M.is_dir(path)
  local ok = os.execute("test -d " .. M.quote(path))
  return ok == 0 or ok == true
end

-- mkdir -p; raises "cannot create directory DIR" when that fails
function M.mkdir_p(dir)
  local ok = os.execute("mkdir -p " .. M.quote(dir))
  if not (ok == 0 or ok == true) then error(("cannot create directory %s"):format(dir), 0) end
end

-- The names NAME of the files NAME.lua in dir (NAME of letters, digits and
-- _), sorted; {} when dir cannot be listed. Recipes and modifiers are found so.
function M.lua_names(dir)
  local names = {}
  local p = io.popen(("ls %s 2>/dev/null"):format(M.quote(dir)))
  if p then
    for file in p:lines() do
      local name = file:match("^([%w_]+)%.lua$")
      if name then names[#names + 1] = name end
    end
    p:close()
  end
  table.sort(names)
  return names
end

return M
