-- test_wide_labels — a test-only recipe for datasets with more than 256
-- classes (ADE847, Context459): it reads its answer from the image, class
-- 256 * red + green (red = green = 255: unlabelled, 65535), so that the
-- evaluation of those datasets can be checked end to end without weights.
local T = require("fmseg.tensor")

return {
  name = "test_wide_labels",
  defaults = {},
  segment = function(_, img)
    local h, w = img:size(1), img:size(2)
    local src = img:contiguous():ptr()
    local out = T.new({ h, w }, "int32")
    local dst = out:ptr()
    for i = 0, h * w - 1 do dst[i] = 256 * src[3 * i] + src[3 * i + 1] end
    return { kind = "semantic", labels = out }
  end,
}
