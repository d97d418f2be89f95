-- What ./fmseg sets up before Lua runs (lua/main.c): passive OpenMP waiting
-- unless the user chose a policy; OpenBLAS's own kernels by default, and
-- with FMSEG_BLAS_UPGRADE=1 on a CPU with AVX2 never a pre-AVX2 family
-- (OpenBLAS 0.3.21 falls back to "Prescott" for models newer than it
-- knows); a family the user asks for with OPENBLAS_CORETYPE is kept;
-- fmseg --version names the kernels and, after a fallback, the fix.
local tap = require("tap")
local tiny = require("tiny_data")
local core = require("fmseg.core")

local FMSEG = core.root .. "/fmseg"
local tmp = tiny.tmpdir("runtime_env")
local script = tmp .. "/env.lua"
tiny.write(script, [[
local core = require("fmseg.core")
print(os.getenv("OMP_WAIT_POLICY"), core.ffi.string(core.C.fm_blas_core()))
]])

local function run(env)
  local rc, out = tiny.run(("env -u OMP_WAIT_POLICY -u OPENBLAS_CORETYPE -u FMSEG_BLAS_FALLBACK -u FMSEG_BLAS_UPGRADE "
    .. "%s %s run %s")
    :format(env or "", FMSEG, script))
  local policy, blas = out:match("(%S+)%s+(%S+)%s*$")
  return rc, policy, blas, out
end

local PRE_AVX2 = { prescott = true, core2 = true, penryn = true, dunnington = true, nehalem = true, atom = true,
                   sandybridge = true, barcelona = true, bobcat = true, bulldozer = true, piledriver = true,
                   opteron = true, katmai = true, coppermine = true, northwood = true, banias = true,
                   athlon = true, unknown = true }
local flags = (tiny.read("/proc/cpuinfo") or ""):match("\nflags%s*:%s*([^\n]*)") or ""
local has_avx2 = (" " .. flags .. " "):find(" avx2 ", 1, true) ~= nil and (" " .. flags .. " "):find(" fma ", 1, true)

local rc, policy, blas, out = run()
tap.eq(rc, 0, "fmseg runs with nothing set", out)
tap.eq(policy, "passive", "OMP_WAIT_POLICY defaults to passive")
local _, version = tiny.run(("env -u OPENBLAS_CORETYPE -u FMSEG_BLAS_UPGRADE %s --version"):format(FMSEG))
tap.ok(version:find("OpenBLAS kernels: " .. tostring(blas), 1, true) ~= nil,
       "fmseg --version names the kernels that run by default: OpenBLAS's own (" .. tostring(blas) .. ")", version)
if has_avx2 and PRE_AVX2[(blas or ""):lower()] then
  tap.ok(version:find("FMSEG_BLAS_UPGRADE=1", 1, true) ~= nil, "after a pre-AVX2 fallback it says how to upgrade",
         version)
else
  tap.ok(not version:find("fell back", 1, true), "no fallback here, no advice", version)
end

local _, _, upgraded = run("FMSEG_BLAS_UPGRADE=1")
if has_avx2 then
  tap.ok(upgraded and not PRE_AVX2[upgraded:lower()],
         ("FMSEG_BLAS_UPGRADE=1 on this AVX2 CPU: %s kernels, not a pre-AVX2 family"):format(tostring(upgraded)))
else
  tap.eq(upgraded, blas, "no AVX2 here: FMSEG_BLAS_UPGRADE=1 keeps OpenBLAS's choice")
end

local _, policy2, blas2 = run("OMP_WAIT_POLICY=active OPENBLAS_CORETYPE=Nehalem FMSEG_BLAS_UPGRADE=1")
tap.eq(policy2, "active", "a wait policy the user set is kept")
tap.eq((blas2 or ""):lower(), "nehalem", "a kernel family the user asks for is kept, even an older one")

tiny.rm(tmp)
os.exit(tap.done())
