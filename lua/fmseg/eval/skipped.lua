-- fmseg.eval.skipped — the items a run could not score (an image or
-- annotation missing, unreadable, malformed), kept in its records as
-- { id, skipped = reason } and listed with the metrics: what the
-- interactive, one-shot and referring evaluations share.
local M = {}

-- records → { {id, reason}, ... } of the skipped ones, in order
function M.collect(records)
  local out = {}
  for _, r in ipairs(records) do
    if r.skipped then out[#out + 1] = { id = r.id, reason = r.skipped } end
  end
  return out
end

-- shards' metrics records → their lists, one after the other
function M.merge(recs)
  local out = {}
  for _, r in ipairs(recs) do
    for _, sk in ipairs(r.skipped or {}) do out[#out + 1] = sk end
  end
  return out
end

-- the Markdown lines that list them (none when there are none), appended to `lines`
function M.lines(list, lines)
  if list and #list > 0 then
    lines[#lines + 1] = ""
    lines[#lines + 1] = ("%d items skipped (not scored):"):format(#list)
    for _, sk in ipairs(list) do lines[#lines + 1] = ("- %s: %s"):format(sk.id, sk.reason) end
  end
  return lines
end

return M
