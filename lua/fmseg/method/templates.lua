-- fmseg.method.templates — prompt templates; "{}" stands for the class name.
local M = {}

-- The 80 ImageNet templates of CLIP (openai/CLIP, notebooks/Prompt_Engineering),
-- used by SCLIP, ClearCLIP, NACLIP, ProxyCLIP.
M.imagenet = {
  "a bad photo of a {}.",
  "a photo of many {}.",
  "a sculpture of a {}.",
  "a photo of the hard to see {}.",
  "a low resolution photo of the {}.",
  "a rendering of a {}.",
  "graffiti of a {}.",
  "a bad photo of the {}.",
  "a cropped photo of the {}.",
  "a tattoo of a {}.",
  "the embroidered {}.",
  "a photo of a hard to see {}.",
  "a bright photo of a {}.",
  "a photo of a clean {}.",
  "a photo of a dirty {}.",
  "a dark photo of the {}.",
  "a drawing of a {}.",
  "a photo of my {}.",
  "the plastic {}.",
  "a photo of the cool {}.",
  "a close-up photo of a {}.",
  "a black and white photo of the {}.",
  "a painting of the {}.",
  "a painting of a {}.",
  "a pixelated photo of the {}.",
  "a sculpture of the {}.",
  "a bright photo of the {}.",
  "a cropped photo of a {}.",
  "a plastic {}.",
  "a photo of the dirty {}.",
  "a jpeg corrupted photo of a {}.",
  "a blurry photo of the {}.",
  "a photo of the {}.",
  "a good photo of the {}.",
  "a rendering of the {}.",
  "a {} in a video game.",
  "a photo of one {}.",
  "a doodle of a {}.",
  "a close-up photo of the {}.",
  "a photo of a {}.",
  "the origami {}.",
  "the {} in a video game.",
  "a sketch of a {}.",
  "a doodle of the {}.",
  "a origami {}.",
  "a low resolution photo of a {}.",
  "the toy {}.",
  "a rendition of the {}.",
  "a photo of the clean {}.",
  "a photo of a large {}.",
  "a rendition of a {}.",
  "a photo of a nice {}.",
  "a photo of a weird {}.",
  "a blurry photo of a {}.",
  "a cartoon {}.",
  "art of a {}.",
  "a sketch of the {}.",
  "a embroidered {}.",
  "a pixelated photo of a {}.",
  "itap of the {}.",
  "a jpeg corrupted photo of the {}.",
  "a good photo of a {}.",
  "a plushie {}.",
  "a photo of the nice {}.",
  "a photo of the small {}.",
  "a photo of the weird {}.",
  "the cartoon {}.",
  "art of the {}.",
  "a drawing of the {}.",
  "a photo of the large {}.",
  "a black and white photo of a {}.",
  "the plushie {}.",
  "a dark photo of a {}.",
  "itap of a {}.",
  "graffiti of the {}.",
  "a toy {}.",
  "itap of my {}.",
  "a photo of a cool {}.",
  "a photo of a small {}.",
  "a tattoo of the {}.",
}

-- MaskCLIP's 85: the 80 above plus five "in the scene" sentences.
M.maskclip = {}
for i, t in ipairs(M.imagenet) do M.maskclip[i] = t end
for _, t in ipairs({ "there is a {} in the scene.", "there is the {} in the scene.",
                     "this is a {} in the scene.", "this is the {} in the scene.",
                     "this is one {} in the scene." }) do
  M.maskclip[#M.maskclip + 1] = t
end

-- The single template of GEM and of quick tests.
M.photo = { "a photo of a {}." }

-- fill("a photo of a {}.", "cat") → "a photo of a cat."
function M.fill(template, name)
  local i = template:find("{}", 1, true)
  if not i then return template end
  return template:sub(1, i - 1) .. name .. template:sub(i + 2)
end

-- A named set or a list given in a config.
function M.get(value)
  if type(value) == "table" then return value end
  local set = M[value or "imagenet"]
  if type(set) ~= "table" then error(("unknown template set '%s' (imagenet, maskclip, photo)"):format(tostring(value)), 0) end
  return set
end

return M
