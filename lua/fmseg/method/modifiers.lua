-- fmseg.method.modifiers — add-ons that change how a recipe computes, without a
-- copy of it: a config lists them beside its recipe,
--
--   recipe: naclip
--   modifiers:
--     - name: resclip
--       params: { temp_thd: 0.3, rcs_weights: [2.0, 0.3] }
--
-- and each one, in order, takes the state the recipe's setup returned and
-- gives back a state the recipe's own segment runs on. A modifier is
-- recipes/modifiers/<name>.lua returning
--   { name, needs = {capability...}, defaults = {...},
--     apply = function(params, state, ctx) → state }
-- ctx = { key = "modifiers[i]" (for messages), recipe = the base recipe,
-- models = the loaded models }. The capabilities a base state can offer:
--   clipseg     made by fmseg.method.clipseg.setup (dense features, text classifier)
--   last_block  its dense features come from a last block run through
--               clipseg.last_block_method (sclip, clearclip, naclip,
--               maskclip, ...), which the modifier may run again with its
--               own view of the block
-- Everything a modifier needs is checked when the session is made, before
-- any image is read: an unknown name or parameter, a capability the base
-- lacks, a setting the model cannot honour; messages name the config key.
local clipseg = require("fmseg.method.clipseg")
local config = require("fmseg.io.config")
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")
local recipes = require("fmseg.method.recipes")

local M = {}

function M.dir() return core.root .. "/recipes/modifiers" end

function M.available() return fs.lua_names(M.dir()) end

local CAPABILITIES = {
  clipseg = function(state) return type(state) == "table" and type(state.dense) == "function" and state.text ~= nil end,
  last_block = function(state)
    return type(state) == "table" and type(state.dense) == "function" and clipseg.last_block_of(state.dense) ~= nil
  end,
}
M.CAPABILITIES = CAPABILITIES

-- load(name, key) → the modifier table (contract checked)
function M.load(name, key)
  if type(name) ~= "string" or not name:match("^[%w_]+$") then
    error(("config: %s.name must name a modifier (available: %s), got %s"):format(
      key, table.concat(M.available(), ", "), tostring(name)), 0)
  end
  local path = M.dir() .. "/" .. name .. ".lua"
  local chunk, err = loadfile(path)
  if not chunk then
    if not io.open(path, "r") then
      error(("config: %s.name: unknown modifier '%s' (available: %s)"):format(
        key, name, table.concat(M.available(), ", ")), 0)
    end
    error(("recipes/modifiers/%s.lua: %s"):format(name, err), 0)
  end
  local ok, mod = pcall(chunk)
  if not ok then error(("recipes/modifiers/%s.lua: %s"):format(name, tostring(mod)), 0) end
  if type(mod) ~= "table" or type(mod.apply) ~= "function" then
    error(("recipes/modifiers/%s.lua must return a table with apply(params, state, ctx)"):format(name), 0)
  end
  mod.name = mod.name or name
  mod.needs = mod.needs or {}
  mod.defaults = mod.defaults or {}
  for _, need in ipairs(mod.needs) do
    if not CAPABILITIES[need] then
      error(("recipes/modifiers/%s.lua: needs unknown capability '%s'"):format(name, tostring(need)), 0)
    end
  end
  return mod
end

-- from_config(cfg) → { {modifier, params, key}... } (empty without a
-- `modifiers` key): names and parameters checked, nothing run yet.
function M.from_config(cfg)
  local list = config.get(cfg, "modifiers")
  if list == nil then return {} end
  if type(list) ~= "table" or (next(list) ~= nil and list[1] == nil) then
    error("config: `modifiers` must be a list, e.g. [{name: resclip, params: {...}}]", 0)
  end
  local out = {}
  for i, spec in ipairs(list) do
    local key = ("modifiers[%d]"):format(i)
    if type(spec) ~= "table" or spec[1] ~= nil then
      error(("config: %s must be a mapping {name: ..., params: {...}}"):format(key), 0)
    end
    for k in pairs(spec) do
      if k ~= "name" and k ~= "params" then
        error(("config: %s: unknown key '%s' (a modifier has name and params)"):format(key, tostring(k)), 0)
      end
    end
    local mod = M.load(spec.name, key)
    local given = spec.params
    if given ~= nil and (type(given) ~= "table" or given[1] ~= nil) then
      error(("config: %s.params must be a mapping"):format(key), 0)
    end
    local ok, params = pcall(recipes.params, mod, given or {})
    if not ok then error(("config: %s.params: %s"):format(key, tostring(params)), 0) end
    out[i] = { modifier = mod, params = params, key = key }
  end
  return out
end

-- apply(list, recipe, state, models) → the state after every modifier
function M.apply(list, recipe, state, models)
  for _, m in ipairs(list) do
    for _, need in ipairs(m.modifier.needs) do
      if not CAPABILITIES[need](state) then
        error(("config: %s (%s) needs a recipe with '%s' (see fmseg.method.modifiers); recipe %s has none"):format(
          m.key, m.modifier.name, need, recipe.name), 0)
      end
    end
    state = m.modifier.apply(m.params, state, { key = m.key, recipe = recipe, models = models })
  end
  return state
end

return M
