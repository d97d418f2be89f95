-- summary.lua — the last step of `make bench`: one table of every result
-- in build/bench/ (bench_kernels, bench_*.lua with PyTorch's and ONNX
-- Runtime's times beside them), printed and written to build/bench/summary.md.
--
--   ./fmseg run bench/summary.lua
local bench = require("benchlib")

local SUITES = { "vit", "sam", "sam2", "sd" }

local function cpu_model()
  local f = io.open("/proc/cpuinfo", "r")
  if not f then return "?" end
  local name = f:read("*a"):match("model name%s*:%s*([^\n]+)")
  f:close()
  return name or "?"
end

local function first_line(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local line = f:read("*l")
  f:close()
  return line
end

local lines = {}
local function out(s) lines[#lines + 1] = s or "" end

local torch, ort
for _, s in ipairs(SUITES) do
  torch = torch or bench.read_json(("%s/torch_%s.json"):format(bench.OUT, s))
  ort = ort or bench.read_json(("%s/ort_%s.json"):format(bench.OUT, s))
end
local start = first_line(bench.OUT .. "/loadavg.start")
out("# fmseg benchmarks")
out()
out(("%s, %d threads; load average %s at the start, %s at the end (1, 5, 15 min)."):format(
  cpu_model(), bench.threads(), start and start:match("^(%S+ %S+ %S+)") or "?", bench.loadavg()))
out(torch and ("PyTorch %s, %d threads, OMP_WAIT_POLICY=passive, run just before each fmseg suite."):format(
  torch.torch, torch.threads) or "PyTorch: not found (no t/torch column).")
out(ort and ("ONNX Runtime %s (onnxruntime-node, CPU provider), %d threads, passive waiting, on PyTorch's models "
  .. "exported by torch.onnx (the ViTs and the SAM encoder)."):format(ort.ort, ort.threads)
  or "ONNX Runtime: not run (no t/ort column; needs npm and python3-torch).")
if bench.quick() then out("FMSEG_BENCH_QUICK: SD, SAM and SAM 2 at 1024 skipped.") end
out()
out("## Models")
out()
out(bench.format_header())
for _, s in ipairs(SUITES) do
  local r = bench.read_json(("%s/%s.json"):format(bench.OUT, s))
  for _, row in ipairs(r and r.rows or {}) do out(bench.format_row(row)) end
end
out()
out(bench.LEGEND)
local kernels = bench.read_json(bench.OUT .. "/kernels.json")
if kernels then
  out()
  out("## Kernels (build/bench/bench_kernels: one call against the same products by raw sgemm)")
  out()
  out(bench.format_header("kernel"))
  for _, row in ipairs(kernels) do out(bench.format_row(row)) end
end

local text = table.concat(lines, "\n") .. "\n"
io.write("\n", text)
local f = assert(io.open(bench.OUT .. "/summary.md", "w"))
f:write(text)
f:close()
print(("written to %s/summary.md"):format(bench.OUT))
