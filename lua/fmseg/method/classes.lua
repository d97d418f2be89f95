-- fmseg.method.classes — class-name files: one class per line, synonyms
-- comma-separated ("person, person in shirt, person in jeans"). The first
-- synonym names the class in outputs; every synonym becomes a text query.
-- "\," is a comma inside a name: the large-vocabulary lists (ADE20K-Full's
-- "building, edifice") query such names whole.
local fs = require("fmseg.io.fs")

local M = {}

-- a line → its synonyms, split at commas; "\," is a comma inside one
local function split_synonyms(line)
  local words, cur, i = {}, {}, 1
  while i <= #line do
    local c = line:sub(i, i)
    if c == "\\" and line:sub(i + 1, i + 1) == "," then
      cur[#cur + 1], i = ",", i + 2
    elseif c == "," then
      words[#words + 1], cur, i = table.concat(cur), {}, i + 1
    else
      cur[#cur + 1], i = c, i + 1
    end
  end
  words[#words + 1] = table.concat(cur)
  return words
end

-- Parses text → { names = {...}, queries = {...}, query_class = {...} }
-- with query_class[q] the 1-based class of query q.
function M.parse(text, source)
  local names, queries, query_class = {}, {}, {}
  local lineno = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    line = line:gsub("\r$", "")
    if line:match("%S") then
      local class = #names + 1
      for _, word in ipairs(split_synonyms(line)) do
        word = word:match("^%s*(.-)%s*$")
        if word ~= "" then
          queries[#queries + 1] = word
          query_class[#query_class + 1] = class
          if not names[class] then names[class] = word end
        end
      end
      if not names[class] then
        error(("%s:%d: a class line with no name"):format(source or "classes", lineno), 0)
      end
    end
  end
  if #names == 0 then error((source or "classes") .. ": no class names", 0) end
  return { names = names, queries = queries, query_class = query_class }
end

-- Finds `path` as given, else relative to the fmseg root (shipped lists).
function M.resolve(path)
  local f = io.open(path, "r")
  if f then f:close(); return path end
  local root = require("fmseg.core").root
  local alt = root .. "/" .. path
  f = io.open(alt, "r")
  if f then f:close(); return alt end
  error(("class-name file not found: %s (also looked in %s)"):format(path, root), 0)
end

function M.load(path)
  local resolved = M.resolve(path)
  local text, err = fs.read(resolved)
  if not text then error(("cannot read class-name file %s: %s"):format(resolved, tostring(err)), 0) end
  return M.parse(text, path)
end

-- From a config: `classes` is a file name or an inline list of lines.
function M.from_config(value)
  if type(value) == "string" then return M.load(value) end
  if type(value) == "table" then return M.parse(table.concat(value, "\n"), "inline classes") end
  error("config: `classes` must be a file name or a list of class names", 0)
end

-- The names people read, by 1-based class: `given` (a list, or a class
-- file's path) where it names the class, "background" for the background
-- class (0-based index `background`, whose line lists stuff words), else
-- the first synonym.
function M.display_names(classes, background, given)
  if type(given) == "string" then given = M.load(given).names end
  local out = {}
  for i, n in ipairs(classes.names) do
    out[i] = (type(given) == "table" and given[i]) or (i - 1 == background and "background") or n
  end
  return out
end

return M
