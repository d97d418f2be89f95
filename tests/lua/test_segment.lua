-- Instance results become one label map: mask i paints label i, earlier
-- (higher-scored) masks win where masks overlap, 0 where none covers.
local tap = require("tap")
local T = require("fmseg.tensor")
local segment = require("fmseg.method.segment")

local a = T.new({ 4, 5 }, "uint8")
a:narrow(1, 1, 2):fill(1)                 -- rows 1-2
local b = T.new({ 4, 5 }, "uint8")
b:narrow(2, 4, 2):fill(1)                 -- columns 4-5
local labels = segment.instance_labels({ masks = { a, b } }, 4, 5)
tap.eq(labels:dtype(), "int32", "an int32 label map")
tap.eq(labels:get(1, 1), 1, "first mask alone: label 1")
tap.eq(labels:get(4, 5), 2, "second mask alone: label 2")
tap.eq(labels:get(2, 5), 1, "overlap: the first mask wins")
tap.eq(labels:get(4, 1), 0, "no mask: 0")
os.exit(tap.done())
