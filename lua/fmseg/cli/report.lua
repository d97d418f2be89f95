-- `fmseg report RUN_DIR... [-o FILE]`: one self-contained HTML page of
-- finished runs — the metrics (beside published numbers where known),
-- per-class IoU bars, confusion heat maps, the best and worst images with
-- their predictions and ground truth, the resolved configs and versions.
-- Refuses unfinished runs and lone shards as `fmseg table` does.
local args = require("fmseg.cli.args")

local USAGE = "report RUN_DIR... [-o FILE]"

local parser = args.parser("report", USAGE, {
  { "-o", "--out", metavar = "FILE", default = "report.html" },
  { "--examples", type = "integer", min = 0, default = 4, help = "best and worst images shown per run (each)" },
  { "--thumb", type = "integer", min = 16, default = 256, metavar = "PX", help = "thumbnails' longer side" },
}, { { "dirs", label = "run directories", required = true, list = true } })

local M = { usage = USAGE, help = "finished runs as one HTML page: metrics, charts, images" }

function M.run(argv)
  local opts = parser:parse(argv)
  if not opts then return 0 end
  local html_report = require("fmseg.eval.html_report")
  io.write(html_report.command(opts.dirs, opts.out, { examples = opts.examples, thumb = opts.thumb }))
  return 0
end

return M
