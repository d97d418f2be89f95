-- Published numbers (configs/published.yaml, fmseg.eval.published): every
-- method with a config is either reported or listed as not collected, the
-- reported datasets exist, a malformed file is refused naming the entry,
-- and `fmseg table` writes measured beside published with the difference.
local tap = require("tap")
local tiny = require("tiny_data")
local config = require("fmseg.io.config")
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")
local json = require("fmseg.io.json")
local published = require("fmseg.eval.published")
local report = require("fmseg.eval.report")

local ROOT = core.root
local tmp = tiny.tmpdir("published")

-- ---- the committed file ------------------------------------------------------------------------

local book = published.load()
local reported, listed = 0, 0
for _ in pairs(book.entries) do reported = reported + 1 end
for _ in pairs(book.not_collected) do listed = listed + 1 end
tap.ok(reported >= 5, ("configs/published.yaml reports %d methods"):format(reported))

-- every `method:` of a config, resolved through its _base_ chain
local methods, uncovered = {}, {}
local p = io.popen(("find -H %s -name '*.yaml' -not -path '*/_base_/*' -not -name published.yaml | sort")
  :format(fs.quote(ROOT .. "/configs")))
for path in p:lines() do
  local cfg = config.load(path)
  local m = cfg.method or cfg.recipe
  if m and not methods[m] then
    methods[m] = path
    if not book.entries[m] and not book.not_collected[m] then uncovered[#uncovered + 1] = m .. " (" .. path .. ")" end
  end
end
p:close()
tap.ok(next(methods) ~= nil, "configs found")
tap.ok(#uncovered == 0, "every config's method is reported or listed under not_collected", table.concat(uncovered, "\n"))

-- the reported datasets are fmseg's dataset names
local names = {}
local q = io.popen(("ls %s/*.yaml"):format(fs.quote(ROOT .. "/configs/_base_/datasets")))
for path in q:lines() do
  local d = config.load(path)
  if d.data and d.data.name then names[d.data.name] = true end
end
q:close()
local unknown = {}
for m, entry in pairs(book.entries) do
  for metric in pairs(published.METRICS) do
    for dataset in pairs(entry[metric] or {}) do
      if not names[dataset] then unknown[#unknown + 1] = m .. "." .. metric .. "." .. dataset end
    end
  end
end
tap.ok(#unknown == 0, "every published dataset is a dataset definition's name", table.concat(unknown, "\n"))

local sclip = published.lookup("SCLIP", "voc21", "miou")
tap.ok(sclip ~= nil and type(sclip.value) == "number" and sclip.source:find("SCLIP", 1, true) ~= nil,
       "lookup returns a number and its source")
tap.eq(published.lookup("SCLIP", "voc07_corloc", "corloc"), nil, "lookup: nothing for a dataset not reported")
tap.eq(published.lookup("no such method", "voc21", "miou"), nil, "lookup: nothing for an unknown method")
tap.raises(function() published.lookup("SCLIP", "voc21", "aAcc") end, "unknown metric", "lookup: an unknown metric is misuse")

-- ---- a malformed file is refused, naming the entry ---------------------------------------------

local function refused(text, want, name)
  local path = tmp .. "/bad.yaml"
  fs.write_atomic(path, text)
  local ok, err = pcall(published.load, path)
  tap.ok(not ok and tostring(err):find(want, 1, true) ~= nil, name, tostring(err))
end
refused("A:\n  miou: {voc21: 50}\n", "A: no source", "an entry without a source")
refused("A:\n  source: x\n  miou: {voc21: 120}\n", "A.miou.voc21: expected a percentage", "a number above 100")
refused("A:\n  source: x\n  aacc: {voc21: 50}\n", "unknown key 'aacc'", "an unknown metric")
refused("A:\n  source: x\n", "A: no numbers", "an entry without numbers")
refused("A:\n  source: x\n  miou: {voc21: 50}\nnot_collected:\n  A: later\n", "both reported and listed",
        "a method both reported and not collected")
refused("not_collected:\n  B: ~\n", "not_collected.B: give the reason", "a not-collected method without a reason")

-- ---- fmseg table: measured beside published ------------------------------------------------------

-- a finished run as fmseg eval leaves it (only what the table reads)
local function fake_run(dir, method, dataset, miou)
  fs.mkdir_p(dir)
  fs.write_atomic(dir .. "/metrics.json", json.encode({
    task = "semantic", method = method, dataset = dataset, title = dataset:upper(),
    mIoU = miou, aAcc = 0.9, mAcc = miou, classes = { "a", "b" }, IoU = { miou, miou }, Acc = { miou, miou },
  }))
  return dir
end
local a = fake_run(tmp .. "/run_sclip_voc21", "SCLIP", "voc21", 0.581)
local b = fake_run(tmp .. "/run_mine_voc21", "Mine", "voc21", 0.42)
local out = tmp .. "/results"
local md = report.command({ a, b }, out)
local want = ("%.1f / %.1f (%+.1f)"):format(58.1, sclip.value, 58.1 - sclip.value)
tap.ok(md:find(want, 1, true) ~= nil, "fmseg table prints measured / published (difference): " .. want, md)
local pub_md = fs.read(out .. "/published.md") or ""
tap.ok(pub_md:find(want, 1, true) ~= nil and pub_md:find(sclip.source, 1, true) ~= nil,
       "published.md holds the cell and its source")
tap.ok(pub_md:find("| Mine", 1, true) == nil, "a method without published numbers is not in the comparison")
local csv = fs.read(out .. "/published.csv") or ""
tap.ok(csv:find(("semantic,SCLIP,voc21,58.10,%.2f,%.2f,"):format(sclip.value, 58.1 - sclip.value), 1, true) ~= nil,
       "published.csv holds measured, published and difference", csv)

local only_mine = tmp .. "/results_mine"
report.command({ b }, only_mine)
tap.ok(fs.read(only_mine .. "/published.md") == nil, "no published.md when no run has a published number")

os.exit(tap.done())
