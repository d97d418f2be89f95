-- fmseg.text.noun_phrase — the head noun phrase of a referring expression,
-- what Global-Local CLIP encodes beside the whole sentence, found without a
-- parser.
--
--   local np = require("fmseg.text.noun_phrase")
--   np.words("The man's hat, on the left.")  --> {"The", "man", "'s", "hat", ",", ...}
--   np.head("the man in a red shirt on the left")   --> "the man"
--   np.head("the dog is lying on the grass")        --> "the dog"
--   np.head("second from left")                     --> "second from left"
--
-- The official code (Seonghoon-Yu/Zero-shot-RIS utils.py,
-- extract_noun_phrase) parses the sentence with spaCy's en_core_web_lg and
-- returns the noun chunk that holds the root, else the chunk of the root's
-- first child, else the whole sentence. spaCy cannot be had here, so
-- `head` approximates that on the short fragments referring expressions
-- are: the chunk is the run of words from the start up to the first word
-- that cannot be inside a noun phrase (a preposition, conjunction, relative
-- pronoun, auxiliary, participle after the noun, punctuation). A sentence
-- that opens with a preposition ("on the left") gives the chunk after it,
-- as the root's child; a run of position words and ordinals alone ("second",
-- "left") is no noun chunk, and the whole sentence is returned, as the
-- official code does when the root is not a noun. Where this differs from
-- spaCy, a table of the official phrases can be given instead
-- (global_local's `noun_phrases`, read by M.load_table).
local json = require("fmseg.io.json")
local fs = require("fmseg.io.fs")

local M = {}

local function set(list)
  local s = {}
  for w in list:gmatch("%S+") do s[w] = true end
  return s
end

-- Words that end a noun chunk: prepositions, conjunctions, relative and
-- wh-words, auxiliaries and common verbs, pronouns that open a clause.
M.BOUNDARY = set([[
  in on at with of by near behind beside besides next under over above below from to into onto
  against along across around without toward towards beneath underneath inside outside through
  like for than about among between via off up down past within upon after before
  and or but nor so yet
  who whom whose which that where when while whereas what
  is are was were be been being am has have had do does did can could will would should may might must
  're 've 'm 'd 'll
  he she it they we you i him her them us me
  ]])

-- Boundary words that open a chunk as determiners ("that man").
M.OPENS = set("that what which")

-- Words that are, alone, no noun: positions and ordinals.
M.POSITION = set([[
  left right middle center centre top bottom front back far near closest nearest farthest furthest
  first second third fourth fifth sixth seventh eighth ninth tenth last other
  leftmost rightmost topmost upper lower
  the a an this these those
  ]])

-- -ing words that are nouns, not participles.
M.ING_NOUNS = set([[
  ring king thing building ceiling clothing painting drawing string wing swing sling sibling
  darling pudding stuffing icing frosting topping filling awning railing siding bedding morning
  evening ending opening crossing landing spring duckling dumpling seedling
  ]])

local SUFFIXES = { "n't", "'s", "'re", "'ve", "'m", "'d", "'ll" }
local CLITIC = {}
for _, c in ipairs(SUFFIXES) do CLITIC[c] = true end

-- The words of a sentence as spaCy's English tokenizer splits such
-- fragments: whitespace, then punctuation off both ends and the clitics
-- ('s, n't, ...) off the word.
function M.words(sentence)
  local out = {}
  for chunk in sentence:gmatch("%S+") do
    local pre, post = {}, {}
    while #chunk > 1 and chunk:sub(1, 1):match("[%(%[\"'`]") and not CLITIC[chunk:lower()] do
      pre[#pre + 1] = chunk:sub(1, 1); chunk = chunk:sub(2)
    end
    local moved = true
    while moved and #chunk > 0 do
      moved = false
      local last = chunk:sub(-1)
      if last:match("[%.,!%?;:%)%]\"]") or (last == "'" and #chunk > 1) then
        table.insert(post, 1, last); chunk = chunk:sub(1, -2); moved = true
      else
        for _, s in ipairs(SUFFIXES) do
          if #chunk > #s and chunk:sub(-#s):lower() == s then
            table.insert(post, 1, chunk:sub(-#s)); chunk = chunk:sub(1, -#s - 1); moved = true
            break
          end
        end
      end
    end
    for _, w in ipairs(pre) do out[#out + 1] = w end
    if #chunk > 0 then out[#out + 1] = chunk end
    for _, w in ipairs(post) do out[#out + 1] = w end
  end
  return out
end

local function is_punct(w) return not w:find("[%w]") end

local function participle(w) return #w > 4 and w:sub(-3) == "ing" and not M.ING_NOUNS[w] end

-- The run of words from i that can form a noun chunk → its last index
local function chunk_end(words, i)
  local j = i - 1
  while j + 1 <= #words do
    local w = words[j + 1]:lower()
    local opens = j == i - 1 and M.OPENS[w]
    if (M.BOUNDARY[w] and not opens) or is_punct(w) or (j >= i and participle(w)) then break end
    j = j + 1
  end
  return j
end

local function only_positions(words, i, j)
  for k = i, j do
    if not M.POSITION[words[k]:lower()] then return false end
  end
  return true
end

-- words (a list, or a sentence split by M.words) → the head noun phrase,
-- its words joined by spaces
function M.head(sentence)
  local words = type(sentence) == "table" and sentence or M.words(sentence)
  local whole = table.concat(words, " ")
  local start = 1
  local first = words[1] and words[1]:lower()
  if first and M.BOUNDARY[first] and not M.OPENS[first] then start = 2 end
  local stop = chunk_end(words, start)
  if stop < start or (start == 1 and only_positions(words, start, stop)) then return whole end
  return table.concat(words, " ", start, stop)
end

-- A JSON object of sentence → noun phrase (the official phrases, made with
-- spaCy elsewhere), keys as the sentences are looked up: lower case, words
-- split by M.words and joined by single spaces.
function M.load_table(path)
  if not fs.exists(path) then error(("noun_phrases: %s not found"):format(path), 0) end
  local ok, t = pcall(json.decode, fs.read(path))
  if not ok or type(t) ~= "table" then
    error(("noun_phrases: %s is not a JSON object of sentence -> phrase: %s"):format(path, tostring(t)), 0)
  end
  local out = {}
  for k, v in pairs(t) do
    if type(k) ~= "string" or type(v) ~= "string" then
      error(("noun_phrases: %s: every entry must map a sentence to a phrase (strings)"):format(path), 0)
    end
    out[table.concat(M.words(k:lower()), " ")] = v
  end
  return out
end

return M
