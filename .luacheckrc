-- luacheck (Debian lua-check) for `make lint`: lua/, recipes/, bench/, tests/.
std = "luajit"
max_line_length = 130
-- Methods keep the a:b() form even where one does not read self (a model's
-- hooks, a fake predictor in a test), so every implementation has one shape.
self = false
exclude_files = { "tests/fixtures/**", "build/**" }
-- generated tables (tests/tools/gen_unicode.py)
files["lua/fmseg/text/unicode_data.lua"] = { max_line_length = false }
files["lua/fmseg/text/html_entities.lua"] = { max_line_length = false }
-- An argument named _x is unused on purpose (a callback's fixed signature).
ignore = { "212/_.*" }
