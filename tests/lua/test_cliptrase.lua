-- CLIPtrase's steps (recipes/cliptrase.lua) on inputs whose answers are
-- worked out by hand: DBSCAN's border point going to the cluster grown
-- first and distances equal to eps counting as neighbours (sklearn's
-- dbscan_inner), scipy's 'reflect' median filter at the edges, the
-- global-patch subtraction, the per-head cosine map, the vote's tie order,
-- torchvision's Resize / CenterCrop sizes, and the refusal of a block
-- beyond the model's depth before anything is loaded. The whole recipe
-- against the official code: tests/fixtures/methods/cliptrase-*.
local tap = require("tap")
local core = require("fmseg.core")
local T = require("fmseg.tensor")

local R = dofile(core.root .. "/recipes/cliptrase.lua")

local function column(values)
  local t = T.new({ #values, 1 })
  for i, v in ipairs(values) do t:ptr()[i - 1] = v end
  return t
end

-- ---- DBSCAN -----------------------------------------------------------------------

do
  -- eps 1, min_samples 4. B = {3, 3.6, 3.8, 4} (all core), A = {0, .2, .4, 1}
  -- (all core: 1 reaches 0 .. 2), 2 is a border point of both (|2 − 1| = |3 − 2|
  -- = 1 = eps, three neighbours), 10 is noise. B's points come first, so B is
  -- cluster 0 and takes the border point; A is cluster 1.
  local labels, count = R.dbscan(column({ 3, 3.6, 3.8, 4, 10, 2, 0, 0.2, 0.4, 1 }), 1.0, 4)
  tap.eq(count, 2, "dbscan: two clusters")
  tap.eq(table.concat(labels, " "), "0 0 0 0 -1 0 1 1 1 1", "dbscan: border point to the first-grown cluster, noise -1")
  local _, none = R.dbscan(column({ 0, 5, 10 }), 1.0, 2)
  tap.eq(none, 0, "dbscan: isolated points, no cluster")
  local l2 = R.dbscan(column({ 0, 1, 2 }), 0.999, 2)
  tap.eq(table.concat(l2, " "), "-1 -1 -1", "dbscan: a distance just above eps is no neighbour")
end

-- ---- median filter -------------------------------------------------------------------

do
  local x = T.from_table({ { 1, 2, 3 }, { 4, 5, 6 }, { 7, 8, 9 } })
  local m = R.median_filter(x, 3)
  -- (1, 1) corner: rows {1, 1, 2} x cols {1, 1, 2} = 1 1 2 1 1 2 4 4 5 → 2
  tap.eq(table.concat(m:values(), " "), "2 3 3 4 5 6 7 7 8", "median_filter 3x3, reflect at every edge")
  local row = R.median_filter(T.from_table({ { 5, 1, 9, 2 } }), 3)
  -- one row: every window is three copies of its columns (5 5 1 → 5; 9 2 2 → 2)
  tap.eq(table.concat(row:values(), " "), "5 5 2 2", "median_filter on a single row")
end

-- ---- global-patch denoising, the cosine map ------------------------------------------------

do
  local w = T.from_table({ { 1, 0.25, 0.5 }, { 0.25, 1, 0.125 }, { 0.5, 0.75, 1 } })
  local a = R.denoise(w)
  -- W[2:, 2:] − W[1, 2:] = [[1 − .25, .125 − .5], [.75 − .25, 1 − .5]], negatives → 0
  tap.eq(table.concat(a:values(), " "), "0.75 0 0.5 0.5", "denoise: minus the [CLS] row, clamped at 0")

  -- one head, q = k = v with rows (1, 0) and (1, 1): cos = 1 / √2 off the diagonal
  local q = T.from_table({ { { 1, 0 }, { 1, 1 } } })
  local c = R.self_correlation(q, q, q, 1)
  tap.near(c:get(1, 2), 1 / math.sqrt(2), 1e-6, "self_correlation: cosine of the rows")
  tap.near(c:get(1, 1), 1, 1e-6, "self_correlation: 1 on the diagonal")
  -- two heads of width 1: head 1 sees (1), (1) → 1; head 2 sees (0.5), (−2) → −1; mean 0
  local q2 = T.from_table({ { { 1, 0.5 }, { 1, -2 } } })
  tap.near(R.self_correlation(q2, q2, q2, 2):get(1, 2), 0, 1e-6, "self_correlation: mean over heads")
end

-- ---- the vote ----------------------------------------------------------------------------

do
  -- one region, classes 0 0 1 1: a tie, broken by the order given
  local classes = T.from_table({ { 0, 0, 1, 1 } }, "int32")
  local regions = T.from_table({ { 0, 0, 0, 0 } }, "int32")
  tap.eq(table.concat(R.vote(classes, regions, 1, 2, { 1, 0 }):values(), " "), "1 1 1 1",
         "vote: a tie goes to the first class of the order (background last)")
  tap.eq(table.concat(R.vote(classes, regions, 1, 2, { 0, 1 }):values(), " "), "0 0 0 0",
         "vote: the same tie in class order")
  local two = T.from_table({ { 0, 1, 1, 0 } }, "int32")
  tap.eq(table.concat(R.vote(T.from_table({ { 2, 1, 1, 0 } }, "int32"), two, 2, 3, { 0, 1, 2 }):values(), " "),
         "0 1 1 0", "vote: each region its own majority")
end

-- ---- Resize / CenterCrop ---------------------------------------------------------------------

do
  local image = require("fmseg.image")
  local h, w = image.short_side_size(100, 130, 112)
  tap.eq(h .. "x" .. w, "112x145", "Resize(112): short side 112, long int(112 * 130 / 100)")
  h, w = image.short_side_size(150, 130, 144)
  tap.eq(h .. "x" .. w, "166x144", "Resize(144) of a portrait image")
  local img = T.new({ 100, 130, 3 }, "uint8"):fill(7)
  local crop, geo = R.resize_crop(img, 112)
  tap.eq(table.concat(crop:shape(), "x"), "112x112x3", "CenterCrop: a square crop")
  tap.eq(geo.left, 16, "CenterCrop: left round(16.5) = 16, half to even as Python")
end

-- ---- refusals --------------------------------------------------------------------------------

do
  local layers = {}
  for i = 1, 12 do layers[i] = {} end
  local fake = { vision = { layers = layers, config = { patch_size = 16 } } }
  local classes = { names = { "a" }, queries = { "a" }, query_class = { 1 } }
  local function params(over)
    local p = {}
    for k, v in pairs(R.defaults) do p[k] = v end
    for k, v in pairs(over) do p[k] = v end
    return p
  end
  tap.raises(function() R.setup(params({ corr_layer = 13 }), { clip = fake }, classes) end,
             "params.corr_layer = 13 is beyond the model's 12 vision blocks", "corr_layer beyond the depth refused")
  tap.raises(function() R.setup(params({ attn_layer = -13 }), { clip = fake }, classes) end,
             "params.attn_layer = -13 is beyond", "attn_layer before the first block refused")
  tap.raises(function() R.setup(params({ image_size = 100 }), { clip = fake }, classes) end,
             "params.image_size = 100 is not a multiple of the patch size 16", "image_size off the patch grid refused")
  tap.raises(function() R.setup(params({ eps = 0 }), { clip = fake }, classes) end,
             "params.eps must be a positive number", "eps 0 refused")
end

tap.done()
