-- `fmseg merge RUN_DIR... [-o OUT_DIR]`: sums the counts of the shards of
-- one evaluation (`fmseg eval ... --shard I/N`, in one shared or several
-- run directories) into the metrics a single run would give, refusing
-- missing, duplicate or mismatched shards.
local args = require("fmseg.cli.args")

local USAGE = "merge RUN_DIR... [-o OUT_DIR]"

local parser = args.parser("merge", USAGE, {
  { "-o", "--out", metavar = "OUT_DIR", help = "default: the run directory, when only one is given" },
}, { { "dirs", label = "run directories", required = true, list = true } })

local M = { usage = USAGE, help = "combine the shards of an evaluation" }

function M.run(argv)
  local opts = parser:parse(argv)
  if not opts then return 0 end
  local runs = require("fmseg.eval.runs")
  local rec = runs.merge(opts.dirs, opts.out)
  io.write(runs.summary_text(rec))
  io.write(("(written to %s)\n"):format(rec.dir))
  return 0
end

return M
