-- fmseg.io.fs — the few things the Lua side asks of the filesystem: does a
-- path exist, is it a directory, read a whole file, write one atomically,
-- make a directory with its parents, which Lua modules a folder holds.
-- Reading returns nil and the reason; each caller raises its own message
-- naming the file. Writing raises "cannot write PATH: reason".
local ffi = require("ffi")

local M = {}

pcall(ffi.cdef, "int getpid(void);")
pcall(ffi.cdef, [[
int open(const char *path, int flags, ...);
int close(int fd);
int flock(int fd, int operation);
char *strerror(int errnum);
]])
local O_RDWR, O_CREAT, O_CLOEXEC = 2, 64, 524288     -- Linux
local LOCK_EX, LOCK_NB = 2, 4

-- Wall-clock seconds on the monotonic clock, for rates and ETAs in progress
-- lines (os.clock is CPU time); whole seconds where it is unavailable.
pcall(ffi.cdef, "typedef struct { int64_t tv_sec, tv_nsec; } fmseg_fs_timespec;")
local have_clock = pcall(ffi.cdef, "int clock_gettime(int clk, void *ts);")
local timespec = ffi.new("fmseg_fs_timespec")
local CLOCK_MONOTONIC = 1
function M.now()
  if have_clock and ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec) == 0 then
    return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) * 1e-9
  end
  return os.time()
end

-- Is stderr a terminal (progress redrawn in place) or a file / pipe?
pcall(ffi.cdef, "int isatty(int fd);")
function M.stderr_is_tty() return ffi.C.isatty(2) == 1 end

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

-- Writes path through a temporary file and a rename, so that a killed run
-- never leaves a half-written file: write(tmp) creates the temporary file.
-- Its name carries the process id, since shards may share a directory.
function M.atomically(path, write)
  local tmp = ("%s.tmp%d"):format(path, tonumber(ffi.C.getpid()))
  local ok, err = pcall(write, tmp)
  if not ok then
    os.remove(tmp)
    local msg = tostring(err)
    local at = msg:find(tmp, 1, true)      -- name the file people know
    if at then msg = msg:sub(1, at - 1) .. path .. msg:sub(at + #tmp) end
    error(msg, 0)
  end
  local renamed, rerr = os.rename(tmp, path)
  if not renamed then
    os.remove(tmp)
    error(("cannot write %s: %s"):format(path, tostring(rerr)), 0)
  end
end

-- text into path, atomically; a full disk shows at write or at close
function M.write_atomic(path, text)
  M.atomically(path, function(tmp)
    local f, err = io.open(tmp, "wb")
    if not f then error(("cannot write %s: %s"):format(path, tostring(err)), 0) end
    local written, werr = f:write(text)
    local closed, cerr = f:close()
    if not (written and closed) then
      error(("cannot write %s: %s"):format(path, tostring(werr or cerr)), 0)
    end
  end)
end

-- An exclusive lock on path (created if needed) for as long as the lock is
-- held: lock.release(), or the end of the process, since the kernel drops
-- an flock with its descriptor (a crash leaves no stale lock). The file
-- holds the holder's pid. Returns the lock, or nil and the holder's pid.
function M.lock(path)
  local fd = ffi.C.open(path, O_RDWR + O_CREAT + O_CLOEXEC, ffi.cast("int", 420))   -- 0644
  if fd < 0 then error(("cannot open the lock file %s: %s"):format(path, ffi.string(ffi.C.strerror(ffi.errno()))), 0) end
  if ffi.C.flock(fd, LOCK_EX + LOCK_NB) ~= 0 then
    ffi.C.close(fd)
    local holder = tonumber((M.read(path) or ""):match("%d+"))
    return nil, holder
  end
  local f = io.open(path, "w")
  if f then
    f:write(tostring(ffi.C.getpid()), "\n")
    f:close()
  end
  local lock = { path = path }
  function lock.release()
    if fd >= 0 then
      ffi.C.close(fd)
      fd = -1
    end
  end
  return lock
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
