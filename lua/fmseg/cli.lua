-- fmseg.cli — the command line. Each sub-command is a function taking the
-- remaining arguments and returning an exit code; errors raised anywhere
-- reach main.c, which prints one line and exits 1.
local args = require("fmseg.args")

local M = {}

local COMMANDS = {}   -- name -> { run = fn, usage = "...", help = "..." }
local ORDER = {}

local function command(name, usage, help, run)
  COMMANDS[name] = { run = run, usage = usage, help = help }
  ORDER[#ORDER + 1] = name
end
M.command = command

local function usage_text()
  local lines = {
    "fmseg — image segmentation with foundation models (CLIP, DINO, SAM, Stable Diffusion)",
    "",
    "usage: fmseg <command> [args]",
    "",
  }
  for _, name in ipairs(ORDER) do
    local c = COMMANDS[name]
    if #c.usage <= 38 then
      lines[#lines + 1] = ("  %-38s  %s"):format(c.usage, c.help)
    else
      lines[#lines + 1] = "  " .. c.usage
      lines[#lines + 1] = (" "):rep(42) .. c.help
    end
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "  fmseg --help | --version"
  lines[#lines + 1] = "Each command's options: fmseg COMMAND --help."
  lines[#lines + 1] = "Environment: FMSEG_THREADS (threads), FMSEG_CACHE (text classifiers; off),"
  lines[#lines + 1] = "  FMSEG_FIXTURES (test fixtures), FMSEG_DEBUG (tracebacks)."
  return table.concat(lines, "\n")
end

-- `fmseg run SCRIPT [args]`: the script gets its arguments as `...` and in
-- the conventional global `arg`, and can require modules beside it.
command("run", "run SCRIPT.lua [args...]", "run a Lua script with fmseg loaded", function(args)
  local script = args[1]
  if not script then error("run: no script given (fmseg run SCRIPT.lua [args])", 0) end
  local chunk, err = loadfile(script)
  if not chunk then error(err, 0) end
  local dir = script:match("^(.*)/[^/]*$") or "."
  package.path = dir .. "/?.lua;" .. package.path
  local script_args = { [0] = script }
  for i = 2, #args do script_args[i - 1] = args[i] end
  rawset(_G, "arg", script_args)
  local rc = chunk(unpack(script_args))
  return type(rc) == "number" and rc or 0
end)

local INFO = args.parser("info", "info PATH [--check]", {
  { "--check", type = "flag", help = "scan every tensor for NaN, Inf and all zeros; exit 1 on NaN or Inf" },
}, { { "path", label = "path", required = true } })

command("info", INFO.usage, "tensors of a safetensors file or model directory; image size", function(argv)
  local opts = INFO:parse(argv)
  if not opts then return 0 end
  return require("fmseg.info").run(opts.path, { check = opts.check })
end)

local PARITY = args.parser("parity", "parity DIR [--dump FILE]", {
  { "--dump", metavar = "FILE", help = "write our tensors as safetensors" },
}, { { "dir", label = "directory", required = true } })

command("parity", PARITY.usage, "compare a model directory with its reference tensors", function(argv)
  local opts = PARITY:parse(argv)
  if not opts then return 0 end
  return require("fmseg.parity").run(opts.dir, { dump = opts.dump })
end)

command("segment", "segment CONFIG IMAGE... [-o DIR] [--set k=v]", "segment images with a config's recipe", function(args)
  return require("fmseg.segment").command(args)
end)

local PRINT_CONFIG = args.parser("print-config", "print-config CONFIG [--set k=v]", {
  { "--set", metavar = "k=v", key = "sets", list = true, help = "override a config key" },
}, { { "config", required = true } })

command("print-config", PRINT_CONFIG.usage, "print the resolved config", function(argv)
  local opts = PRINT_CONFIG:parse(argv)
  if not opts then return 0 end
  local config = require("fmseg.config")
  io.write(config.dump(config.load(opts.config, opts.sets)))
  return 0
end)

command("demo", "demo [CLIP_DIR]", "SCLIP on the bundled photo, outputs in out/demo", function(args)
  return require("fmseg.demo").run(args)
end)

local function set_threads()
  local n = tonumber(os.getenv("FMSEG_THREADS") or "")
  if n then
    local core = require("fmseg.core")
    core.C.fm_set_threads(n)
  end
end

-- Commands defined in their own modules register here when present.
local OPTIONAL = { "fmseg.commands" }

function M.main(args)
  for _, mod in ipairs(OPTIONAL) do
    local ok, err = pcall(require, mod)
    if not ok and not tostring(err):match("module '" .. mod .. "' not found") then error(err, 0) end
  end
  local name = args[1]
  if name == nil or name == "--help" or name == "-h" or name == "help" then
    print(usage_text())
    return name == nil and 1 or 0
  end
  if name == "--version" or name == "version" then
    print("fmseg " .. require("fmseg").version())
    return 0
  end
  local cmd = COMMANDS[name]
  if not cmd then
    error(("unknown command '%s' (fmseg --help lists them)"):format(name), 0)
  end
  set_threads()
  local rest = {}
  for i = 2, #args do rest[#rest + 1] = args[i] end
  return cmd.run(rest) or 0
end

return M
