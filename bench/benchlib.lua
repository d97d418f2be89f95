-- benchlib.lua — what the model benchmarks share: random weights of the
-- real shapes, timing (warm-up, then the median of N), peak RSS, the
-- GEMM-only floor, PyTorch's times from bench/torch_*.py, one report.
--
--   local bench = require("benchlib")   -- `fmseg run` puts bench/ on the path
--   local suite = bench.suite("vit")    -- rows go to build/bench/vit.json
--   suite:model("clip-vit-b16 224", function() model:encode_image(x).last:free() end,
--               { warmup = 2, repeats = 10 })
--   suite:finish()
--
-- The GEMM-only floor of a model is its own products and nothing else: one
-- pass records the shape of every product the model asks of nn.linear,
-- nn.conv2d, nn.conv_transpose2d, nn.attention, tensor:matmul (and C
-- functions named to bench.hook_c), then the floor replays those shapes
-- through fm_matmul (cblas_sgemm) on scratch buffers. A conv counts as its
-- (OC, C*KH*KW) . (C*KH*KW, OH*OW) product, attention as q kᵀ and p v per
-- head. Products of one call that are independent (heads) run one per
-- thread, `threads` at a time, as fm_attention runs them; very wide ones
-- (a 512x512 conv) run in column blocks of at most 64 MB, so the floor
-- never holds more than the model does. Its weights stay in cache more than
-- the model's can, which only lowers the floor.
local ffi = require("ffi")
local core = require("fmseg.core")
local json = require("fmseg.io.json")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")

local C, check = core.C, core.check

local M = {}

M.OUT = "build/bench"

ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } fmseg_bench_timespec;
  int clock_gettime(int clk_id, fmseg_bench_timespec *tp);
]]
local ts = ffi.new("fmseg_bench_timespec")

-- seconds, CLOCK_MONOTONIC
function M.now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

-- FMSEG_BENCH_QUICK=1: skip the slow models (SD, SAM at 1024)
function M.quick()
  local q = os.getenv("FMSEG_BENCH_QUICK")
  return q ~= nil and q ~= "" and q ~= "0"
end

function M.threads() return C.fm_get_threads() end

-- /proc/self/status field in MB: "VmHWM" (peak resident) or "VmRSS"
function M.rss_mb(field)
  local f = io.open("/proc/self/status", "r")
  if not f then return 0 end
  local text = f:read("*a")
  f:close()
  return (tonumber(text:match((field or "VmRSS") .. ":%s*(%d+)")) or 0) / 1024
end

-- Resets VmHWM to the current RSS (Linux: "5" to clear_refs), so that
-- each model reports its own peak; false where the kernel does not allow it.
-- The heap is trimmed first: fmseg keeps freed memory (lua/main.c's
-- mallopt), which would count the models before towards this one's peak.
ffi.cdef [[ int malloc_trim(size_t pad); ]]
function M.reset_peak()
  collectgarbage()
  collectgarbage()
  ffi.C.malloc_trim(0)
  local f = io.open("/proc/self/clear_refs", "w")
  if not f then return false end
  local ok = f:write("5")
  f:close()
  return ok and true or false
end

-- "1.23 0.98 0.71" (1, 5, 15 minutes)
function M.loadavg()
  local f = io.open("/proc/loadavg", "r")
  if not f then return "?" end
  local line = f:read("*l") or "?"
  f:close()
  return line:match("^(%S+ %S+ %S+)") or line
end

-- median of a list of numbers (sorted in place)
local function median(list)
  table.sort(list)
  local n = #list
  if n % 2 == 1 then return list[(n + 1) / 2] end
  return (list[n / 2] + list[n / 2 + 1]) / 2
end
M.median = median

-- seconds of one call of fn, the garbage of earlier calls collected first
local function time_once(fn)
  collectgarbage()
  local t0 = M.now()
  fn()
  return M.now() - t0
end

-- Random weights -------------------------------------------------------------------

-- Weights of whatever shape a loader asks for (the w:has / w:get / w:maybe
-- of fmseg.io.hf), each in its own memory like a checkpoint's, so that a pass
-- streams as many bytes as with real weights. Values are copied from a
-- pool of uniform noise with standard deviation `std` (making 860M normal
-- numbers one by one in Lua would take longer than the benchmark); norms'
-- scales are 1 so that activations keep their size. w.count, w.numel: what
-- was made.
function M.random_weights(std, seed)
  local pool_n = 2 ^ 22
  local a = (std or 0.02) * math.sqrt(3)
  local pool = T.rand({ pool_n }, seed or 1, -a, a)
  local src = ffi.cast("float *", pool.data)
  local w = { dir = "(random)", count = 0, numel = 0, offset = 0 }
  function w.has() return true end
  function w.get(self, name, shape)
    if not shape then error(name .. ": random weights need a shape", 2) end
    if #shape == 1 and name:match("norm[%w_]*%.weight$") then return T.ones(shape) end
    local t = T.empty(shape)
    local n, dst, done = t:numel(), ffi.cast("float *", t.data), 0
    while done < n do
      local len = math.min(n - done, pool_n - self.offset)
      ffi.copy(dst + done, src + self.offset, len * 4)
      done, self.offset = done + len, (self.offset + len) % pool_n
    end
    self.offset = (self.offset + 4099) % pool_n -- vary where the next one starts
    self.count, self.numel = self.count + 1, self.numel + n
    return t
  end
  w.maybe = w.get
  return w
end

-- Recording the products -----------------------------------------------------------

-- A product: out (batch, m, n) = op(a) (batch, m, k) . op(b) (batch, k, n),
-- ta / tb saying a is stored (k, m) / b is stored (n, k).
local recording -- the current record, or nil

local function note(kind, batch, m, n, k, ta, tb, count)
  local r = recording
  if not r or batch * m * n * k == 0 then return end
  local key = table.concat({ batch, m, n, k, ta, tb }, ",")
  local g = r.by_key[key]
  if not g then
    g = { batch = batch, m = m, n = n, k = k, ta = ta, tb = tb, count = 0 }
    r.by_key[key] = g
    r.gemms[#r.gemms + 1] = g
  end
  g.count = g.count + (count or 1)
  r.flops = r.flops + 2 * batch * m * n * k * (count or 1)
  local op = r.ops[kind] or { calls = 0, time = 0, flops = 0 }
  op.flops = op.flops + 2 * batch * m * n * k * (count or 1)
  r.ops[kind] = op
end

-- Wraps fn so that while recording it notes its products (shapes(...) calls
-- note) and the time spent in it, per kind.
local function recorded(kind, fn, shapes)
  return function(...)
    local r = recording
    if not r then return fn(...) end
    shapes(...)
    local t0 = M.now()
    local a, b = fn(...)
    local op = r.ops[kind] or { calls = 0, time = 0, flops = 0 }
    op.calls, op.time = op.calls + 1, op.time + M.now() - t0
    r.ops[kind] = op
    return a, b
  end
end

local function prod(list, from, to)
  local p = 1
  for i = from, to do p = p * list[i] end
  return p
end

-- nn.linear(x, w, b): (rows, K) . (N, K)ᵀ
nn.linear = recorded("linear", nn.linear, function(x, w)
  local k = w:size(2)
  note("linear", 1, x:numel() / k, w:size(1), k, 0, 1)
end)

-- nn.conv2d(x, w, b, opts): per image (OC, C*KH*KW) . (C*KH*KW, OH*OW)
nn.conv2d = recorded("conv", nn.conv2d, function(x, w, _, opts)
  opts = opts or {}
  local n, _, h, wd = unpack(x:shape())
  local oc, c, kh, kw = unpack(w:shape())
  local s, p = opts.stride or 1, opts.padding or 0
  local sh, sw = type(s) == "table" and s[1] or s, type(s) == "table" and s[2] or s
  local ph, pw = type(p) == "table" and p[1] or p, type(p) == "table" and p[2] or p
  local oh, ow = math.floor((h + 2 * ph - kh) / sh) + 1, math.floor((wd + 2 * pw - kw) / sw) + 1
  note("conv", 1, oc, oh * ow, c * kh * kw, 0, 0, n)
end)

-- nn.conv_transpose2d(x, w (C, OC, K, K), b): per image wᵀ (OC*K*K, C) . x (C, H*W)
nn.conv_transpose2d = recorded("conv_transpose", nn.conv_transpose2d, function(x, w)
  local n, c, h, wd = unpack(x:shape())
  note("conv_transpose", 1, w:numel() / c, h * wd, c, 1, 0, n)
end)

-- nn.attention(q, k, v, heads): per head q kᵀ and p v
nn.attention = recorded("attention", nn.attention, function(q, k, v, heads)
  local b, tq, c = unpack(q:shape())
  local tk, cv = k:size(2), v:size(3)
  note("attention", b * heads, tq, tk, c / heads, 0, 1)
  note("attention", b * heads, tq, cv / heads, tk, 0, 0)
end)

-- a:matmul(b, ta, tb): (..., M, K) . (..., K, N), b maybe unbatched
local methods = T.methods
methods.matmul = recorded("matmul", methods.matmul, function(a, b, ta, tb)
  local sa, sb = a:shape(), b:shape()
  local m, k = sa[#sa - 1], sa[#sa]
  if ta then m, k = k, m end
  local n = tb and sb[#sb - 1] or sb[#sb]
  local batch = prod(sa, 1, #sa - 2)
  if #sb == 2 and not ta then -- fm_matmul makes this one tall product
    note("matmul", 1, batch * m, n, k, 0, tb and 1 or 0)
  else
    note("matmul", batch, m, n, k, ta and 1 or 0, tb and 1 or 0)
  end
end)

-- Records the products of a C function that a model calls directly, e.g.
-- hook_c("fm_sam_attention", "attention", function(out, q, k, v, heads) ... end)
-- where shapes calls bench.note(kind, batch, m, n, k, ta, tb). Must run
-- before the model's module is required: it keeps core.C as it was.
function M.hook_c(name, kind, shapes)
  local real = core.C
  local proxy = setmetatable({}, { __index = function(_, key) return real[key] end })
  proxy[name] = recorded(kind, function(...) return real[name](...) end, shapes)
  core.C = proxy
  return function() core.C = real end -- call after the require
end
M.note = note

-- The products of SAM's decoder kernels (core/sam_decoder.c), which
-- models/sam.lua calls directly; as hook_c, before the model is required.
-- Returns the function that undoes the hooks.
function M.hook_sam_decoder()
  local undo = M.hook_c("fm_sam_tokens_to_image", "attention", function(_, q, x)
    local n, r, c = unpack(q:shape())
    note("attention", n, r, x:size(2), c, 0, 1)
    note("attention", n, r, c, x:size(2), 0, 0)
  end)
  M.hook_c("fm_sam_upscale_masks", "conv_transpose", function(out, keys, _, _, w1, _, _, _, _, w2)
    local n, t, c = unpack(keys:shape())
    local c1, c2, m = w1:size(2), w2:size(2), out:size(2)
    note("conv_transpose", n, t, 4 * c1, c, 0, 0)
    note("conv_transpose", n, 4 * t, 4 * c2, c1, 0, 0)
    note("matmul", n, 16 * t, m, c2, 0, 1)
  end)
  M.hook_c("fm_sam_image_to_tokens", "attention", function(out, x, _, keys)
    local n, hs, cx = unpack(keys:shape())
    note("attention", n, x:size(2), hs, cx, 0, 1)
    note("attention", n, x:size(2), out:size(3), hs, 0, 0)
  end)
  return undo
end

-- Runs fn once, recording; returns its seconds and the record:
-- { gemms = {{batch, m, n, k, ta, tb, count}...}, flops, ops = {kind = {calls, time, flops}} }
function M.record(fn)
  local r = { gemms = {}, by_key = {}, flops = 0, ops = {} }
  recording = r
  local ok, dt = pcall(time_once, fn)
  recording = nil
  if not ok then error(dt, 0) end
  return dt, r
end

-- The floor -------------------------------------------------------------------------

local FLOOR_BLOCK = 2 ^ 24 -- floats of b (64 MB) per product at most

-- The replay of a record's products over three scratch pools: returns
-- run() and free(). Independent products run `threads` at a time
-- (fm_matmul runs a batch one product per thread).
function M.floor(record)
  local threads = M.threads()
  local calls, need = {}, { a = 0, b = 0, c = 0 }
  local function add(batch, m, n, k, ta, tb, times)
    local call = { batch = batch, m = m, n = n, k = k, ta = ta, tb = tb, times = times }
    need.a = math.max(need.a, batch * m * k)
    need.b = math.max(need.b, batch * k * n)
    need.c = math.max(need.c, batch * m * n)
    calls[#calls + 1] = call
  end
  for _, g in ipairs(record.gemms) do
    local per = g.batch > threads and threads or g.batch
    local full, rest = math.floor(g.batch / per), g.batch % per
    -- column blocks of at most FLOOR_BLOCK floats of b
    local cols = math.max(2048, math.floor(FLOOR_BLOCK / g.k))
    local blocks = math.ceil(g.n / cols)
    for _, part in ipairs({ { per, full }, { rest, 1 } }) do
      local batch, times = part[1], part[2]
      if batch > 0 and times > 0 then
        if blocks > 1 then
          add(batch, g.m, cols, g.k, g.ta, g.tb, g.count * times * (blocks - 1))
          add(batch, g.m, g.n - cols * (blocks - 1), g.k, g.ta, g.tb, g.count * times)
        else
          add(batch, g.m, g.n, g.k, g.ta, g.tb, g.count * times)
        end
      end
    end
  end
  local pools = { a = T.full({ math.max(need.a, 1) }, 0.01), b = T.full({ math.max(need.b, 1) }, 0.01),
                  c = T.new({ math.max(need.c, 1) }) }
  local function view(pool, batch, rows, cols)
    local flat = pool:narrow(1, 1, batch * rows * cols)
    return batch > 1 and flat:reshape({ batch, rows, cols }) or flat:reshape({ rows, cols })
  end
  for _, c in ipairs(calls) do
    c.a = c.ta == 1 and view(pools.a, c.batch, c.k, c.m) or view(pools.a, c.batch, c.m, c.k)
    c.b = c.tb == 1 and view(pools.b, c.batch, c.n, c.k) or view(pools.b, c.batch, c.k, c.n)
    c.out = view(pools.c, c.batch, c.m, c.n)
  end
  local function run()
    for _, c in ipairs(calls) do
      for _ = 1, c.times do check(C.fm_matmul(c.out, c.a, c.b, c.ta, c.tb, 1)) end
    end
  end
  local function free()
    for _, c in ipairs(calls) do c.a:free(); c.b:free(); c.out:free() end
    pools.a:free(); pools.b:free(); pools.c:free()
  end
  return run, free
end

-- PyTorch's results ----------------------------------------------------------------

local function read_json(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  local ok, v = pcall(json.decode, text)
  return ok and v or nil
end
M.read_json = read_json

local function write_json(path, value)
  os.execute("mkdir -p " .. M.OUT)
  local f = assert(io.open(path, "w"))
  f:write(json.encode(value, { indent = 1 }), "\n")
  f:close()
end

-- Reports -------------------------------------------------------------------------

local COLUMNS = {
  { "model", "%-36s", "%-36s" }, { "ms", "%10s", "%10.2f" }, { "GFLOP", "%8s", "%8.1f" },
  { "GFLOP/s", "%8s", "%8.1f" }, { "floor ms", "%10s", "%10.2f" }, { "t/floor", "%7s", "%7.2f" },
  { "torch ms", "%10s", "%10.2f" }, { "t/torch", "%7s", "%7.2f" }, { "ort ms", "%10s", "%10.2f" },
  { "t/ort", "%7s", "%7.2f" }, { "peak MB", "%8s", "%8.0f" },
}

-- One table row (Markdown) for a result { name, ms, gflop, floor_ms, torch_ms, ort_ms, peak_mb }
function M.format_row(r)
  local values = {
    r.name, r.ms, r.gflop, r.gflop and r.ms and r.gflop / r.ms * 1e3, r.floor_ms,
    r.floor_ms and r.ms / r.floor_ms, r.torch_ms, r.torch_ms and r.ms / r.torch_ms, r.ort_ms,
    r.ort_ms and r.ms / r.ort_ms, r.peak_mb,
  }
  local cells = {}
  for i, col in ipairs(COLUMNS) do
    local v = values[i]
    cells[i] = v ~= nil and col[3]:format(v) or col[2]:format("-")
  end
  return "| " .. table.concat(cells, " | ") .. " |"
end

-- the header of those rows; first: the first column's name ("model")
function M.format_header(first)
  local names, rule = {}, {}
  for i, col in ipairs(COLUMNS) do
    names[i] = col[2]:format(i == 1 and first or col[1])
    rule[i] = ("-"):rep(#names[i])
  end
  return "| " .. table.concat(names, " | ") .. " |\n|-" .. table.concat(rule, "-|-") .. "-|"
end

M.LEGEND = "ms: fmseg, median; floor ms: the model's own products alone through fm_matmul (sgemm);\n" ..
  "t/floor, t/torch, t/ort: fmseg's time over the floor's / PyTorch's / ONNX Runtime's (below 1: fmseg takes\n" ..
  "less; ONNX Runtime runs PyTorch's model exported by torch.onnx, bench/ort_bench.js);\n" ..
  "peak MB: the process's peak RSS during that model."

-- Suites ---------------------------------------------------------------------------

local Suite = {}
Suite.__index = Suite

-- A benchmark file's results: build/bench/<name>.json, with PyTorch's
-- from build/bench/torch_<name>.json (bench/torch_<name>.py) and ONNX
-- Runtime's from build/bench/ort_<name>.json (bench/ort_bench.js) when
-- present.
function M.suite(name)
  local torch = read_json(("%s/torch_%s.json"):format(M.OUT, name)) or {}
  local ort = read_json(("%s/ort_%s.json"):format(M.OUT, name)) or {}
  print(("%s — %d threads, OpenBLAS %s kernels, load average %s%s"):format(name, M.threads(),
    ffi.string(C.fm_blas_core()), M.loadavg(), torch.torch and (", PyTorch " .. torch.torch .. " results found") or ""))
  print(M.format_header())
  if ort.ort then print(("ONNX Runtime %s results found"):format(ort.ort)) end
  return setmetatable({ name = name, rows = {}, torch = torch.models or {}, ort = ort.models or {} }, Suite)
end

-- Times fn (one forward pass that frees what it returns): a recorded pass
-- (the first warm-up, or the only timed run when warmup = 0), then
-- `repeats` rounds of fn and of the floor, interleaved so that load from
-- other processes hits both alike. opts: warmup (1), repeats (5),
-- breakdown (print time per kind of op from the recorded pass).
function Suite:model(name, fn, opts)
  opts = opts or {}
  local warmup, repeats = opts.warmup or 1, opts.repeats or 5
  M.reset_peak()
  local first, record = M.record(fn)
  for _ = 2, warmup do time_once(fn) end
  local peak = M.rss_mb("VmHWM") -- before the floor's buffers
  local floor, free_floor = M.floor(record)
  if warmup > 0 then time_once(floor) end
  local times, floors = {}, {}
  if warmup == 0 then times[1] = first end
  for i = 1, repeats do
    if i > #times then times[#times + 1] = time_once(fn) end
    floors[i] = time_once(floor)
  end
  local torch, ort = self.torch[name], self.ort[name]
  local row = {
    name = name, ms = median(times) * 1e3, gflop = record.flops * 1e-9, floor_ms = median(floors) * 1e3,
    torch_ms = torch and torch.ms, torch_peak_mb = torch and torch.peak_mb, ort_ms = ort and ort.ms, peak_mb = peak,
    runs = #times, load = M.loadavg(),
  }
  free_floor()
  self.rows[#self.rows + 1] = row
  print(M.format_row(row))
  if opts.breakdown then self:breakdown(record, first) end
  io.stdout:flush()
  return row
end

-- Time per kind of op in the recorded pass, and what is left.
function Suite:breakdown(record, total)
  local kinds, covered = {}, 0
  for kind in pairs(record.ops) do kinds[#kinds + 1] = kind end
  table.sort(kinds, function(a, b) return record.ops[a].time > record.ops[b].time end)
  for _, kind in ipairs(kinds) do
    local op = record.ops[kind]
    covered = covered + op.time
    print(("|   %-16s %5d calls %9.0f ms %8.1f GFLOP %7.1f GFLOP/s"):format(kind, op.calls, op.time * 1e3,
      op.flops * 1e-9, op.time > 0 and op.flops * 1e-9 / op.time or 0))
  end
  print(("|   %-16s %15s %9.0f ms (norms, activations, copies)"):format("the rest", "", (total - covered) * 1e3))
end

-- A row measured some other way (e.g. a prompt path without a floor).
function Suite:add(row)
  local torch = self.torch[row.name]
  row.torch_ms = row.torch_ms or (torch and torch.ms)
  self.rows[#self.rows + 1] = row
  print(M.format_row(row))
end

function Suite:finish(footnote)
  if footnote then print(footnote) end
  write_json(("%s/%s.json"):format(M.OUT, self.name), { suite = self.name, threads = M.threads(), rows = self.rows })
  print()
end

M.write_json = write_json
return M
