-- apidoc.lua — the Lua API reference in docs/api/, made from the modules'
-- own comments: `make docs` (./fmseg run docs/apidoc.lua [OUT_DIR]).
--
-- A module's page is its header comment (the leading `--` block; lines
-- indented further are code) and, in file order, each public function:
-- `function M.name(...)`, `function Class:name(...)` at the start of a
-- line, or `M.name = local_function`, with the comment lines right above
-- its definition. Nothing is written by hand, so the pages cannot drift
-- from the code; tests/lua/test_docs.lua checks that the committed pages
-- are current.
local fs = require("fmseg.io.fs")
local core = require("fmseg.core")

-- The modules recipes use, in reading order: { module, one-line summary }
local MODULES = {
  { "fmseg.tensor", "tensors: creation, views, arithmetic, reductions" },
  { "fmseg.nn", "neural-network kernels over tensors" },
  { "fmseg.image", "decode, write and convert images" },
  { "fmseg.masks", "binary masks, boxes, COCO RLE" },
  { "fmseg.io.hub", "the Hugging Face hub: download a repository, find it in the cache" },
  { "fmseg.io.mat", "MATLAB .mat files (level 5), such as SBD's annotations" },
  { "fmseg.io.pickle", "Python pickles of plain data, such as refer's refs(unc).p" },
  { "fmseg.cluster", "k-means, spectral and eigen helpers" },
  { "fmseg.models", "load a model by kind from a Hugging Face directory" },
  { "fmseg.models.clip", "CLIP (transformers' CLIPModel)" },
  { "fmseg.models.vit", "DINO and DINOv2 ViTs" },
  { "fmseg.models.sam", "SAM's networks (transformers' SamModel)" },
  { "fmseg.models.sam2", "SAM 2 for images (transformers' Sam2Model): encoder, prompt encoder, mask decoder" },
  { "fmseg.models.sd", "Stable Diffusion pipelines" },
  { "fmseg.sam.predictor", "SAM: embed once, prompt many times" },
  { "fmseg.sam.amg", "SAM's and SAM 2's automatic mask generators" },
  { "fmseg.sam.sam2_predictor", "SAM 2: embed once, prompt many times" },
  { "fmseg.sam.sam2_transforms", "SAM 2's image and mask transforms" },
  { "fmseg.method.clipseg", "the protocol training-free CLIP recipes share" },
  { "fmseg.method.patches", "patch grids and feature upsampling for ViT recipes" },
  { "fmseg.method.recipes", "the recipe registry and contract" },
  { "fmseg.method.classes", "class-name files" },
  { "fmseg.method.templates", "prompt templates" },
  { "fmseg.eval.published", "the numbers papers report, to compare runs with" },
}

local root = core.root

local function module_path(module)
  local rel = module:gsub("%.", "/")
  local file = root .. "/lua/" .. rel .. ".lua"
  if fs.exists(file) then return file, "lua/" .. rel .. ".lua" end
  return root .. "/lua/" .. rel .. "/init.lua", "lua/" .. rel .. "/init.lua"
end

local function lines_of(text)
  local out = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do out[#out + 1] = line end
  if out[#out] == "" then out[#out] = nil end
  return out
end

-- Comment lines -> Markdown: text lines joined as they are, lines indented
-- by two or more spaces after "--" as code blocks.
local function comment_markdown(comments)
  local out, in_code = {}, false
  for _, c in ipairs(comments) do
    local body = c:match("^%-%- ?(.*)$") or ""
    local is_code = body:match("^  ") ~= nil
    if is_code and not in_code then out[#out + 1] = "```lua"; in_code = true end
    if not is_code and in_code and body ~= "" then
      local blanks = 0
      while out[#out] == "" do out[#out] = nil; blanks = blanks + 1 end
      out[#out + 1] = "```"
      if blanks > 0 then out[#out + 1] = "" end
      in_code = false
    end
    if in_code then
      out[#out + 1] = body:sub(3)
    else
      out[#out + 1] = body
    end
  end
  if in_code then
    while out[#out] == "" do out[#out] = nil end
    out[#out + 1] = "```"
  end
  return table.concat(out, "\n")
end

-- A file's header block and its public functions, in order.
local function parse(text)
  local lines = lines_of(text)
  local header, i = {}, 1
  while lines[i] and lines[i]:match("^%-%-") do
    header[#header + 1] = lines[i]
    i = i + 1
  end
  local entries, locals, pending = {}, {}, {}
  for k = i, #lines do
    local line = lines[k]
    if line:match("^%-%-") then
      pending[#pending + 1] = line
    else
      local owner, sep, name, params = line:match("^function ([%w_]+)([.:])([%w_]+)(%b())")
      local lname, lparams = line:match("^local function ([%w_]+)(%b())")
      local alias_owner, alias, target = line:match("^([%w_]+)%.([%w_]+) = ([%w_]+)%s*$")
      if owner then
        entries[#entries + 1] = { owner = owner, sep = sep, name = name, params = params, doc = pending }
      elseif lname then
        locals[lname] = { params = lparams, doc = pending }
      elseif alias_owner and locals[target] then
        entries[#entries + 1] = { owner = alias_owner, sep = ".", name = alias, params = locals[target].params,
                                  doc = locals[target].doc }
      end
      pending = {}
    end
  end
  return header, entries
end

local function private(e) return e.name:match("^_") ~= nil end

local function page(module, summary, source, text)
  local header, entries = parse(text)
  local out = { ("# %s — %s"):format(module, summary), "",
                ("Source: [`%s`](../../%s). Generated by `make docs` from the module's comments."):format(source, source),
                "", comment_markdown(header), "" }
  local shown = 0
  for _, e in ipairs(entries) do
    if not private(e) then
      local call
      if e.sep == ":" then     -- a method: t:shape(), predictor:predict(...)
        call = ("%s:%s%s"):format(e.owner == "methods" and "t" or e.owner:lower(), e.name, e.params)
      else                     -- M.new -> predictor.new
        call = ("%s.%s%s"):format(e.owner == "M" and module:match("([%w_]+)$") or e.owner, e.name, e.params)
      end
      out[#out + 1] = ("### `%s`"):format(call)
      out[#out + 1] = ""
      if #e.doc > 0 then
        out[#out + 1] = comment_markdown(e.doc)
        out[#out + 1] = ""
      end
      shown = shown + 1
    end
  end
  return table.concat(out, "\n"):gsub("\n\n\n+", "\n\n"), shown
end

local function write(path, text)
  fs.write_atomic(path, text)
end

local out_dir = (...) or (root .. "/docs/api")
fs.mkdir_p(out_dir)
local index = { "# fmseg Lua API", "",
                "The modules recipes use, generated from their comments by `make docs`",
                "(docs/apidoc.lua). Layers and the rest of the tree: README, Layout.", "" }
for _, m in ipairs(MODULES) do
  local module, summary = m[1], m[2]
  local path, source = module_path(module)
  local text = fs.read(path)
  if not text then error(("apidoc: cannot read %s for %s"):format(path, module), 0) end
  local md, n = page(module, summary, source, text)
  write(("%s/%s.md"):format(out_dir, module), md)
  index[#index + 1] = ("- [%s](%s.md) — %s (%d functions)"):format(module, module, summary, n)
end
write(out_dir .. "/README.md", table.concat(index, "\n") .. "\n")
print(("apidoc: %d modules written to %s"):format(#MODULES, out_dir))
