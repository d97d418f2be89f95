-- test_colors — a test-only recipe that reads its answer from the image, so
-- the evaluation harness can be checked end to end without model weights.
-- The tests paint what they want predicted: the red channel holds
-- 10 * class (255: unlabelled), the blue channel a segment id, and green
-- >= 128 marks the object whose bounding box object discovery reports.
--   mode: semantic | segments | instances | boxes
--   sleep: seconds to wait per image (lets a test kill a run mid-way)
local T = require("fmseg.tensor")
local ffi = require("ffi")

-- Not os.execute("sleep"): system() ignores SIGINT while its child runs,
-- and the fault tests send SIGINT during these waits.
pcall(ffi.cdef, [[
typedef struct { long tv_sec, tv_nsec; } test_colors_timespec;
int nanosleep(const test_colors_timespec *req, test_colors_timespec *rem);
]])
local function nanosleep(seconds)
  local ts = ffi.new("test_colors_timespec", math.floor(seconds), math.floor(seconds % 1 * 1e9))
  ffi.C.nanosleep(ts, nil)   -- a signal ends it early; the image then finishes at once
end

local function channel(img, c)
  return img:select(3, c):contiguous()
end

local function semantic(img)
  local r = channel(img, 1)
  local h, w = r:size(1), r:size(2)
  local out = T.new({ h, w }, "int32")
  local src, dst = r:ptr(), out:ptr()
  for i = 0, h * w - 1 do
    local v = src[i]
    dst[i] = v == 255 and 255 or math.floor(v / 10)
  end
  return out
end

local function bbox(img)
  local g = channel(img, 2)
  local h, w = g:size(1), g:size(2)
  local p = g:ptr()
  local x0, y0, x1, y1 = math.huge, math.huge, -1, -1
  for y = 0, h - 1 do
    for x = 0, w - 1 do
      if p[y * w + x] >= 128 then
        x0, y0 = math.min(x0, x), math.min(y0, y)
        x1, y1 = math.max(x1, x), math.max(y1, y)
      end
    end
  end
  if x1 < 0 then return { 0, 0, w, h } end
  return { x0, y0, x1 + 1, y1 + 1 }
end

-- One mask per predicted class, larger first.
local function instances(img)
  local labels = semantic(img)
  local p, n = labels:ptr(), labels:numel()
  local area = {}
  for i = 0, n - 1 do
    local c = p[i]
    if c ~= 255 then area[c] = (area[c] or 0) + 1 end
  end
  local order = {}
  for c in pairs(area) do order[#order + 1] = c end
  table.sort(order, function(a, b) return area[a] > area[b] or (area[a] == area[b] and a < b) end)
  local masks, cls, scores = {}, {}, {}
  for k, c in ipairs(order) do
    local m = T.new(labels:shape(), "uint8")
    local mp = m:ptr()
    for i = 0, n - 1 do if p[i] == c then mp[i] = 1 end end
    masks[k], cls[k], scores[k] = m, c, 1 - k / 100
  end
  return { kind = "instances", masks = masks, labels = cls, scores = scores }
end

return {
  name = "test_colors",
  defaults = { mode = "semantic", sleep = 0 },
  segment = function(state, img)
    local p = state.params
    if p.sleep > 0 then nanosleep(p.sleep) end
    if p.mode == "semantic" then return { kind = "semantic", labels = semantic(img) } end
    if p.mode == "segments" then return { kind = "segments", labels = channel(img, 3):int() } end
    if p.mode == "instances" then return instances(img) end
    if p.mode == "boxes" then return { kind = "segments", labels = semantic(img), boxes = { bbox(img) } } end
    error("test_colors: unknown mode " .. tostring(p.mode), 0)
  end,
}
