-- docs/api/ is what `make docs` writes from the modules' comments now: a
-- change to a documented function's comment or signature without
-- regenerating fails here.
local tap = require("tap")
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")

local tmp = os.tmpname()
os.remove(tmp)
fs.mkdir_p(tmp)
local ok = os.execute(("%s/fmseg run %s/docs/apidoc.lua %s >/dev/null"):format(core.root, core.root, fs.quote(tmp)))
tap.ok(ok == 0 or ok == true, "docs/apidoc.lua runs")

local p = io.popen("ls " .. fs.quote(tmp))
local pages = {}
for name in p:lines() do pages[#pages + 1] = name end
p:close()
tap.ok(#pages >= 10, ("%d pages generated"):format(#pages))
for _, name in ipairs(pages) do
  local want = fs.read(tmp .. "/" .. name)
  local have = fs.read(core.root .. "/docs/api/" .. name)
  tap.ok(have == want, "docs/api/" .. name .. " is current (make docs)")
end
local index = fs.read(tmp .. "/README.md") or ""
tap.ok(index:find("fmseg.sam.amg", 1, true) and index:find("fmseg.method.clipseg", 1, true),
       "the index lists the modules recipes use")
local tensor = fs.read(tmp .. "/fmseg.tensor.md") or ""
tap.ok(tensor:find("### `T.from_table(tbl, dtype)`", 1, true) and tensor:find("### `t:reshape(...)`", 1, true),
       "functions and methods appear with their signatures")

os.execute("rm -rf " .. fs.quote(tmp))
os.exit(tap.done())
