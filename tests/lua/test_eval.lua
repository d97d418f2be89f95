-- The evaluation harness: metrics against hand-computed confusion tables
-- (ignore index, reduce_zero_label, classes absent from the ground truth),
-- Hungarian matching against brute force, CorLoc on constructed boxes, and
-- `fmseg eval` end to end on tiny datasets with a test recipe that reads
-- its answer from the image: numbers against a direct count written here,
-- a run killed with SIGKILL and resumed, shards merged, refusals, tables.
local tap = require("tap")
local tiny = require("tiny_data")
local core = require("fmseg.core")
local data = require("fmseg.eval.data")
local ev = require("fmseg.eval")
local image = require("fmseg.image")
local json = require("fmseg.io.json")

local ROOT = core.root
local FMSEG = ROOT .. "/fmseg"
local RECIPES = ROOT .. "/tests/lua/recipes"
local tmp = tiny.tmpdir("eval")

local function near(a, b, tol)
  if a ~= a or b ~= b then return a ~= a and b ~= b end
  return math.abs(a - b) <= (tol or 1e-12)
end

-- ---- metrics from a hand-computed confusion table ------------------------------

do
  -- 3 classes; rows ground truth, columns prediction, last column "no class"
  --   gt 0: 5 right, 1 as class 1
  --   gt 1: 2 as class 0, 3 right, 1 unlabelled
  --   gt 2: absent; nothing predicted as 2 either
  local s = ev.add(ev.stats(3), { { 0, 0, 5 }, { 0, 1, 1 }, { 1, 0, 2 }, { 1, 1, 3 }, { 1, 3, 1 } })
  local m = ev.metrics(s)
  tap.ok(near(m.IoU[1], 5 / 8) and near(m.IoU[2], 3 / 7), "IoU = tp / (pred + label - tp): 5/8 and 3/7")
  tap.ok(near(m.Acc[1], 5 / 6) and near(m.Acc[2], 3 / 6), "Acc = tp / label (the unlabelled pixel counts as missed)")
  tap.ok(m.IoU[3] ~= m.IoU[3] and m.Acc[3] ~= m.Acc[3], "a class absent from ground truth and prediction is NaN")
  tap.ok(near(m.mIoU, (5 / 8 + 3 / 7) / 2) and near(m.mAcc, (5 / 6 + 3 / 6) / 2), "means skip NaN (nanmean)")
  tap.ok(near(m.aAcc, 8 / 12), "aAcc = sum tp / labelled pixels")

  -- predicted but absent from the ground truth: IoU 0 (counted), Acc NaN
  local s2 = ev.add(ev.stats(3), { { 0, 0, 4 }, { 0, 2, 2 } })
  local m2 = ev.metrics(s2)
  tap.ok(m2.IoU[3] == 0 and m2.Acc[3] ~= m2.Acc[3], "a class only predicted: IoU 0, Acc NaN")
  tap.ok(near(m2.mIoU, (4 / 6 + 0) / 2), "and its IoU 0 enters the mean")
  tap.raises(function() ev.add(ev.stats(3), { { 4, 0, 1 } }) end, "outside a 3-class table",
             "entries outside the table are refused")
end

-- ---- per-image entries from tensors ----------------------------------------------

do
  -- gt (2 x 4) with one ignored pixel, pred with one unlabelled pixel (255)
  local gt = tiny.grid(2, 4, { [0] = 0, 0, 1, 1, 1, 255, 2, 0 })
  local pred = tiny.grid(2, 4, { [0] = 0, 1, 1, 255, 1, 2, 2, 0 })
  local s = ev.add(ev.stats(3), ev.image_entries(pred, gt, 3, 255))
  local m = ev.metrics(s)
  -- class 0: label 3 (pixels 0, 1, 7), pred 2 (0, 7), tp 2 -> IoU 2/3
  -- class 1: label 3 (2, 3, 4), pred 3 (1, 2, 4), tp 2 -> IoU 2/4
  -- class 2: label 1 (6), pred 1 (6; pixel 5 is ignored), tp 1 -> IoU 1
  tap.ok(near(m.IoU[1], 2 / 3) and near(m.IoU[2], 2 / 4) and near(m.IoU[3], 1), "tensors: per-class IoU by hand")
  tap.ok(near(m.aAcc, 5 / 7), "tensors: ignored pixel left out, unlabelled prediction counted as wrong")
  tap.raises(function() ev.image_entries(tiny.grid(1, 2, { [0] = 0, 7 }), tiny.grid(1, 2, { [0] = 0, 1 }), 3, 255) end,
    "value 7 at (y 0, x 1) has no mapping (the dataset has 3 classes; 255 means unlabelled)",
    "a prediction outside the classes is refused with the pixel named")

  -- reduce_zero_label ground truth (as for VOC20 / ADE20K): raw 0 ignored
  local raw = tiny.grid(1, 6, { [0] = 0, 1, 2, 3, 255, 1 })
  local reduced = data.remap(raw, data.label_table({ reduce_zero_label = true, ignore_index = 255 }))
  local p = tiny.grid(1, 6, { [0] = 2, 0, 0, 2, 1, 1 })
  local m2 = ev.metrics(ev.add(ev.stats(3), ev.image_entries(p, reduced, 3, 255)))
  -- reduced gt: 255 0 1 2 255 0 -> kept pixels gt 0 1 2 0, pred 0 0 2 1:
  -- class 0: label 2, pred 2, tp 1 -> 1/3; class 1: tp 0 -> 0; class 2: 1
  tap.ok(near(m2.IoU[1], 1 / 3) and near(m2.IoU[2], 0) and near(m2.IoU[3], 1) and near(m2.aAcc, 2 / 4),
    "reduce_zero_label: raw 0 ignored, the rest shifted down, then scored")
end

-- ---- Hungarian matching vs brute force ---------------------------------------------

-- The best total over every assignment of the smaller side to distinct
-- members of the other, how many assignments reach it, and (rows <= columns)
-- the column of each row in the first one that does.
local function brute_force(matrix, maximize)
  local nr, nc = #matrix, #matrix[1]
  local best, count, best_cols = maximize and -math.huge or math.huge, 0, nil
  local used, chosen = {}, {}
  local transpose = nr > nc
  local rows, ncols = transpose and nc or nr, transpose and nr or nc
  local function at(i, j) return transpose and matrix[j][i] or matrix[i][j] end
  local function go(i, acc)
    if i > rows then
      if acc == best then
        count = count + 1
      elseif (maximize and acc > best) or (not maximize and acc < best) then
        best, count, best_cols = acc, 1, { unpack(chosen) }
      end
      return
    end
    for j = 1, ncols do
      if not used[j] then
        used[j], chosen[i] = true, j
        go(i + 1, acc + at(i, j))
        used[j] = false
      end
    end
  end
  go(1, 0)
  return best, count, best_cols
end

do
  local rand = tiny.rng(11)
  local all_ok, detail = true, nil
  local cases = 0
  for nr = 1, 5 do
    for nc = 1, 6 do
      for rep = 1, 4 do
        local m = {}
        for i = 1, nr do
          m[i] = {}
          -- small integers make ties common; rep 4 uses wide values
          for j = 1, nc do m[i][j] = rep == 4 and rand(-1000, 1000) / 7 or rand(0, 4) end
        end
        for _, maximize in ipairs({ false, true }) do
          local pairs_ = ev.linear_sum_assignment(m, maximize)
          local total, rows_seen, cols_seen = 0, {}, {}
          local valid = #pairs_ == math.min(nr, nc)
          for _, pr in ipairs(pairs_) do
            valid = valid and not rows_seen[pr[1]] and not cols_seen[pr[2]]
            rows_seen[pr[1]], cols_seen[pr[2]] = true, true
            total = total + m[pr[1]][pr[2]]
          end
          local want = brute_force(m, maximize)
          cases = cases + 1
          if not valid or math.abs(total - want) > 1e-9 then
            all_ok, detail = false, ("%dx%d maximize=%s: got %g, brute force %g"):format(nr, nc, tostring(maximize), total, want)
          end
        end
      end
    end
  end
  tap.ok(all_ok, ("Hungarian = brute force over all assignments (%d random cases, ties included)"):format(cases), detail)
  local const = ev.linear_sum_assignment({ { 1, 1, 1 }, { 1, 1, 1 }, { 1, 1, 1 } })
  tap.ok(const[1][2] == 1 and const[2][2] == 2 and const[3][2] == 3,
    "a constant matrix gives the identity (SciPy's tie rule)")
end

-- ---- DiffSeg matching of segments, constructed ----------------------------------------

do
  -- classes 0, 1 present, class 2 absent; segments 0, 1, 2 (ids) and an
  -- ignored pixel. gt:  0 0 0 0 0 1 1 1 255   seg: 0 0 0 2 2 1 1 0 1
  local gt = tiny.grid(1, 9, { [0] = 0, 0, 0, 0, 0, 1, 1, 1, 255 })
  local seg = tiny.grid(1, 9, { [0] = 0, 0, 0, 2, 2, 1, 1, 0, 1 })
  -- hist rows 0: [3 0 2], 1: [1 2 0], 2: [0 0 0]; the best assignment is
  -- 0->seg 0 (3), 1->seg 1 (2), and class 2 is left seg 2 (0): total 5.
  local entries, class_of = ev.match_segments(seg, gt, 3, 255)
  tap.ok(class_of[0] == 0 and class_of[1] == 1 and class_of[2] == 2, "segments matched to classes by maximal intersection")
  local m = ev.metrics(ev.add(ev.stats(3), entries))
  -- tp (3, 2, 0); fn = row - tp: (2, 1, 0); fp = matched column - tp: (1, 0, 2)
  tap.ok(near(m.IoU[1], 3 / 6) and near(m.IoU[2], 2 / 3) and near(m.IoU[3], 0),
    "DiffSeg counts: tp/(tp+fp+fn) with the absent class taking its leftover segment as false positives")
  tap.ok(near(m.aAcc, 5 / 8), "DiffSeg accuracy: matched pixels / labelled pixels")
  local relabelled = ev.relabel_segments(seg, class_of, 255):totable()[1]
  tap.ok(relabelled[4] == 2 and relabelled[8] == 0, "segments relabelled to their classes for the stored prediction")
  -- more segments than classes: an unmatched segment's pixels are misses
  local seg2 = tiny.grid(1, 9, { [0] = 0, 0, 0, 5, 5, 1, 1, 1, 1 })
  local e2, c2 = ev.match_segments(seg2, gt, 3, 255)
  local m2 = ev.metrics(ev.add(ev.stats(3), e2))
  tap.ok(c2[0] == 0 and c2[1] == 1 and c2[5] == nil or c2[5] == 2, "six segment ids against three classes")
  tap.ok(near(m2.Acc[1], 3 / 5) and near(m2.IoU[2], 1), "unmatched segment pixels count as misses of their class")
end

-- ---- CorLoc ---------------------------------------------------------------------------

do
  tap.ok(near(ev.box_iou({ 0, 0, 10, 10 }, { 5, 0, 15, 10 }), 50 / 150), "box IoU: half-overlapping squares give 1/3")
  tap.ok(near(ev.box_iou({ 0, 0, 10, 10 }, { 20, 20, 30, 30 }), 0), "disjoint boxes: 0")
  local hit, iou = ev.corloc_hit({ 0, 0, 10, 10 }, { { 50, 50, 60, 60 }, { 0, 0, 10, 20 } })
  tap.ok(hit and near(iou, 0.5), "IoU exactly 0.5 with any one ground-truth box counts")
  tap.ok(not ev.corloc_hit({ 0, 0, 20, 20 }, { { 0, 0, 10, 10 } }), "IoU 0.25 does not")
  tap.ok(not ev.corloc_hit(nil, { { 0, 0, 10, 10 } }), "no box, no hit")
end

-- ---- end to end: fmseg eval ----------------------------------------------------------

local run = tiny.run

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function eval_cmd(cfg, root, out, extra)
  return ("%s eval %s --data %s -o %s %s"):format(FMSEG, q(cfg), q(root), q(out), extra or "")
end

local function metrics_of(dir, name)
  return json.decode(tiny.read(dir .. "/" .. (name or "metrics") .. ".json") or "null")
end

-- A VOC21-layout dataset: 30 images, PNG so that colours survive; gt over
-- classes 0..5 with ignored pixels; the painted prediction mostly right,
-- sometimes another class (6 is never in the gt), sometimes unlabelled.
local VOC = tmp .. "/voc"
local N, H, W = 30, 10, 14
local truth = {}
do
  local rand = tiny.rng(3)
  local items = {}
  for n = 1, N do
    local gt, pred = {}, {}
    for i = 0, H * W - 1 do
      gt[i] = rand(0, 11) == 0 and 255 or rand(0, 5)
      local r = rand(0, 99)
      pred[i] = r < 70 and (gt[i] == 255 and 0 or gt[i]) or r < 96 and rand(0, 6) or 255
    end
    local id = ("2007_%06d"):format(n)
    truth[n] = { gt = gt, pred = pred }
    items[n] = { id = id, img = tiny.paint(H, W, pred), gt = tiny.grid(H, W, gt) }
  end
  tiny.write_layout(VOC, { images = "JPEGImages", image_suffix = ".png", annotations = "SegmentationClass",
    annotation_suffix = ".png", split = "ImageSets/Segmentation/val.txt" }, items)
end

-- mmseg's intersect_and_union, counted directly over the chosen images;
-- `fill` replaces unlabelled predictions (instances over background).
local function expected_metrics(indices, k, fill)
  local items = {}
  for _, n in ipairs(indices) do items[#items + 1] = { gt = truth[n].gt, pred = truth[n].pred, n = H * W } end
  return tiny.direct_metrics(items, k, 255, fill)
end

local function range(a, b, step)
  local out = {}
  for i = a, b, step or 1 do out[#out + 1] = i end
  return out
end

local function same_numbers(got, want, what)
  local ok, why = tiny.same_metrics(got, want)
  return tap.ok(ok, what, why)
end

local function identical(a, b)
  if not a or not b then return false end
  return json.encode({ a.aAcc, a.mIoU, a.mAcc, a.IoU, a.Acc, a.confusion }, { nan = "null" })
      == json.encode({ b.aAcc, b.mIoU, b.mAcc, b.IoU, b.Acc, b.confusion }, { nan = "null" })
end

local function write_cfg(name, extra)
  local path = tmp .. "/" .. name .. ".yaml"
  tiny.write(path, ("_base_: %s/configs/_base_/datasets/voc21.yaml\nrecipe: %s/test_colors.lua\n"
    .. "data:\n  image_suffix: .png\n%s"):format(ROOT, RECIPES, extra or ""))
  return path
end

local CFG = write_cfg("colors")
local FULL = tmp .. "/run_full"
local rc, out = run(eval_cmd(CFG, VOC, FULL))
tap.eq(rc, 0, "fmseg eval runs the test recipe over a VOC21-layout dataset")
if rc ~= 0 then tap.diag(out) end
local full = metrics_of(FULL)
same_numbers(full, expected_metrics(range(1, N), 21), "aAcc, mIoU, mAcc and per-class IoU equal a direct count (mmseg semantics)")
tap.ok(full and full.images == N and full.IoU[8] == json.null, "30 images; classes never seen are NaN (null in JSON)")
tap.ok(out:find("img/s", 1, true) and out:find("ETA", 1, true), "a progress bar with images/s and ETA on stderr")
tap.ok(out:find("mIoU " .. ("%.2f"):format(100 * expected_metrics(range(1, N), 21).mIoU), 1, true) ~= nil,
  "the summary prints mIoU in percent")
local pred1 = image.load_indices(FULL .. "/pred/2007_000001.png")
tap.ok(pred1:size(1) == H and pred1:get(1, 1) == truth[1].pred[0], "the scored prediction is kept as a palette PNG")
tap.ok(tiny.read(FULL .. "/config.yaml"):find("recipe: " .. RECIPES .. "/test_colors.lua", 1, true) ~= nil
  and json.decode(tiny.read(FULL .. "/run.json")).fmseg_version == require("fmseg").version(),
  "the run records the resolved config and the fmseg version")

-- a rerun computes nothing and gives the same numbers
local t_item = tiny.read(FULL .. "/items/2007_000005.json")
rc = run(eval_cmd(CFG, VOC, FULL, "--quiet"))
tap.ok(rc == 0 and identical(metrics_of(FULL), full) and tiny.read(FULL .. "/items/2007_000005.json") == t_item,
  "a rerun skips finished images and reports the same numbers")

-- --limit
local LIM = tmp .. "/run_limit"
rc = run(eval_cmd(CFG, VOC, LIM, "--limit 7 --quiet"))
tap.eq(rc, 0, "--limit 7: exit 0")
same_numbers(metrics_of(LIM), expected_metrics(range(1, 7), 21), "--limit 7 scores the first 7 images of the split")

-- ---- killed mid-run with SIGKILL, then resumed ------------------------------------------

do
  local cfg = write_cfg("colors_slow", "params:\n  sleep: 0.08\n")
  local dir = tmp .. "/run_killed"
  local pidfile = tmp .. "/pid"
  os.execute(("%s --quiet > %s 2>&1 & echo $! > %s"):format(eval_cmd(cfg, VOC, dir), q(tmp .. "/killed.log"), q(pidfile)))
  local pid = tonumber(tiny.read(pidfile))
  local function done_items()
    local p = io.popen("ls " .. q(dir .. "/items") .. " 2>/dev/null | grep -c '\\.json$'")
    local n = tonumber(p:read("*a")) or 0
    p:close()
    return n
  end
  local waited = 0
  while done_items() < 4 and waited < 200 do os.execute("sleep 0.05"); waited = waited + 1 end
  os.execute("kill -9 " .. pid)
  os.execute("sleep 0.2")
  local n_done = done_items()
  tap.ok(n_done >= 4 and n_done < N and not tiny.read(dir .. "/metrics.json"),
    ("killed with SIGKILL mid-run (%d of %d images written, no totals)"):format(n_done, N))
  -- leftovers a kill can leave: a temporary file, and a damaged item is redone
  tiny.write(dir .. "/items/2007_000002.json.tmp999", "{\"entries\": [[0, 0,")
  tiny.write(dir .. "/items/2007_000001.json", "garbage")
  rc, out = run(eval_cmd(cfg, VOC, dir, "--quiet"))
  local resumed = metrics_of(dir)
  tap.ok(rc == 0 and identical(resumed, full), "the resumed run ends with exactly the numbers of an uninterrupted one",
    rc ~= 0 and out or nil)
end

-- ---- faults: a full disk, a second process, SIGTERM / SIGINT ------------------------------

local function count_items(dir)
  local p = io.popen("ls " .. q(dir .. "/items") .. " 2>/dev/null | grep -c '\\.json$'")
  local n = tonumber(p:read("*a")) or 0
  p:close()
  return n
end

-- Every record present parses and no temporary file is left.
local function whole_files(dir)
  local p = io.popen("find " .. q(dir) .. " -type f")
  local bad = {}
  for path in p:lines() do
    if path:find("%.tmp%d+$") then bad[#bad + 1] = path .. " (temporary)" end
    if path:find("/items/.*%.json$") and not pcall(json.decode, tiny.read(path) or "", path) then
      bad[#bad + 1] = path .. " (not JSON)"
    end
  end
  p:close()
  return #bad == 0, table.concat(bad, "\n")
end

-- A run beside this test: its pid, and a function that waits for its exit
-- code and log. Started through popen rather than as a shell's background
-- job (`&`), which would start it with SIGINT ignored.
local ffi = require("ffi")
pcall(ffi.cdef, "typedef void (*fmseg_test_handler)(int); fmseg_test_handler signal(int sig, fmseg_test_handler h);")
local function start(cmd, tag)
  -- this test may itself run with SIGINT ignored (started by a background
  -- job), and children inherit that: give them the default back
  ffi.C.signal(2, ffi.cast("fmseg_test_handler", 0))
  local pidfile, rcfile = tmp .. "/" .. tag .. ".pid", tmp .. "/" .. tag .. ".rc"
  local log = tmp .. "/" .. tag .. ".log"
  local p = io.popen(("sh -c %s > %s 2>&1; echo $? > %s"):format(
    q("echo $$ > " .. q(pidfile) .. "; exec " .. cmd), q(log), q(rcfile)))
  local waited = 0   -- the file exists before the shell has written the number
  while not (tiny.read(pidfile) or ""):find("%d\n") and waited < 400 do
    os.execute("sleep 0.05")
    waited = waited + 1
  end
  local pid = tonumber((tiny.read(pidfile) or ""):match("%d+"))
  if not pid then error("no pid in " .. pidfile .. " after 20 s", 0) end
  return pid, function()
    p:close()
    return tonumber(tiny.read(rcfile) or ""), tiny.read(log) or ""
  end
end

local function wait_for_items(dir, n)
  local waited = 0
  while count_items(dir) < n and waited < 400 do os.execute("sleep 0.05"); waited = waited + 1 end
end

local SHIM = ROOT .. "/build/tests/fault_shim.so"
if not tiny.read(SHIM) then
  tap.skip("a full disk during a run", "no " .. SHIM .. " (make test builds it)")
else
  -- room for the run's first files and about half of its images
  local p = io.popen("find " .. q(FULL) .. " -type f -printf '%s\\n'")
  local total = 0
  for line in p:lines() do total = total + (tonumber(line) or 0) end
  p:close()
  local dir = tmp .. "/run_full_disk"
  rc, out = run(("FMSEG_FAULT_DIR=%s FMSEG_FAULT_BYTES=%d LD_PRELOAD=%s %s"):format(q(dir), math.floor(total / 2),
    q(SHIM), eval_cmd(CFG, VOC, dir, "--quiet")))
  local n_done = count_items(dir)
  local named = out:match(": (" .. dir:gsub("%p", "%%%0") .. "/[%w_/]+%.%a+)[^\n]*No space left on device")
  tap.ok(rc ~= 0 and named ~= nil, ("a full disk stops the run, naming the file it could not write (%s)"):format(
    tostring(named and named:sub(#dir + 2))), out)
  local whole, why = whole_files(dir)
  tap.ok(n_done > 0 and n_done < N and whole and not tiny.read(dir .. "/metrics.json"),
         ("what was written before the disk filled is whole (%d of %d records), no totals"):format(n_done, N), why)
  rc, out = run(eval_cmd(CFG, VOC, dir, "--quiet"))
  tap.ok(rc == 0 and identical(metrics_of(dir), full), "with space again the rerun resumes to the same numbers", out)
end

do
  local cfg = write_cfg("colors_locked", "params:\n  sleep: 0.05\n")
  local dir = tmp .. "/run_locked"
  local pid, wait = start(eval_cmd(cfg, VOC, dir, "--quiet"), "locked")
  wait_for_items(dir, 1)
  rc, out = run(eval_cmd(cfg, VOC, dir, "--quiet"))
  tap.ok(rc ~= 0 and out:find("is being evaluated by another process (pid " .. tostring(pid), 1, true),
         "a second process on the same run directory is refused, naming the first", out)
  local rc1, log1 = wait()
  tap.ok(rc1 == 0 and identical(metrics_of(dir), full), "the first process finishes undisturbed, same numbers", log1)
  rc, out = run(eval_cmd(cfg, VOC, dir, "--quiet"))
  tap.ok(rc == 0, "the lock goes with the process: a later run is free to start", out)
end

for _, sig in ipairs({ { "TERM", 15 }, { "INT", 2 } }) do
  local name, num = sig[1], sig[2]
  local cfg = write_cfg("colors_sig" .. name, "params:\n  sleep: 0.1\n")
  local dir = tmp .. "/run_sig" .. name
  local pid, wait = start(eval_cmd(cfg, VOC, dir), "sig" .. name)
  wait_for_items(dir, 3)
  os.execute(("kill -%s %d"):format(name, pid))
  local code, log = wait()
  local n_done = count_items(dir)
  local partial = metrics_of(dir, "metrics.partial")
  local whole, why = whole_files(dir)
  tap.ok(code == 128 + num and log:find("stopped by signal " .. num, 1, true) ~= nil,
         ("SIG%s: exit %d and a message"):format(name, 128 + num), log)
  tap.ok(whole and n_done >= 3 and n_done < N and partial and partial.partial and partial.images == n_done
         and not tiny.read(dir .. "/metrics.json"),
         ("SIG%s: the image in flight finished, a partial summary of the %d done, no totals"):format(name, n_done),
         why ~= "" and why or log)
  same_numbers(partial, expected_metrics(
    (function() local done = {} for n = 1, n_done do done[n] = n end return done end)(), 21),
    ("SIG%s: the partial numbers cover exactly the images done"):format(name))
  rc, out = run(eval_cmd(cfg, VOC, dir, "--quiet"))
  tap.ok(rc == 0 and identical(metrics_of(dir), full) and not tiny.read(dir .. "/metrics.partial.json"),
         ("SIG%s: the rerun finishes with the uninterrupted numbers and drops the partial summary"):format(name), out)
end

do
  -- a record cut short by a crash is reported and computed again
  local dir = tmp .. "/run_truncated"
  run(eval_cmd(CFG, VOC, dir, "--quiet"))
  local path = dir .. "/items/2007_000003.json"
  local text = tiny.read(path)
  tiny.write(path, text:sub(1, math.floor(#text / 2)))
  rc, out = run(eval_cmd(CFG, VOC, dir))
  local function counts(t)
    local r = json.decode(t)
    r.seconds = nil
    return json.encode(r)
  end
  tap.ok(rc == 0 and out:find(path .. " is not a whole record", 1, true) and identical(metrics_of(dir), full)
         and counts(tiny.read(path)) == counts(text),
         "a truncated record is reported, recomputed, and the numbers are unchanged", out)
end

-- ---- shards and merge -------------------------------------------------------------------------

do
  local shared = tmp .. "/run_shards"
  rc = run(eval_cmd(CFG, VOC, shared, "--shard 1/3 --quiet"))
  local s1 = metrics_of(shared, "metrics.shard-1-of-3")
  tap.ok(rc == 0 and s1 and s1.images == 10 and tiny.read(shared .. "/items/2007_000004.json") ~= nil
    and tiny.read(shared .. "/items/2007_000002.json") == nil, "--shard 1/3 takes images 1, 4, 7, ... (1-based)")
  same_numbers(s1, expected_metrics(range(1, N, 3), 21), "a shard's own numbers cover its images")
  rc, out = run(("%s merge %s"):format(FMSEG, q(shared)))
  tap.ok(rc ~= 0 and out:find("shards 2, 3 of 3 are missing", 1, true) ~= nil, "merge refuses missing shards and names them", out)
  run(eval_cmd(CFG, VOC, shared, "--shard 2/3 --quiet"))
  run(eval_cmd(CFG, VOC, shared, "--shard 3/3 --quiet"))
  rc, out = run(("%s merge %s"):format(FMSEG, q(shared)))
  tap.ok(rc == 0 and identical(metrics_of(shared), full), "merged shards (one shared directory) = the single run", out)

  -- shards in their own directories, with --limit
  local d1, d2, dm = tmp .. "/shard_a", tmp .. "/shard_b", tmp .. "/shard_merged"
  run(eval_cmd(CFG, VOC, d1, "--limit 7 --shard 1/2 --quiet"))
  run(eval_cmd(CFG, VOC, d2, "--limit 7 --shard 2/2 --quiet"))
  rc, out = run(("%s merge %s %s -o %s"):format(FMSEG, q(d1), q(d2), q(dm)))
  tap.ok(rc == 0 and identical(metrics_of(dm), metrics_of(LIM)),
         "merged shards (separate directories, --limit 7) = the single run", out)
  rc, out = run(("%s merge %s %s -o %s"):format(FMSEG, q(d1), q(d1), q(tmp .. "/dup")))
  tap.ok(rc ~= 0 and out:find("appears twice", 1, true) ~= nil, "a shard given twice is refused")
  rc, out = run(("%s merge %s %s -o %s"):format(FMSEG, q(d1), q(FULL), q(tmp .. "/mixed")))
  tap.ok(rc ~= 0 and out:find("holds no finished shard", 1, true) ~= nil, "a non-shard run is refused by merge")
  rc, out = run(eval_cmd(CFG, VOC, d1, "--shard 0/2"))
  tap.ok(rc ~= 0 and out:find("1 <= I <= N", 1, true) ~= nil, "--shard 0/2 is refused (shards count from 1)")
end

-- ---- refusals ------------------------------------------------------------------------------------

do
  rc, out = run(("%s eval %s --data %s -o %s --set params.mode=instances"):format(FMSEG, q(CFG), q(VOC), q(FULL)))
  tap.ok(rc ~= 0 and out:find("was started with another config", 1, true) ~= nil
    and out:find("params.mode is instances here, unset there", 1, true) ~= nil,
    "resuming with another config is refused, naming the difference", out)
  os.execute(("ln -s %s %s"):format(q(VOC), q(tmp .. "/voc_moved")))
  rc = run(eval_cmd(CFG, tmp .. "/voc_moved", FULL, "--quiet"))
  tap.eq(rc, 0, "another --data root for the same dataset resumes")
  local vdir = tmp .. "/run_version"
  run(eval_cmd(CFG, VOC, vdir, "--limit 2 --quiet"))
  local runjson = tiny.read(vdir .. "/run.json"):gsub('"fmseg_version": *"[^"]*"', '"fmseg_version": "0.0.0"')
  tiny.write(vdir .. "/run.json", runjson)
  rc, out = run(eval_cmd(CFG, VOC, vdir, "--limit 2"))
  tap.ok(rc ~= 0 and out:find("was started by fmseg 0.0.0", 1, true) ~= nil, "resuming under another fmseg version is refused")
  -- a ground-truth label the dataset does not have names the annotation
  local bad = tmp .. "/voc_bad"
  tiny.write_layout(bad, { images = "JPEGImages", image_suffix = ".png", annotations = "SegmentationClass",
    annotation_suffix = ".png", split = "ImageSets/Segmentation/val.txt" },
    { { id = "x1", img = tiny.paint(2, 2, { [0] = 0, 0, 0, 0 }), gt = tiny.grid(2, 2, { [0] = 0, 40, 0, 0 }) } })
  rc, out = run(eval_cmd(CFG, bad, tmp .. "/run_bad"))
  tap.ok(rc ~= 0 and out:find(bad .. "/SegmentationClass/x1.png", 1, true) and out:find("gt value 40 at (y 0, x 1)", 1, true),
    "a ground-truth value outside the classes names the annotation and the pixel", out)
end

-- ---- instances, segments, boxes ---------------------------------------------------------------

local INST = tmp .. "/run_instances"
do
  rc, out = run(eval_cmd(CFG, VOC, INST, "--set params.mode=instances --set method=test_colors_instances --quiet"))
  tap.ok(rc == 0, "instances: exit 0", out)
  same_numbers(metrics_of(INST), expected_metrics(range(1, N), 21, 0),
    "instances painted over the background class, scored as semantic labels")
end

local SEG = tmp .. "/run_segments"
local seg_miou
do
  -- 4 classes in vertical bands (a different order per image), segments
  -- from bands shifted by one pixel with scattered ids, plus a stray
  -- segment: every image's optimal matching is unique (checked below).
  local root = tmp .. "/seg4"
  local h, w = 8, 16
  local ids = { 0, 3, 5, 9 }
  local rand = tiny.rng(5)
  local items, cases = {}, {}
  for n = 1, 6 do
    local order = { 0, 1, 2, 3 }
    for i = 4, 2, -1 do local j = rand(1, i); order[i], order[j] = order[j], order[i] end
    local gt, seg = {}, {}
    for y = 0, h - 1 do
      for x = 0, w - 1 do
        local i = y * w + x
        gt[i] = (y == 0 and x == n) and 255 or order[math.floor(x / 4) + 1]
        seg[i] = (y >= h - 2 and x < 3) and 7 or ids[math.min(3, math.floor((x + n % 2) / 4)) + 1]
      end
    end
    cases[n] = { gt = gt, seg = seg }
    items[n] = { id = ("img%02d"):format(n), img = tiny.paint(h, w, nil, seg), gt = tiny.grid(h, w, gt) }
  end
  tiny.write_layout(root, { images = "img", image_suffix = ".png", annotations = "ann", annotation_suffix = ".png",
    grey = true }, items)
  local cfg = tmp .. "/seg4.yaml"
  tiny.write(cfg, ("data:\n  name: seg4\n  root: %s\n  images: img\n  image_suffix: .png\n  annotations: ann\n"
    .. "  annotation_suffix: .png\n  num_classes: 4\nclasses: [sky, road, car, tree]\n"
    .. "recipe: %s/test_colors.lua\nparams:\n  mode: segments\n"):format(root, RECIPES))
  -- DiffSeg's counts by brute force over every assignment of columns to rows
  local TP, FP, FN, ALL = { 0, 0, 0, 0 }, { 0, 0, 0, 0 }, { 0, 0, 0, 0 }, 0
  local unique = true
  for _, cs in ipairs(cases) do
    local p = 10   -- max(4 classes, 10 segment ids)
    local hist = {}
    for g = 1, 4 do hist[g] = {}; for s = 1, p do hist[g][s] = 0 end end
    for i = 0, h * w - 1 do
      if cs.gt[i] ~= 255 then hist[cs.gt[i] + 1][cs.seg[i] + 1] = hist[cs.gt[i] + 1][cs.seg[i] + 1] + 1 end
    end
    local _, count_best, best_cols = brute_force(hist, true)   -- 4 x 10: rows <= columns
    unique = unique and count_best == 1
    for g = 1, 4 do
      local row, colsum = 0, 0
      for s = 1, p do row = row + hist[g][s] end
      for r = 1, 4 do colsum = colsum + hist[r][best_cols[g]] end
      local tp = hist[g][best_cols[g]]
      TP[g], FN[g], FP[g], ALL = TP[g] + tp, FN[g] + row - tp, FP[g] + colsum - tp, ALL + row
    end
  end
  tap.ok(unique, "the constructed segment cases have one optimal matching each")
  local iou, acc, sum_tp = {}, {}, 0
  for g = 1, 4 do
    iou[g] = TP[g] / (TP[g] + FP[g] + FN[g])
    acc[g] = TP[g] / (TP[g] + FN[g])
    sum_tp = sum_tp + TP[g]
  end
  seg_miou = ev.nanmean(iou)
  rc, out = run(("%s eval %s -o %s --quiet"):format(FMSEG, q(cfg), q(SEG)))
  tap.ok(rc == 0, "unsupervised segments: exit 0", out)
  same_numbers(metrics_of(SEG), { IoU = iou, Acc = acc, aAcc = sum_tp / ALL, mIoU = ev.nanmean(iou), mAcc = ev.nanmean(acc) },
    "unsupervised segments: per-image Hungarian matching, DiffSeg's tp / fp / fn, inline class list")
end

local DISC = tmp .. "/run_discovery"
do
  local root = tmp .. "/voc07"
  local h, w = 30, 40
  -- painted object (the recipe's box) and the XML ground truth (1-based)
  local cases = {
    { obj = { 5, 5, 15, 15 }, gt = { { 6, 6, 15, 15 } } },                    -- IoU 1
    { obj = { 0, 0, 10, 10 }, gt = { { 6, 1, 15, 10 } } },                    -- 1/3
    { obj = { 0, 0, 10, 10 }, gt = { { 31, 21, 40, 30 }, { 1, 1, 10, 20 } } }, -- 0.5 with the second
    { obj = { 0, 0, 20, 20 }, gt = { { 1, 1, 10, 10 } } },                    -- 0.25
  }
  local items = {}
  for n, cs in ipairs(cases) do
    local o = cs.obj
    local objs = {}
    for k, b in ipairs(cs.gt) do objs[k] = { name = "dog", box = b } end
    items[n] = { id = ("%06d"):format(n),
      img = tiny.paint(h, w, nil, nil, function(x, y) return x >= o[1] and x < o[3] and y >= o[2] and y < o[4] end),
      xml = tiny.voc_xml(("%06d"):format(n), w, h, objs) }
  end
  tiny.write_layout(root, { images = "JPEGImages", image_suffix = ".png", annotations = "Annotations",
    annotation_suffix = ".xml", split = "ImageSets/Main/trainval.txt" }, items)
  local cfg = tmp .. "/disc.yaml"
  tiny.write(cfg, ("_base_: %s/configs/_base_/datasets/voc07_corloc.yaml\ndata:\n  image_suffix: .png\n"
    .. "recipe: %s/test_colors.lua\nparams:\n  mode: boxes\n"):format(ROOT, RECIPES))
  rc, out = run(eval_cmd(cfg, root, DISC, "--quiet"))
  local m = metrics_of(DISC)
  tap.ok(rc == 0 and m and m.correct == 2 and m.total == 4 and near(m.CorLoc, 0.5),
    "CorLoc on VOC07-layout XML boxes: 2 of 4 (IoU 1 and exactly 0.5 count, 1/3 and 0.25 do not)", out)
  local item = json.decode(tiny.read(DISC .. "/items/000002.json"))
  tap.ok(near(item.iou, 1 / 3), "each image's best IoU is kept in its item")
end

-- ---- fmseg table ------------------------------------------------------------------------------------

do
  local res = tmp .. "/results"
  rc, out = run(("%s table %s %s %s %s -o %s"):format(FMSEG, q(FULL), q(INST), q(SEG), q(DISC), q(res)))
  tap.eq(rc, 0, "fmseg table over finished runs")
  if rc ~= 0 then tap.diag(out) end
  local want = expected_metrics(range(1, N), 21)
  local md = tiny.read(res .. "/miou.md") or ""
  local avg = (100 * want.mIoU + 100 * seg_miou) / 2
  tap.ok(md:find("| Method | VOC21 | seg4 | Avg. |", 1, true)
    and md:find(("| test_colors | %.1f | %.1f | %.1f |"):format(100 * want.mIoU, 100 * seg_miou, avg), 1, true)
    and md:find("| test_colors_instances | ", 1, true) and md:find(" | - | - |", 1, true),
    "Markdown: methods x datasets (survey order, then others), mIoU in percent, '-' where not run", md)
  local csv = tiny.read(res .. "/miou.csv") or ""
  tap.ok(csv:find(("test_colors,%.2f,%.2f,%.2f\n"):format(100 * want.mIoU, 100 * seg_miou, avg), 1, true) ~= nil,
    "CSV with the same numbers", csv)
  local pc = tiny.read(res .. "/per_class_iou.csv") or ""
  local lines = select(2, pc:gsub("\n", ""))
  tap.eq(lines, 1 + 21 + 21 + 4, "per-class IoU CSV: a header, then one line per class of each semantic run")
  tap.ok(pc:find(("test_colors,voc21,1,aeroplane,%.2f,"):format(100 * want.IoU[2]), 1, true) ~= nil, "per-class values")
  local cl = tiny.read(res .. "/corloc.md") or ""
  tap.ok(cl:find("| test_colors | 50.0 | 50.0 |", 1, true) ~= nil, "CorLoc table for the discovery run", cl)
  local ok, png = pcall(image.load, res .. "/miou.png")
  tap.ok(ok and png:size(1) > 100 and png:size(2) > 100, "a bar chart PNG")
  if ok then
    -- the first method's bar colour (tab:blue) appears in the chart
    local p, found = png:contiguous():ptr(), false
    for i = 0, png:numel() / 3 - 1 do
      if p[3 * i] == 31 and p[3 * i + 1] == 119 and p[3 * i + 2] == 180 then found = true; break end
    end
    tap.ok(found, "bars drawn in the methods' colours")
  end
  rc, out = run(("%s table %s -o %s"):format(FMSEG, q(tmp .. "/run_killed_nowhere"), q(res)))
  tap.ok(rc ~= 0 and out:find("has no metrics.json", 1, true) ~= nil, "an unfinished run is refused by table")
  rc, out = run(("%s table %s -o %s"):format(FMSEG, q(tmp .. "/shard_a"), q(res)))
  tap.ok(rc ~= 0 and out:find("holds shards only", 1, true) ~= nil, "lone shards are sent to merge first")
end

-- ---- a real recipe end to end ----------------------------------------------------------------------

do
  local recipe = ROOT .. "/recipes/clip_vanilla.lua"
  local fixtures = os.getenv("FMSEG_FIXTURES") or (ROOT .. "/../shared/fixtures")
  if not tiny.read(recipe) then
    tap.skip("clip_vanilla end to end", "recipes/clip_vanilla.lua does not exist yet")
  elseif not tiny.read(fixtures .. "/clip-tiny/config.json") then
    tap.skip("clip_vanilla end to end", "fixtures missing (set FMSEG_FIXTURES)")
  else
    local cfg = tmp .. "/clip.yaml"
    tiny.write(cfg, ("_base_: %s/configs/_base_/datasets/voc21.yaml\nrecipe: clip_vanilla\ndata:\n  image_suffix: .png\n"
      .. "models:\n  clip: %s/clip-tiny\n"
      -- one prompt template and small windows keep the tiny model quick
      .. "params:\n  templates: photo\n  short_side: 64\n  slide_crop: 64\n  slide_stride: 32\n"):format(ROOT, fixtures))
    local dir = tmp .. "/run_clip"
    rc, out = run(eval_cmd(cfg, VOC, dir, "--limit 3 --quiet"))
    local m = metrics_of(dir)
    local labelled = 0
    for n = 1, 3 do for i = 0, H * W - 1 do if truth[n].gt[i] ~= 255 then labelled = labelled + 1 end end end
    tap.ok(rc == 0 and m and m.pixels == labelled and m.mIoU >= 0 and m.mIoU <= 1,
      "clip_vanilla (tiny random CLIP) through fmseg eval: every labelled pixel scored", out)
    -- the reported numbers, recomputed from the predictions the run saved
    local kept = {}
    for n = 1, 3 do
      kept[n] = truth[n].pred
      local saved = image.load_indices(("%s/pred/2007_%06d.png"):format(dir, n)):int():values()
      local pred = {}
      for i = 0, H * W - 1 do pred[i] = saved[i + 1] end
      truth[n].pred = pred
    end
    local want = expected_metrics({ 1, 2, 3 }, 21)
    for n = 1, 3 do truth[n].pred = kept[n] end
    same_numbers(m, want, "clip_vanilla: aAcc, mIoU, mAcc equal a recomputation from the saved predictions")
  end
end

tiny.rm(tmp)
os.exit(tap.done())
