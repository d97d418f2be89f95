-- `fmseg eval CONFIG [--data ROOT] [--limit N] [--shard I/N] [-o RUN_DIR]
-- [--set k=v]`: the config's recipe over its dataset's split, scored as
-- mmsegmentation scores it (aAcc, mIoU, mAcc, per-class IoU), by Hungarian
-- matching for unsupervised segments, or by CorLoc for object discovery.
-- Work is kept per image in RUN_DIR (default runs/<config name>); rerunning
-- the same command resumes. See fmseg.runs for the directory layout.
local cli = require("fmseg.cli")

local USAGE = "eval CONFIG [--data ROOT] [--limit N] [--shard I/N] [-o RUN_DIR] [--set k=v] [-q]"

local function parse(args)
  local runs = require("fmseg.runs")
  local opts, i = { sets = {} }, 1
  local function value(a)
    local v = args[i + 1]
    if v == nil then error(("eval: %s needs a value (%s)"):format(a, USAGE), 0) end
    i = i + 2
    return v
  end
  while i <= #args do
    local a = args[i]
    if a == "--data" then opts.data = value(a)
    elseif a == "--limit" then
      local v = value(a)
      opts.limit = tonumber(v)
      if not opts.limit or opts.limit < 1 or opts.limit % 1 ~= 0 then
        error(("eval: --limit %s: expected a positive whole number"):format(v), 0)
      end
    elseif a == "--shard" then opts.shard = runs.parse_shard(value(a))
    elseif a == "-o" or a == "--out" then opts.out = value(a)
    elseif a == "--set" then opts.sets[#opts.sets + 1] = value(a)
    elseif a == "--quiet" or a == "-q" then opts.quiet = true; i = i + 1
    elseif a:sub(1, 1) == "-" then error(("eval: unknown option '%s' (%s)"):format(a, USAGE), 0)
    elseif not opts.config then opts.config = a; i = i + 1
    else error(("eval: unexpected argument '%s' (%s)"):format(a, USAGE), 0) end
  end
  if not opts.config then error("eval: no config given (" .. USAGE .. ")", 0) end
  return opts
end

cli.command("eval", USAGE, "score a config's recipe on its dataset (resumable)", function(args)
  local runs = require("fmseg.runs")
  local rec = runs.evaluate(parse(args))
  io.write(runs.summary_text(rec))
  io.write(("(written to %s)\n"):format(rec.dir))
  return 0
end)

return {}
