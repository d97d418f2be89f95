-- `fmseg prepare DATASET RAW_DIR [-o ROOT] [--json FILE] [-q]`: converts a
-- dataset's annotations as they unpack into the label maps fmseg eval
-- reads (what mmsegmentation's tools/dataset_converters and SCLIP's
-- cvt_coco_object.py write), without Python. The datasets and their code:
-- fmseg.eval.prepare.
local args = require("fmseg.cli.args")

local USAGE = "prepare DATASET RAW_DIR [-o ROOT] [--json FILE] [-q]"

local parser = args.parser("prepare", USAGE, {
  { "-o", "--out", metavar = "ROOT", help = "where the labels go (default RAW_DIR, next to the raw data)" },
  { "--json", metavar = "FILE", help = "context: trainval_merged.json (default RAW_DIR/trainval_merged.json)" },
  { "-q", "--quiet", type = "flag", help = "no progress lines" },
}, { { "dataset", required = true }, { "raw", label = "RAW_DIR", required = true } })

local base_help = parser.help
function parser.help(self)
  local prepare = require("fmseg.eval.prepare")
  local lines = { base_help(self), "", "datasets:" }
  for _, name in ipairs(prepare.ORDER) do
    local e = prepare.DATASETS[name]
    lines[#lines + 1] = ("  %-15s %s"):format(name, e.summary)
    lines[#lines + 1] = ("  %-15s RAW_DIR: %s"):format("", e.layout)
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Labels are written under ROOT in the layout of configs/_base_/datasets/<dataset>.yaml;"
  lines[#lines + 1] = "when ROOT is not RAW_DIR the image folders are linked into it. Afterwards"
  lines[#lines + 1] = "`fmseg eval CONFIG --data ROOT` reads them (no --data when ROOT is the definition's"
  lines[#lines + 1] = "data.root, e.g. data/coco_stuff164k). Rerunning skips the files already written."
  return table.concat(lines, "\n")
end

local M = { usage = USAGE, help = "convert a dataset's annotations for fmseg eval (no Python)" }

function M.run(argv)
  local opts = parser:parse(argv)
  if not opts then return 0 end
  local prepare = require("fmseg.eval.prepare")
  local summary = prepare.run(opts.dataset, opts.raw, { root = opts.out, json = opts.json, quiet = opts.quiet })
  io.write(prepare.summary_text(summary))
  return #summary.problems > 0 and 1 or 0
end

return M
