-- fmseg.cli — the command line. Each command is the module
-- fmseg.cli.<name> (`print-config` is cli/print_config.lua) returning
-- { usage = ..., help = ..., run = function(argv) -> exit code }. Errors
-- raised anywhere reach main.c, which prints one line and exits 1.
local M = {}

-- in the order --help lists them
local COMMANDS = {
  "run", "info", "fetch", "parity", "segment", "print-config", "demo",
  "classify", "sam", "amg", "prepare", "eval", "merge", "table", "report",
}

local function load_command(name)
  return require("fmseg.cli." .. name:gsub("-", "_"))
end

local function usage_text()
  local lines = {
    "fmseg — image segmentation with foundation models (CLIP, DINO, SAM, Stable Diffusion)",
    "",
    "usage: fmseg <command> [args]",
    "",
  }
  for _, name in ipairs(COMMANDS) do
    local c = load_command(name)
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
  lines[#lines + 1] = "  FMSEG_FIXTURES (test fixtures), FMSEG_DEBUG (tracebacks), FMSEG_BLAS_UPGRADE=1 (OpenBLAS"
  lines[#lines + 1] = "  kernels for this CPU when OpenBLAS fell back to older ones: fmseg --version says)."
  return table.concat(lines, "\n")
end

function M.main(args)
  local name = args[1]
  if name == nil or name == "--help" or name == "-h" or name == "help" then
    print(usage_text())
    return name == nil and 1 or 0
  end
  if name == "--version" or name == "version" then
    local core = require("fmseg.core")
    print("fmseg " .. require("fmseg").version())
    local fallback, running = os.getenv("FMSEG_BLAS_FALLBACK"), core.ffi.string(core.C.fm_blas_core())
    print(("OpenBLAS kernels: %s, %d threads%s"):format(running, core.C.fm_get_threads(),
      fallback and (" (FMSEG_BLAS_UPGRADE: OpenBLAS had taken this CPU for %s)"):format(fallback) or ""))
    local better = core.C.fm_blas_core_upgrade()
    if better ~= nil then
      print(("  OpenBLAS fell back to %s kernels, which predate AVX2, on a CPU that runs %s ones: "
        .. "FMSEG_BLAS_UPGRADE=1 (or OPENBLAS_CORETYPE=%s) makes products about 4x faster; results then "
        .. "differ in their last digits"):format(running, core.ffi.string(better), core.ffi.string(better)))
    end
    return 0
  end
  local known = false
  for _, c in ipairs(COMMANDS) do known = known or c == name end
  if not known then
    error(("unknown command '%s' (fmseg --help lists them)"):format(name), 0)
  end
  local rest = {}
  for i = 2, #args do rest[#rest + 1] = args[i] end
  return load_command(name).run(rest) or 0
end

return M
