-- fmseg.eval.prepare_context459 — PASCAL Context's 459-class validation maps
-- as detectron2-style datasets/prepare_pascal_context.py (ov-seg; CAT-Seg's
-- prepare_pascal_context_459.py is the same conversion) writes them, from
-- VOCdevkit/VOC2010 with trainval.tar.gz (trainval/<id>.mat) unpacked in it:
--
--   the ids of pascalcontext_val.txt (5,104 in CAT-Seg's copy), each whose
--     trainval/<id>.mat exists (the others are skipped, as there);
--   convert_pc459: scipy.io.loadmat(mat)["LabelMap"] (uint16, 1..459 and
--     0 unlabelled) minus 1 in uint16, so 0..458 and 65535;
--   annotations_detectron2/pc459_val/<id>.tif: a 16-bit TIFF
--     (Image.fromarray(uint16).save(path, "TIFF")).
--
-- The official configs list the images with ImageSets/SegmentationContext/
-- val.txt (mmsegmentation's pascal_context.py, `fmseg prepare context`):
-- written here from the ids converted when it is not there yet; when it is,
-- ids it lists that got no label here are reported (fmseg eval would stop
-- at them). Without pascalcontext_val.txt (CAT-Seg ships it as
-- datasets/pascalcontext_val.txt) that val.txt gives the ids. The pc59_val PNGs ov-seg's script also writes
-- are not made: fmseg's context59 reads mmsegmentation's layout.
--
-- The MAT files go through fmseg.io.mat; scipy returns LabelMap in its
-- stored type (mat_dtype=False) and the official arithmetic is that
-- type's, so a LabelMap not stored as uint16 is refused.
local fs = require("fmseg.io.fs")
local image = require("fmseg.image")
local mat = require("fmseg.io.mat")

local M = {}

-- The (H, W) int32 values of a real 2-D matrix `name` of a MAT file stored
-- as uint16 (row-major: MATLAB stores columns).
function M.read_mat_u16(path, name)
  local lab, info = mat.read(path, name)
  if not info then error(("%s: %s is not a numeric matrix"):format(path, name), 0) end
  if info.storage ~= "uint16" then
    error(("%s: %s (%s) is stored as %s, expected uint16 (the official conversion is uint16 arithmetic)"):format(
      path, name, info.class, info.storage), 0)
  end
  if lab:dim() ~= 2 or lab:numel() == 0 then
    error(("%s: %s is %s, expected a 2-D matrix"):format(path, name, table.concat(lab:shape(), "x")), 0)
  end
  return lab
end

-- ---- the conversion --------------------------------------------------------------

-- convert_pc459: mask - 1 on uint16 (0, unlabelled, wraps to 65535)
function M.convert_mat(path)
  local lab = M.read_mat_u16(path, "LabelMap")
  local p = lab:ptr()
  for i = 0, lab:numel() - 1 do p[i] = (p[i] + 65535) % 65536 end
  return lab
end

local function read_ids(path)
  local ids = {}
  for line in (fs.read(path) or ""):gmatch("[^\n]+") do
    local id = line:match("^%s*(.-)%s*$")
    if id ~= "" then ids[#ids + 1] = id end
  end
  return ids
end

function M.convert(job)
  local prepare = require("fmseg.eval.prepare")
  local raw, root, rep = job.raw, job.root, job.rep
  local mats = prepare.join(raw, "trainval")
  if not fs.is_dir(mats) then
    error(("prepare context459: %s not found (expected %s)"):format(mats, job.entry.layout), 0)
  end
  local list = prepare.join(raw, "pascalcontext_val.txt")
  local split = "ImageSets/SegmentationContext/val.txt"
  if not fs.exists(list) then
    if not fs.exists(prepare.join(raw, split)) then
      error(("prepare context459: neither %s nor %s found (the val ids: CAT-Seg's datasets/pascalcontext_val.txt, "
        .. "or `fmseg prepare context` first; expected %s)"):format(list, prepare.join(raw, split),
        job.entry.layout), 0)
    end
    list = prepare.join(raw, split)
  end
  local ids = read_ids(list)
  local jobs, missing = {}, 0
  for _, id in ipairs(ids) do
    local mat_path = prepare.join(mats, id .. ".mat")
    if fs.exists(mat_path) then
      local target = prepare.join(root, "annotations_detectron2/pc459_val/" .. id .. ".tif")
      jobs[#jobs + 1] = { id = id, source = mat_path, target = target,
                          write = function(tmp)
                            local ok, lab = pcall(M.convert_mat, mat_path)
                            if not ok then   -- the job's source names the file already
                              local msg = tostring(lab)
                              error(msg:sub(1, #mat_path + 2) == mat_path .. ": " and msg:sub(#mat_path + 3) or msg, 0)
                            end
                            image.save_tiff16(tmp, lab)
                          end }
    else
      missing = missing + 1
    end
  end
  if #jobs == 0 then
    error(("prepare context459: none of the %d ids of %s has a %s/<id>.mat (expected %s)"):format(#ids, list,
      mats, job.entry.layout), 0)
  end
  local counts = prepare.run_jobs("context459", jobs, rep, job.quiet)
  counts.what = ("annotations_detectron2/pc459_val/<id>.tif (ids of %s%s)"):format(list,
    missing > 0 and (", %d without a .mat skipped as the official does"):format(missing) or "")
  local parts = { counts }
  local split_path = prepare.join(root, split)
  if fs.exists(split_path) then
    local lacking = {}
    for _, id in ipairs(read_ids(split_path)) do
      if not fs.exists(prepare.join(root, "annotations_detectron2/pc459_val/" .. id .. ".tif")) then
        lacking[#lacking + 1] = id
      end
    end
    if #lacking > 0 then
      rep.problem(("%s lists %d id(s) with no annotations_detectron2/pc459_val/<id>.tif (%s%s), which fmseg eval "
        .. "context459 reads: not in %s or without a trainval/<id>.mat"):format(split_path, #lacking,
        table.concat(lacking, ", ", 1, math.min(3, #lacking)), #lacking > 3 and ", ..." or "", list))
    end
  else
    local done = {}
    for _, j in ipairs(jobs) do
      if fs.exists(j.target) then done[#done + 1] = j.id .. "\n" end
    end
    fs.mkdir_p(prepare.dirname(split_path))
    fs.write_atomic(split_path, table.concat(done))
    parts[2] = { total = 1, written = 1, skipped = 0, failed = 0,
                 what = ("%s (it was not there: the %d ids converted)"):format(split, #done) }
  end
  return parts
end

return M
