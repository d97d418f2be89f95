-- `fmseg table RUN_DIR... [-o DIR]`: the survey-style comparison of
-- finished runs — methods x datasets, mIoU (and CorLoc for object
-- discovery) — as Markdown and CSV, per-class IoU as CSV, and bar charts,
-- written to DIR (default results/); the Markdown is printed too.
local cli = require("fmseg.cli")

local USAGE = "table RUN_DIR... [-o DIR]"

cli.command("table", USAGE, "compare finished runs: Markdown, CSV, bar chart", function(args)
  local dirs, out, i = {}, "results", 1
  while i <= #args do
    local a = args[i]
    if a == "-o" or a == "--out" then
      out = args[i + 1]
      if not out then error("table: -o needs a directory", 0) end
      i = i + 2
    elseif a:sub(1, 1) == "-" then error(("table: unknown option '%s' (%s)"):format(a, USAGE), 0)
    else dirs[#dirs + 1] = a; i = i + 1 end
  end
  if #dirs == 0 then error("table: no run directories given (" .. USAGE .. ")", 0) end
  local report = require("fmseg.report")
  io.write(report.command(dirs, out))
  return 0
end)

return {}
