-- `fmseg eval CONFIG [--data ROOT] [--limit N] [--shard I/N] [-o RUN_DIR]
-- [--set k=v]`: the config's recipe over its dataset's split, scored as
-- mmsegmentation scores it (aAcc, mIoU, mAcc, per-class IoU), by Hungarian
-- matching for unsupervised segments, or by CorLoc for object discovery.
-- Work is kept per image in RUN_DIR (default runs/<config name>); rerunning
-- the same command resumes. See fmseg.eval.runs for the directory layout.
local args = require("fmseg.cli.args")

local USAGE = "eval CONFIG [--data ROOT] [--limit N] [--shard I/N] [-o RUN_DIR] [--set k=v] [-q]"

local parser = args.parser("eval", USAGE, {
  { "--data", metavar = "ROOT", help = "the dataset's folder, instead of the config's" },
  { "--limit", type = "integer", min = 1, help = "only the first N images of the split" },
  { "--shard", metavar = "I/N", type = function(s) return require("fmseg.eval.runs").parse_shard(s) end,
    help = "images I, I+N, I+2N, ... (merge the shards with fmseg merge)" },
  { "-o", "--out", metavar = "RUN_DIR", help = "default runs/<config name>" },
  { "--set", metavar = "k=v", key = "sets", list = true, help = "override a config key" },
  { "-q", "--quiet", type = "flag", help = "no progress lines" },
}, { { "config", required = true } })

local M = { usage = USAGE, help = "score a config's recipe on its dataset (resumable)" }

function M.run(argv)
  local opts = parser:parse(argv)
  if not opts then return 0 end
  local runs = require("fmseg.eval.runs")
  local rec = runs.evaluate(opts)
  io.write(runs.summary_text(rec))
  io.write(("(written to %s)\n"):format(rec.dir))
  if rec.interrupted then
    io.stderr:write(("eval: stopped by signal %d; the finished images are kept, rerun to resume\n"):format(
      rec.interrupted))
    return 128 + rec.interrupted   -- as a shell reports a process a signal ended
  end
  return 0
end

return M
