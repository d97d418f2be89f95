-- fmseg.text.tokenizer — the CLIP byte-level BPE tokenizer.
--
--   local tokenizer = require("fmseg.text.tokenizer")
--   local tok = tokenizer.load("clip-vit-base-patch16")  -- vocab.json + merges.txt
--   tok:encode("a photo of a cat.")   --> {49406, 320, 1125, 539, 320, 2368, 269, 49407}
--   local rows, lengths = tok:encode_batch(texts, { context_length = 77, pad_id = 49407 })
--
-- ref: openai/CLIP clip/simple_tokenizer.py (SimpleTokenizer.encode) and
-- clip/clip.py (tokenize). Text goes through basic_clean (ftfy.fix_text,
-- html.unescape twice, strip), whitespace_clean, lower(), the
-- pre-tokenising regex, byte-to-unicode mapping and BPE with '</w>' word ends.
--
-- ftfy.fix_text is reproduced except for its mojibake detection
-- (fix_encoding's "is this text badly decoded" heuristics): HTML entities,
-- C1 controls, ligatures, character width, curly quotes, line breaks,
-- terminal escapes, control characters and NFC are done as ftfy 6.3 does.
-- Ids are the vocabulary's (0-based), ready for the text encoder.
local fs = require("fmseg.io.fs")
local hf = require("fmseg.io.hf")
local json = require("fmseg.io.json")
local U = require("fmseg.text.unicode")

local M = {}
local Tokenizer = {}
Tokenizer.__index = Tokenizer

local byte, sub, find, gsub = string.byte, string.sub, string.find, string.gsub
local concat = table.concat

local BOS, EOS = "<|startoftext|>", "<|endoftext|>"

---------------------------------------------------------------- html

local entities -- fmseg.text.html_entities, loaded when a '&' shows up
local function E()
  if not entities then entities = require("fmseg.text.html_entities") end
  return entities
end

local function in_ranges(list, cp)
  for k = 1, #list, 2 do
    if cp >= list[k] and cp <= list[k + 1] then return true end
  end
  return false
end

-- One numeric character reference, as html.unescape resolves it.
local function numeric_ref(num)
  local e = E()
  local r = e.invalid_charrefs[num]
  if r then return r end
  if (num >= 0xD800 and num <= 0xDFFF) or num > 0x10FFFF then return "\239\191\189" end
  if in_ranges(e.invalid_codepoints, num) then return "" end
  return U.char(num)
end

-- Bytes that end an entity name in html.unescape: \t \n \f space < & # ;
local NAME_STOP = { [9] = true, [10] = true, [12] = true, [32] = true,
  [60] = true, [38] = true, [35] = true, [59] = true }

-- Python's html.unescape(s).
-- ref: cpython Lib/html/__init__.py (_charref, _replace_charref)
function M.html_unescape(s)
  if not find(s, "&", 1, true) then return s end
  local html5 = E().html5
  local out, n = {}, 0
  local pos, len = 1, #s
  while true do
    local amp = find(s, "&", pos, true)
    if not amp then break end
    n = n + 1; out[n] = sub(s, pos, amp - 1)
    local rep, stop
    local _, e, digits = find(s, "^#(%d+);?", amp + 1)
    if e then
      rep, stop = numeric_ref(tonumber(digits)), e
    else
      _, e, digits = find(s, "^#[xX](%x+);?", amp + 1)
      if e then
        rep, stop = numeric_ref(tonumber(digits, 16) or math.huge), e
      else
        -- a name of 1..32 characters, then an optional ';'
        local i, count, bounds = amp + 1, 0, {}
        while count < 32 and i <= len do
          local b = byte(s, i)
          if NAME_STOP[b] then break end
          count = count + 1
          bounds[count] = i
          i = i + (b < 0xC0 and 1 or b < 0xE0 and 2 or b < 0xF0 and 3 or 4)
        end
        if count > 0 then
          local L = count
          if byte(s, i) == 59 then L = L + 1; bounds[L] = i; i = i + 1 end
          bounds[L + 1] = i
          local name = sub(s, amp + 1, i - 1)
          stop = i - 1
          rep = html5[name]
          if not rep then
            -- the longest known prefix of at least two characters
            for x = L - 1, 2, -1 do
              local v = html5[sub(s, amp + 1, bounds[x + 1] - 1)]
              if v then rep = v .. sub(s, bounds[x + 1], i - 1); break end
            end
            rep = rep or ("&" .. name)
          end
        end
      end
    end
    if rep then
      n = n + 1; out[n] = rep
      pos = stop + 1
    else
      n = n + 1; out[n] = "&"
      pos = amp + 1
    end
  end
  n = n + 1; out[n] = sub(s, pos)
  return concat(out, "", 1, n)
end

-- ftfy's unescape_html: entities matching &#?[0-9A-Za-z]{1,24};
local function ftfy_unescape(s)
  if not find(s, "&", 1, true) then return s end
  local e = E()
  return (gsub(s, "&(#?)([0-9A-Za-z]+);", function(hash, name)
    if #name > 24 then return nil end
    if hash == "" then
      return e.html5[name .. ";"] or e.ftfy_upper[name .. ";"]
    end
    local text = "&#" .. name .. ";"
    local r = M.html_unescape(text)
    if find(r, ";", 1, true) then return nil end
    return r
  end))
end

---------------------------------------------------------------- ftfy

-- One translation for fix_c1_controls, fix_latin_ligatures,
-- fix_character_width and uncurl_quotes, composed in ftfy's order; keyed by
-- UTF-8 character.
local char_fixes
local function char_fix_table()
  if char_fixes then return char_fixes end
  local d = require("fmseg.text.unicode_data")
  local function as_map(t)
    local m = {}
    for cp, cps in pairs(t) do m[cp] = cps end
    return m
  end
  local steps = { as_map(d.cp1252), as_map(d.ligatures), as_map(d.width), {} }
  local quotes = steps[4]
  quotes[0x2BC] = { 0x27 }
  for cp = 0x2018, 0x201B do quotes[cp] = { 0x27 } end
  for cp = 0x201C, 0x201F do quotes[cp] = { 0x22 } end
  local function apply(step, cps)
    local out = {}
    for _, cp in ipairs(cps) do
      local r = step[cp]
      if r then for _, c in ipairs(r) do out[#out + 1] = c end
      else out[#out + 1] = cp end
    end
    return out
  end
  char_fixes = {}
  for _, step in ipairs(steps) do
    for cp in pairs(step) do
      local cps = { cp }
      for _, st in ipairs(steps) do cps = apply(st, cps) end
      local key, val = U.char(cp), U.encode(cps)
      if key ~= val then char_fixes[key] = val end
    end
  end
  -- remove_control_chars, the non-ASCII part (ASCII is a pattern below)
  local removed = {}
  for _, cp in ipairs(d.control) do
    if cp >= 0x80 then removed[U.char(cp)] = "" end
  end
  char_fixes.removed = removed
  return char_fixes
end

local UTF8_CHAR = "[\192-\247][\128-\191]*"

local function fix_segment(seg, unescape_html)
  while true do
    local orig = seg
    if unescape_html then seg = ftfy_unescape(seg) end
    local non_ascii = find(seg, "[\128-\255]")
    if non_ascii then seg = gsub(seg, UTF8_CHAR, char_fix_table()) end
    -- fix_line_breaks: \r\n, then \r, then U+2028 and U+2029 (U+0085 is
    -- already an ellipsis, from fix_c1_controls)
    seg = gsub(seg, "\r\n?", "\n")
    if non_ascii then seg = gsub(seg, "\226\128[\168\169]", "\n") end
    seg = gsub(seg, "\27%[[%d;]*[a-zA-Z]", "")
    seg = gsub(seg, "[%z\1-\8\11\14-\31\127]", "")
    if non_ascii then
      seg = gsub(seg, UTF8_CHAR, char_fix_table().removed)
      seg = U.nfc(seg)
    end
    if seg == orig then return seg end
  end
end

-- ftfy.fix_text(text) without mojibake repair; text is split after each
-- newline, and HTML unescaping stops for good at the first segment with '<'.
function M.fix_text(text)
  if not find(text, "[%z\1-\8\11-\31\127&\128-\255]") then return text end
  local out, pos, len = {}, 1, #text
  local unescape_html = true
  while pos <= len do
    local nl = find(text, "\n", pos, true) or len
    local seg = sub(text, pos, nl)
    if unescape_html and find(seg, "<", 1, true) then unescape_html = false end
    out[#out + 1] = fix_segment(seg, unescape_html)
    pos = nl + 1
  end
  return concat(out)
end

---------------------------------------------------------------- cleaning

-- Python str.strip().
local function strip(s)
  if not find(s, "[\128-\255]") then
    return (s:match("^[%s\28-\31]*(.-)[%s\28-\31]*$"))
  end
  local cps, n, offs = U.decode(s)
  local i, j = 1, n
  while i <= n and U.isspace(cps[i]) do i = i + 1 end
  while j >= i and U.isspace(cps[j]) do j = j - 1 end
  return sub(s, offs[i], offs[j + 1] - 1)
end
M.strip = strip

-- re.sub(r'\s+', ' ', s) with the regex module's \s.
local function collapse_space(s)
  if not find(s, "[\128-\255]") then return (gsub(s, "%s+", " ")) end
  local cps, n, offs = U.decode(s)
  local out, k, i = {}, 0, 1
  while i <= n do
    if U.class(cps[i]) == U.SPACE then
      local j = i
      while j < n and U.class(cps[j + 1]) == U.SPACE do j = j + 1 end
      k = k + 1; out[k] = " "
      i = j + 1
    else
      local j = i
      while j < n and U.class(cps[j + 1]) ~= U.SPACE do j = j + 1 end
      k = k + 1; out[k] = sub(s, offs[i], offs[j + 1] - 1)
      i = j + 1
    end
  end
  return concat(out, "", 1, k)
end

-- What SimpleTokenizer.encode feeds its regex:
-- whitespace_clean(basic_clean(text)).lower()
function M.clean(text)
  local t = text
  if find(t, "[\128-\255]") then
    local cps, n = U.decode(t) -- invalid UTF-8 becomes U+FFFD
    t = U.encode(cps, 1, n)
  end
  t = M.fix_text(t)
  t = M.html_unescape(M.html_unescape(t))
  t = strip(t)
  t = strip(collapse_space(t))
  return U.lower(t)
end

---------------------------------------------------------------- pre-tokens

-- Python regex IGNORECASE folds U+017F (long s) onto 's'.
local function is_s(cp) return cp == 0x73 or cp == 0x53 or cp == 0x17F end
local CONTRACTION1 = { [0x74] = true, [0x54] = true, [0x6D] = true, [0x4D] = true,
  [0x64] = true, [0x44] = true }
local CONTRACTION2 = { re = true, ve = true, ll = true }

-- Length in code points of the special token starting at cps[i], or nil.
local SPECIALS = { { BOS:byte(1, -1) }, { EOS:byte(1, -1) } }
local function special_at(cps, n, i)
  for _, sp in ipairs(SPECIALS) do
    local len = #sp
    if i + len - 1 <= n then
      local k = 1
      while k <= len do
        local cp, want = cps[i + k - 1], sp[k]
        if cp ~= want and not (want == 0x73 and is_s(cp)) then break end
        k = k + 1
      end
      if k > len then return len end
    end
  end
  return nil
end

-- re.findall of
--   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|
--   [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
-- over cleaned text; returns the list of matched substrings.
function M.pretokenize(s)
  local cps, n, offs = U.decode(s)
  local class = U.class
  local tokens, t = {}, 0
  local i = 1
  while i <= n do
    local cp = cps[i]
    local j -- last code point of the match
    if cp == 0x3C then
      local len = special_at(cps, n, i)
      if len then j = i + len - 1 end
    elseif cp == 0x27 and i < n then
      local c1 = cps[i + 1]
      if is_s(c1) or CONTRACTION1[c1] then j = i + 1
      elseif i + 2 <= n and c1 < 0x80 and cps[i + 2] < 0x80 then
        local two = string.char(c1, cps[i + 2]):lower()
        if CONTRACTION2[two] then j = i + 2 end
      end
    end
    if not j then
      local c = class(cp)
      if c == 1 then
        j = i
        while j < n and class(cps[j + 1]) == 1 do j = j + 1 end
      elseif c == 2 then
        j = i
      elseif c == 0 then
        j = i
        while j < n and class(cps[j + 1]) == 0 do j = j + 1 end
      end
    end
    if j then
      t = t + 1; tokens[t] = sub(s, offs[i], offs[j + 1] - 1)
      i = j + 1
    else
      i = i + 1 -- whitespace (or U+0345): no match starts here
    end
  end
  return tokens
end

---------------------------------------------------------------- BPE

-- bytes_to_unicode(): printable bytes map to themselves, the other 68 to
-- U+0100.. in byte order, so that no token needs whitespace or controls.
local function bytes_to_unicode()
  local map, n = {}, 0
  for b = 0, 255 do
    if (b >= 0x21 and b <= 0x7E) or (b >= 0xA1 and b <= 0xAC) or (b >= 0xAE and b <= 0xFF) then
      map[b] = U.char(b)
    end
  end
  for b = 0, 255 do
    if not map[b] then map[b] = U.char(256 + n); n = n + 1 end
  end
  return map
end
local BYTE_ENCODER = bytes_to_unicode()

local CACHE_LIMIT = 50000

-- BPE of one pre-token (raw UTF-8 bytes): vocabulary ids.
function Tokenizer:bpe(token)
  local cached = self.cache[token]
  if cached then return cached end
  local word, n = {}, #token
  for i = 1, n do word[i] = BYTE_ENCODER[byte(token, i)] end
  word[n] = word[n] .. "</w>"
  local ranks = self.ranks
  while n > 1 do
    -- the adjacent pair with the lowest merge rank
    local best, at = math.huge, nil
    for i = 1, n - 1 do
      local r = ranks[word[i] .. " " .. word[i + 1]]
      if r and r < best then best, at = r, i end
    end
    if not at then break end
    -- merge every occurrence of that pair, left to right
    local first, second = word[at], word[at + 1]
    local merged = first .. second
    local out, m, i = {}, at - 1, at
    for k = 1, at - 1 do out[k] = word[k] end
    while i <= n do
      if i < n and word[i] == first and word[i + 1] == second then
        m = m + 1; out[m] = merged; i = i + 2
      else
        m = m + 1; out[m] = word[i]; i = i + 1
      end
    end
    word, n = out, m
  end
  local ids, vocab = {}, self.vocab
  for i = 1, n do
    local id = vocab[word[i]]
    if not id then error(("tokenizer: BPE piece %q is not in %s"):format(word[i], self.vocab_path), 0) end
    ids[i] = id
  end
  self.cache_size = self.cache_size + 1
  if self.cache_size > CACHE_LIMIT then self:reset_cache() end
  self.cache[token] = ids
  return ids
end

function Tokenizer:reset_cache()
  self.cache = { [BOS] = { self.bos_id }, [EOS] = { self.eos_id } }
  self.cache_size = 0
end

---------------------------------------------------------------- API

-- Ids of text with the start and end tokens, not truncated, not padded.
function Tokenizer:encode(text)
  if type(text) ~= "string" then error("tokenizer: encode expects a string, got " .. type(text), 2) end
  local ids, n = { self.bos_id }, 1
  for _, token in ipairs(M.pretokenize(M.clean(text))) do
    for _, id in ipairs(self:bpe(token)) do n = n + 1; ids[n] = id end
  end
  ids[n + 1] = self.eos_id
  return ids
end

-- Rows of exactly context_length ids (clip.tokenize): too-long texts are cut
-- and end with the end token (or raise with truncate = false), short ones
-- are padded with pad_id. Returns rows and each row's unpadded length.
-- options: context_length (default tok.context_length), pad_id (default
-- tok.pad_id), truncate (default true).
function Tokenizer:encode_batch(texts, options)
  if type(texts) == "string" then texts = { texts } end
  if type(texts) ~= "table" then error("tokenizer: encode_batch expects a list of strings", 2) end
  options = options or {}
  local ctx = options.context_length or self.context_length
  local pad = options.pad_id or self.pad_id
  if type(ctx) ~= "number" or ctx < 2 or ctx ~= math.floor(ctx) then
    error("tokenizer: context_length must be an integer >= 2, got " .. tostring(ctx), 2)
  end
  if type(pad) ~= "number" then error("tokenizer: pad_id must be a number", 2) end
  local rows, lengths = {}, {}
  for r, text in ipairs(texts) do
    local ids = self:encode(text)
    if #ids > ctx then
      if options.truncate == false then
        error(("tokenizer: input %d (%q) is too long for context length %d"):format(r, text, ctx), 2)
      end
      for k = #ids, ctx + 1, -1 do ids[k] = nil end
      ids[ctx] = self.eos_id
    end
    lengths[r] = #ids
    for k = #ids + 1, ctx do ids[k] = pad end
    rows[r] = ids
  end
  return rows, lengths
end

-- Text of ids (for inspection): pieces joined, '</w>' as a space.
function Tokenizer:decode(ids)
  if not self.decoder then
    local dec = {}
    for token, id in pairs(self.vocab) do dec[id] = token end
    local byte_decoder = {}
    for b, c in pairs(BYTE_ENCODER) do byte_decoder[c] = string.char(b) end
    self.decoder, self.byte_decoder = dec, byte_decoder
  end
  local parts = {}
  for i, id in ipairs(ids) do
    local piece = self.decoder[id]
    if not piece then error("tokenizer: unknown id " .. tostring(id), 2) end
    parts[i] = piece
  end
  local text = concat(parts):gsub("</w>", " ")
  text = text:gsub(UTF8_CHAR, self.byte_decoder)
  return text
end

local function read_file(path)
  local s, err = fs.read(path)
  if not s then error("tokenizer: cannot open " .. tostring(err), 0) end
  return s
end

-- Loads dir/vocab.json and dir/merges.txt (and dir/tokenizer_config.json
-- when present, for the context length and pad token).
function M.load(dir)
  if type(dir) ~= "string" then error("tokenizer.load: expected a directory path", 2) end
  dir = hf.resolve(dir)   -- a hub id in the cache names its snapshot, as for the model files
  local vocab_path, merges_path = dir .. "/vocab.json", dir .. "/merges.txt"
  local vocab = json.decode(read_file(vocab_path), vocab_path)
  if type(vocab) ~= "table" then error("tokenizer: " .. vocab_path .. " is not a JSON object", 0) end
  local size = 0
  for token, id in pairs(vocab) do
    if type(token) ~= "string" or type(id) ~= "number" then
      error("tokenizer: " .. vocab_path .. ": entries must map strings to ids", 0)
    end
    size = size + 1
  end
  local self = setmetatable({ vocab = vocab, vocab_path = vocab_path, vocab_size = size }, Tokenizer)
  self.bos_id, self.eos_id = vocab[BOS], vocab[EOS]
  if not self.bos_id or not self.eos_id then
    error("tokenizer: " .. vocab_path .. " lacks " .. BOS .. " or " .. EOS, 0)
  end

  -- clip's SimpleTokenizer keeps 49152 - 256 - 2 merges: the vocabulary is
  -- 256 bytes, 256 bytes with '</w>', one token per merge, and the two
  -- specials. Keep as many merges as the vocabulary has room for.
  local keep = size - 2 * 256 - 2
  local ranks, rank = {}, 0
  local text = read_file(merges_path)
  local line_no = 0
  for line in text:gmatch("[^\n]+") do
    line_no = line_no + 1
    if not (line_no == 1 and find(line, "^#version")) then
      if rank >= keep then break end
      line = gsub(line, "\r$", "")
      local sp = find(line, " ", 1, true)
      if not sp or find(line, " ", sp + 1, true) then
        error(("tokenizer: %s:%d: expected two space-separated symbols"):format(merges_path, line_no), 0)
      end
      ranks[line] = rank -- as dict(zip(merges, ranks)): a repeat keeps the last
      rank = rank + 1
    end
  end
  self.ranks, self.n_merges = ranks, rank

  self.context_length, self.pad_id = 77, 0 -- clip.tokenize pads with 0
  local f = io.open(dir .. "/tokenizer_config.json", "rb")
  if f then
    local cfg = json.decode(f:read("*a"), dir .. "/tokenizer_config.json")
    f:close()
    local ml = cfg.model_max_length
    if type(ml) == "number" and ml >= 2 and ml <= 65536 then self.context_length = ml end
    local pad = cfg.pad_token
    if type(pad) == "table" then pad = pad.content end
    if type(pad) == "string" and vocab[pad] then self.pad_id = vocab[pad] end
  end
  self:reset_cache()
  return self
end

return M
