-- `fmseg merge RUN_DIR... [-o OUT_DIR]`: sums the counts of the shards of
-- one evaluation (`fmseg eval ... --shard I/N`, in one shared or several
-- run directories) into the metrics a single run would give, refusing
-- missing, duplicate or mismatched shards.
local cli = require("fmseg.cli")

local USAGE = "merge RUN_DIR... [-o OUT_DIR]"

cli.command("merge", USAGE, "combine the shards of an evaluation", function(args)
  local dirs, out, i = {}, nil, 1
  while i <= #args do
    local a = args[i]
    if a == "-o" or a == "--out" then
      out = args[i + 1]
      if not out then error("merge: -o needs a directory", 0) end
      i = i + 2
    elseif a:sub(1, 1) == "-" then error(("merge: unknown option '%s' (%s)"):format(a, USAGE), 0)
    else dirs[#dirs + 1] = a; i = i + 1 end
  end
  if #dirs == 0 then error("merge: no run directories given (" .. USAGE .. ")", 0) end
  local runs = require("fmseg.runs")
  local rec = runs.merge(dirs, out)
  io.write(runs.summary_text(rec))
  io.write(("(written to %s)\n"):format(rec.dir))
  return 0
end)

return {}
