-- `fmseg table RUN_DIR... [-o DIR]`: the survey-style comparison of
-- finished runs — methods x datasets, mIoU (and CorLoc for object
-- discovery) — as Markdown and CSV, per-class IoU as CSV, and bar charts,
-- written to DIR (default results/); the Markdown is printed too.
local args = require("fmseg.cli.args")

local USAGE = "table RUN_DIR... [-o DIR]"

local parser = args.parser("table", USAGE, {
  { "-o", "--out", metavar = "DIR", default = "results" },
}, { { "dirs", label = "run directories", required = true, list = true } })

local M = { usage = USAGE, help = "compare finished runs: Markdown, CSV, bar chart" }

function M.run(argv)
  local opts = parser:parse(argv)
  if not opts then return 0 end
  local report = require("fmseg.eval.report")
  io.write(report.command(opts.dirs, opts.out))
  return 0
end

return M
