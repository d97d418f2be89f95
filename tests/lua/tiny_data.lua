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

return M
