-- fmseg.eval.html_report — one self-contained HTML page for finished runs
-- (`fmseg report`): the metrics table (one row per run, ordered as
-- `fmseg table` groups them, beside the published number where
-- fmseg.eval.published knows one), per-class IoU bars, each run's confusion
-- matrix as a row-normalised heat map, its best and worst images by
-- per-image mIoU (box IoU for object discovery) with the prediction and the
-- ground truth over the picture, and the resolved config and versions.
--
--   local html_report = require("fmseg.eval.html_report")
--   local page, info = html_report.render({ "runs/sclip_voc21" }, { examples = 4, thumb = 256 })
--   html_report.command({ "runs/a", "runs/b" }, "report.html")
--
-- Nothing outside the file: CSS inline, charts as inline SVG, images as
-- data: URIs, no JavaScript. Every string from a run is escaped. The images
-- come from the dataset reader of each run's RUN_DIR/config.yaml; when the
-- data is no longer there the page says why instead of showing them.
local config = require("fmseg.io.config")
local core = require("fmseg.core")
local data = require("fmseg.eval.data")
local fs = require("fmseg.io.fs")
local image = require("fmseg.image")
local json = require("fmseg.io.json")
local nn = require("fmseg.nn")
local report = require("fmseg.eval.report")
local runs = require("fmseg.eval.runs")
local viz = require("fmseg.viz")
local C, check = core.C, core.check

local M = {}

M.DEFAULTS = { examples = 4, thumb = 256 }

-- the colours of pred/<id>.png and of the overlays; VOC's bit interleaving
-- goes on past 255, for ADE847's and Context459's classes
local PALETTE = viz.voc_palette(1024)

-- Tableau's ten colours, the run colours of the charts (as fmseg table's).
local COLOURS = { "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf" }

-- ---- text ------------------------------------------------------------------------

local ESCAPES = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }

-- Any value as HTML text (also safe inside a quoted attribute).
function M.escape(v)
  return (tostring(v):gsub("[&<>\"']", ESCAPES))
end
local esc = M.escape

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64C = {}
for i = 1, 64 do B64C[i - 1] = B64:sub(i, i) end

-- RFC 4648 base64 with padding.
function M.base64(s)
  local out, n = {}, #s
  for i = 1, n - 2, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + b * 256 + c
    out[#out + 1] = B64C[math.floor(v / 262144)] .. B64C[math.floor(v / 4096) % 64]
      .. B64C[math.floor(v / 64) % 64] .. B64C[v % 64]
  end
  local rest = n % 3
  if rest == 1 then
    local a = s:byte(n)
    out[#out + 1] = B64C[math.floor(a / 4)] .. B64C[a % 4 * 16] .. "=="
  elseif rest == 2 then
    local a, b = s:byte(n - 1, n)
    local v = a * 256 + b
    out[#out + 1] = B64C[math.floor(v / 1024)] .. B64C[math.floor(v / 16) % 64] .. B64C[v % 16 * 4] .. "="
  end
  return table.concat(out)
end

local function is_num(x) return type(x) == "number" and x == x end

-- A fraction as a percentage with two decimals ("-" when absent, "nan" when undefined).
local function pct(x)
  if x == nil or x == json.null then return "-" end
  if x ~= x then return "nan" end
  return ("%.2f"):format(100 * x)
end

local function num(x) return (("%.2f"):format(x):gsub("%.?0+$", "")) end   -- SVG coordinates

local function get(t, k) local v = t and t[k]; if v == json.null then return nil end; return v end

-- ---- the runs --------------------------------------------------------------------

local function dirname(path) return path:match("^(.*)/[^/]*$") or "." end

-- The directories holding a run's items and predictions: its own and, for a
-- run merged with -o from shards elsewhere, those of its shards.
local function item_dirs(rec)
  local dirs, seen = { rec.dir }, { [rec.dir] = true }
  for _, src in ipairs(get(rec, "merged_from") or {}) do
    local d = dirname(src)
    if not seen[d] then seen[d] = true; dirs[#dirs + 1] = d end
  end
  return dirs
end

-- ids of the item records under dir/items (ids may hold "/": Cityscapes' city folders).
local function list_items(dir)
  local ids = {}
  local base = dir .. "/items/"
  local p = io.popen(("find %s -type f -name '*.json' 2>/dev/null"):format(fs.quote(base)))
  for line in p:lines() do
    if line:sub(1, #base) == base then ids[#ids + 1] = line:sub(#base + 1, -6) end
  end
  p:close()
  table.sort(ids)
  return ids
end

-- The dataset of a run's resolved config, or nil and why it cannot be opened.
local function open_dataset(rec)
  local ok, ds = pcall(function()
    local cfg = config.load(rec.dir .. "/config.yaml")
    return data.open(cfg)
  end)
  if not ok then return nil, tostring(ds) end
  return ds
end

-- dataset_clusters: clusters.json as { class_of = {[cluster] = class}, segments = {[id] = {[segment] = cluster}} }.
local function cluster_index(clusters)
  local idx = { class_of = {}, segments = {} }
  for _, m in ipairs(clusters.match or {}) do idx.class_of[m[1]] = m[2] end
  for _, im in ipairs(clusters.images or {}) do
    local map = {}
    for _, s in ipairs(im.segments or {}) do map[s[1]] = s[2] end
    idx.segments[im.id] = map
  end
  return idx
end

-- An item's (class, segment) counts → (class, matched class) entries: segment 0 is in cluster 0
-- unless it has a box of its own, as runs.cluster_pass assigns them; nil for an unknown segment.
local function cluster_entries(item, idx)
  local seg_cluster = idx.segments[item.id] or {}
  local entries = {}
  for _, e in ipairs(item.hist or {}) do
    local c = seg_cluster[e[2]]
    if c == nil and e[2] == 0 then c = 0 end
    if c == nil then return nil end
    entries[#entries + 1] = { e[1], idx.class_of[c] or 0, e[3] }
  end
  return entries
end

-- One image's mIoU from its sparse (K, K + 1) entries, as mmseg's per-class IoU over the
-- classes in its ground truth or prediction (the last column, "no class", is no class).
function M.image_miou(entries, k)
  local tp, label, pred, seen = {}, {}, {}, {}
  for _, e in ipairs(entries) do
    local g, p, c = e[1], e[2], e[3]
    if g < k then                          -- row k: unlabelled pixels mmseg scores, predictions only
      label[g] = (label[g] or 0) + c
      seen[g] = true
      if g == p then tp[g] = (tp[g] or 0) + c end
    end
    if p < k then pred[p] = (pred[p] or 0) + c; seen[p] = true end
  end
  local sum, n = 0, 0
  for c in pairs(seen) do
    local union = (label[c] or 0) + (pred[c] or 0) - (tp[c] or 0)
    if union > 0 then sum, n = sum + (tp[c] or 0) / union, n + 1 end
  end
  return n > 0 and sum / n or 0 / 0
end

-- Each item of a run with its score: { id, score, item = record, dir = where it lives }.
local function scored_items(rec, ds)
  local keep
  if ds then
    -- the selection the run scored (--limit), when the dataset can say
    local sel = get(rec, "selection") or {}
    local last = math.min(get(sel, "limit") or #ds.items, #ds.items)
    keep = {}
    for i = 1, last do keep[ds.items[i].id] = i end
  end
  local clusters
  if rec.protocol == "dataset_clusters" then
    local cj = runs.read_json(rec.dir .. "/clusters.json")
    clusters = type(cj) == "table" and cluster_index(cj) or nil
  end
  local out, seen = {}, {}
  for _, dir in ipairs(item_dirs(rec)) do
    for _, id in ipairs(list_items(dir)) do
      if not seen[id] and (not keep or keep[id]) then
        seen[id] = true
        local item = runs.read_json(dir .. "/items/" .. id .. ".json")
        if type(item) == "table" then
          local score, entries
          if rec.task == "discovery" then
            score = tonumber(get(item, "iou"))
          else
            entries = item.entries
            if item.hist and clusters then entries = cluster_entries(item, clusters) end
            score = entries and M.image_miou(entries, get(rec.confusion or {}, "k") or #(rec.classes or {}))
          end
          if is_num(score) then
            out[#out + 1] = { id = id, score = score, item = item, dir = dir, index = keep and keep[id], entries = entries }
          end
        end
      end
    end
  end
  return out
end

-- The n best and the n worst (no image in both), ties by id.
local function best_and_worst(list, n)
  table.sort(list, function(a, b) return a.score > b.score or (a.score == b.score and a.id < b.id) end)
  local best, worst, taken = {}, {}, {}
  for i = 1, math.min(n, #list) do best[i] = list[i]; taken[list[i]] = true end
  for i = #list, 1, -1 do
    if #worst >= n then break end
    if not taken[list[i]] then worst[#worst + 1] = list[i] end
  end
  return best, worst
end

-- ---- images ------------------------------------------------------------------------

local function png_uri(img)
  local tmp = os.tmpname()
  local ok, err = pcall(image.save_png, tmp, img)
  local bytes = ok and fs.read(tmp)
  os.remove(tmp)
  if not bytes then error(("report: cannot encode a thumbnail: %s"):format(tostring(err)), 0) end
  return "data:image/png;base64," .. M.base64(bytes)
end

-- Thumbnail size of an h x w image: the longer side at most `side`.
local function thumb_size(h, w, side)
  local s = math.min(1, side / math.max(h, w))
  return math.max(1, math.floor(h * s + 0.5)), math.max(1, math.floor(w * s + 0.5))
end

local function resize_labels(labels, oh, ow)
  local h, w = labels:size(1), labels:size(2)
  if h == oh and w == ow then return labels:int() end
  local x = labels:float():reshape(1, 1, h, w)
  return nn.interpolate(x, oh, ow, { mode = "nearest" }):reshape(oh, ow):int()
end

local function outline(img, box, sx, sy, rgb)
  local h, w = img:size(1), img:size(2)
  local x0, y0 = math.floor(box[1] * sx), math.floor(box[2] * sy)
  local x1, y1 = math.max(x0 + 1, math.floor(box[3] * sx + 0.5)), math.max(y0 + 1, math.floor(box[4] * sy + 0.5))
  x0, y0, x1, y1 = math.max(0, x0), math.max(0, y0), math.min(w, x1), math.min(h, y1)
  local t = math.max(1, math.floor(math.min(h, w) / 96))
  for _, r in ipairs({ { x0, y0, x1, y0 + t }, { x0, y1 - t, x1, y1 }, { x0, y0, x0 + t, y1 }, { x1 - t, y0, x1, y1 } }) do
    check(C.fm_draw_rect(img, r[1], r[2], r[3], r[4], rgb[1], rgb[2], rgb[3]))
  end
end

-- The thumbnails of one scored image: { {label, uri}... }, or nil and why not.
local function example_images(rec, ds, ex, side)
  local i = ex.index
  if not i then return nil, "not in the dataset's selection" end
  local ok, res = pcall(function()
    local img = ds:image(i)
    local h, w = img:size(1), img:size(2)
    local th, tw = thumb_size(h, w, side)
    local small = (th == h and tw == w) and img or image.resize_pil(img, th, tw)
    local shots = { { "image", png_uri(small) } }
    if rec.task == "discovery" then
      local sx, sy = tw / w, th / h
      local boxed = small:clone()
      for _, b in ipairs(get(ex.item, "gt_boxes") or {}) do outline(boxed, b, sx, sy, { 0, 200, 0 }) end
      local pb = (get(ex.item, "boxes") or {})[1]
      if pb then outline(boxed, pb, sx, sy, { 230, 0, 0 }) end
      shots[#shots + 1] = { "boxes: prediction red, ground truth green", png_uri(boxed) }
      return shots
    end
    local pred_file = (rec.protocol == "dataset_clusters" and rec.dir or ex.dir) .. "/pred/" .. ex.id
    -- a 16-bit TIFF where the classes do not fit in a palette PNG (runs.lua)
    pred_file = pred_file .. ((fs.exists(pred_file .. ".tif") and not fs.exists(pred_file .. ".png")) and ".tif" or ".png")
    local pok, pred = pcall(image.load_labels, pred_file)
    if pok then
      shots[#shots + 1] = { "prediction", png_uri(viz.overlay(small, resize_labels(pred, th, tw), { palette = PALETTE })) }
    else
      shots[#shots + 1] = { "prediction missing: " .. pred_file }
    end
    local gt = ds:labels(i)
    shots[#shots + 1] = { "ground truth", png_uri(viz.overlay(small, resize_labels(gt, th, tw), { palette = PALETTE })) }
    return shots
  end)
  if not ok then return nil, tostring(res) end
  return res
end

-- ---- SVG ----------------------------------------------------------------------------

local CHAR_W = 7   -- px per character of the 12px labels, generous

local function text_w(s) return #tostring(s) * CHAR_W end

-- Per-class IoU of several runs on one dataset: a row per class, a bar per run.
local function class_bars(group)
  local names = group.classes
  local nr = #group.runs
  local label_w = 12
  for _, n in ipairs(names) do label_w = math.max(label_w, text_w(n) + 12) end
  local plot_w, bar_h = 420, 12
  local row_h = nr * bar_h + 8
  local legend_h = nr > 1 and (nr * 16 + 6) or 0
  local top = legend_h + 22
  local width, height = label_w + plot_w + 60, top + #names * row_h + 8
  local s = { ('<svg class="classbars" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img">'):format(
    width, height) }
  for i, r in ipairs(group.runs) do
    if nr > 1 then
      local y = (i - 1) * 16 + 4
      s[#s + 1] = ('<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>'):format(
        label_w, y, r.colour, label_w + 18, y + 10, esc(r.label))
    end
  end
  for v = 0, 100, 20 do
    local x = label_w + plot_w * v / 100
    s[#s + 1] = ('<line x1="%s" y1="%d" x2="%s" y2="%d" stroke="%s"/><text x="%s" y="%d" text-anchor="middle" '
      .. 'class="tick">%d</text>'):format(num(x), top - 4, num(x), height - 8, v == 0 and "#444" or "#ddd", num(x),
      top - 8, v)
  end
  for c, name in ipairs(names) do
    local y0 = top + (c - 1) * row_h + 4
    s[#s + 1] = ('<text x="%d" y="%d" text-anchor="end" class="cls">%s</text>'):format(label_w - 6,
      y0 + math.floor(nr * bar_h / 2) + 4, esc(name))
    for i, r in ipairs(group.runs) do
      local iou = get(r.rec.IoU or {}, c)
      local y = y0 + (i - 1) * bar_h
      local tip = ("%s, %s: IoU %s"):format(name, r.label, pct(iou))
      if is_num(iou) then
        local w = plot_w * iou
        s[#s + 1] = ('<rect class="bar" x="%d" y="%d" width="%s" height="%d" fill="%s"><title>%s</title></rect>'
          .. '<text x="%s" y="%d" class="val">%s</text>'):format(label_w, y, num(w), bar_h - 2, r.colour, esc(tip),
          num(label_w + w + 4), y + bar_h - 3, pct(iou))
      else
        s[#s + 1] = ('<text x="%d" y="%d" class="val na"><title>%s</title>n/a</text>'):format(label_w + 4,
          y + bar_h - 3, esc(tip .. " (absent from ground truth and prediction)"))
      end
    end
  end
  s[#s + 1] = "</svg>"
  return table.concat(s, "\n")
end

-- white → dark blue (matplotlib's Blues ends)
local function heat(v)
  local function ch(a, b) return math.floor(a + (b - a) * v + 0.5) end
  return ("#%02x%02x%02x"):format(ch(247, 8), ch(251, 48), ch(255, 107))
end

-- The row-normalised (K, K + 1) confusion of a run: rows ground truth,
-- columns prediction, the last column labelled pixels given no class.
local function heat_map(rec, run_no)
  local k, names = rec.confusion.k, rec.classes or {}
  local rows = {}
  for g = 0, k - 1 do rows[g] = 0 end
  for _, e in ipairs(rec.confusion.entries or {}) do
    if e[1] < k then rows[e[1]] = rows[e[1]] + e[3] end    -- row k (scored unlabelled pixels) not drawn
  end
  local cols = {}
  for j = 1, k do cols[j] = names[j] or ("class " .. (j - 1)) end
  cols[k + 1] = "(no class)"
  local cs = math.max(8, math.min(28, math.floor(720 / (k + 1))))
  local label_w = 12
  for _, n in ipairs(cols) do label_w = math.max(label_w, text_w(n) + 10) end
  local fs_px = math.min(12, math.max(7, cs - 2))
  local left, top = label_w + 18, label_w + 18
  local width, height = math.max(left + (k + 1) * cs + 10, left + 200), top + k * cs + 50
  local s = { ('<svg class="heatmap" data-run="%d" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
    .. 'role="img" font-size="%d">'):format(run_no, width, height, fs_px) }
  s[#s + 1] = ('<text x="%d" y="12" class="axis">prediction</text>'):format(left)
  s[#s + 1] = ('<text x="12" y="%d" class="axis" transform="rotate(-90 12 %d)" text-anchor="end">ground truth</text>')
    :format(top, top)
  s[#s + 1] = ('<rect x="%d" y="%d" width="%d" height="%d" fill="#fcfcfc" stroke="#ccc"/>'):format(left, top,
    (k + 1) * cs, k * cs)
  for j, n in ipairs(cols) do
    local x = left + (j - 1) * cs + math.floor(cs / 2) + 3
    s[#s + 1] = ('<text x="%d" y="%d" transform="rotate(-90 %d %d)">%s</text>'):format(x, top - 4, x, top - 4, esc(n))
  end
  for g = 0, k - 1 do
    s[#s + 1] = ('<text x="%d" y="%d" text-anchor="end">%s</text>'):format(left - 4,
      top + g * cs + math.floor(cs / 2) + 3, esc(cols[g + 1]))
  end
  for _, e in ipairs(rec.confusion.entries or {}) do
    local g, p, c = e[1], e[2], e[3]
    if c > 0 and g < k and rows[g] > 0 then
      local v = c / rows[g]
      local x, y = left + p * cs, top + g * cs
      local tip = ("ground truth %s, predicted %s: %s%% of its pixels (%d)"):format(cols[g + 1], cols[p + 1],
        pct(v), c)
      s[#s + 1] = ('<rect class="cell" data-gt="%d" data-pred="%d" x="%d" y="%d" width="%d" height="%d" fill="%s">'
        .. '<title>%s</title></rect>'):format(g, p, x, y, cs, cs, heat(v), esc(tip))
      if cs >= 22 and v >= 0.005 then
        s[#s + 1] = ('<text x="%d" y="%d" text-anchor="middle" fill="%s" font-size="9">%d</text>'):format(
          x + math.floor(cs / 2), y + math.floor(cs / 2) + 3, v > 0.5 and "#fff" or "#000", math.floor(100 * v + 0.5))
      end
    end
  end
  -- the colour scale
  local ly = top + k * cs + 16
  s[#s + 1] = ('<defs><linearGradient id="heat%d"><stop offset="0" stop-color="%s"/><stop offset="1" '
    .. 'stop-color="%s"/></linearGradient></defs>'):format(run_no, heat(0), heat(1))
  s[#s + 1] = ('<rect x="%d" y="%d" width="160" height="10" fill="url(#heat%d)" stroke="#ccc"/>'):format(left, ly,
    run_no)
  s[#s + 1] = ('<text x="%d" y="%d" font-size="11">0%%</text><text x="%d" y="%d" font-size="11" text-anchor="end">'
    .. '100%% of the row</text>'):format(left, ly + 24, left + 160, ly + 24)
  s[#s + 1] = "</svg>"
  return table.concat(s, "\n")
end

-- ---- published numbers ----------------------------------------------------------------

-- ---- the page -------------------------------------------------------------------------

local CSS = [[
body { font: 14px/1.4 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin-top: 20px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num, td.pub, td.delta { text-align: right; font-variant-numeric: tabular-nums; }
td.delta.neg { color: #b00; } td.delta.pos { color: #070; }
.note { color: #666; font-size: 13px; } .warn { color: #a40; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 8px; overflow: auto; font-size: 12px; }
svg text { font: 12px sans-serif; fill: #222; } svg .tick, svg .val { font-size: 10px; fill: #555; }
svg .axis { font-weight: bold; } svg .na { fill: #999; }
.scroll { overflow: auto; max-width: 100%; }
.examples { display: flex; flex-wrap: wrap; gap: 12px; }
figure.example { margin: 0; border: 1px solid #ddd; padding: 6px; }
figure.example img { image-rendering: pixelated; display: inline-block; vertical-align: top; margin: 2px; }
figcaption { font-size: 13px; margin-bottom: 4px; }
.legend { font-size: 12px; max-width: 420px; }
.swatch { display: inline-block; width: 10px; height: 10px; border: 1px solid #888; margin: 0 3px 0 6px; }
span.shot { display: inline-block; text-align: center; font-size: 11px; color: #555; vertical-align: top; }
]]

local function run_label(rec) return ("%s on %s"):format(rec.method or rec.recipe or "?", rec.title or rec.dataset or "?") end

-- Runs in `fmseg table`'s order: semantic then discovery, by method, then by dataset.
local function ordered(recs)
  local out = {}
  for _, task in ipairs({ "semantic", "discovery" }) do
    local g = report.grid(recs, task, "report")
    for _, m in ipairs(g.methods) do
      for _, d in ipairs(g.datasets) do
        if g.cells[m][d.name] then out[#out + 1] = g.cells[m][d.name] end
      end
    end
  end
  for _, r in ipairs(recs) do
    if r.task ~= "semantic" and r.task ~= "discovery" then
      error(("report: %s/metrics.json: task %s; the HTML report covers semantic and discovery runs, "
        .. "`fmseg table` tabulates this one"):format(r.dir, tostring(r.task)), 0)
    end
  end
  return out
end

local function selection_note(rec)
  local sel = get(rec, "selection") or {}
  local limit = get(sel, "limit")
  if limit and limit < (get(sel, "total") or 0) then
    return ("first %d of %d images"):format(limit, sel.total)
  end
  return nil
end

-- The metrics table; returns its HTML and whether any published number was shown.
local function metrics_table(list, lookup)
  local any_disc, any_sem = false, false
  for _, r in ipairs(list) do
    if r.task == "discovery" then any_disc = true else any_sem = true end
  end
  local pubs, any_pub = {}, false
  for i, r in ipairs(list) do
    if lookup then
      local metric = r.task == "discovery" and "corloc" or "miou"
      local p = lookup(r.method or r.recipe, r.dataset, metric)
      if type(p) == "table" and is_num(tonumber(p.value)) then pubs[i] = p; any_pub = true end
    end
  end
  local head = { "#", "Method", "Dataset", "Images" }
  if any_sem then for _, h in ipairs({ "aAcc", "mIoU", "mAcc" }) do head[#head + 1] = h end end
  if any_disc then head[#head + 1] = "CorLoc" end
  if any_pub then head[#head + 1] = "Published"; head[#head + 1] = "&Delta; (measured &minus; published)" end
  local s = { '<table class="metrics"><thead><tr>' }
  for _, h in ipairs(head) do s[#s + 1] = "<th>" .. h .. "</th>" end
  s[#s + 1] = "</tr></thead><tbody>"
  for i, r in ipairs(list) do
    local note = selection_note(r)
    s[#s + 1] = ('<tr data-run="%d"><td><a href="#run-%d">%d</a></td><td class="method">%s</td><td class="dataset">%s</td>'
      .. '<td class="images">%s</td>'):format(i, i, i, esc(r.method or r.recipe or "?"),
      esc(r.title or r.dataset or "?"), esc(tostring(r.images or "?") .. (note and (" (" .. note .. ")") or "")))
    if any_sem then
      local sem = r.task == "semantic"
      s[#s + 1] = ('<td class="num aacc">%s</td><td class="num miou">%s</td><td class="num macc">%s</td>'):format(
        sem and pct(r.aAcc) or "", sem and pct(r.mIoU) or "", sem and pct(r.mAcc) or "")
    end
    if any_disc then
      s[#s + 1] = ('<td class="num corloc">%s</td>'):format(r.task == "discovery" and pct(r.CorLoc) or "")
    end
    if any_pub then
      local p = pubs[i]
      if p then
        local measured = r.task == "discovery" and r.CorLoc or r.mIoU
        local d = is_num(measured) and 100 * measured - tonumber(p.value) or nil
        s[#s + 1] = ('<td class="pub">%s <span class="note">(%s)</span></td><td class="delta %s">%s</td>'):format(
          esc(("%g"):format(tonumber(p.value))), esc(p.source or "published"), d and (d < 0 and "neg" or "pos") or "",
          d and ("%+.2f"):format(d) or "-")
      else
        s[#s + 1] = '<td class="pub">-</td><td class="delta">-</td>'
      end
    end
    s[#s + 1] = "</tr>"
  end
  s[#s + 1] = "</tbody></table>"
  return table.concat(s)
end

-- The survey-style methods x datasets table (fmseg table's miou.md / corloc.md) of several runs.
local function grid_tables(recs)
  local s = {}
  for _, task in ipairs({ "semantic", "discovery" }) do
    local g = report.grid(recs, task, "report")
    if #g.methods > 0 and (#g.methods > 1 or #g.datasets > 1) then
      s[#s + 1] = ("<h3>%s (%%), methods &times; datasets</h3>"):format(task == "discovery" and "CorLoc" or "mIoU")
      s[#s + 1] = '<table class="grid"><thead><tr><th>Method</th>'
      for _, d in ipairs(g.datasets) do s[#s + 1] = "<th>" .. esc(d.title) .. "</th>" end
      s[#s + 1] = "</tr></thead><tbody>"
      for _, m in ipairs(g.methods) do
        s[#s + 1] = "<tr><td>" .. esc(m) .. "</td>"
        for _, d in ipairs(g.datasets) do
          local r = g.cells[m][d.name]
          local v = r and (task == "discovery" and r.CorLoc or r.mIoU)
          s[#s + 1] = '<td class="num">' .. (is_num(v) and ("%.1f"):format(100 * v) or "-") .. "</td>"
        end
        s[#s + 1] = "</tr>"
      end
      s[#s + 1] = "</tbody></table>"
    end
  end
  return table.concat(s, "\n")
end

-- Semantic runs grouped by dataset (and class list) for the per-class bars.
local function class_groups(list)
  local groups, by_key = {}, {}
  for i, r in ipairs(list) do
    if r.task == "semantic" and type(r.classes) == "table" then
      local key = (r.dataset or "?") .. "\0" .. table.concat(r.classes, "\0")
      local g = by_key[key]
      if not g then
        g = { title = r.title or r.dataset or "?", classes = r.classes, runs = {} }
        by_key[key] = g
        groups[#groups + 1] = g
      end
      g.runs[#g.runs + 1] = { rec = r, label = ("#%d %s"):format(i, r.method or r.recipe or "?"),
                              colour = COLOURS[(i - 1) % #COLOURS + 1] }
    end
  end
  return groups
end

local function kv_table(rows)
  local s = { '<table class="kv">' }
  for _, kv in ipairs(rows) do
    if kv[2] ~= nil then s[#s + 1] = ("<tr><th>%s</th><td>%s</td></tr>"):format(esc(kv[1]), esc(kv[2])) end
  end
  s[#s + 1] = "</table>"
  return table.concat(s)
end

local function run_details(rec)
  local run = runs.read_json(rec.dir .. "/run.json") or {}
  local sel = get(rec, "selection") or {}
  local merged = get(rec, "merged_from")
  return kv_table({
    { "run directory", rec.dir },
    { "fmseg version (run.json)", get(run, "fmseg_version") or get(rec, "fmseg_version") or "?" },
    { "config file", get(run, "config_file") or get(rec, "config_file") },
    { "created", get(run, "created") },
    { "recipe", get(rec, "recipe") },
    { "method", get(rec, "method") },
    { "dataset", ("%s (%s)"):format(rec.title or "?", rec.dataset or "?") },
    { "task", rec.task },
    { "protocol", get(rec, "protocol") },
    { "images", ("%s of %s in the split%s"):format(tostring(rec.images or "?"), tostring(get(sel, "total") or "?"),
      get(sel, "limit") and (", --limit " .. sel.limit) or "") },
    { "seconds (sum over images)", is_num(rec.seconds) and ("%.1f"):format(rec.seconds) or nil },
    { "merged from", merged and table.concat(merged, ", ") or nil },
  })
end

-- The classes in an image's ground truth or prediction, with the overlays' colours.
local function legend(rec, ex)
  if not ex.entries then return "" end
  local k, present, list = get(rec.confusion or {}, "k") or #(rec.classes or {}), {}, {}
  for _, e in ipairs(ex.entries) do
    present[e[1]] = true
    if e[2] < k then present[e[2]] = true end
  end
  for c in pairs(present) do list[#list + 1] = c end
  table.sort(list)
  local s = { '<div class="legend">' }
  for _, c in ipairs(list) do
    local r, g, b = PALETTE[3 * c + 1], PALETTE[3 * c + 2], PALETTE[3 * c + 3]
    s[#s + 1] = ('<span class="swatch" style="background:#%02x%02x%02x"></span>%s '):format(r, g, b,
      esc((rec.classes or {})[c + 1] or ("class " .. c)))
  end
  s[#s + 1] = "</div>"
  return table.concat(s)
end

local function examples_section(rec, opts, info)
  local n = opts.examples
  if n <= 0 then return "" end
  local by = rec.task == "discovery" and "box IoU (the first predicted box against the best-matching ground-truth box)"
    or "per-image mIoU (mean IoU over the classes in the image's ground truth or prediction, ignored pixels left out)"
  local ds, why = open_dataset(rec)
  local list = scored_items(rec, ds)
  local s = { ("<h3>Best and worst images by %s</h3>"):format(esc(by)) }
  if #list == 0 then
    s[#s + 1] = '<p class="warn">No per-image record could be scored under ' .. esc(rec.dir) .. "/items.</p>"
    return table.concat(s, "\n")
  end
  if #list ~= (rec.images or #list) then
    s[#s + 1] = ('<p class="warn">%d image records found; the run scored %s.</p>'):format(#list, tostring(rec.images))
  end
  if not ds then
    s[#s + 1] = '<p class="warn">The images are not shown: the dataset cannot be opened from the run\'s config ('
      .. esc(why) .. ").</p>"
  end
  local best, worst = best_and_worst(list, n)
  local metric = rec.task == "discovery" and "IoU" or "mIoU"
  for _, part in ipairs({ { "best", best }, { "worst", worst } }) do
    s[#s + 1] = ('<h4>%s %d</h4><div class="examples %s">'):format(part[1] == "best" and "Best" or "Worst",
      #part[2], part[1])
    for rank, ex in ipairs(part[2]) do
      s[#s + 1] = ('<figure class="example" data-id="%s" data-rank="%d"><figcaption>%s &mdash; %s %s%%</figcaption>')
        :format(esc(ex.id), rank, esc(ex.id), metric, pct(ex.score))
      if ds then
        local shots, err = example_images(rec, ds, ex, opts.thumb)
        if shots then
          for _, sh in ipairs(shots) do
            if sh[2] then
              s[#s + 1] = ('<span class="shot"><img src="%s" alt="%s %s"><br>%s</span>'):format(sh[2], esc(ex.id),
                esc(sh[1]), esc(sh[1]))
              info.images = info.images + 1
            else
              s[#s + 1] = '<p class="warn">' .. esc(sh[1]) .. "</p>"
            end
          end
        else
          s[#s + 1] = '<p class="warn">not shown: ' .. esc(err) .. "</p>"
        end
      end
      s[#s + 1] = legend(rec, ex)
      s[#s + 1] = "</figure>"
    end
    s[#s + 1] = "</div>"
  end
  return table.concat(s, "\n")
end

local function run_section(i, rec, opts, info)
  local s = { ('<section class="run" id="run-%d"><h2>#%d %s</h2>'):format(i, i, esc(run_label(rec))) }
  local note = selection_note(rec)
  if note then s[#s + 1] = '<p class="warn">A partial evaluation: ' .. esc(note) .. ".</p>" end
  s[#s + 1] = run_details(rec)
  if rec.task == "semantic" and type(rec.confusion) == "table" then
    s[#s + 1] = "<h3>Confusion matrix</h3>"
    s[#s + 1] = '<p class="note">Rows: ground-truth class; columns: predicted class (the last, labelled pixels that '
      .. "got no class); each row divided by its pixels. Hover a cell for its share and count.</p>"
    s[#s + 1] = '<div class="scroll">' .. heat_map(rec, i) .. "</div>"
  elseif rec.task == "discovery" then
    s[#s + 1] = ("<p>CorLoc %s%%: %s of %s images with IoU &ge; 0.5.</p>"):format(pct(rec.CorLoc),
      esc(rec.correct or "?"), esc(rec.total or "?"))
  end
  s[#s + 1] = examples_section(rec, opts, info)
  local cfg_text = fs.read(rec.dir .. "/config.yaml")
  s[#s + 1] = "<h3>Resolved config (config.yaml)</h3>"
  s[#s + 1] = cfg_text and ('<pre class="config">' .. esc(cfg_text) .. "</pre>")
    or ('<p class="warn">' .. esc(rec.dir) .. "/config.yaml cannot be read.</p>")
  s[#s + 1] = "</section>"
  return table.concat(s, "\n")
end

-- The page for the runs in `dirs`. opts: examples (best and worst images shown per run), thumb (px,
-- the longer side). Returns the HTML and { runs = n, images = thumbnails embedded }.
function M.render(dirs, opts)
  opts = opts or {}
  opts = { examples = opts.examples or M.DEFAULTS.examples, thumb = opts.thumb or M.DEFAULTS.thumb }
  local recs = report.load(dirs, "report")
  local list = ordered(recs)
  -- looked up at each call, so that a test can stand in for the module
  local lookup = require("fmseg.eval.published").lookup
  local info = { runs = #list, images = 0 }
  local title = #list == 1 and run_label(list[1]) or ("%d runs"):format(#list)
  local s = { "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
    "<title>fmseg report: " .. esc(title) .. "</title>", "<style>" .. CSS .. "</style></head><body>",
    "<h1>fmseg report: " .. esc(title) .. "</h1>",
    ('<p class="note">Written by fmseg %s on %s. Numbers in percent.</p>'):format(esc(require("fmseg").version()),
      esc(os.date("!%Y-%m-%d %H:%M UTC"))) }
  s[#s + 1] = '<h2 id="metrics">Metrics</h2>'
  s[#s + 1] = metrics_table(list, lookup)
  if #list > 1 then s[#s + 1] = grid_tables(recs) end
  local groups = class_groups(list)
  if #groups > 0 then
    s[#s + 1] = '<h2 id="per-class">Per-class IoU</h2>'
    for _, g in ipairs(groups) do
      s[#s + 1] = "<h3>" .. esc(g.title) .. "</h3>"
      s[#s + 1] = '<div class="scroll">' .. class_bars(g) .. "</div>"
    end
  end
  for i, r in ipairs(list) do s[#s + 1] = run_section(i, r, opts, info) end
  s[#s + 1] = "</body></html>"
  return table.concat(s, "\n") .. "\n", info
end

-- Writes the page to `out`; returns a line saying what was written.
function M.command(dirs, out, opts)
  local page, info = M.render(dirs, opts)
  local dir = dirname(out)
  if dir ~= "." then fs.mkdir_p(dir) end
  fs.write_atomic(out, page)
  return ("written to %s: %d run%s, %d images, %d KiB\n"):format(out, info.runs, info.runs == 1 and "" or "s",
    info.images, math.ceil(#page / 1024))
end

return M
