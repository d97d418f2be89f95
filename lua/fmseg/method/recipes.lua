-- fmseg.method.recipes — finds a method: a name ("sclip") is
-- recipes/<name>.lua and nothing else; a recipe of one's own is named by its
-- path, ending in .lua ("my/kkclip.lua": relative to the working directory,
-- else to the fmseg root). No path is ever assembled from a name, so a
-- config runs only Lua its author named. The file returns
--   { name, needs = {model kinds}, defaults = {...},
--     setup = function(params, models, classes, cfg) → state,
--     segment = function(state, image, previous, source) → result }
-- `previous` is the result of the recipe before this one when the config
-- chains them (`refine: {recipe: sam_refine, params: {...}}` beside
-- `recipe:`), or the mask source's instances for a recipe that declares
-- `regions = true` (`regions: {recipe: sam_amg, ...}`; such a source
-- declares `produces = "instances"`), else nil; `source` = {path, stem}
-- of the image's file when it came from one, and for a recipe that declares
-- `referring = true` the sentence it segments (expression; raw, as
-- written). See README.md ("Writing a recipe") and fmseg.method.segment for
-- the result kinds.
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")

local M = {}

function M.dir() return core.root .. "/recipes" end

function M.available() return fs.lua_names(M.dir()) end

local function check_contract(recipe, name, shown)
  if type(recipe) ~= "table" then error(("%s must return a table"):format(shown), 0) end
  if type(recipe.segment) ~= "function" then
    error(("%s has no segment(state, image) function"):format(shown), 0)
  end
  recipe.name = recipe.name or name
  recipe.needs = recipe.needs or {}
  recipe.defaults = recipe.defaults or {}
  recipe.setup = recipe.setup or function(params) return { params = params } end
  return recipe
end

-- spec → the file to run and how messages name it
local function locate(spec)
  if type(spec) == "string" and spec:match("^[%w_]+$") then
    local path = M.dir() .. "/" .. spec .. ".lua"
    if not fs.exists(path) then
      error(("unknown recipe '%s' (available: %s; a recipe of your own is named by its path, e.g. my/%s.lua)"):format(
        spec, table.concat(M.available(), ", "), spec), 0)
    end
    return path, "recipes/" .. spec .. ".lua", spec
  end
  if type(spec) == "string" and spec:match("%.lua$") then
    for _, path in ipairs({ spec, core.root .. "/" .. spec }) do
      if fs.exists(path) and not fs.is_dir(path) then
        return path, spec, spec:match("([^/]+)%.lua$")
      end
    end
    error(("recipe file not found: %s (also looked in %s)"):format(spec, core.root), 0)
  end
  error(("config: recipe must be a name like 'sclip' or the path of a .lua file, got %s"):format(
    tostring(spec)), 0)
end

-- How runs and tables name the recipe of spec, without loading it: the
-- name, or a path's file stem.
function M.name_of(spec)
  if type(spec) == "string" then return spec:match("([^/]+)%.lua$") or spec end
  return tostring(spec)
end

function M.load(spec)
  local path, shown, name = locate(spec)
  local chunk, err = loadfile(path)
  if not chunk then error(("%s: %s"):format(shown, err), 0) end
  local ok, recipe = pcall(chunk)
  if not ok then error(("%s: %s"):format(shown, tostring(recipe)), 0) end
  return check_contract(recipe, name, shown)
end

-- defaults overlaid with the config's params (unknown keys are refused:
-- a misspelt parameter must not silently fall back to a default).
function M.params(recipe, given)
  local out = {}
  for k, v in pairs(recipe.defaults) do out[k] = v end
  for k, v in pairs(given or {}) do
    if recipe.defaults[k] == nil and not (recipe.extra_params and recipe.extra_params[k]) then
      local known = {}
      for d in pairs(recipe.defaults) do known[#known + 1] = d end
      table.sort(known)
      error(("recipe %s: unknown parameter '%s' (known: %s)"):format(recipe.name, k, table.concat(known, ", ")), 0)
    end
    out[k] = v
  end
  return out
end

return M
