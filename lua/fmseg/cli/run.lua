-- `fmseg run SCRIPT [args]`: a Lua script with fmseg loaded. The script
-- gets its arguments as `...` and in the conventional global `arg`, and can
-- require modules beside it.
local M = {
  usage = "run SCRIPT.lua [args...]",
  help = "run a Lua script with fmseg loaded",
}

function M.run(argv)
  local script = argv[1]
  if not script then error("run: no script given (fmseg run SCRIPT.lua [args])", 0) end
  local chunk, err = loadfile(script)
  if not chunk then error(err, 0) end
  local dir = script:match("^(.*)/[^/]*$") or "."
  package.path = dir .. "/?.lua;" .. package.path
  local script_args = { [0] = script }
  for i = 2, #argv do script_args[i - 1] = argv[i] end
  rawset(_G, "arg", script_args)
  local rc = chunk(unpack(script_args))
  return type(rc) == "number" and rc or 0
end

return M
