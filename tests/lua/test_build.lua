-- The build links the OpenMP OpenBLAS, whatever the system's default
-- libopenblas.so.0 is (the pthread build has the higher alternatives
-- priority, and running it beside our OpenMP loops costs 2-3x on 2 cores):
-- ./fmseg and libfmseg.so resolve exactly one OpenBLAS, the OpenMP one,
-- wherever that build is installed.
local tap = require("tap")
local fs = require("fmseg.io.fs")

local function ldd(path)
  local p = io.popen("ldd " .. fs.quote(path) .. " 2>&1")
  local text = p:read("*a")
  p:close()
  return text
end

local arch = io.popen("gcc -print-multiarch 2>/dev/null"):read("*l") or "x86_64-linux-gnu"
local omp_dir = "/usr/lib/" .. arch .. "/openblas-openmp"
if not fs.exists(omp_dir .. "/libopenblas.so.0") then
  tap.skip("OpenMP OpenBLAS", omp_dir .. " is not installed (make deps installs it)")
else
  for _, bin in ipairs({ "./fmseg", "build/libfmseg.so" }) do
    local text = ldd(bin)
    local found = {}
    for path in text:gmatch("libopenblas[%w%.]*%s*=>%s*(%S+)") do found[#found + 1] = path end
    tap.ok(#found == 1 and found[1]:find("openblas-openmp", 1, true) ~= nil,
           bin .. " resolves one OpenBLAS, the OpenMP build", text)
  end
end
os.exit(tap.done())
