-- fmseg.method.recipes — finds a method by name: recipes/<name>.lua returns
--   { name, needs = {model kinds}, defaults = {...},
--     setup = function(params, models, classes, cfg) → state,
--     segment = function(state, image, previous, source) → result }
-- `previous` is the result of the recipe before this one when the config
-- chains them (`refine: {recipe: sam_refine, params: {...}}` beside
-- `recipe:`), else nil; `source` = {path, stem} of the image's file when
-- it came from one. See README.md ("Writing a recipe") and fmseg.method.segment
-- for the result kinds.
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")

local M = {}

function M.dir() return core.root .. "/recipes" end

function M.available() return fs.lua_names(M.dir()) end

local function check_contract(recipe, name)
  if type(recipe) ~= "table" then error(("recipes/%s.lua must return a table"):format(name), 0) end
  if type(recipe.segment) ~= "function" then
    error(("recipes/%s.lua has no segment(state, image) function"):format(name), 0)
  end
  recipe.name = recipe.name or name
  recipe.needs = recipe.needs or {}
  recipe.defaults = recipe.defaults or {}
  recipe.setup = recipe.setup or function(params) return { params = params } end
  return recipe
end

-- extra_dir (a config's `recipe_dir`, e.g. test recipes) is searched
-- before <root>/recipes; relative to the working directory, else to the root.
local function extra_path(extra_dir, name)
  if not extra_dir then return nil end
  for _, dir in ipairs({ extra_dir, core.root .. "/" .. extra_dir }) do
    local p = dir .. "/" .. name .. ".lua"
    local f = io.open(p, "r")
    if f then f:close(); return p end
  end
end

function M.load(name, extra_dir)
  if type(name) ~= "string" or not name:match("^[%w_]+$") then
    error(("config: recipe must be a name like 'sclip', got %s"):format(tostring(name)), 0)
  end
  local path = extra_path(extra_dir, name) or (M.dir() .. "/" .. name .. ".lua")
  local chunk, err = loadfile(path)
  if not chunk then
    if not io.open(path, "r") then
      error(("unknown recipe '%s' (available: %s)"):format(name, table.concat(M.available(), ", ")), 0)
    end
    error(("recipes/%s.lua: %s"):format(name, err), 0)
  end
  local ok, recipe = pcall(chunk)
  if not ok then error(("recipes/%s.lua: %s"):format(name, tostring(recipe)), 0) end
  return check_contract(recipe, name)
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
