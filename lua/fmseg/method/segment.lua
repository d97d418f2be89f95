-- fmseg.method.segment — a config's recipe over images, and the files people
-- read afterwards: a palette PNG label map, an overlay with a legend, and a
-- JSON summary per image.
--
--   local seg = require("fmseg.method.segment")
--   local session = seg.session(config.load("configs/sclip/sclip_vitb16_voc21.yaml"))
--   local result = session:segment(fmseg.image.load("cat.jpg"))
--
-- A recipe's result is one of
--   { kind = "semantic", labels = (H, W) int32, scores = (C, H, W)?, dump = {...}? }
--   { kind = "segments", labels = (H, W) int32 }          -- unsupervised ids
--   { kind = "instances", masks = {(H, W) uint8...}, scores = {...},
--     labels = {class index...}?, records = {...}? }
--
-- Composition: `refine: {recipe: sam_refine, params: {...}}` next to
-- `recipe: sclip` runs a second recipe after the first, whose segment
-- gets the first one's result: segment(state, img, previous_result).
-- `regions: {recipe: sam_amg, params: {...}}` is a mask source: it runs
-- first, and a recipe that declares `regions = true` (CorrCLIP) gets its
-- instances as `previous`. `modifiers: [{name: resclip, params: {...}}]`
-- changes the recipe itself (its state, after setup): see
-- fmseg.method.modifiers.
local classes_mod = require("fmseg.method.classes")
local config = require("fmseg.io.config")
local image = require("fmseg.image")
local fs = require("fmseg.io.fs")
local json = require("fmseg.io.json")
local models = require("fmseg.models")
local modifiers = require("fmseg.method.modifiers")
local recipes = require("fmseg.method.recipes")
local viz = require("fmseg.viz")

local M = {}

local Session = {}
Session.__index = Session

-- Loads the models a recipe needs (config key models.<kind>) into `loaded`.
local function load_models(recipe, cfg, loaded)
  for _, kind in ipairs(recipe.needs) do
    local path = config.get(cfg, "models." .. kind)
    if not path then
      error(("config: recipe %s needs models.%s (a model directory)"):format(recipe.name, kind), 0)
    end
    loaded[kind] = loaded[kind] or models.load(kind, path)
  end
end

-- The config's step under KEY ({recipe = name, params = {...}}: `refine`,
-- `regions`), or nil; example names a recipe for the message.
local function extra_step(cfg, key, example, classes, loaded)
  local spec = config.get(cfg, key)
  if spec == nil then return nil end
  if type(spec) ~= "table" or type(spec.recipe) ~= "string" then
    error(("config: `%s` must be a mapping with a recipe name, e.g. {recipe: %s, params: {...}}"):format(
      key, example), 0)
  end
  local recipe = recipes.load(spec.recipe)
  local params = recipes.params(recipe, config.get(cfg, key .. ".params", {}))
  load_models(recipe, cfg, loaded)
  return { recipe = recipe, params = params, state = recipe.setup(params, loaded, classes, cfg) }
end

-- The mask source of a recipe that needs one, checked before any image.
local function regions_step(recipe, cfg, classes, loaded)
  local spec = config.get(cfg, "regions")
  if recipe.regions and spec == nil then
    error(("config: recipe %s needs `regions`, a mask source such as {recipe: sam_amg, params: {...}}"):format(
      recipe.name), 0)
  end
  if spec ~= nil and not recipe.regions then
    error(("config: recipe %s takes no `regions` (only recipes that use region masks do, e.g. corrclip)"):format(
      recipe.name), 0)
  end
  local step = extra_step(cfg, "regions", "sam_amg", classes, loaded)
  if step and step.recipe.produces ~= "instances" then
    error(("config: regions.recipe %s does not produce instance masks (sam_amg does)"):format(step.recipe.name), 0)
  end
  return step
end

function M.session(cfg)
  local recipe = recipes.load(config.get(cfg, "recipe"))
  local params = recipes.params(recipe, config.get(cfg, "params", {}))
  local classes = config.get(cfg, "classes") and classes_mod.from_config(config.get(cfg, "classes")) or nil
  local loaded = {}
  load_models(recipe, cfg, loaded)
  local mods = modifiers.from_config(cfg)        -- names and params checked first
  local regions = regions_step(recipe, cfg, classes, loaded)
  local state = modifiers.apply(mods, recipe, recipe.setup(params, loaded, classes, cfg), loaded)
  local refine = extra_step(cfg, "refine", "sam_refine", classes, loaded)
  return setmetatable({ recipe = recipe, params = params, classes = classes, models = loaded,
                        state = state, regions = regions, refine = refine, cfg = cfg }, Session)
end

local KINDS = { semantic = true, segments = true, instances = true }

local function check_result(name, result, img)
  if type(result) ~= "table" or not KINDS[result.kind] then
    error(("recipe %s: segment() must return a result with kind semantic, segments or instances"):format(
      name), 0)
  end
  if result.labels and type(result.labels) ~= "table" then
    local h, w = result.labels:size(1), result.labels:size(2)
    if h ~= img:size(1) or w ~= img:size(2) then
      error(("recipe %s: labels are %dx%d, the image is %dx%d"):format(name, h, w,
        img:size(1), img:size(2)), 0)
    end
  end
  return result
end

-- segment(img, source?): source = { path = ..., stem = ... } of the image
-- when it came from a file; recipes get it as their fourth argument
-- (sam_refine finds a per-image coarse map by it).
function Session:segment(img, source)
  local regions
  if self.regions then
    local r = self.regions
    regions = check_result(r.recipe.name, r.recipe.segment(r.state, img, nil, source), img)
  end
  local result = check_result(self.recipe.name, self.recipe.segment(self.state, img, regions, source), img)
  if self.refine then
    local r = self.refine
    result = check_result(r.recipe.name, r.recipe.segment(r.state, img, result, source), img)
  end
  -- The image's intermediates are garbage now; the collector cannot see
  -- how large their C buffers are, so it is told to free them here rather
  -- than whenever the Lua heap next grows (a per-image reset).
  collectgarbage("collect")
  return result
end

-- Display names by 0-based label.
function Session:label_names(result)
  local names = {}
  if result.kind == "semantic" and self.classes then
    local bg = config.get(self.cfg, "data.background")
    local display = classes_mod.display_names(self.classes, type(bg) == "number" and bg or nil,
                                              config.get(self.cfg, "data.class_names"))
    for i, n in ipairs(display) do names[i - 1] = n end
  elseif result.kind == "segments" then
    for i = 0, 255 do names[i] = "segment " .. i end
  end
  return names
end

-- names[0..n-1] as a Lua array (JSON list)
local function display_list(names, n)
  local out = {}
  for i = 0, n - 1 do out[i + 1] = names[i] end
  return out
end

local function pixel_shares(labels, names)
  local counts = {}
  local lab = labels:dtype() == "int32" and labels:contiguous() or labels:int()
  local p, n = lab:ptr(), lab:numel()
  for i = 0, n - 1 do counts[p[i]] = (counts[p[i]] or 0) + 1 end
  local shares = {}
  for label, c in pairs(counts) do
    shares[names[label] or tostring(label)] = c / n
  end
  return shares
end

-- Instances → one (H, W) label map: later (lower-scored) masks don't
-- overwrite earlier ones; 0 is "no mask".
local function instance_labels(result, h, w)
  local masks = require("fmseg.masks")
  local labels = require("fmseg.tensor").new({ h, w }, "int32")
  for i = #result.masks, 1, -1 do   -- the first mask is painted last: it wins
    masks.rle_paint(labels, masks.rle_encode(result.masks[i]), i)
  end
  return labels
end
M.instance_labels = instance_labels

-- Writes <dir>/<stem>.png, <stem>_overlay.png and <stem>.json; returns
-- the summary table.
function Session:write(result, img, dir, stem)
  local h, w = img:size(1), img:size(2)
  local names = self:label_names(result)
  local labels = result.labels
  if result.kind == "instances" then labels = instance_labels(result, h, w) end
  viz.save_labels(dir .. "/" .. stem .. ".png", labels)
  local overlay_names = names
  if result.kind == "instances" then
    overlay_names = {}
    for i = 1, #result.masks do
      local cls = result.labels and result.labels[i]
      overlay_names[i] = cls and self.classes and self.classes.names[cls + 1] or ("mask " .. i)
    end
  end
  image.save_png(dir .. "/" .. stem .. "_overlay.png", viz.overlay(img, labels, { names = overlay_names }))
  local summary = {
    recipe = self.refine and (self.recipe.name .. "+" .. self.refine.recipe.name) or self.recipe.name,
    width = w, height = h, kind = result.kind,
    classes = self.classes and display_list(names, #self.classes.names) or nil,
    pixel_shares = pixel_shares(labels, overlay_names),
    instances = result.records,
  }
  fs.write_atomic(dir .. "/" .. stem .. ".json", json.encode(summary, { pretty = true }) .. "\n")
  return summary
end

return M
