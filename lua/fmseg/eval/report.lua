-- fmseg.eval.report — the comparison tables of finished runs, as the survey
-- lays them out: one row per method, one column per dataset, mIoU in
-- percent (CorLoc for object discovery); per-class IoU; bar charts drawn
-- with the C drawing helpers.
--
--   local report = require("fmseg.eval.report")
--   io.write(report.command({ "runs/sclip_voc21", "runs/sclip_ade20k" }, "results"))
--
-- Writes to the output directory: miou.md, miou.csv, miou.png,
-- per_class_iou.csv, and corloc.md / corloc.csv / corloc.png when
-- discovery runs are among them, oneshot_miou.{md,csv,png} for one-shot
-- runs (PerSeg), fewshot_miou.{md,csv,png} and fewshot_fbiou.{md,csv,png}
-- for few-shot runs (COCO-20i, FSS-1000, LVIS-92i: one column per fold, with
-- each benchmark's mean over its folds when all are there),
-- noc.md / noc.csv / miou_per_click.png (NoC@85 / NoC@90
-- and the mIoU after each click) for interactive runs; published.md / published.csv put each
-- measured number beside the one its paper or repository reports
-- (configs/published.yaml, fmseg.eval.published) when there is one.
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")
local image = require("fmseg.image")
local json = require("fmseg.io.json")
local published = require("fmseg.eval.published")
local runs = require("fmseg.eval.runs")
local T = require("fmseg.tensor")
local C, check = core.C, core.check

local M = {}

-- The column order of the survey's tables (SCLIP's), then anything else in
-- the order met.
local ORDER = { "voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff164k",
                "cityscapes", "ade20k", "voc07_corloc", "voc12_corloc" }

local function is_num(x) return type(x) == "number" and x == x end

-- The number a task's tables show: its field, its name, its published key
-- (semantic, one-shot and few-shot: mIoU; discovery: CorLoc; referring:
-- oIoU; "fewshot_fbiou", the few-shot runs' FB-IoU table: FBIoU, shown as
-- FB-IoU).
local METRIC = { discovery = { "CorLoc", "corloc" }, referring = { "oIoU", "oiou" },
                 fewshot_fbiou = { "FBIoU", "fbiou", "FB-IoU" } }
local function metric_of(task) return (METRIC[task] or { "mIoU", "miou" })[1] end
local function metric_key(task) return (METRIC[task] or { "mIoU", "miou" })[2] end
local function metric_label(task) local m = METRIC[task] or { "mIoU" }; return m[3] or m[1] end

-- metrics.json of each directory; unfinished runs and lone shards refused
-- (errors start with `command`, default "table").
function M.load(dirs, command)
  command = command or "table"
  local recs = {}
  for _, dir in ipairs(dirs) do
    local rec, err = runs.read_json(dir .. "/metrics.json")
    if not rec then
      if err then error(("%s: %s/metrics.json: %s"):format(command, dir, tostring(err)), 0) end
      local has_shards = false
      local p = io.popen(("ls '%s' 2>/dev/null"):format(dir:gsub("'", "'\\''")))
      for name in p:lines() do if name:match("^metrics%.shard%-") then has_shards = true end end
      p:close()
      if has_shards then
        error(("%s: %s holds shards only: combine them first with `fmseg merge %s`"):format(command, dir, dir), 0)
      end
      error(("%s: %s has no metrics.json: the run is unfinished (rerun its `fmseg eval` to resume) "
        .. "or this is not a run directory"):format(command, dir), 0)
    end
    rec.dir = dir
    recs[#recs + 1] = rec
  end
  return recs
end

-- { methods = {...}, datasets = {{name, title}...}, cells[method][dataset] = rec }
-- for the runs of one task (errors start with `command`, default "table").
function M.grid(recs, task, command)
  local g = { methods = {}, datasets = {}, cells = {} }
  local seen_m, seen_d = {}, {}
  for _, r in ipairs(recs) do
    if r.task == task then
      local m, d = r.method or r.recipe or "?", r.dataset or "?"
      if not seen_m[m] then seen_m[m] = true; g.methods[#g.methods + 1] = m; g.cells[m] = {} end
      if not seen_d[d] then seen_d[d] = { name = d, title = r.title or d }; g.datasets[#g.datasets + 1] = seen_d[d] end
      if g.cells[m][d] then
        error(("%s: %s and %s both hold %s on %s; give one a distinct `method` in its config"):format(
          command or "table", g.cells[m][d].dir, r.dir, m, d), 0)
      end
      g.cells[m][d] = r
    end
  end
  local rank = {}
  for i, n in ipairs(ORDER) do rank[n] = i end
  local first = {}
  for i, d in ipairs(g.datasets) do first[d.name] = i end
  table.sort(g.datasets, function(a, b)
    local ra, rb = rank[a.name] or (#ORDER + first[a.name]), rank[b.name] or (#ORDER + first[b.name])
    return ra < rb
  end)
  return g
end

local function value_of(rec, task)
  if not rec then return nil end
  local v = rec[metric_of(task)]
  return is_num(v) and 100 * v or nil
end

local function partial(rec)
  local sel = rec and rec.selection
  return sel and sel.limit ~= nil and sel.limit ~= json.null and sel.limit < (sel.total or 0)
end

-- Row average over the datasets, when the row has every one of them.
local function row_average(g, m, task)
  local sum = 0
  for _, d in ipairs(g.datasets) do
    local v = value_of(g.cells[m][d.name], task)
    if not v then return nil end
    sum = sum + v
  end
  return sum / #g.datasets
end

function M.markdown(g, task)
  local metric = metric_label(task)
  local head, rule = { "| Method" }, { "| ---" }
  for _, d in ipairs(g.datasets) do head[#head + 1] = d.title; rule[#rule + 1] = "---:" end
  head[#head + 1], rule[#rule + 1] = "Avg.", "---:"
  local lines = { ("%s (%%)"):format(metric), "", table.concat(head, " | ") .. " |", table.concat(rule, " | ") .. " |" }
  local notes = {}
  for _, m in ipairs(g.methods) do
    local row = { "| " .. m }
    for _, d in ipairs(g.datasets) do
      local rec = g.cells[m][d.name]
      local v = value_of(rec, task)
      local cell = v and ("%.1f"):format(v) or "-"
      if v and partial(rec) then
        cell = cell .. "*"
        notes[#notes + 1] = ("%s on %s: first %d of %d images"):format(m, d.title, rec.selection.limit, rec.selection.total)
      end
      row[#row + 1] = cell
    end
    local avg = row_average(g, m, task)
    row[#row + 1] = avg and ("%.1f"):format(avg) or "-"
    lines[#lines + 1] = table.concat(row, " | ") .. " |"
  end
  if #notes > 0 then
    lines[#lines + 1] = ""
    for _, n in ipairs(notes) do lines[#lines + 1] = "\\* " .. n end
  end
  return table.concat(lines, "\n") .. "\n"
end

local function csv_field(s)
  s = tostring(s)
  if s:find('[,"\n]') then return '"' .. s:gsub('"', '""') .. '"' end
  return s
end

function M.csv(g, task)
  local head = { "method" }
  for _, d in ipairs(g.datasets) do head[#head + 1] = csv_field(d.name) end
  head[#head + 1] = "avg"
  local lines = { table.concat(head, ",") }
  for _, m in ipairs(g.methods) do
    local row = { csv_field(m) }
    for _, d in ipairs(g.datasets) do
      local v = value_of(g.cells[m][d.name], task)
      row[#row + 1] = v and ("%.2f"):format(v) or ""
    end
    local avg = row_average(g, m, task)
    row[#row + 1] = avg and ("%.2f"):format(avg) or ""
    lines[#lines + 1] = table.concat(row, ",")
  end
  return table.concat(lines, "\n") .. "\n"
end

function M.per_class_csv(recs)
  local lines = { "method,dataset,class_index,class,IoU,Acc" }
  for _, r in ipairs(recs) do
    if r.task == "semantic" then
      for c, name in ipairs(r.classes or {}) do
        local iou, acc = r.IoU[c], r.Acc[c]
        lines[#lines + 1] = table.concat({ csv_field(r.method or r.recipe), csv_field(r.dataset), c - 1, csv_field(name),
          is_num(iou) and ("%.2f"):format(100 * iou) or "nan", is_num(acc) and ("%.2f"):format(100 * acc) or "nan" }, ",")
      end
    end
  end
  return table.concat(lines, "\n") .. "\n"
end

-- ---- measured beside published ---------------------------------------------

-- { {method, dataset, title, measured, published, source}... } for the
-- cells of `g` that have a published number, in the table's order.
function M.published_pairs(g, task, book)
  local metric = metric_key(task)
  local pairs_ = {}
  if not published.METRICS[metric] then return pairs_ end
  for _, m in ipairs(g.methods) do
    for _, d in ipairs(g.datasets) do
      local v = value_of(g.cells[m][d.name], task)
      local p = v and published.lookup(m, d.name, metric, book)
      if p then
        pairs_[#pairs_ + 1] = { method = m, dataset = d.name, title = d.title, measured = v,
                                published = p.value, source = p.source }
      end
    end
  end
  return pairs_
end

-- "measured / published (difference)" per cell, and the sources.
function M.published_markdown(g, task, pairs_)
  local metric = metric_label(task)
  local cell, sources, order = {}, {}, {}
  for _, p in ipairs(pairs_) do
    cell[p.method] = cell[p.method] or {}
    cell[p.method][p.dataset] = ("%.1f / %.1f (%+.1f)"):format(p.measured, p.published, p.measured - p.published)
    if not sources[p.method] then sources[p.method] = p.source; order[#order + 1] = p.method end
  end
  local head, rule = { "| Method" }, { "| ---" }
  for _, d in ipairs(g.datasets) do head[#head + 1] = d.title; rule[#rule + 1] = "---:" end
  local lines = { ("%s (%%): measured / published (difference)"):format(metric), "",
                  table.concat(head, " | ") .. " |", table.concat(rule, " | ") .. " |" }
  for _, m in ipairs(order) do
    local row = { "| " .. m }
    for _, d in ipairs(g.datasets) do row[#row + 1] = cell[m][d.name] or "-" end
    lines[#lines + 1] = table.concat(row, " | ") .. " |"
  end
  lines[#lines + 1] = ""
  for _, m in ipairs(order) do lines[#lines + 1] = ("- %s: %s"):format(m, sources[m]) end
  return table.concat(lines, "\n") .. "\n"
end

-- ---- bar chart ----------------------------------------------------------------

-- Tableau's ten colours: distinguishable, and familiar from matplotlib.
local COLOURS = { { 31, 119, 180 }, { 255, 127, 14 }, { 44, 160, 44 }, { 214, 39, 40 }, { 148, 103, 189 },
                  { 140, 86, 75 }, { 227, 119, 194 }, { 127, 127, 127 }, { 188, 189, 34 }, { 23, 190, 207 } }

local function text_width(s, scale) return tonumber(C.fm_text_width(s, scale)) end

local function rect(img, x0, y0, x1, y1, rgb)
  check(C.fm_draw_rect(img, x0, y0, x1, y1, rgb[1], rgb[2], rgb[3]))
end

local function text(img, x, y, s, rgb, scale)
  C.fm_draw_text(img, x, y, s, scale or 1, rgb[1], rgb[2], rgb[3])
end

-- Grouped bars: one group per dataset, one bar per method; y in percent.
-- Returns an (H, W, 3) uint8 image.
function M.bar_chart(g, task)
  local metric = metric_label(task) .. " (%)"
  local nm = math.max(#g.methods, 1)
  local bar, gap, group_gap = 16, 2, 28
  local plot_h, left, top_pad, bottom = 260, 44, 16, 34
  local legend_rows = #g.methods
  local legend_h = legend_rows * 14 + 8
  -- y range: 0 .. the next multiple of 10 above every value
  local ymax = 10
  for _, m in ipairs(g.methods) do
    for _, d in ipairs(g.datasets) do
      local v = value_of(g.cells[m][d.name], task)
      if v then ymax = math.max(ymax, math.ceil(v / 10) * 10) end
    end
  end
  local groups, x = {}, left + group_gap / 2
  for i, d in ipairs(g.datasets) do
    local w = math.max(nm * (bar + gap), text_width(d.title, 1) + 6)
    groups[i] = { x = x, w = w }
    x = x + w + group_gap
  end
  local width = math.max(x, left + text_width(metric, 1) + 20, 200)
  local top = top_pad + legend_h
  local height = top + plot_h + bottom
  local img = T.full({ height, width, 3 }, 255, "uint8")
  local black, grey, light = { 0, 0, 0 }, { 90, 90, 90 }, { 225, 225, 225 }
  local y0 = top + plot_h   -- the baseline
  -- grid lines and y ticks every 10 %
  for v = 0, ymax, 10 do
    local y = y0 - math.floor(plot_h * v / ymax + 0.5)
    rect(img, left, y, width - 4, y + 1, v == 0 and black or light)
    local label = tostring(v)
    text(img, left - 6 - text_width(label, 1), y - 4, label, grey)
  end
  rect(img, left, top, left + 1, y0 + 1, black)
  text(img, 4, 4, metric, black)
  -- legend
  for i, m in ipairs(g.methods) do
    local y = top_pad + (i - 1) * 14
    local col = COLOURS[(i - 1) % #COLOURS + 1]
    rect(img, left, y, left + 10, y + 10, col)
    text(img, left + 16, y + 1, m, black)
  end
  -- bars
  for gi, d in ipairs(g.datasets) do
    local grp = groups[gi]
    local x_start = grp.x + math.floor((grp.w - nm * (bar + gap)) / 2)
    for i, m in ipairs(g.methods) do
      local v = value_of(g.cells[m][d.name], task)
      if v then
        local h = math.floor(plot_h * v / ymax + 0.5)
        local bx = x_start + (i - 1) * (bar + gap)
        rect(img, bx, y0 - h, bx + bar, y0, COLOURS[(i - 1) % #COLOURS + 1])
      end
    end
    text(img, grp.x + math.floor((grp.w - text_width(d.title, 1)) / 2), y0 + 10, d.title, black)
  end
  return img
end

-- ---- few-shot runs ---------------------------------------------------------------

-- Each benchmark's mean over its folds (COCO-20i's four, LVIS-92i's ten), per
-- method, when the grid holds every fold of it: the number the papers
-- report. "" when no benchmark is complete.
function M.fold_means_markdown(g, task)
  local folds = { coco20i = 4, lvis92i = 10 }
  local lines = {}
  for _, b in ipairs({ "coco20i", "lvis92i" }) do
    for _, m in ipairs(g.methods) do
      local seen, sum, n = {}, 0, 0
      for _, d in ipairs(g.datasets) do
        local r = g.cells[m][d.name]
        local v = value_of(r, task)
        if r and r.benchmark == b and v and type(r.fold) == "number" and not seen[r.fold] and not partial(r) then
          seen[r.fold], sum, n = true, sum + v, n + 1
        end
      end
      if n == folds[b] then
        lines[#lines + 1] = ("| %s | %s | %.1f |"):format(m, require("fmseg.eval.fewshot").TITLES[b], sum / n)
      end
    end
  end
  if #lines == 0 then return "" end
  table.insert(lines, 1, ("\n%s (%%), the mean over the folds\n\n| Method | Benchmark | Mean |\n| --- | --- | ---: |")
    :format(metric_label(task)))
  return table.concat(lines, "\n") .. "\n"
end

-- ---- interactive runs ------------------------------------------------------------

local function noc_of(rec, key)
  local v = rec and rec.NoC and rec.NoC[key]
  return is_num(v) and v or nil
end

-- NoC@85 / NoC@90 per method (rows) and dataset (columns), as the
-- interactive segmentation tables report them
function M.noc_markdown(g)
  local head, rule = { "| Method" }, { "| ---" }
  for _, d in ipairs(g.datasets) do head[#head + 1] = d.title; rule[#rule + 1] = "---:" end
  local lines = { "NoC@85 / NoC@90 (clicks; lower is better)", "",
                  table.concat(head, " | ") .. " |", table.concat(rule, " | ") .. " |" }
  for _, m in ipairs(g.methods) do
    local row = { "| " .. m }
    for _, d in ipairs(g.datasets) do
      local rec = g.cells[m][d.name]
      local a, b = noc_of(rec, "85"), noc_of(rec, "90")
      row[#row + 1] = (a and b) and ("%.2f / %.2f"):format(a, b) or "-"
    end
    lines[#lines + 1] = table.concat(row, " | ") .. " |"
  end
  return table.concat(lines, "\n") .. "\n"
end

function M.noc_csv(g)
  local lines = { "method,dataset,objects,NoC@80,NoC@85,NoC@90,over_max@85,over_max@90,mIoU@1,mIoU@5" }
  local function num(v, scale) return is_num(v) and ("%.2f"):format(v * (scale or 1)) or "" end
  for _, m in ipairs(g.methods) do
    for _, d in ipairs(g.datasets) do
      local r = g.cells[m][d.name]
      if r then
        local curve = r.mIoU_per_click or {}
        lines[#lines + 1] = table.concat({ csv_field(m), csv_field(d.name), tostring(r.objects or ""),
          num(noc_of(r, "80")), num(noc_of(r, "85")), num(noc_of(r, "90")),
          tostring(r.over_max and r.over_max["85"] or ""), tostring(r.over_max and r.over_max["90"] or ""),
          num(curve[1], 100), num(curve[5], 100) }, ",")
      end
    end
  end
  return table.concat(lines, "\n") .. "\n"
end

-- one line per (method, dataset): the mIoU after each click
function M.curve_chart(g)
  local series = {}
  for _, m in ipairs(g.methods) do
    for _, d in ipairs(g.datasets) do
      local r = g.cells[m][d.name]
      if r and r.mIoU_per_click and #r.mIoU_per_click > 0 then
        local values = {}
        for k, v in ipairs(r.mIoU_per_click) do values[k] = 100 * v end
        series[#series + 1] = { name = ("%s, %s"):format(m, d.title), values = values }
      end
    end
  end
  if #series == 0 then return nil end
  return require("fmseg.viz").line_chart(series, { title = "mIoU (%) per click", xlabel = "clicks" })
end

-- ---- fmseg table ----------------------------------------------------------------

local function write(path, s)
  fs.write_atomic(path, s)
end

-- Writes every file for the runs in `dirs` into `out`; returns the Markdown.
function M.command(dirs, out)
  local recs = M.load(dirs)
  fs.mkdir_p(out)
  local parts, written = {}, {}
  local compared, compared_csv = {}, { "task,method,dataset,measured,published,difference,source" }
  for _, spec in ipairs({ { task = "semantic", name = "miou" }, { task = "discovery", name = "corloc" },
                          { task = "oneshot", name = "oneshot_miou" }, { task = "referring", name = "oiou" },
                          { task = "fewshot", name = "fewshot_miou" },
                          { task = "fewshot", name = "fewshot_fbiou", metric = "fewshot_fbiou" } }) do
    local g = M.grid(recs, spec.task)
    if #g.methods > 0 then
      local task = spec.metric or spec.task       -- the table's metric (METRIC)
      local md = M.markdown(g, task)
      if spec.task == "fewshot" then md = md .. M.fold_means_markdown(g, task) end
      parts[#parts + 1] = md
      write(out .. "/" .. spec.name .. ".md", md)
      write(out .. "/" .. spec.name .. ".csv", M.csv(g, task))
      local png = out .. "/" .. spec.name .. ".png"
      local tmp = png .. ".tmp.png"
      image.save_png(tmp, M.bar_chart(g, task))
      os.rename(tmp, png)
      written[#written + 1] = spec.name .. ".{md,csv,png}"
      local pairs_ = M.published_pairs(g, task)
      if #pairs_ > 0 then
        compared[#compared + 1] = M.published_markdown(g, task, pairs_)
        for _, p in ipairs(pairs_) do
          compared_csv[#compared_csv + 1] = table.concat({ task, csv_field(p.method), csv_field(p.dataset),
            ("%.2f"):format(p.measured), ("%.2f"):format(p.published), ("%.2f"):format(p.measured - p.published),
            csv_field(p.source) }, ",")
        end
      end
    end
  end
  local ig = M.grid(recs, "interactive")
  if #ig.methods > 0 then
    local md = M.noc_markdown(ig)
    parts[#parts + 1] = md
    write(out .. "/noc.md", md)
    write(out .. "/noc.csv", M.noc_csv(ig))
    written[#written + 1] = "noc.{md,csv}"
    local chart = M.curve_chart(ig)
    if chart then
      fs.atomically(out .. "/miou_per_click.png", function(tmp) image.save_png(tmp, chart) end)
      written[#written + 1] = "miou_per_click.png"
    end
  end
  if #compared > 0 then
    local md = table.concat(compared, "\n")
    parts[#parts + 1] = md
    write(out .. "/published.md", md)
    write(out .. "/published.csv", table.concat(compared_csv, "\n") .. "\n")
    written[#written + 1] = "published.{md,csv}"
  end
  write(out .. "/per_class_iou.csv", M.per_class_csv(recs))
  written[#written + 1] = "per_class_iou.csv"
  parts[#parts + 1] = ("(written to %s: %s)\n"):format(out, table.concat(written, ", "))
  return table.concat(parts, "\n")
end

return M
