-- `fmseg segment CONFIG IMAGE... [-o DIR]`: a config's recipe over images
-- (fmseg.method.segment), its outputs written as each image finishes.
local config = require("fmseg.io.config")
local image = require("fmseg.image")
local fs = require("fmseg.io.fs")
local segment = require("fmseg.method.segment")
local T = require("fmseg.tensor")

local function stem_of(path)
  return (path:match("([^/]+)$") or path):gsub("%.[^.]*$", "")
end

local USAGE = "segment CONFIG IMAGE... [-o DIR] [--set key=value] [--dump FILE] [--expression TEXT]"

local parser = require("fmseg.cli.args").parser("segment", USAGE, {
  { "-o", "--out", metavar = "DIR", default = "out", help = "where the outputs go" },
  { "--set", metavar = "k=v", key = "sets", list = true, help = "override a config key" },
  { "--dump", metavar = "FILE", help = "the recipe's intermediates, as safetensors" },
  { "--expression", metavar = "TEXT", help = "what a referring recipe segments (e.g. global_local)" },
}, { { "config", required = true }, { "images", required = true, list = true, label = "images" } })

local M = { usage = "segment CONFIG IMAGE... [-o DIR] [--set k=v]",
            help = "segment images with a config's recipe" }

-- A failing image is reported and skipped; the others' outputs are written
-- as each finishes. Exit 1 if any failed.
function M.run(argv)
  local opts = parser:parse(argv)
  if not opts then return 0 end
  local cfg = config.load(opts.config, opts.sets)
  local session = segment.session(cfg)
  fs.mkdir_p(opts.out)
  local dumps, failed = {}, 0
  local t0 = os.time()
  for k, path in ipairs(opts.images) do
    io.stderr:write(("\rsegment: %d/%d %-60s"):format(k, #opts.images, path))
    local ok, err = pcall(function()
      local img = image.load(path)
      local result = session:segment(img, { path = path, stem = stem_of(path), expression = opts.expression,
                                            raw = opts.expression })
      session:write(result, img, opts.out, stem_of(path))
      if opts.dump and result.dump then
        for name, t in pairs(result.dump) do
          if T.is_tensor(t) then      -- tensors; a recipe's notes (strings) stay out
            dumps[#opts.images == 1 and name or (stem_of(path) .. "." .. name)] = t
          end
        end
      end
    end)
    if not ok then
      failed = failed + 1
      io.stderr:write(("\nsegment: %s: %s\n"):format(path, tostring(err)))
    end
  end
  io.stderr:write(("\r%-80s\rsegment: %d image(s) in %d s, outputs in %s/%s\n"):format("",
    #opts.images - failed, os.time() - t0, opts.out, failed > 0 and (", " .. failed .. " failed") or ""))
  if opts.dump then
    require("fmseg.io.safetensors").save(opts.dump, dumps)
  end
  return failed == 0 and 0 or 1
end

return M
