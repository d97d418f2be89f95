-- `fmseg print-config CONFIG [--set k=v]`: the config after `_base_`
-- inheritance and overrides, as YAML.
local args = require("fmseg.cli.args")

local parser = args.parser("print-config", "print-config CONFIG [--set k=v]", {
  { "--set", metavar = "k=v", key = "sets", list = true, help = "override a config key" },
}, { { "config", required = true } })

local M = { usage = parser.usage, help = "print the resolved config" }

function M.run(argv)
  local opts = parser:parse(argv)
  if not opts then return 0 end
  local config = require("fmseg.io.config")
  io.write(config.dump(config.load(opts.config, opts.sets)))
  return 0
end

return M
