-- fmseg.cli.args — the sub-commands' option parser. A command declares its
-- options and positional arguments once; the checks, the one-line errors
-- and the help text come from here.
--
--   local args = require("fmseg.cli.args")
--   local parser = args.parser("amg", "amg --model DIR IMAGE -o MASKS.json", {
--     { "--model", metavar = "DIR", required = true, help = "SAM model directory" },
--     { "-o", "--output", metavar = "FILE" },
--     { "--quiet", type = "flag" },
--     { "--points-per-side", type = "integer", min = 1 },
--     { "--set", metavar = "K=V", list = true },
--   }, { { "image", required = true } })
--   local opts = parser:parse(argv)   -- nil after printing the help (-h)
--   -- opts.model, opts.output, opts.quiet, opts.points_per_side, opts.set, opts.image
--
-- Options: the names, then
--   key       field of the result (default: the last name without leading
--             dashes, "-" → "_")
--   type      "string" (default), "number", "integer" (whole; min = ...),
--             "flag" (takes no value: true), or a function(text) → value,
--             or nil and why (it may also raise its own message)
--   choices   the allowed strings
--   list      collect every occurrence in order (the result starts as {})
--   default   the value when the option is absent
--   required  refuse to run without it
--   metavar, help   for the help text
-- Positionals: { key, required = bool, list = bool (takes the rest),
-- label = "run directories" (for "no run directories given") }.
--
-- Every error is one line naming the command and the option:
--   amg: --points-per-side needs a number, got 'many'
local M = {}

local Parser = {}
Parser.__index = Parser

local function key_of(spec)
  return spec.key or spec[#spec]:gsub("^%-+", ""):gsub("%-", "_")
end

-- parser(command, usage, options, positionals); usage is the line shown
-- after "fmseg " in errors and the help.
function M.parser(command, usage, options, positionals)
  local self = setmetatable({ command = command, usage = usage, options = options or {},
                              positionals = positionals or {}, by_name = {} }, Parser)
  for _, spec in ipairs(self.options) do
    spec.key = key_of(spec)
    for _, name in ipairs(spec) do self.by_name[name] = spec end
  end
  return self
end

function Parser:fail(fmt, ...)
  error(self.command .. ": " .. fmt:format(...), 0)
end

local function describe(spec)
  local names = table.concat(spec, ", ")
  if spec.type == "flag" then return names end
  return names .. " " .. (spec.metavar or (spec.type == "number" or spec.type == "integer") and "N" or "VALUE")
end

-- The usage line and one line per option.
function Parser:help()
  local lines, width = { "usage: fmseg " .. self.usage }, 0
  for _, spec in ipairs(self.options) do width = math.max(width, #describe(spec)) end
  for _, spec in ipairs(self.options) do
    local notes = {}
    if spec.help then notes[#notes + 1] = spec.help end
    if spec.choices then notes[#notes + 1] = table.concat(spec.choices, " | ") end
    if spec.default ~= nil then notes[#notes + 1] = "default " .. tostring(spec.default) end
    if spec.required then notes[#notes + 1] = "required" end
    lines[#lines + 1] = ("  %-" .. width .. "s  %s"):format(describe(spec), table.concat(notes, "; "))
  end
  return table.concat(lines, "\n")
end

-- text of option `spec` → its value, or a one-line error
function Parser:convert(spec, text)
  local name, kind = spec[#spec], spec.type or "string"
  if kind == "number" or kind == "integer" then
    local v = tonumber(text)
    if not v then self:fail("%s needs a number, got '%s'", name, text) end
    if kind == "integer" and (v % 1 ~= 0 or (spec.min and v < spec.min)) then
      self:fail("%s needs a whole number%s, got %s", name, spec.min and (" >= " .. spec.min) or "", text)
    end
    return v
  elseif type(kind) == "function" then
    local v, why = kind(text)
    if v == nil then self:fail("%s '%s': %s", name, text, why or "invalid") end
    return v
  end
  if spec.choices then
    local ok = false
    for _, c in ipairs(spec.choices) do ok = ok or c == text end
    if not ok then self:fail("%s is %s, got '%s'", name, table.concat(spec.choices, " or "), text) end
  end
  return text
end

-- argv (a list of strings) → the table of options and positionals, or nil
-- after printing the help when -h / --help is among them.
function Parser:parse(argv)
  local out, rest = {}, {}
  for _, spec in ipairs(self.options) do
    if spec.list then out[spec.key] = {} else out[spec.key] = spec.default end
  end
  local i = 1
  while i <= #argv do
    local a = argv[i]
    local spec = self.by_name[a]
    if a == "-h" or a == "--help" then
      print(self:help())
      return nil
    elseif spec and spec.type == "flag" then
      out[spec.key] = true
      i = i + 1
    elseif spec then
      local text = argv[i + 1]
      if text == nil then self:fail("%s needs a value (fmseg %s)", a, self.usage) end
      local v = self:convert(spec, text)
      if spec.list then table.insert(out[spec.key], v) else out[spec.key] = v end
      i = i + 2
    elseif a:match("^%-.") then
      self:fail("unknown option '%s' (fmseg %s --help lists the options)", a, self.command)
    else
      rest[#rest + 1] = a
      i = i + 1
    end
  end
  for _, spec in ipairs(self.options) do
    if spec.required and out[spec.key] == nil then
      self:fail("no %s given (fmseg %s)", spec[#spec], self.usage)
    end
  end
  self:place(out, rest)
  return out
end

-- positional arguments, in order, into their keys
function Parser:place(out, rest)
  local k = 1
  for _, pos in ipairs(self.positionals) do
    local key = pos[1]
    if pos.list then
      out[key] = {}
      for j = k, #rest do out[key][#out[key] + 1] = rest[j] end
      k = #rest + 1
      if pos.required and #out[key] == 0 then self:fail("no %s given (fmseg %s)", pos.label or key, self.usage) end
    else
      out[key] = rest[k]
      k = k + 1
      if pos.required and out[key] == nil then self:fail("no %s given (fmseg %s)", pos.label or key, self.usage) end
    end
  end
  if rest[k] then self:fail("unexpected argument '%s' (fmseg %s)", rest[k], self.usage) end
end

return M
