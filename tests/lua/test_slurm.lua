-- The README's Slurm recipe ("Spread an evaluation over a cluster") on a
-- real single-node Slurm started here: a private munged, slurmctld and
-- slurmd (Debian's slurm-wlm) with their own key, configuration, ports and
-- state under a temporary directory; nothing system-wide is read or
-- touched. The job array and its afterok merge job are submitted exactly
-- as the README writes them, twice: once with task 2 killed by SIGKILL
-- mid-run and requeued by hand (a crash), once with task 2 requeued by
-- Slurm while it runs (preemption); each time the merged numbers must
-- equal a single unsharded `fmseg eval` of the same config. Skips, saying
-- why, without the programs, without root, or when the controller does
-- not start (with CI set, the last one fails). About 30 s.
local tap = require("tap")
local tiny = require("tiny_data")
local core = require("fmseg.core")
local json = require("fmseg.io.json")
local ffi = require("ffi")

local ROOT = core.root
local FMSEG = ROOT .. "/fmseg"
local SCRIPT = ROOT .. "/configs/cluster/slurm_eval.sh"
local HELPERS = ROOT .. "/tests/slurm"
local RECIPES = ROOT .. "/tests/lua/recipes"
local NODE = "fmsegtest"
local SBIN = "export PATH=/usr/sbin:/sbin:$PATH; "
pcall(ffi.cdef, "int getpid(void);")

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local capture = tiny.run

local function sleep(s) os.execute("sleep " .. s) end

-- Polls fn every 0.1 s for at most `seconds`; returns its first true value.
local function wait_for(seconds, fn)
  for _ = 1, math.ceil(seconds * 10) do
    local v = fn()
    if v then return v end
    sleep(0.1)
  end
  return fn()
end

local function tail(path, n)
  local rc, out = capture(("tail -n %d %s"):format(n or 15, q(path)))
  return rc == 0 and out or ("(no " .. path .. ")")
end

-- ---- can we run a cluster here? ------------------------------------------------------

local PROGRAMS = { "munged", "munge", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo", "squeue" }

local function missing_program()
  for _, p in ipairs(PROGRAMS) do
    if capture(SBIN .. "command -v " .. p .. " >/dev/null") ~= 0 then return p end
  end
end

local function is_root()
  local _, out = capture("id -u")
  return out:match("^%s*(%d+)") == "0"
end

-- ---- the private cluster -----------------------------------------------------------------

-- Two free neighbouring TCP ports (slurmctld, slurmd): none that
-- /proc/net/tcp{,6} lists in any state, drawn at random so that two runs
-- at once do not pick the same.
local function free_ports()
  local used = {}
  for _, f in ipairs({ "/proc/net/tcp", "/proc/net/tcp6" }) do
    for port in (tiny.read(f) or ""):gmatch("\n%s*%d+: %x+:(%x+)") do used[tonumber(port, 16)] = true end
  end
  math.randomseed(os.time() + ffi.C.getpid())
  for _ = 1, 1000 do
    local p = math.random(20000, 59998)
    if not used[p] and not used[p + 1] then return p, p + 1 end
  end
  error("no two free TCP ports between 20000 and 59999", 0)
end

-- CPUs and memory (MB) one array task asks for in the script's #SBATCH lines.
local function script_request()
  local text = tiny.read(SCRIPT) or error("no " .. SCRIPT, 0)
  local cpus = tonumber(text:match("\n#SBATCH%s+%-%-cpus%-per%-task[= ](%d+)")) or 1
  local mem, unit = text:match("\n#SBATCH%s+%-%-mem[= ](%d+)([KMGTkmgt]?)")
  local scale = ({ K = 1 / 1024, M = 1, [""] = 1, G = 1024, T = 1024 * 1024 })[(unit or ""):upper()]
  return cpus, math.max(1, math.ceil((tonumber(mem) or 1024) * scale))
end

local function slurm_conf(tmp, ctld_port, slurmd_port)
  local cpus, mem = script_request()
  return table.concat({
    "ClusterName=fmsegtest",
    "SlurmctldHost=localhost",
    "SlurmctldPort=" .. ctld_port,
    "SlurmdPort=" .. slurmd_port,
    "SlurmUser=root",
    "SlurmdUser=root",
    -- auth/none still loads in 22.05, but slurmctld listens on every
    -- interface: anyone who reached the port could run jobs as root
    "AuthType=auth/munge",
    "CredType=cred/munge",
    -- cred_expire is also how long a requeued job waits before it may start (120 s by default)
    "AuthInfo=socket=" .. tmp .. "/munge/munge.sock,cred_expire=5",
    "StateSaveLocation=" .. tmp .. "/state",
    "SlurmdSpoolDir=" .. tmp .. "/spool",
    "SlurmctldPidFile=" .. tmp .. "/slurmctld.pid",
    "SlurmdPidFile=" .. tmp .. "/slurmd.pid",
    "SlurmctldLogFile=" .. tmp .. "/log/slurmctld.log",
    "SlurmdLogFile=" .. tmp .. "/log/slurmd.log",
    "PlugStackConfig=" .. tmp .. "/plugstack.conf",
    "ProctrackType=proctrack/linuxproc",
    "TaskPlugin=task/none",
    "SelectType=select/cons_tres",
    "SelectTypeParameters=CR_CPU",
    "MpiDefault=none",
    "SwitchType=switch/none",
    "AccountingStorageType=accounting_storage/none",
    "JobAcctGatherType=jobacct_gather/none",
    "JobCompType=jobcomp/none",
    "MailProg=/bin/true",
    "JobRequeue=1",
    "ReturnToService=2",
    "KillWait=2",
    -- the node is declared as big as two of the script's tasks (#SBATCH
    -- --cpus-per-task, --mem), whatever this machine has, so that the
    -- README's command runs unchanged and two shards run at a time;
    -- config_overrides keeps slurmd from draining a node smaller than that
    "SlurmdParameters=config_overrides",
    ("NodeName=%s NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=%d RealMemory=%d State=UNKNOWN"):format(
      NODE, 2 * cpus, mem),
    ("PartitionName=fmsegtest Nodes=%s Default=YES MaxTime=INFINITE State=UP"):format(NODE),
  }, "\n") .. "\n"
end

local function pid_of(path) return tonumber((tiny.read(path) or ""):match("%d+")) end

-- A live process (not a zombie left for a parent that does not reap).
local function alive(pid)
  local stat = pid and tiny.read("/proc/" .. pid .. "/stat")
  return stat ~= nil and stat:match("^%d+ %b() (%a)") ~= "Z"
end

local Cluster = {}
Cluster.__index = Cluster

-- A client command line (run in `dir`, default the working directory).
function Cluster:cmd(args, dir)
  return ("%scd %s && sh %s %s %s"):format(SBIN, q(dir or "."), q(HELPERS .. "/env.sh"), q(self.tmp), args)
end

function Cluster:run(args, dir) return capture(self:cmd(args, dir)) end

-- A daemon started with an empty environment (none of this test's, the
-- sanitizers' included) but for PATH, SLURM_CONF and the sweep's marker;
-- its exit code (it forks to the background) and what it printed.
function Cluster:daemon(name, args)
  local out = self.tmp .. "/log/" .. name .. ".out"
  local rc = capture(("env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SLURM_CONF=%s FMSEG_SLURM_TMP=%s %s %s > %s 2>&1"):format(
    q(self.conf), q(self.tmp), name, args, q(out)))
  return rc, (tiny.read(out) or ""):match("[^\n]*")
end

function Cluster:logs()
  local out = {}
  for _, f in ipairs({ "munged.log", "munged.out", "slurmctld.log", "slurmctld.out", "slurmd.log", "slurmd.out" }) do
    out[#out + 1] = "== " .. f .. "\n" .. tail(self.tmp .. "/log/" .. f, 12)
  end
  return table.concat(out, "\n")
end

local function start_munge(c)
  local m = c.tmp .. "/munge"
  -- munged wants its socket's directory searchable by all, its key private
  if not tiny.sh(("mkdir -p %s && chmod 755 %s %s && dd if=/dev/urandom of=%s/munge.key bs=1024 count=1 2>/dev/null "
      .. "&& chmod 400 %s/munge.key"):format(q(m), q(c.tmp), q(m), q(m), q(m))) then
    return "cannot write a munge key in " .. m
  end
  local rc, out = c:daemon("munged", ("--socket=%s/munge.sock --key-file=%s/munge.key --pid-file=%s/munged.pid "
    .. "--log-file=%s/log/munged.log --seed-file=%s/munged.seed"):format(m, m, m, c.tmp, m))
  c.pids.munged = pid_of(m .. "/munged.pid")
  if rc ~= 0 then return "munged did not start: " .. out end
  local sock = q(m .. "/munge.sock")
  if not wait_for(5, function() return capture(("munge -n -S %s | unmunge -S %s"):format(sock, sock)) == 0 end) then
    return "munged does not answer on " .. m .. "/munge.sock"
  end
end

-- The fatal line of a daemon's log: why it stopped.
local function fatal_line(path)
  local text = tiny.read(path) or ""
  return text:match("(fatal: [^\n]*)")
end

-- Starts a Slurm daemon and polls `ready` until it holds; nil, or why not
-- (a fatal line in its log ends the wait at once).
local function start_daemon(c, name, args, ready, seconds)
  local rc, out = c:daemon(name, args)
  if rc ~= 0 then return ("%s exited %s: %s"):format(name, tostring(rc), out) end
  local log = c.tmp .. "/log/" .. name .. ".log"
  local got = wait_for(seconds, function()
    c.pids[name] = c.pids[name] or pid_of(c.tmp .. "/" .. name .. ".pid")
    if fatal_line(log) then return "fatal" end
    return ready() and "ready"
  end)
  if got == "ready" then return nil end
  return name .. (got == "fatal" and (" stopped: " .. fatal_line(log)) or (" not ready after " .. seconds .. " s"))
end

-- nil when the node is idle, else why not.
local function start_slurm(c)
  return start_daemon(c, "slurmctld", "-f " .. q(c.conf), function()
      return select(2, c:run("scontrol ping")):find("is UP", 1, true)
    end, 15)
    or start_daemon(c, "slurmd", "-f " .. q(c.conf) .. " -N " .. NODE, function()
      return select(2, c:run("sinfo -h -n " .. NODE .. " -o %t")):match("^idle")
    end, 20)
end

-- Starts the cluster; returns it, then (when it could not) a one-line
-- reason and the daemons' log tails.
local function start_cluster()
  local tmp = tiny.tmpdir("slurm")
  local c = setmetatable({ tmp = tmp, conf = tmp .. "/slurm.conf", pids = {} }, Cluster)
  -- the watchdog: if this test dies before its teardown, the sweep still runs
  os.execute(("sh %s %s %d > /dev/null 2>&1 < /dev/null &"):format(q(HELPERS .. "/sweep.sh"), q(tmp), ffi.C.getpid()))
  for _, d in ipairs({ "state", "spool", "log" }) do tiny.mkdir(tmp .. "/" .. d) end
  tiny.write(tmp .. "/plugstack.conf", "")
  local ctld_port, slurmd_port = free_ports()
  tiny.write(c.conf, slurm_conf(tmp, ctld_port, slurmd_port))
  local why = start_munge(c) or start_slurm(c)
  if why then return c, why, c:logs() end
  return c
end

-- Cancels every job, stops slurmd, slurmctld and munged by pid (SIGTERM,
-- then SIGKILL), sweeps what is left and removes the directory.
function Cluster:teardown()
  if self.pids.slurmctld and alive(self.pids.slurmctld) then
    local _, ids = self:run("squeue -h -o %i")
    if ids:find("%d") then
      self:run("scancel " .. ids:gsub("%s+", " "))
      wait_for(10, function() return not select(2, self:run("squeue -h -o %i")):find("%d") end)
    end
  end
  for _, name in ipairs({ "slurmd", "slurmctld", "munged" }) do
    local pid = self.pids[name]
    if pid and alive(pid) then
      os.execute("kill " .. pid)
      if not wait_for(5, function() return not alive(pid) end) then os.execute("kill -9 " .. pid) end
    end
  end
  os.execute(("sh %s %s"):format(q(HELPERS .. "/sweep.sh"), q(self.tmp)))
end

-- ---- job state --------------------------------------------------------------------------------

-- Key=Value fields of `scontrol -o show job ID` (nil when unknown).
function Cluster:job(id)
  local rc, out = self:run("scontrol -o show job " .. id)
  if rc ~= 0 then return nil end
  local f = {}
  for k, v in out:gmatch("(%w+)=(%S*)") do if f[k] == nil then f[k] = v end end
  return f
end

local FINAL = { COMPLETED = true, FAILED = true, CANCELLED = true, TIMEOUT = true, NODE_FAIL = true,
                OUT_OF_MEMORY = true, BOOT_FAIL = true, DEADLINE = true, PREEMPTED = true }

-- The pids of the fmseg a running job started, found by their environment
-- (the job's SLURM_JOB_ID and this cluster's marker) and executable.
function Cluster:job_pids(job_id)
  local _, exe = capture("readlink -f " .. q(FMSEG))
  exe = exe:gsub("%s+$", "")
  local want = { "SLURM_JOB_ID=" .. job_id, "FMSEG_SLURM_TMP=" .. self.tmp }
  local pids = {}
  local _, list = capture("ls /proc")
  for pid in list:gmatch("%d+") do
    local env = tiny.read("/proc/" .. pid .. "/environ")
    if env then
      env = "\0" .. env
      local mine = true
      for _, w in ipairs(want) do mine = mine and env:find("\0" .. w .. "\0", 1, true) ~= nil end
      if mine and select(2, capture("readlink /proc/" .. pid .. "/exe")):gsub("%s+$", "") == exe then
        pids[#pids + 1] = pid
      end
    end
  end
  return pids
end

function Cluster:state(id)
  local j = self:job(id)
  return j and j.JobState, j
end

-- ---- the scenario -----------------------------------------------------------------------------------

local function stat(path)
  local rc, out = capture("stat -c '%i %y' " .. q(path))
  return rc == 0 and out or nil
end

local N, H, W = 12, 6, 8
local TASKS, PER_SHARD = 4, 3

-- 12 images in the VOC21 layout, painted with what the test recipe predicts.
local function write_dataset(root)
  local rand = tiny.rng(17)
  local items = {}
  for n = 1, N do
    local gt, pred = {}, {}
    for i = 0, H * W - 1 do
      gt[i] = rand(0, 9) == 0 and 255 or rand(0, 4)
      pred[i] = rand(0, 3) > 0 and (gt[i] == 255 and 0 or gt[i]) or rand(0, 5)
    end
    items[n] = { id = ("2007_%06d"):format(n), img = tiny.paint(H, W, pred), gt = tiny.grid(H, W, gt) }
  end
  tiny.write_layout(root, { images = "JPEGImages", image_suffix = ".png", annotations = "SegmentationClass",
    annotation_suffix = ".png", split = "ImageSets/Segmentation/val.txt" }, items)
end

local function numbers(m)
  if type(m) ~= "table" then return nil end
  return json.encode({ m.aAcc, m.mIoU, m.mAcc, m.IoU, m.Acc, m.pixels, m.images, m.confusion }, { nan = "null" })
end

local function metrics(path)
  local text = tiny.read(path)
  return text and json.decode(text)
end

local function item(n) return ("items/2007_%06d.json"):format(n) end

-- A submit directory: the README runs from the repository root; this one
-- holds ./fmseg (the binary running this test: the sanitized one under
-- make test-asan) and configs/ as links, so that runs/ lands in it.
local function submit_dir(c, tag)
  local work = c.tmp .. "/" .. tag
  tiny.mkdir(work)
  tiny.sh(("ln -s %s %s/fmseg && ln -s %s/configs %s/configs"):format(q(FMSEG), q(work), q(ROOT), q(work)))
  return work
end

-- The README's two lines, as written: the array's and the merge job's ids.
local function submit(c, work, cfg, voc, name)
  local rc, out = c:run(("sbatch --parsable --array=1-%d configs/cluster/slurm_eval.sh %s %s"):format(
    TASKS, q(cfg), q(voc)), work)
  local jid = rc == 0 and out:match("^%s*(%d+)")
  tap.ok(jid ~= nil, ("%s: sbatch --parsable --array=1-%d configs/cluster/slurm_eval.sh CONFIG DATA_ROOT"):format(
    work:match("[^/]+$"), TASKS), out)
  if not jid then return nil end
  rc, out = c:run(("sbatch --parsable --dependency=afterok:%s --wrap %s"):format(jid, q("./fmseg merge runs/" .. name)),
    work)
  local mid = rc == 0 and out:match("^%s*(%d+)")
  tap.ok(mid ~= nil, "sbatch --dependency=afterok:$jid --wrap \"./fmseg merge runs/X\"", out)
  return jid, mid
end

-- Waits until `id` is in a final state; returns it and the job's fields.
local function wait_final(c, id, seconds)
  local state, job
  wait_for(seconds, function()
    state, job = c:state(id)
    return FINAL[state]
  end)
  return state, job
end

local function files_of(run_dir)
  return select(2, capture("stat -c '%y %n' " .. q(run_dir) .. "/items/* " .. q(run_dir) .. "/*.json"))
end

-- Waits for every task of the array; checks that all completed, task 2
-- after one restart, and that task I ran shard I into the shared runs/X.
local function check_tasks(c, work, jid, run_dir, what)
  local states = {}
  local all_final = wait_for(60, function()
    for i = 1, TASKS do
      states[i] = c:state(jid .. "_" .. i)
      if not FINAL[states[i]] then return false end
    end
    return true
  end)
  local _, j2 = c:state(jid .. "_2")
  local logs, completed, shards_ok = {}, all_final, true
  for i = 1, TASKS do
    local log = tiny.read(("%s/slurm-%s_%d.out"):format(work, jid, i)) or ""
    logs[#logs + 1] = ("== slurm-%s_%d.out (%s)\n%s"):format(jid, i, tostring(states[i]), log)
    completed = completed and states[i] == "COMPLETED"
    local m = metrics(("%s/metrics.shard-%d-of-%d.json"):format(run_dir, i, TASKS))
    shards_ok = shards_ok and m and m.images == PER_SHARD
      and log:find(("fmseg eval shard %d/%d of"):format(i, TASKS), 1, true) ~= nil
  end
  logs = table.concat(logs, "\n")
  tap.ok(completed and j2 and j2.Restarts == "1", ("all %d tasks complete, the %s one after one restart"):format(
    TASKS, what), logs .. "\n" .. c:logs())
  tap.ok(shards_ok, ("array task I ran shard I/%d (%d images each) into the shared runs/X"):format(TASKS, PER_SHARD),
    logs .. "\n" .. files_of(run_dir))
end

-- Scenario 1: task 2 (shard 2/4: images 2, 6, 10) killed with SIGKILL once
-- image 2 is written (a crash, the OOM killer), then requeued by hand.
local function killed_task(c, cfg, voc, name, single_run)
  local work = submit_dir(c, "killed")
  local run_dir = work .. "/runs/" .. name
  local jid, mid = submit(c, work, cfg, voc, name)
  if not jid then return end
  local t2 = jid .. "_2"
  local first = run_dir .. "/" .. item(2)
  local written = wait_for(40, function() return tiny.read(first) ~= nil end)
  local before = stat(first)
  local state, job2 = c:state(t2)
  -- not `scancel --signal=KILL`: Slurm turns that into a cancel (SIGTERM,
  -- KillWait, SIGKILL), which fmseg survives gracefully
  local pids = job2 and c:job_pids(job2.JobId) or {}
  for _, pid in ipairs(pids) do os.execute("kill -9 " .. pid) end
  local killed = wait_final(c, t2, 10)
  local undone = tiny.read(run_dir .. "/" .. item(6)) == nil
    and tiny.read(("%s/metrics.shard-2-of-%d.json"):format(run_dir, TASKS)) == nil
  tap.ok(written and state == "RUNNING" and #pids == 1 and killed == "FAILED" and undone,
    ("array task 2 killed mid-run: SIGKILL to its ./fmseg, this test's binary (%s; image 2 done, 6 not)"):format(
      tostring(killed)),
    ("item written: %s, state before: %s, fmseg pids: %s\n%s\n%s"):format(
      tostring(written), tostring(state), table.concat(pids, " "), files_of(run_dir), c:logs()))

  local rc, out = nil, ""
  wait_for(10, function()
    rc, out = c:run("scontrol requeue " .. t2)
    return rc == 0
  end)
  tap.ok(rc == 0, "scontrol requeue of the killed task", out)
  check_tasks(c, work, jid, run_dir, "killed")
  tap.ok(before ~= nil and stat(first) == before,
    "the requeued task resumed: the image it had finished was not computed again", before)

  -- Slurm 22.05 keeps the failure against the array after the task is
  -- requeued and completes: the README's afterok merge is then never
  -- satisfied (while a requeue by Slurm itself, scenario 2, keeps it)
  local mstate, mjob = nil, nil
  if mid then
    wait_for(20, function()
      mstate, mjob = c:state(mid)
      return FINAL[mstate] or (mjob and mjob.Reason == "DependencyNeverSatisfied")
    end)
  end
  local merged_by = "the README's afterok job ran"
  if mstate ~= "COMPLETED" and mjob and mjob.Reason == "DependencyNeverSatisfied" then
    c:run("scancel " .. mid)
    rc, out = c:run(("sbatch --parsable --wrap %s"):format(q("./fmseg merge runs/" .. name)), work)
    mid = rc == 0 and out:match("^%s*(%d+)")
    merged_by = "the README's afterok job is never satisfied after a failed task, so merged by a job of its own"
    mstate = mid and wait_final(c, mid, 20)
  end
  local mlog = mid and tiny.read(("%s/slurm-%s.out"):format(work, mid)) or ""
  tap.ok(mstate == "COMPLETED", "./fmseg merge runs/X as a Slurm job: " .. merged_by,
    ("state %s\n%s\n%s"):format(tostring(mstate), mlog, c:logs()))
  local got, single = metrics(run_dir .. "/metrics.json"), single_run()
  tap.ok(got and single and numbers(got) == numbers(single),
    "merged metrics.json = the single run's (aAcc, mIoU, mAcc, per-class IoU and Acc, pixels, images, confusion)",
    ("merged: %s\nsingle: %s"):format(tostring(numbers(got)), tostring(numbers(single))))
end

-- Scenario 2: task 2 requeued by Slurm while it runs (`scontrol requeue`,
-- as preemption does): SIGTERM, the image in flight finishes, a partial
-- summary, and the README's afterok merge runs once the array is done.
local function requeued_task(c, cfg, voc, name, single_run)
  local work = submit_dir(c, "requeued")
  local run_dir = work .. "/runs/" .. name
  local jid, mid = submit(c, work, cfg, voc, name)
  if not jid then return end
  local t2 = jid .. "_2"
  local written = wait_for(40, function() return tiny.read(run_dir .. "/" .. item(2)) ~= nil end)
  local state = c:state(t2)
  local rc, out = c:run("scontrol requeue " .. t2)
  local partial = ("%s/metrics.shard-2-of-%d.partial.json"):format(run_dir, TASKS)
  local stopped = wait_for(10, function() return metrics(partial) end)
  tap.ok(written and state == "RUNNING" and rc == 0 and stopped and stopped.images == 2
         and tiny.read(run_dir .. "/" .. item(10)) == nil,
    "scontrol requeue of running task 2: SIGTERM, image 6 in flight finishes, a partial summary of 2 images",
    ("state before: %s, requeue: %s %s\n%s"):format(tostring(state), tostring(rc), out, files_of(run_dir)))
  check_tasks(c, work, jid, run_dir, "requeued")
  local mstate, mjob = nil, nil
  if mid then mstate, mjob = wait_final(c, mid, 20) end
  local mlog = mid and tiny.read(("%s/slurm-%s.out"):format(work, mid)) or ""
  tap.ok(mstate == "COMPLETED", "the README's afterok merge job ran once the array was done",
    ("state %s, reason %s\n%s\n%s"):format(tostring(mstate), tostring(mjob and mjob.Reason), mlog, c:logs()))
  local got, single = metrics(run_dir .. "/metrics.json"), single_run()
  tap.ok(got and single and numbers(got) == numbers(single) and tiny.read(partial) == nil,
    "merged metrics.json = the single run's; the partial summary is gone",
    ("merged: %s\nsingle: %s"):format(tostring(numbers(got)), tostring(numbers(single))))
end

local function scenario(c)
  local tmp = c.tmp
  local voc = tmp .. "/voc"
  write_dataset(voc)
  local name = "slurm_colors"
  local cfg = tmp .. "/" .. name .. ".yaml"
  -- each image takes 1 s: the window in which task 2 is stopped
  tiny.write(cfg, ("_base_: %s/configs/_base_/datasets/voc21.yaml\nrecipe: %s/test_colors.lua\n"
    .. "data:\n  image_suffix: .png\nparams:\n  sleep: 1\n"):format(ROOT, RECIPES))
  -- the single run, beside the cluster's
  local single_dir = tmp .. "/single"
  local single_p = io.popen(("FMSEG_SLURM_TMP=%s %s eval %s --data %s -o %s --quiet > %s 2>&1; echo $?"):format(
    q(tmp), q(FMSEG), q(cfg), q(voc), q(single_dir), q(tmp .. "/single.log")))
  local single
  local function single_run()
    if single_p then
      local rc = tonumber(single_p:read("*a"))
      single_p:close()
      single_p = nil
      single = metrics(single_dir .. "/metrics.json")
      tap.ok(rc == 0 and single and single.images == N, "the single unsharded fmseg eval of the same config",
        tiny.read(tmp .. "/single.log"))
    end
    return single
  end
  killed_task(c, cfg, voc, name, single_run)
  requeued_task(c, cfg, voc, name, single_run)
end

-- ---- main ---------------------------------------------------------------------------------------------

local skip_why
local prog = missing_program()
if prog then
  skip_why = prog .. " not installed (Debian: slurm-wlm, munge)"
elseif not is_root() then
  skip_why = "not root (slurmd must run as root to start jobs)"
end

if skip_why then
  tap.skip("the README's Slurm job array on a private single-node cluster", skip_why)
else
  local c, why, logs = start_cluster()
  if why then
    if os.getenv("CI") and os.getenv("CI") ~= "" then
      tap.ok(false, "a private slurmctld and slurmd start (CI is set)", why .. "\n" .. logs)
    else
      for line in logs:gmatch("[^\n]+") do tap.diag(line) end
      tap.skip("the README's Slurm job array on a private single-node cluster", "controller did not start: " .. why)
    end
  else
    tap.ok(true, ("a private munged, slurmctld and slurmd are up; node %s idle"):format(NODE))
    local ok, err = xpcall(scenario, debug.traceback, c)
    if not ok then tap.ok(false, "the Slurm scenario ran to its end", tostring(err) .. "\n" .. c:logs()) end
  end
  c:teardown()
end

os.exit(tap.done())
