-- Runs a test script as `fmseg run SCRIPT` does, except that os.exit closes
-- the Lua state before exiting (LuaJIT's os.exit(code, true)): every live
-- ffi.gc handle is finalised, so what LeakSanitizer reports at exit was
-- really lost, not merely still held by a Lua heap that exit() abandoned
-- (LuaJIT's heap is its own mmap'd memory, which LSan does not scan).
local exit = os.exit
rawset(os, "exit", function(code) exit(code, true) end)
return require("fmseg.cli.run").run({ ... })
