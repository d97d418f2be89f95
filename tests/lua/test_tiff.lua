-- The TIFF label-map reader and writer (core/tiff.c through fmseg.image):
-- files written by PIL 9.4 (with libtiff for PackBits and strips) and by
-- tifffile (tests/fixtures/prepare/tiff/, tests/tools/make_prepare_fixtures.py)
-- read back to the values they were given; the ones the reader refuses say
-- why and name the file; files built here byte by byte cover what those
-- writers do not (big-endian PackBits, defaults of absent tags, tiles,
-- BigTIFF, broken headers and strips); every truncation of a real file is
-- an error naming it; the writer's files are PIL's byte for byte.
local tap = require("tap")
local tiny = require("tiny_data")
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")
local image = require("fmseg.image")
local json = require("fmseg.io.json")
local T = require("fmseg.tensor")

local FIX = core.root .. "/tests/fixtures/prepare/tiff"
local tmp = tiny.tmpdir("tiff")

local function values_equal(lab, h, w, values)
  if lab:dtype() ~= "int32" or lab:size(1) ~= h or lab:size(2) ~= w then
    return false, ("got %s %dx%d, want int32 %dx%d"):format(lab:dtype(), lab:size(1), lab:size(2), h, w)
  end
  local p = lab:contiguous():ptr()
  for i = 0, h * w - 1 do
    if p[i] ~= values[i + 1] then return false, ("pixel %d: %d, want %d"):format(i, p[i], values[i + 1]) end
  end
  return true
end

local function write_bytes(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
  return path
end

-- ---- files other writers made ------------------------------------------------------

do
  local doc = json.decode_file(FIX .. "/values.json")
  local names = {}
  for name in pairs(doc.cases) do names[#names + 1] = name end
  table.sort(names)
  tap.ok(#names >= 7, ("%d readable fixtures (%s)"):format(#names, doc.source))
  for _, name in ipairs(names) do
    local c = doc.cases[name]
    local ok, lab = pcall(image.load_tiff, FIX .. "/" .. name)
    local same, why = false, tostring(lab)
    if ok then same, why = values_equal(lab, c.h, c.w, c.values) end
    tap.ok(same, name .. ": the values the writer was given", why)
  end
  local refused = {
    { "refused_deflate.tif", "compression 8 (Deflate) is not supported (uncompressed or PackBits only; `tiffcp -c none" },
    { "refused_lzw.tif", "compression 5 (LZW) is not supported" },
    { "refused_rgb.tif", "3 samples per pixel: not a single-channel label map" },
    { "refused_float.tif", "SampleFormat 3 (float): only unsigned integers are supported" },
    { "refused_signed.tif", "SampleFormat 2 (signed): only unsigned integers are supported" },
    { "refused_bilevel.tif", "1 bits per sample: only 8 and 16 are supported" },
  }
  for _, r in ipairs(refused) do
    local path = FIX .. "/" .. r[1]
    tap.raises(function() image.load_tiff(path) end, "fm_tiff_load: " .. path .. ": " .. r[2],
      r[1] .. ": refused, naming the file and why")
  end
end

-- ---- files built here ---------------------------------------------------------------------

-- A TIFF from parts: be (byte order), entries {tag, type, values...} (SHORT 3
-- or LONG 4; written inline or after the strips), strips (byte strings);
-- StripOffsets/StripByteCounts are filled in unless opts.no_strips.
local function build(opts)
  local be = opts.be
  local function u16(v)
    local a, b = v % 256, math.floor(v / 256) % 256
    return be and string.char(b, a) or string.char(a, b)
  end
  local function u32(v)
    local b = { v % 256, math.floor(v / 256) % 256, math.floor(v / 65536) % 256, math.floor(v / 16777216) % 256 }
    if be then return string.char(b[4], b[3], b[2], b[1]) end
    return string.char(b[1], b[2], b[3], b[4])
  end
  local entries = {}
  for _, e in ipairs(opts.entries) do entries[#entries + 1] = e end
  local data, offsets, counts, at = {}, {}, {}, 8
  for i, s in ipairs(opts.strips or {}) do
    data[i], offsets[i], counts[i] = s, at, #s
    at = at + #s
  end
  if not opts.no_strips then
    entries[#entries + 1] = { 273, 4, unpack(offsets) }
    entries[#entries + 1] = { 279, 4, unpack(counts) }
  end
  table.sort(entries, function(a, b) return a[1] < b[1] end)
  local ifd_at = at
  local extra_at = ifd_at + 2 + 12 * #entries + 4
  local ifd, extra = { u16(#entries) }, {}
  for _, e in ipairs(entries) do
    local n = #e - 2
    local size = (e[2] == 3 and 2 or 4) * n
    local vals = {}
    for k = 3, #e do vals[#vals + 1] = e[2] == 3 and u16(e[k]) or u32(e[k]) end
    local body = table.concat(vals)
    ifd[#ifd + 1] = u16(e[1]) .. u16(e[2]) .. u32(n)
    if size <= 4 then
      ifd[#ifd + 1] = body .. string.rep("\0", 4 - size)
    else
      ifd[#ifd + 1] = u32(extra_at)
      extra[#extra + 1] = body
      extra_at = extra_at + #body
    end
  end
  ifd[#ifd + 1] = u32(0)
  return (be and "MM" or "II") .. u16(opts.magic or 42) .. u32(opts.ifd or ifd_at) .. table.concat(data)
    .. table.concat(ifd) .. table.concat(extra)
end

-- 16-bit samples as bytes in the file's order
local function samples16(values, be)
  local out = {}
  for i, v in ipairs(values) do
    local a, b = v % 256, math.floor(v / 256)
    out[i] = be and string.char(b, a) or string.char(a, b)
  end
  return table.concat(out)
end

-- PackBits of a byte string in literal runs of up to 128 bytes
local function packbits(s)
  local out = {}
  for i = 1, #s, 128 do
    local chunk = s:sub(i, i + 127)
    out[#out + 1] = string.char(#chunk - 1) .. chunk
  end
  return table.concat(out)
end

do
  -- 5 x 3, values across 16 bits, big-endian, 2 rows a strip, PackBits
  local h, w = 5, 3
  local vals = { 0, 1, 255, 256, 65535, 65534, 4660, 43981, 7, 8, 846, 458, 300, 301, 1 }
  local strips = {}
  for s = 0, 2 do
    local rows = {}
    for k = s * 2 * w + 1, math.min((s + 1) * 2 * w, h * w) do rows[#rows + 1] = vals[k] end
    strips[#strips + 1] = packbits(samples16(rows, true))
  end
  local base = { { 256, 3, w }, { 257, 3, h }, { 258, 3, 16 }, { 259, 3, 32773 }, { 262, 3, 1 }, { 278, 3, 2 } }
  local p = write_bytes(tmp .. "/be_packbits.tif", build({ be = true, entries = base, strips = strips }))
  local ok, why = values_equal(image.load_tiff(p), h, w, vals)
  tap.ok(ok, "big-endian, PackBits, 3 strips of 2, 2 and 1 rows", why)

  -- a repeat run: the next byte 1 - n times (n = -1: twice), and a no-op -128
  local twice = {}
  for i = 1, 6 do twice[i] = 0x0101 * i end   -- each sample two equal bytes
  local packed = {}
  for i = 1, 6 do packed[#packed + 1] = string.char(255, i, 128) end
  local p2 = write_bytes(tmp .. "/repeat.tif", build({ entries = { { 256, 3, 3 }, { 257, 3, 2 }, { 258, 3, 16 },
    { 259, 3, 32773 }, { 262, 3, 1 } }, strips = { table.concat(packed) } }))
  ok, why = values_equal(image.load_tiff(p2), 2, 3, twice)
  tap.ok(ok, "PackBits repeat runs and the -128 no-op; RowsPerStrip absent: one strip", why)

  -- 8-bit with the optional tags left out; without BitsPerSample (1 by default) it is refused
  local grey = { 3, 1, 4, 1, 5, 9 }
  local p3 = write_bytes(tmp .. "/u8_defaults.tif", build({ be = true, entries = { { 256, 4, 2 }, { 257, 4, 3 },
    { 258, 3, 8 } }, strips = { string.char(unpack(grey)) } }))
  ok, why = values_equal(image.load_tiff(p3), 3, 2, grey)
  tap.ok(ok, "8-bit with Compression, Photometric and RowsPerStrip absent (their defaults), LONG sizes", why)
  local p4 = write_bytes(tmp .. "/no_bits.tif", build({ entries = { { 256, 3, 2 }, { 257, 3, 3 } },
    strips = { string.char(unpack(grey)) } }))
  tap.raises(function() image.load_tiff(p4) end, p4 .. ": 1 bits per sample", "BitsPerSample absent: 1 (bilevel), refused")

  local function refused(name, opts, expect, what)
    local path = write_bytes(tmp .. "/" .. name, type(opts) == "string" and opts or build(opts))
    local ok2, err = pcall(image.load_tiff, path)
    tap.ok(not ok2 and tostring(err):find("fm_tiff_load: " .. path .. ": " .. expect, 1, true) ~= nil, what, tostring(err))
  end
  local e16 = { { 256, 3, 3 }, { 257, 3, 2 }, { 258, 3, 16 }, { 262, 3, 1 } }
  local six = samples16({ 1, 2, 3, 4, 5, 6 })
  refused("tiled.tif", { entries = { { 256, 3, 3 }, { 257, 3, 2 }, { 258, 3, 16 }, { 322, 3, 16 }, { 323, 3, 16 } },
    no_strips = true }, "tiled TIFFs are not supported (strips only)", "a tiled TIFF is refused")
  refused("bigtiff.tif", "II" .. string.char(43, 0, 8, 0, 0, 0, 0, 0), "BigTIFF is not supported", "BigTIFF is refused")
  refused("png.tif", "\137PNG\r\n\26\n" .. string.rep("\0", 20), "not a TIFF file (no II or MM byte-order mark)",
    "a PNG named .tif is refused")
  refused("short.tif", "II*", "not a TIFF file (3 bytes)", "a 3-byte file is refused")
  refused("version.tif", "II" .. string.char(41, 0, 8, 0, 0, 0), "not a TIFF file (version 41, expected 42)",
    "another version number is refused")
  refused("ifd_past.tif", { entries = e16, strips = { six }, ifd = 100000 }, "truncated (the IFD at byte 100000 is past the end)",
    "an IFD offset past the end")
  refused("short_strip.tif", { entries = e16, strips = { six:sub(1, 10) } },
    "truncated (strip 0 holds 10 bytes, its 2 rows need 12)", "a strip shorter than its rows")
  refused("bad_packbits.tif", { entries = { { 256, 3, 3 }, { 257, 3, 2 }, { 258, 3, 16 }, { 259, 3, 32773 } },
    strips = { string.char(20, 1, 2, 3) } }, "corrupt PackBits data in strip 0", "a PackBits literal run past the strip")
  refused("packbits_bomb.tif", { entries = { { 256, 4, 60000 }, { 257, 4, 1000 }, { 258, 3, 16 }, { 259, 3, 32773 } },
    strips = { string.char(129, 0) } }, "corrupt PackBits data in strip 0 (2 bytes cannot hold 120000000)",
    "a PackBits strip too small for its rows is refused before decoding")
  refused("huge.tif", { entries = { { 256, 4, 100000 }, { 257, 4, 100000 }, { 258, 3, 16 } }, strips = { six } },
    "100000x100000 image has more than", "a header over the pixel limit is refused before anything is allocated")
  -- (found by fuzz_tiff: the pixel count overflowed a signed 64-bit product; seed regress-pixel-count-overflow)
  refused("overflow.tif", { entries = { { 256, 4, 4160749557 }, { 257, 4, 4227858438 }, { 258, 3, 16 } }, strips = { six } },
    "4160749557x4227858438 image has more than", "sizes whose product passes 2^63 are refused as over the limit")
  refused("empty.tif", { entries = { { 256, 3, 0 }, { 257, 3, 2 }, { 258, 3, 16 } }, strips = { six } },
    "0x2 image has no pixels", "a zero width")
  refused("few_strips.tif", { entries = { { 256, 3, 3 }, { 257, 3, 2 }, { 258, 3, 16 }, { 278, 3, 1 } },
    strips = { six } }, "1 strip offsets and 1 byte counts for 2 strips", "fewer strips than RowsPerStrip asks for")
  refused("predictor.tif", { entries = { { 256, 3, 3 }, { 257, 3, 2 }, { 258, 3, 16 }, { 317, 3, 2 } },
    strips = { six } }, "predictor 2 is not supported", "a predictor is refused")
  refused("white.tif", { entries = { { 256, 3, 3 }, { 257, 3, 2 }, { 258, 3, 16 }, { 262, 3, 0 } },
    strips = { six } }, "PhotometricInterpretation 0", "WhiteIsZero is refused (PIL would invert 8-bit ones)")
  refused("no_size.tif", { entries = { { 258, 3, 16 } }, strips = { six } }, "no ImageWidth / ImageLength",
    "no image size")
end

do
  -- a strip whose offset points past the end (the offset patched in place)
  local s = build({ entries = { { 256, 3, 3 }, { 257, 3, 2 }, { 258, 3, 16 } }, strips = { samples16({ 1, 2, 3, 4, 5, 6 }) } })
  local entry = string.char(17, 1, 4, 0, 1, 0, 0, 0, 8, 0, 0, 0)   -- StripOffsets, LONG, 1: 8
  local at = s:find(entry, 1, true)
  local path = write_bytes(tmp .. "/offset_past.tif", s:sub(1, at + 7) .. string.char(0, 1, 0, 0) .. s:sub(at + 12))
  tap.raises(function() image.load_tiff(path) end, path .. ": truncated (strip 0 of 1, 12 bytes at 256, runs past the end",
    "a strip past the end of the file is named with its offset")
end

-- ---- truncated and corrupt copies of a real file ------------------------------------------------

do
  local whole = fs.read(FIX .. "/u16_le.tif")
  local bad = {}
  for n = 0, #whole - 1 do
    local path = write_bytes(tmp .. "/cut.tif", whole:sub(1, n))
    local ok, err = pcall(image.load_tiff, path)
    if ok or not tostring(err):find("fm_tiff_load: " .. path .. ": ", 1, true) then
      bad[#bad + 1] = ("%d bytes: %s"):format(n, ok and "read" or tostring(err))
    end
  end
  tap.ok(#bad == 0, ("every one of the %d truncations of a PIL file is an error naming it"):format(#whole),
    table.concat(bad, "\n"))
  -- every single byte of the header and IFD flipped: a clean answer each time, never a crash
  local answers = 0
  for i = 1, 122 do
    local flipped = whole:sub(1, i - 1) .. string.char(255 - whole:byte(i)) .. whole:sub(i + 1)
    local path = write_bytes(tmp .. "/flip.tif", flipped)
    local ok, err = pcall(image.load_tiff, path)
    if ok or tostring(err):find(path, 1, true) then answers = answers + 1 end
  end
  tap.eq(answers, 122, "each of the 122 header bytes flipped reads or fails naming the file")
  tap.raises(function() image.load_tiff(tmp .. "/nowhere.tif") end, "fm_tiff_load: " .. tmp .. "/nowhere.tif: cannot open",
    "a missing file is named")
end

-- ---- the writer ------------------------------------------------------------------------------------

do
  local doc = json.decode_file(FIX .. "/values.json")
  local c = doc.cases["u16_le.tif"]
  local lab = T.new({ c.h, c.w }, "int32")
  local p = lab:ptr()
  for i = 1, #c.values do p[i - 1] = c.values[i] end
  local path = tmp .. "/written.tif"
  image.save_tiff16(path, lab)
  tap.ok(fs.read(path) == fs.read(FIX .. "/u16_le.tif"), "save_tiff16 writes PIL 9.4's file byte for byte")
  image.save_tiff16(tmp .. "/from_u8.tif", T.new({ 2, 3 }, "uint8"):fill(7))
  tap.ok(values_equal(image.load_tiff(tmp .. "/from_u8.tif"), 2, 3, { 7, 7, 7, 7, 7, 7 }), "uint8 labels are written as 16-bit")
  local rand = tiny.rng(65535)
  local big = T.new({ 37, 61 }, "int32")
  local bp, want = big:ptr(), {}
  for i = 0, 37 * 61 - 1 do
    bp[i] = rand(0, 65535)
    want[i + 1] = bp[i]
  end
  image.save_tiff16(tmp .. "/round.tif", big:t():contiguous():t())   -- a strided view
  tap.ok(values_equal(image.load_tiff(tmp .. "/round.tif"), 37, 61, want), "round trip of random 16-bit values (strided input)")
  big:ptr()[5] = 65536
  tap.raises(function() image.save_tiff16(tmp .. "/over.tif", big) end,
    "fm_tiff_save_u16: label 65536 at (0, 5) outside [0, 65535]", "a value over 16 bits is refused")
  tap.ok(not fs.exists(tmp .. "/over.tif"), "and no file is left")
  tap.raises(function() image.save_tiff16(tmp .. "/no/such/dir/x.tif", lab) end,
    "fm_tiff_save_u16: " .. tmp .. "/no/such/dir/x.tif: cannot open", "an unwritable path is named")
  -- load_labels picks the reader by the file name
  os.rename(tmp .. "/written.tif", tmp .. "/written.TIFF")
  tap.ok(values_equal(image.load_labels(tmp .. "/written.TIFF"), c.h, c.w, c.values),
    "load_labels: .TIFF through the TIFF reader")
  image.save_png(tmp .. "/grey.png", T.new({ 2, 2, 1 }, "uint8"):fill(9))
  local g = image.load_labels(tmp .. "/grey.png")
  tap.ok(g:dtype() == "uint8" and g:get(2, 2) == 9, "load_labels: a PNG as its indices")
end

tiny.rm(tmp)
os.exit(tap.done())
