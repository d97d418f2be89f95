-- `fmseg parity DIR [--dump FILE]`: a model directory (or a method
-- fixture) against its reference tensors; see fmseg.parity.
local args = require("fmseg.cli.args")

local parser = args.parser("parity", "parity DIR [--dump FILE]", {
  { "--dump", metavar = "FILE", help = "write our tensors as safetensors" },
}, { { "dir", label = "directory", required = true } })

local M = {
  usage = parser.usage,
  help = "compare a model directory with its reference tensors",
}

function M.run(argv)
  local opts = parser:parse(argv)
  if not opts then return 0 end
  return require("fmseg.parity").run(opts.dir, { dump = opts.dump })
end

return M
