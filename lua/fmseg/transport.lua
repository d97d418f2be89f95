-- fmseg.transport — exact optimal transport and assignment on cost matrices
-- (core/transport.c).
--
--   local transport = require("fmseg.transport")
--   local d = transport.emd_uniform(costs)          -- costs (n, m): POT's ot.emd2 with
--                                                   -- uniform weights, exact
--   local cols = transport.linear_sum_assignment(s, { maximize = true })
--   -- cols[i] = the column (1-based) of row i, or nil for the rows left over
--   -- when there are more rows than columns (SciPy's linear_sum_assignment)
local core = require("fmseg.core")
local ffi = require("ffi")
local T = require("fmseg.tensor")

local C, check = core.C, core.check

local M = {}

local function matrix(x, who)
  if not T.is_tensor(x) or x:dim() ~= 2 then error(who .. ": costs must be a 2-D tensor", 3) end
  return x:float():contiguous()
end

-- costs (n, m) → the minimum of sum P_ij costs_ij over plans with rows
-- summing to 1/n and columns to 1/m (a Lua number, computed in double)
function M.emd_uniform(costs)
  local c = matrix(costs, "emd_uniform")
  local out = ffi.new("double[1]")
  check(C.fm_emd_uniform(out, c), "emd_uniform")
  return out[0]
end

-- costs (R, C) → {col of row 1, ...} (1-based; nil where a row is left
-- over), the assignment of least (opts.maximize: greatest) total cost with
-- SciPy's tie rules; also the int32 tensor of 0-based columns (-1 for none)
function M.linear_sum_assignment(costs, opts)
  local c = matrix(costs, "linear_sum_assignment")
  local out = T.new({ c:size(1) }, "int32")
  check(C.fm_linear_sum_assignment(out, c, (opts and opts.maximize) and 1 or 0), "linear_sum_assignment")
  local cols, p = {}, out:ptr()
  for i = 1, c:size(1) do
    if p[i - 1] >= 0 then cols[i] = p[i - 1] + 1 end
  end
  return cols, out
end

return M
