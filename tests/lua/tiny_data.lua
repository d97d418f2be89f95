-- tiny_data.lua — writes tiny datasets in the exact public layouts for the
-- data and evaluation tests (test_data.lua, test_eval.lua).
local T = require("fmseg.tensor")
local image = require("fmseg.image")
local viz = require("fmseg.viz")

local M = {}

local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

function M.sh(cmd)
  local rc = os.execute(cmd)
  return rc == 0 or rc == true
end

-- Runs a shell command: its exit code and its stdout and stderr together.
function M.run(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("rc=(%d+)%s*$")), (out:gsub("rc=%d+%s*$", ""))
end

function M.tmpdir(tag)
  local p = io.popen("mktemp -d /tmp/fmseg_" .. (tag or "test") .. "_XXXXXX")
  local dir = p:read("*l")
  p:close()
  return dir
end

function M.rm(dir) M.sh("rm -rf " .. quote(dir)) end

function M.mkdir(dir) M.sh("mkdir -p " .. quote(dir)) end

local function dirname(path) return path:match("^(.*)/[^/]*$") or "." end

function M.write(path, text)
  M.mkdir(dirname(path))
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

M.read = require("fmseg.io.fs").read

-- A 0-based row-major Lua array of h*w values → (H, W) int32 tensor.
function M.grid(h, w, values)
  local t = T.new({ h, w }, "int32")
  local p = t:ptr()
  for i = 0, h * w - 1 do p[i] = values[i] end
  return t
end

-- The test recipe's image: red = 10 * predicted class (255 unlabelled),
-- green = 200 inside the object box, blue = segment id.
function M.paint(h, w, pred, seg, inside)
  local img = T.new({ h, w, 3 }, "uint8")
  local p = img:ptr()
  for i = 0, h * w - 1 do
    local c = pred and pred[i] or 0
    p[3 * i] = c == 255 and 255 or 10 * c
    p[3 * i + 1] = (inside and inside(i % w, math.floor(i / w))) and 200 or 0
    p[3 * i + 2] = seg and seg[i] or 0
  end
  return img
end

-- layout: { images, image_suffix, annotations, annotation_suffix, split,
-- grey (annotations as grey PNGs rather than palette PNGs) };
-- items: { {id, img = (H, W, 3) u8, gt = (H, W) int32 or xml = text}... }
function M.write_layout(root, layout, items)
  local ids = {}
  for _, it in ipairs(items) do
    ids[#ids + 1] = it.id
    local ipath = root .. "/" .. layout.images .. "/" .. it.id .. layout.image_suffix
    M.mkdir(dirname(ipath))
    if layout.image_suffix:match("%.jpg$") then image.save_jpg(ipath, it.img, 95) else image.save_png(ipath, it.img) end
    local apath = root .. "/" .. layout.annotations .. "/" .. it.id .. layout.annotation_suffix
    M.mkdir(dirname(apath))
    if it.xml then
      M.write(apath, it.xml)
    elseif layout.grey then
      image.save_png(apath, it.gt:byte():reshape(it.gt:size(1), it.gt:size(2), 1))
    else
      viz.save_labels(apath, it.gt)
    end
  end
  if layout.split then M.write(root .. "/" .. layout.split, table.concat(ids, "\n") .. "\n") end
end

-- A VOC detection annotation with objects { {name, box = {xmin, ymin, xmax,
-- ymax} (1-based, inclusive), truncated, difficult} ... }.
function M.voc_xml(id, w, h, objects)
  local out = { "<annotation>", "  <folder>VOC2007</folder>", "  <filename>" .. id .. ".jpg</filename>",
    ("  <size><width>%d</width><height>%d</height><depth>3</depth></size>"):format(w, h) }
  for _, o in ipairs(objects) do
    out[#out + 1] = "  <object>"
    out[#out + 1] = "    <name>" .. o.name .. "</name>"
    out[#out + 1] = "    <pose>Unspecified</pose>"
    out[#out + 1] = ("    <truncated>%d</truncated>"):format(o.truncated and 1 or 0)
    out[#out + 1] = ("    <difficult>%d</difficult>"):format(o.difficult and 1 or 0)
    out[#out + 1] = ("    <bndbox>\n      <xmin>%d</xmin>\n      <ymin>%d</ymin>\n"
                     .. "      <xmax>%d</xmax>\n      <ymax>%d</ymax>\n    </bndbox>"):format(
      o.box[1], o.box[2], o.box[3], o.box[4])
    out[#out + 1] = "  </object>"
  end
  out[#out + 1] = "</annotation>"
  return table.concat(out, "\n") .. "\n"
end

-- Deterministic integers in [lo, hi].
function M.rng(seed)
  local s = seed
  return function(lo, hi)
    s = (s * 1103515245 + 12345) % 2147483648
    return lo + math.floor(s / 2147483648 * (hi - lo + 1))
  end
end

-- mmseg's intersect_and_union counted directly, the naive twin of the
-- confusion tables: items { {gt = {[i] = label}, pred = {[i] = label}, n =
-- pixels}, ... } (0-based arrays), k classes, gt == ignore skipped; as its
-- histc, labels and predictions outside 0..k-1 are counted nowhere (a
-- label 65535 with ignore 255 still counts its prediction); `fill`
-- replacing an unlabelled (255) prediction when given.
function M.direct_metrics(items, k, ignore, fill)
  local ev = require("fmseg.eval")
  local inter, area_pred, area_label = {}, {}, {}
  for c = 0, k - 1 do inter[c], area_pred[c], area_label[c] = 0, 0, 0 end
  for _, t in ipairs(items) do
    for i = 0, t.n - 1 do
      local g, p = t.gt[i], t.pred[i]
      if p == 255 and fill then p = fill end
      if g ~= ignore then
        if g >= 0 and g < k then area_label[g] = area_label[g] + 1 end
        if p >= 0 and p < k then area_pred[p] = area_pred[p] + 1 end
        if p == g and g >= 0 and g < k then inter[g] = inter[g] + 1 end
      end
    end
  end
  local iou, acc, si, sl = {}, {}, 0, 0
  for c = 0, k - 1 do
    local union = area_pred[c] + area_label[c] - inter[c]
    iou[c + 1] = union > 0 and inter[c] / union or 0 / 0
    acc[c + 1] = area_label[c] > 0 and inter[c] / area_label[c] or 0 / 0
    si, sl = si + inter[c], sl + area_label[c]
  end
  return { IoU = iou, Acc = acc, aAcc = si / sl, mIoU = ev.nanmean(iou), mAcc = ev.nanmean(acc) }
end

-- Whether a run's metrics record `got` equals `want` (direct_metrics'):
-- aAcc, mIoU, mAcc and every class's IoU and Acc within 1e-12 (NaN equal
-- to NaN, JSON null read as NaN). → true, or false and what differs.
function M.same_metrics(got, want)
  local json = require("fmseg.io.json")
  if not got then return false, "no metrics.json" end
  local function near(a, b)
    if a ~= a or b ~= b then return a ~= a and b ~= b end
    return math.abs(a - b) <= 1e-12
  end
  local function num(v) return v == json.null and 0 / 0 or v end
  for _, key in ipairs({ "aAcc", "mIoU", "mAcc" }) do
    if not near(got[key], want[key]) then
      return false, ("%s: got %s, want %s"):format(key, tostring(got[key]), tostring(want[key]))
    end
  end
  if #got.IoU ~= #want.IoU then return false, ("%d IoU values, want %d"):format(#got.IoU, #want.IoU) end
  for c = 1, #want.IoU do
    local g, a = num(got.IoU[c]), num(got.Acc[c])
    if not near(g, want.IoU[c]) or not near(a, want.Acc[c]) then
      return false, ("class %d: IoU %s want %s, Acc %s want %s"):format(c - 1, tostring(g), tostring(want.IoU[c]),
                                                                       tostring(a), tostring(want.Acc[c]))
    end
  end
  return true
end

return M
