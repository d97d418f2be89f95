-- fmseg.text.tokenizer: ids of the original CLIP tokenizer (fixture), text
-- cleaning as simple_tokenizer.py does it, BPE against a naive transcription
-- of SimpleTokenizer.bpe, truncation and padding.
local tap = require("tap")
local tokenizer = require("fmseg.text.tokenizer")
local unicode = require("fmseg.text.unicode")
local json = require("fmseg.io.json")

local function list(t) return table.concat(t, ",") end
local function u(...) -- code points to UTF-8
  local out = {}
  for i, cp in ipairs({ ... }) do out[i] = unicode.char(cp) end
  return table.concat(out)
end

---------------------------------------------------------------- text (no files needed)

-- Python's str.lower and unicodedata NFC, on cases from the Unicode standard
tap.eq(unicode.lower("ÀÉÎ ÕÜ"), "àéî õü", "lower: Latin-1")
tap.eq(unicode.lower("МОСКВА"), "москва", "lower: Cyrillic")
tap.eq(unicode.lower(u(0x39F, 0x394, 0x39F, 0x3A3)), u(0x3BF, 0x3B4, 0x3BF, 0x3C2), "lower: final sigma at word end")
tap.eq(unicode.lower(u(0x3A3, 0x391)), u(0x3C3, 0x3B1), "lower: sigma at word start is not final")
tap.eq(unicode.lower(u(0x3A3)), u(0x3C3), "lower: lone sigma is not final")
tap.eq(unicode.lower(u(0x130)), "i" .. u(0x307), "lower: I with dot above becomes i + combining dot")
tap.eq(unicode.nfc("e" .. u(0x301)), u(0xE9), "NFC: e + acute composes")
tap.eq(unicode.nfc(u(0x1100, 0x1161, 0x11A8)), u(0xAC01), "NFC: Hangul jamo compose")
tap.eq(unicode.nfc(u(0x212B)), u(0xC5), "NFC: Angstrom sign becomes A-ring")
tap.eq(unicode.nfc(u(0x1E0B, 0x323)), u(0x1E0D, 0x307), "NFC: reorders dot below before dot above (UAX #15)")
tap.eq(unicode.nfc("plain ascii"), "plain ascii", "NFC: ASCII unchanged")

-- html.unescape
tap.eq(tokenizer.html_unescape("tom &amp; jerry"), "tom & jerry", "unescape &amp;")
tap.eq(tokenizer.html_unescape("&amp;amp;"), "&amp;", "unescape is one level per call")
tap.eq(tokenizer.html_unescape("&#x27;&#39;&#8217;"), "''" .. u(0x2019), "numeric references")
tap.eq(tokenizer.html_unescape("&#128;"), u(0x20AC), "&#128; is the euro sign (windows-1252)")
tap.eq(tokenizer.html_unescape("&#0;"), u(0xFFFD), "&#0; is U+FFFD")
tap.eq(tokenizer.html_unescape("&#x110000;"), u(0xFFFD), "beyond U+10FFFF is U+FFFD")
tap.eq(tokenizer.html_unescape("a&#1;b"), "ab", "invalid code point is dropped")
tap.eq(tokenizer.html_unescape("&eacute &notit; &unknown; & &;"), u(0xE9) .. " " .. u(0xAC) .. "it; &unknown; & &;",
  "legacy names without ';' and the longest-prefix rule")

-- ftfy.fix_text (the parts fmseg reproduces)
tap.eq(tokenizer.fix_text(u(0xFB01) .. "sh " .. u(0xFF2C, 0xFF2F, 0xFF35, 0xFF24)), "fish LOUD", "ligature and fullwidth")
tap.eq(tokenizer.fix_text(u(0x201C) .. "q" .. u(0x201D) .. " it" .. u(0x2019) .. "s"), "\"q\" it's", "curly quotes")
tap.eq(tokenizer.fix_text("\27[31mred\27[0m"), "red", "terminal escapes removed")
tap.eq(tokenizer.fix_text("a\0b\7c\127d" .. u(0xFEFF)), "abcd", "control characters removed")
tap.eq(tokenizer.fix_text(u(0x93) .. "x" .. u(0x94)), "\"x\"", "C1 controls read as windows-1252, then uncurled")
tap.eq(tokenizer.fix_text("a\r\nb\rc"), "a\nb\nc", "line breaks")
tap.eq(tokenizer.fix_text("a\r" .. u(0x2028) .. "b"), "a\n\nb", "\\r then U+2028: two line breaks, in ftfy's order")
tap.eq(tokenizer.fix_text("&amp;amp;amp;"), "&", "HTML unescaped until nothing changes")
tap.eq(tokenizer.fix_text("<b>&amp;</b>"), "<b>&amp;</b>", "no HTML unescaping once a '<' is seen")
tap.eq(tokenizer.fix_text("&NTILDE;"), u(0xD1), "ftfy decodes upper-cased entity names")

-- the whole cleaning, and the pre-tokeniser
tap.eq(tokenizer.clean("  Multiple \t spaces\n\nAND" .. u(0x3000) .. "Tabs "), "multiple spaces and tabs",
  "whitespace collapsed, stripped, lowered")
tap.eq(tokenizer.clean("Tom &amp;amp; Jerry"), "tom & jerry", "ftfy plus two html.unescape")
tap.eq(list(tokenizer.pretokenize("don't stop, it's 3:45pm!!")),
  "don,'t,stop,,,it,'s,3,:,4,5,pm,!!", "contractions, single digits, punctuation runs")
tap.eq(list(tokenizer.pretokenize("a<|endoftext|>b !<|endoftext|>")), "a,<|endoftext|>,b,!<|,endoftext,|>",
  "special token only where a match starts")
tap.eq(list(tokenizer.pretokenize("'sun 'rex 'x")), "'s,un,'re,x,',x", "contractions need no word end")
tap.eq(list(tokenizer.pretokenize("a" .. u(0x345) .. "b")), "a,b", "U+0345 matches no alternative (regex IGNORECASE)")
tap.eq(list(tokenizer.pretokenize(u(0x6771, 0x4EAC) .. "x" .. u(0x661))), u(0x6771, 0x4EAC) .. "x," .. u(0x661),
  "CJK letters join Latin ones; Arabic-Indic digit is a number")

---------------------------------------------------------------- with the vocabulary

local dir = tap.fixtures("clip-tiny")
if not dir then os.exit(tap.done()) end

local tok = tokenizer.load(dir)
tap.eq(tok.bos_id, json.decode_file(dir .. "/vocab.json")["<|startoftext|>"], "bos_id from vocab.json")
tap.eq(tok.eos_id, json.decode_file(dir .. "/vocab.json")["<|endoftext|>"], "eos_id from vocab.json")

-- the reference: ids from openai/CLIP's tokenizer
local refs = json.decode_file(dir .. "/tokenizer_ref.json")
tap.ok(#refs > 0, "tokenizer_ref.json has texts")
for _, r in ipairs(refs) do
  local got = tok:encode(r.text)
  local label = r.text:gsub("%s", " ")
  if #label > 40 then label = label:sub(1, 37) .. "..." end
  tap.eq(list(got), list(r.ids), "ids of " .. ("%q"):format(label))
end

-- the SD tokenizer/ folder has the same layout and vocabulary
local sd = tap.fixtures("sd-tiny")
if sd then
  local tok2 = tokenizer.load(sd .. "/tokenizer")
  local same = true
  for _, r in ipairs(refs) do same = same and list(tok2:encode(r.text)) == list(r.ids) end
  tap.ok(same, "sd-tiny/tokenizer gives the reference ids too")
end

-- text variants that the cleaning must map onto the same ids
tap.eq(list(tok:encode(u(0xFF2C, 0xFF2F, 0xFF35, 0xFF24) .. " " .. u(0xFB01) .. "sh")), list(tok:encode("loud fish")),
  "fullwidth letters and ligatures tokenize as ASCII")
tap.eq(list(tok:encode("caf" .. "e" .. u(0x301))), list(tok:encode("caf" .. u(0xE9))), "NFD input tokenizes as NFC")
tap.eq(list(tok:encode("A Photo  OF\tA Cat")), list(tok:encode("a photo of a cat")), "case and spacing do not matter")
local with_eos = tok:encode("a <|endoftext|> b")
tap.eq(with_eos[3], tok.eos_id, "<|endoftext|> in the text is the end token")
tap.eq(#tok:encode(""), 2, "empty text is start and end only")
local bad_utf8 = tok:encode("\255cat\192")
tap.ok(bad_utf8[1] == tok.bos_id and bad_utf8[#bad_utf8] == tok.eos_id, "invalid UTF-8 is replaced, not fatal")

-- BPE against a naive transcription of SimpleTokenizer.bpe (sets of pairs,
-- min over ranks, word.index scanning), on random words
local function bytes_to_unicode()
  local bs, cs = {}, {}
  local function add(a, b) for x = a, b do bs[#bs + 1] = x; cs[#cs + 1] = x end end
  add(33, 126); add(161, 172); add(174, 255)
  local have = {}
  for _, b in ipairs(bs) do have[b] = true end
  local n = 0
  for b = 0, 255 do
    if not have[b] then bs[#bs + 1] = b; cs[#cs + 1] = 256 + n; n = n + 1 end
  end
  local map = {}
  for i = 1, #bs do map[bs[i]] = unicode.char(cs[i]) end
  return map
end
local byte_encoder = bytes_to_unicode()
local merges = {}
do
  local f = assert(io.open(dir .. "/merges.txt", "rb"))
  local i = 0
  for line in f:lines() do
    if i >= 1 and i <= 49152 - 256 - 2 then
      local a, b = line:match("^(%S+) (%S+)$")
      merges[a .. "\0" .. b] = i - 1
    end
    i = i + 1
  end
  f:close()
end
local vocab = json.decode_file(dir .. "/vocab.json")

local function naive_bpe(token)
  local word = {}
  for i = 1, #token do word[i] = byte_encoder[token:byte(i)] end
  word[#word] = word[#word] .. "</w>"
  while #word > 1 do
    local best, bf, bs = nil, nil, nil
    for i = 1, #word - 1 do
      local r = merges[word[i] .. "\0" .. word[i + 1]]
      if r and (not best or r < best) then best, bf, bs = r, word[i], word[i + 1] end
    end
    if not best then break end
    local new, i = {}, 1
    while i <= #word do
      local j
      for k = i, #word do if word[k] == bf then j = k; break end end
      if not j then
        for k = i, #word do new[#new + 1] = word[k] end
        break
      end
      for k = i, j - 1 do new[#new + 1] = word[k] end
      i = j
      if word[i] == bf and i < #word and word[i + 1] == bs then
        new[#new + 1] = bf .. bs; i = i + 2
      else
        new[#new + 1] = word[i]; i = i + 1
      end
    end
    word = new
  end
  local ids = {}
  for i, piece in ipairs(word) do ids[i] = vocab[piece] end
  return ids
end

local seed = 4242
local function rnd(n)
  seed = (seed * 1103515245 + 12345) % 2147483648
  return seed % n + 1
end
local alphabet = { "a", "b", "c", "d", "e", "i", "l", "n", "o", "r", "s", "t", "th", "ing", "er", "x", "z", "q",
  "!", ".", "'", "1", "\195\169", "\195\188", "\230\157\177", "\240\159\144\177", "\208\188" }
local agree, tried = true, 0
for _ = 1, 3000 do
  local parts = {}
  for k = 1, rnd(12) do parts[k] = alphabet[rnd(#alphabet)] end
  local word = table.concat(parts)
  tried = tried + 1
  local want, got = naive_bpe(word), tok:bpe(word)
  if list(want) ~= list(got) then
    agree = false
    tap.diag(("bpe(%q): got %s, naive %s"):format(word, list(got), list(want)))
    break
  end
end
tap.ok(agree, ("BPE equals the naive algorithm on %d random words"):format(tried))
local long = ("xyzzy"):rep(60)
tap.eq(list(tok:bpe(long)), list(naive_bpe(long)), "BPE of a 300-byte word")

-- clip.tokenize: truncation and padding
local texts = { "a photo of a cat.", ("a dog and "):rep(40), "" }
local rows, lengths = tok:encode_batch(texts, { context_length = 77, pad_id = 49407 })
tap.eq(#rows, 3, "one row per text")
local full1 = tok:encode(texts[1])
local row_ok = #rows[1] == 77 and lengths[1] == #full1
for k = 1, #full1 do row_ok = row_ok and rows[1][k] == full1[k] end
for k = #full1 + 1, 77 do row_ok = row_ok and rows[1][k] == 49407 end
tap.ok(row_ok, "short text: its ids, then pad_id up to 77")
local full2 = tok:encode(texts[2])
tap.ok(#full2 > 77, "long text really is longer than the context")
local trunc_ok = #rows[2] == 77 and lengths[2] == 77 and rows[2][77] == tok.eos_id and rows[2][1] == tok.bos_id
for k = 1, 76 do trunc_ok = trunc_ok and rows[2][k] == full2[k] end
tap.ok(trunc_ok, "long text: first 76 ids, then the end token")
tap.ok(lengths[3] == 2 and rows[3][1] == tok.bos_id and rows[3][2] == tok.eos_id and rows[3][3] == 49407,
  "empty text: start, end, padding")

local r0 = tok:encode_batch({ "a cat" }, { context_length = 8, pad_id = 0 })
tap.eq(list(r0[1]), list(tok:encode("a cat")) .. ",0,0,0,0", "pad_id = 0 (clip.tokenize) and a short context")
local rdef = tok:encode_batch({ "a cat" })
tap.eq(#rdef[1], tok.context_length, "default context_length from tokenizer_config.json")
tap.eq(rdef[1][#rdef[1]], tok.pad_id, "default pad id from tokenizer_config.json's pad_token")
tap.raises(function() tok:encode_batch({ texts[2] }, { truncate = false }) end, "too long for context length",
  "truncate = false raises on long text")
tap.raises(function() tok:encode_batch({ "x" }, { context_length = 1 }) end, "context_length", "context_length < 2 raises")
tap.raises(function() tok:encode(nil) end, "expects a string", "encode(nil) raises")
tap.eq(tok:decode(tok:encode("a photo of a cat.")), "<|startoftext|>a photo of a cat . <|endoftext|>",
  "decode joins pieces")
tap.raises(function() tokenizer.load("/nonexistent/tok") end, "/nonexistent/tok/vocab.json", "missing files name the path")

os.exit(tap.done())
