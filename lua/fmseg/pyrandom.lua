-- fmseg.pyrandom — the random streams and orders that official Python code
-- leans on, bit for bit: CPython's random module (MT19937 seeded by
-- init_by_array, getrandbits, _randbelow, sample), the iteration order of
-- a CPython set of small ints, and torch's CPU generator (MT19937 seeded
-- by init_genrand; randint, exponential_, multinomial with one sample),
-- and numpy's legacy RandomState (np.random.seed, the MT19937 seeded by
-- init_genrand; permutation, choice without replacement).
--
--   local pyrandom = require("fmseg.pyrandom")
--   local py = pyrandom.python(0)            -- random.seed(0)
--   py:sample(n, k)                          -- random.sample(range(n), k), 0-based
--   local th = pyrandom.torch(0)             -- torch.manual_seed(0)
--   th:randint(n)                            -- torch.randint(n, (1,)).item()
--   th:multinomial(probs)                    -- torch.multinomial(probs, 1).item() (0-based)
--   pyrandom.set_order({5, 130, 3})          -- list(set([5, 130, 3]))
--   local np = pyrandom.numpy(0)             -- np.random.seed(0)
--   np:choice1(n)                            -- np.random.choice(a, 1, replace=False)[0]'s
--                                            -- index into a (len n), 0-based
--
-- ref: CPython Modules/_randommodule.c (init_genrand, init_by_array,
--      genrand_uint32, random_seed, getrandbits), Lib/random.py (sample,
--      _randbelow_with_getrandbits), Objects/setobject.c (set_add_entry,
--      set_insert_clean, set_table_resize); ATen core/MT19937RNGEngine.h,
--      CPUGeneratorImpl.cpp (random, random64), core/DistributionsHelper.h,
--      core/TransformationHelper.h (uniform_int_from_to, uniform_real,
--      exponential: -1/lambda log(1 - u) on the CPU), native/Distributions.cpp
--      (multinomial: argmax of p / q, q ~ Exp(1), for one sample); numpy
--      random/_mt19937.pyx (_legacy_seeding: mt19937_seed = init_genrand),
--      random/mtrand.pyx (choice: replace=False without p is
--      permutation(pop_size)[:size]; permutation: shuffle of arange; shuffle:
--      for i = n - 1 .. 1, swap x[i] and x[random_interval(i)]),
--      random/src/distributions/distributions.c (random_interval: 32-bit
--      words masked to the smallest 2^k - 1 >= max, redrawn while above max).
local bit = require("bit")
local ffi = require("ffi")

local band, bor, bxor, rshift, lshift = bit.band, bit.bor, bit.bxor, bit.rshift, bit.lshift

local M = {}

local N, MM = 624, 397
local TWO32 = 4294967296

local function u32(x) return x % TWO32 end

-- a * b mod 2^32 for a, b in [0, 2^32), exact in doubles
local function mul32(a, b)
  local lo = a * (b % 65536)
  local hi = (a * math.floor(b / 65536)) % 65536
  return (lo + hi * 65536) % TWO32
end

local MT = {}
MT.__index = MT

local function new_state()
  return setmetatable({ mt = ffi.new("uint32_t[624]"), mti = N + 1 }, MT)
end

-- init_genrand(s)
function MT:init_genrand(s)
  local mt = self.mt
  mt[0] = u32(s)
  for i = 1, N - 1 do
    local p = mt[i - 1]
    mt[i] = u32(mul32(u32(bxor(p, rshift(p, 30))), 1812433253) + i)
  end
  self.mti = N
end

-- init_by_array(key) (key: list of 32-bit words)
function MT:init_by_array(key)
  self:init_genrand(19650218)
  local mt, len = self.mt, #key
  local i, j = 1, 0
  for _ = 1, math.max(N, len) do
    local p = mt[i - 1]
    mt[i] = u32(u32(bxor(mt[i], mul32(u32(bxor(p, rshift(p, 30))), 1664525))) + key[j + 1] + j)
    i, j = i + 1, j + 1
    if i >= N then mt[0] = mt[N - 1]; i = 1 end
    if j >= len then j = 0 end
  end
  for _ = 1, N - 1 do
    local p = mt[i - 1]
    mt[i] = u32(u32(bxor(mt[i], mul32(u32(bxor(p, rshift(p, 30))), 1566083941))) - i)
    i = i + 1
    if i >= N then mt[0] = mt[N - 1]; i = 1 end
  end
  mt[0] = 0x80000000
end

local MAG = { [0] = 0, [1] = 0x9908b0df }

-- genrand_uint32: the next 32-bit word, as a number in [0, 2^32)
function MT:next32()
  local mt = self.mt
  if self.mti >= N then
    local kk = 0
    while kk < N - MM do
      local y = bor(band(mt[kk], 0x80000000), band(mt[kk + 1], 0x7fffffff))
      mt[kk] = u32(bxor(mt[kk + MM], rshift(y, 1), MAG[band(y, 1)]))
      kk = kk + 1
    end
    while kk < N - 1 do
      local y = bor(band(mt[kk], 0x80000000), band(mt[kk + 1], 0x7fffffff))
      mt[kk] = u32(bxor(mt[kk + MM - N], rshift(y, 1), MAG[band(y, 1)]))
      kk = kk + 1
    end
    local y = bor(band(mt[N - 1], 0x80000000), band(mt[0], 0x7fffffff))
    mt[N - 1] = u32(bxor(mt[MM - 1], rshift(y, 1), MAG[band(y, 1)]))
    self.mti = 0
  end
  local y = mt[self.mti]
  self.mti = self.mti + 1
  y = bxor(y, rshift(y, 11))
  y = bxor(y, band(lshift(y, 7), 0x9d2c5680))
  y = bxor(y, band(lshift(y, 15), 0xefc60000))
  y = bxor(y, rshift(y, 18))
  return u32(y)
end

-- ---- CPython's random ------------------------------------------------------------

local Py = setmetatable({}, { __index = MT })
Py.__index = Py

-- random.seed(n) for an int n >= 0 (below 2^53): init_by_array of its
-- 32-bit words, least significant first (one 0 word for 0)
function M.python(seed)
  if type(seed) ~= "number" or seed < 0 or seed % 1 ~= 0 or seed >= 2 ^ 53 then
    error("pyrandom.python: the seed must be an integer in [0, 2^53)", 2)
  end
  local s = setmetatable(new_state(), Py)
  local key, n = {}, seed
  repeat
    key[#key + 1] = n % TWO32
    n = math.floor(n / TWO32)
  until n == 0
  s:init_by_array(key)
  return s
end

-- getrandbits(k), 0 <= k <= 32
function Py:getrandbits(k)
  if k == 0 then return 0 end
  return math.floor(self:next32() / 2 ^ (32 - k))
end

local function bit_length(n)
  local k = 0
  while n > 0 do n = math.floor(n / 2); k = k + 1 end
  return k
end

-- _randbelow_with_getrandbits(n), n >= 1, n < 2^32
function Py:randbelow(n)
  local k = bit_length(n)
  local r = self:getrandbits(k)
  while r >= n do r = self:getrandbits(k) end
  return r
end

-- random.sample(range(n), k) → list of k 0-based values: the pool
-- algorithm when n is at most the size of a k-set (21 + 4^ceil(log4(3k))
-- for k > 5), else draws rejected while already selected
function Py:sample(n, k)
  if k < 0 or k > n then error("pyrandom: sample larger than population or is negative", 2) end
  local result = {}
  local setsize = 21
  if k > 5 then setsize = setsize + 4 ^ math.ceil(math.log(k * 3) / math.log(4)) end
  if n <= setsize then
    local pool = {}
    for i = 0, n - 1 do pool[i] = i end
    for i = 0, k - 1 do
      local j = self:randbelow(n - i)
      result[i + 1] = pool[j]
      pool[j] = pool[n - i - 1]
    end
  else
    local selected = {}
    for i = 1, k do
      local j = self:randbelow(n)
      while selected[j] do j = self:randbelow(n) end
      selected[j] = true
      result[i] = j
    end
  end
  return result
end

-- ---- a CPython set's order -----------------------------------------------------------

-- list(set(values)) for ints 0 <= v < 2^53 (hash(v) = v), inserted in
-- order: the table's slot order after set_add_entry's probing (the slot,
-- its 9 successors when they fit, then i = 5 i + 1 + perturb) and resizes
-- (to the smallest power of two above 4 x used, from 8) at fill x 5 >=
-- mask x 3. Duplicates are dropped.
function M.set_order(values)
  local size = 8
  local table_ = {}
  local used = 0

  local function probe(tab, mask, key, insert_clean)
    local perturb, i = key, key % (mask + 1)
    while true do
      local probes = (i + 9 <= mask) and 9 or 0
      for e = i, i + probes do
        local k = tab[e]
        if k == nil then return e, false end
        if not insert_clean and k == key then return e, true end
      end
      perturb = math.floor(perturb / 32)
      i = (i * 5 + 1 + perturb) % (mask + 1)
    end
  end

  for _, v in ipairs(values) do
    local slot, found = probe(table_, size - 1, v, false)
    if not found then
      table_[slot] = v
      used = used + 1
      if used * 5 >= (size - 1) * 3 then
        local newsize = 8
        while newsize <= used * 4 do newsize = newsize * 2 end
        local new = {}
        for s = 0, size - 1 do
          local k = table_[s]
          if k ~= nil then new[(probe(new, newsize - 1, k, true))] = k end
        end
        table_, size = new, newsize
      end
    end
  end
  local out = {}
  for s = 0, size - 1 do
    if table_[s] ~= nil then out[#out + 1] = table_[s] end
  end
  return out
end

-- ---- torch's CPU generator -------------------------------------------------------------

local Torch = setmetatable({}, { __index = MT })
Torch.__index = Torch

-- An MT19937 of class `cls` after init_genrand(seed), seed an integer in
-- [0, 2^32) (torch.manual_seed's and np.random.seed's initialisation)
local function seeded(cls, seed, who)
  if type(seed) ~= "number" or seed < 0 or seed % 1 ~= 0 or seed >= TWO32 then
    error(("pyrandom.%s: the seed must be an integer in [0, 2^32)"):format(who), 3)
  end
  local s = setmetatable(new_state(), cls)
  s:init_genrand(seed)
  return s
end

-- torch.manual_seed(seed) (below 2^32)
function M.torch(seed) return seeded(Torch, seed, "torch") end

-- random64(): two words, the first the high half → hi, lo
function Torch:random64()
  local hi = self:next32()
  return hi, self:next32()
end

-- torch.randint(n, (1,)) for n < 2^32: one word mod n
function Torch:randint(n) return self:next32() % n end

-- one exponential_(1) value (a double; the tensor rounds it to its dtype):
-- u = low 53 bits of random64 / 2^53, -log(1 - u)
function Torch:exponential()
  local hi, lo = self:random64()
  local u = ((hi % 2097152) * TWO32 + lo) / 9007199254740992
  return -math.log(1 - u)
end

local f32_box = ffi.new("float[1]")
local function f32(x) f32_box[0] = x; return f32_box[0] end

-- torch.multinomial(probs, 1) of float32 probabilities (a list): q_i ~
-- Exp(1) drawn in order and rounded to float32, the first index of the
-- largest float32 p_i / q_i (0-based)
function Torch:multinomial(probs)
  local best, arg = -1, nil
  for i = 1, #probs do
    local r = f32(probs[i] / f32(self:exponential()))
    if r > best then best, arg = r, i - 1 end
  end
  return arg
end

M.f32 = f32

-- ---- numpy's legacy RandomState ---------------------------------------------------------

local Np = setmetatable({}, { __index = MT })
Np.__index = Np

-- np.random.seed(seed) (an int in [0, 2^32)): the legacy RandomState's
-- MT19937, init_genrand(seed)
function M.numpy(seed) return seeded(Np, seed, "numpy") end

-- random_interval(max): uniform in [0, max], max < 2^32
function Np:interval(max)
  if max == 0 then return 0 end
  if max >= TWO32 then error("pyrandom.numpy: interval above 2^32 - 1", 2) end
  local span = 2 ^ bit_length(max)                   -- mask + 1
  local v = self:next32() % span
  while v > max do v = self:next32() % span end
  return v
end

-- np.random.permutation(n) → list of n 0-based values
function Np:permutation(n)
  local a = {}
  for i = 0, n - 1 do a[i + 1] = i end
  for i = n - 1, 1, -1 do
    local j = self:interval(i)
    a[i + 1], a[j + 1] = a[j + 1], a[i + 1]
  end
  return a
end

-- np.random.choice(a, 1, replace=False)[0] for a sequence a of n items: the
-- 0-based index of the item, permutation(n)[0] (the whole shuffle is drawn;
-- only the moved positions are kept)
function Np:choice1(n)
  if n < 1 then error("pyrandom.numpy: choice from an empty sequence", 2) end
  local moved = ffi.new("int32_t[?]", n)           -- value + 1 where moved, 0 where still in place
  for i = n - 1, 1, -1 do
    local j = self:interval(i)
    local vi, vj = moved[i], moved[j]
    if vi == 0 then vi = i + 1 end
    if vj == 0 then vj = j + 1 end
    moved[i], moved[j] = vj, vi
  end
  return moved[0] == 0 and 0 or moved[0] - 1
end

return M
