-- fmseg.cli.args: the sub-commands' option parser — types, defaults, lists,
-- positionals, and one clear error per kind of bad input.
local tap = require("tap")
local args = require("fmseg.cli.args")

local function pair(s)
  local a, b = s:match("^(%d+)/(%d+)$")
  if not a then return nil, "expected A/B" end
  return { tonumber(a), tonumber(b) }
end

local p = args.parser("demo", "demo --model DIR IMAGE [options]", {
  { "--model", metavar = "DIR", required = true },
  { "-o", "--output", metavar = "FILE" },
  { "--size", type = "number", default = 448 },
  { "--count", type = "integer", min = 1 },
  { "--mode", choices = { "fast", "exact" }, default = "exact" },
  { "-q", "--quiet", type = "flag" },
  { "--set", key = "sets", list = true },
  { "--pair", type = pair },
}, { { "image", required = true }, { "extra" } })

local o = p:parse({ "--model", "m", "img.png", "-o", "out.png", "--size", "-2.5", "--count", "3",
                    "--set", "a=1", "-q", "--set", "b=2", "--pair", "3/8", "more" })
tap.ok(o.model == "m" and o.image == "img.png" and o.extra == "more" and o.output == "out.png",
       "strings and positionals land in their keys")
tap.ok(o.size == -2.5 and o.count == 3, "numbers are converted (a negative value is a value, not an option)")
tap.ok(o.quiet == true and o.mode == "exact", "a flag takes no value; an absent option keeps its default")
tap.eq(table.concat(o.sets, ","), "a=1,b=2", "a list option collects every occurrence in order")
tap.ok(o.pair[1] == 3 and o.pair[2] == 8, "a converter function makes the value")

o = p:parse({ "img.png", "--model", "m" })
tap.ok(o.size == 448 and o.output == nil and o.quiet == nil and #o.sets == 0 and o.extra == nil,
       "defaults, absent options and an empty list")

local function fails(argv, want, name) tap.raises(function() p:parse(argv) end, want, name) end
fails({ "img.png" }, "demo: no --model given (fmseg demo --model DIR IMAGE [options])", "a required option")
fails({ "--model", "m" }, "demo: no image given", "a required positional")
fails({ "--model", "m", "i", "x", "y" }, "demo: unexpected argument 'y'", "one positional too many")
fails({ "--model", "m", "i", "--size" }, "demo: --size needs a value", "an option without its value")
fails({ "--model", "m", "i", "--size", "big" }, "demo: --size needs a number, got 'big'", "not a number")
fails({ "--model", "m", "i", "--count", "0" }, "demo: --count needs a whole number >= 1, got 0", "below min")
fails({ "--model", "m", "i", "--count", "1.5" }, "needs a whole number", "not whole")
fails({ "--model", "m", "i", "--mode", "slow" }, "demo: --mode is fast or exact, got 'slow'", "choices")
fails({ "--model", "m", "i", "--pair", "3" }, "demo: --pair '3': expected A/B", "a converter's reason")
fails({ "--model", "m", "i", "--bogus" }, "demo: unknown option '--bogus'", "an unknown option")

local lists = args.parser("merge", "merge DIR... [-o OUT]", { { "-o", "--out" } },
                          { { "dirs", label = "run directories", required = true, list = true } })
o = lists:parse({ "a", "-o", "x", "b", "c" })
tap.eq(table.concat(o.dirs, ",") .. " " .. o.out, "a,b,c x", "a list positional takes the rest")
tap.raises(function() lists:parse({ "-o", "x" }) end, "merge: no run directories given", "its label in the error")

local help = p:help()
tap.ok(help:find("usage: fmseg demo", 1, true) and help:find("%-%-size N%s+default 448")
       and help:find("%-o, %-%-output FILE") and help:find("%-%-model DIR%s+required"),
       "help: usage line, one line per option with metavar, default, required", help)

os.exit(tap.done())
