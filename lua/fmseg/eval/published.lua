-- fmseg.eval.published — the numbers papers and repositories report for the
-- methods fmseg has configs for (configs/published.yaml), so that a
-- reproduction is read against them: `fmseg table` and `fmseg report` put
-- each measured number beside the published one.
--
--   local published = require("fmseg.eval.published")
--   local p = published.lookup("SCLIP", "voc21", "miou")
--   -- p = { value = 59.63, source = "wangf3014/SCLIP README, ..." } or nil
--
-- Metrics are "miou", "corloc" and "oiou" (referring), in percent; datasets are fmseg's
-- dataset names (data.name). The file is checked when read: an entry
-- without a source, a number outside [0, 100], an unknown metric, or a
-- method both reported and listed as not collected is an error naming it.
local config = require("fmseg.io.config")
local core = require("fmseg.core")

local M = {}

M.path = core.root .. "/configs/published.yaml"
M.METRICS = { miou = "mIoU", corloc = "CorLoc", oiou = "oIoU", fbiou = "FBIoU" }

local function fail(path, what, ...)
  error(("%s: " .. what):format(path, ...), 0)
end

local function check_entry(path, method, entry)
  if type(entry) ~= "table" then fail(path, "%s: expected a mapping with source and numbers", method) end
  if type(entry.source) ~= "string" or entry.source == "" then
    fail(path, "%s: no source (the paper or repository the numbers come from)", method)
  end
  local any = false
  for key, values in pairs(entry) do
    if key ~= "source" then
      if not M.METRICS[key] then
        fail(path, "%s: unknown key '%s' (expected source, miou, corloc, oiou, fbiou)", method, tostring(key))
      end
      if type(values) ~= "table" then fail(path, "%s.%s: expected dataset: number pairs", method, key) end
      for dataset, v in pairs(values) do
        if type(v) ~= "number" or v ~= v or v < 0 or v > 100 then
          fail(path, "%s.%s.%s: expected a percentage in [0, 100], got %s", method, key, dataset, tostring(v))
        end
        any = true
      end
    end
  end
  if not any then fail(path, "%s: no numbers (list it under not_collected instead)", method) end
end

-- { entries = { [method] = entry }, not_collected = { [method] = reason } }
function M.load(path)
  path = path or M.path
  local data = config.read_yaml(path)
  if type(data) ~= "table" then fail(path, "expected a mapping of methods") end
  local out = { entries = {}, not_collected = {} }
  for method, entry in pairs(data) do
    if method ~= "not_collected" then
      check_entry(path, method, entry)
      out.entries[method] = entry
    end
  end
  local missing = data.not_collected or {}
  if type(missing) ~= "table" then fail(path, "not_collected: expected method: reason pairs") end
  for method, reason in pairs(missing) do
    if type(reason) ~= "string" or reason == "" then fail(path, "not_collected.%s: give the reason", method) end
    if out.entries[method] then fail(path, "%s is both reported and listed under not_collected", method) end
    out.not_collected[method] = reason
  end
  return out
end

local loaded
local function default()
  loaded = loaded or M.load()
  return loaded
end

-- { value = number, source = string } or nil. `book` is a M.load() result
-- (default: configs/published.yaml).
function M.lookup(method, dataset, metric, book)
  if not M.METRICS[metric] then error(("published.lookup: unknown metric '%s'"):format(tostring(metric)), 2) end
  local entry = (book or default()).entries[method]
  local v = entry and entry[metric] and entry[metric][dataset]
  if v == nil then return nil end
  return { value = v, source = entry.source }
end

return M
