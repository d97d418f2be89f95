-- `fmseg fetch REPO_ID [--revision R] [--include GLOB]... [--local-dir DIR]`:
-- downloads a Hugging Face model repository into the hub cache
-- (fmseg.io.hub: the layout huggingface_hub writes, so Python tools and
-- fmseg share it), or into a plain folder with --local-dir. Files already
-- complete are not downloaded again; an interrupted one resumes. Progress
-- goes to stderr; the snapshot's path is printed last on stdout.
local args = require("fmseg.cli.args")
local fs = require("fmseg.io.fs")
local hub = require("fmseg.io.hub")

local USAGE = "fetch REPO_ID [--revision R] [--include GLOB]... [--local-dir DIR]"

local parser = args.parser("fetch", USAGE, {
  { "--revision", metavar = "R", help = "branch, tag or commit (default main; also REPO_ID@R)" },
  { "--include", metavar = "GLOB", list = true, help = "only files matching (fnmatch, repeatable)" },
  { "--local-dir", metavar = "DIR", help = "plain files in DIR instead of the hub cache" },
}, { { "repo", required = true, label = "repository id (org/name)" } })

local M = { usage = USAGE, help = "download a Hugging Face model into the hub cache" }

local function human(n)
  local units = { "B", "kB", "MB", "GB", "TB" }
  local i = 1
  while n >= 1000 and i < #units do
    n = n / 1000
    i = i + 1
  end
  return i == 1 and ("%d B"):format(n) or ("%.1f %s"):format(n, units[i])
end

local clock = fs.now

-- A progress bar per file on stderr: name, bar, bytes, rate. On a terminal
-- it redraws in place (at most every 0.1 s); otherwise one line when done.
local function progress_bar(tty)
  return function(file, size)
    local shown = #file > 40 and ("..." .. file:sub(-37)) or file
    local start, last, base, began, finished = clock(), -1, 0, false, false
    local function draw(done, final)
      local rate = (done - base) / math.max(clock() - start, 1e-3)
      local frac = size > 0 and math.min(done / size, 1) or 1
      local fill = math.floor(frac * 24 + 0.5)
      io.stderr:write(("%s%-40s [%s%s] %3d%% %s/%s %s/s%s"):format(tty and "\r" or "", shown,
        ("#"):rep(fill), ("."):rep(24 - fill), math.floor(frac * 100), human(done), human(size), human(rate),
        final and "\n" or ""))
      io.stderr:flush()
    end
    -- done: bytes of the file so far; restarted: a transfer starts at done
    return function(done, restarted)
      if restarted then
        if finished or not began then start, base = clock(), done end
        began, finished = true, false
        return
      end
      if finished then return end
      if done >= size then
        finished = true
        draw(done, true)
      elseif tty and clock() - last >= 0.1 then
        last = clock()
        draw(done, false)
      end
    end
  end
end

function M.run(argv)
  local opts = parser:parse(argv)
  if not opts then return 0 end
  local id, rev = hub.parse(opts.repo)
  if not id then error("fetch: " .. rev, 0) end
  if rev and opts.revision and rev ~= opts.revision then
    error(("fetch: %s names revision %s, --revision says %s"):format(opts.repo, rev, opts.revision), 0)
  end
  local tty = fs.stderr_is_tty()
  local result = hub.fetch(id, {
    revision = rev or opts.revision, include = opts.include, local_dir = opts.local_dir,
    progress = progress_bar(tty), note = function(msg) io.stderr:write(tty and "\n" or "", "fetch: ", msg, "\n") end,
  })
  local kept = #result.files - result.downloaded
  io.stderr:write(("fetch: %s at %s (%s): %d file(s), %d downloaded (%s), %d already there\n"):format(
    id, result.revision, result.commit:sub(1, 12), #result.files, result.downloaded, human(result.bytes), kept))
  print(result.path)
  return 0
end

return M
