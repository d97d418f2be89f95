-- The layers of lua/fmseg/ (README, Layout): each module requires only
-- modules of its own layer or of layers listed before it, every folder is a
-- known layer, and the README's layout section names every folder.
local tap = require("tap")
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")

-- in the README's order; the runtime face is lua/fmseg/*.lua itself
local LAYERS = { "runtime", "io", "text", "models", "sam", "method", "eval", "parity", "cli" }
local RANK = {}
for i, name in ipairs(LAYERS) do RANK[name] = i end

local root = core.root .. "/lua/fmseg"

-- "fmseg.io.json" -> "io"; "fmseg.tensor", "fmseg" -> "runtime"
local function layer_of(module)
  local first = module:match("^fmseg%.([%w_]+)%.") or module:match("^fmseg%.([%w_]+)$")
  if first and RANK[first] and first ~= "runtime" then return first end
  return "runtime"
end

local function modules_in(dir, prefix, out)
  for _, name in ipairs(fs.lua_names(dir)) do
    local module = name == "init" and prefix or (prefix .. "." .. name)
    out[#out + 1] = { module = module, path = dir .. "/" .. name .. ".lua" }
  end
  return out
end

local p = io.popen(("ls -d %s/*/ 2>/dev/null"):format(fs.quote(root)))
local folders = {}
for line in p:lines() do folders[#folders + 1] = line:match("([^/]+)/$") end
p:close()
table.sort(folders)

local modules = modules_in(root, "fmseg", {})
for _, folder in ipairs(folders) do
  tap.ok(RANK[folder] ~= nil and folder ~= "runtime", "lua/fmseg/" .. folder .. "/ is a layer of the README's layout")
  modules_in(root .. "/" .. folder, "fmseg." .. folder, modules)
end
tap.ok(#modules > 40, ("%d modules found under lua/fmseg"):format(#modules))

local upward = {}
for _, m in ipairs(modules) do
  local src = assert(fs.read(m.path))
  local mine = layer_of(m.module)
  for dep in src:gmatch('require%("(fmseg[%w_.]*)"%)') do
    if dep ~= "fmseg.host" and RANK[layer_of(dep)] > RANK[mine] then
      upward[#upward + 1] = ("%s (%s) requires %s (%s)"):format(m.module, mine, dep, layer_of(dep))
    end
  end
end
tap.ok(#upward == 0, "no module requires a module of a later layer", table.concat(upward, "\n"))

-- How modules are assigned to layers.
tap.eq(layer_of("fmseg.cli.args"), "cli", "layer_of: a folder's module")
tap.eq(layer_of("fmseg.tensor"), "runtime", "layer_of: the runtime face")
tap.ok(RANK[layer_of("fmseg.eval.runs")] > RANK[layer_of("fmseg.io.json")], "layer_of: eval comes after io")

local readme = assert(fs.read(core.root .. "/README.md"))
local layout = readme:match("\n## Layout\n(.-)\n## ") or ""
for _, folder in ipairs(folders) do
  tap.ok(layout:find("\n      " .. folder .. "/", 1, true) ~= nil, "README's layout names lua/fmseg/" .. folder .. "/")
end
for _, m in ipairs(modules_in(root, "fmseg", {})) do
  local name = m.module:match("^fmseg%.(.+)$") or "init"
  tap.ok(layout:find(name, 1, true) ~= nil, "README's layout names the runtime module " .. name)
end

os.exit(tap.done())
