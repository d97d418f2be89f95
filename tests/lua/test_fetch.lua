-- `fmseg fetch` against build/tests/hub_server (tests/c/hub_server.c), the
-- hub's endpoints on 127.0.0.1: the cache layout huggingface_hub writes
-- (blobs named by etag, relative symlinks, refs), bytes equal to those
-- served and digests made here by coreutils (sha256sum, sha1sum), nothing
-- fetched twice, a partial blob resumed with a Range, a dropped connection
-- resumed, corrupt bytes refused and fetched again, tokens (HF_TOKEN and
-- $HF_HOME/token; none sent to a CDN on another host), a missing
-- revision, --include, --local-dir, a renamed repository; then hub ids
-- resolved from the cache by hf.open and config keys, and `fmseg demo`
-- finding openai/clip-vit-base-patch16 there. Skips only when the server
-- cannot bind 127.0.0.1.
local tap = require("tap")
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")
local ffi = require("ffi")

pcall(ffi.cdef, [[
long readlink(const char *path, char *buf, size_t size);
int setenv(const char *name, const char *value, int overwrite);
int poll(void *fds, unsigned long nfds, int timeout);
]])

local ROOT = core.root
local FMSEG = ROOT .. "/fmseg"
local SERVER = ROOT .. "/build/tests/hub_server"
local Q = fs.quote

local tmp = os.tmpname()
os.remove(tmp)
fs.mkdir_p(tmp)

local function slurp(p)
  local f = io.open(p, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write(path, bytes)
  fs.mkdir_p(path:match("^(.*)/[^/]*$"))
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

-- Runs a shell command; returns exit status, stdout, stderr.
local function sh(cmd)
  local out, err = tmp .. "/stdout", tmp .. "/stderr"
  os.execute(("%s >%s 2>%s; echo $? >%s/rc"):format(cmd, out, err, tmp))
  return tonumber(slurp(tmp .. "/rc")), slurp(out) or "", slurp(err) or ""
end

local function readlink(path)
  local buf = ffi.new("char[4096]")
  local n = ffi.C.readlink(path, buf, 4096)
  return n >= 0 and ffi.string(buf, n) or nil
end

local function digest_of(path, git_blob)
  local cmd = git_blob and ("(printf 'blob %%d\\0' %d; cat %s) | sha1sum"):format(#slurp(path), Q(path))
    or ("sha256sum " .. Q(path))
  local _, out = sh(cmd)
  return out:match("^(%x+)")
end

-- Deterministic bytes (an LCG), so that a wrong offset shows.
local function bytes(n, seed)
  local out, x = {}, seed
  for i = 1, n do
    x = (x * 1103515245 + 12345) % 2147483648
    out[i] = string.char(math.floor(x / 65536) % 256)
  end
  return table.concat(out)
end

-- ---- repositories the server serves -----------------------------------------------

local SRV_ROOT = tmp .. "/served"

-- files: { path, data, lfs }. Writes tree/ and the manifest with digests
-- made by coreutils; returns { commit, files = { path -> {data, etag} } }.
local function make_repo(id, commit, refs, files)
  local dir = SRV_ROOT .. "/" .. id
  local lines, out = { "commit " .. commit }, { commit = commit, files = {} }
  for _, r in ipairs(refs) do lines[#lines + 1] = "ref " .. r end
  for _, f in ipairs(files) do
    local path = dir .. "/tree/" .. f[1]
    write(path, f[2])
    local blob = digest_of(path, true)
    local sha = f[3] and digest_of(path) or "-"
    if f[3] then     -- an LFS file's blob id is its pointer's
      write(tmp .. "/pointer", ("version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n"):format(sha, #f[2]))
      blob = digest_of(tmp .. "/pointer", true)
    end
    lines[#lines + 1] = ("file %d %s %s %s"):format(#f[2], blob, sha, f[1])
    out.files[f[1]] = { data = f[2], etag = f[3] and sha or blob, lfs = f[3] }
  end
  write(dir .. "/manifest", table.concat(lines, "\n") .. "\n")
  return out
end

local COMMIT = "3f2a9c0d1e4b5a69788796a5b4c3d2e1f0a1b2c3"
local BIG = 300000
local repo = make_repo("org/name", COMMIT, { "main", "v1.0" }, {
  { "config.json", '{"model_type": "test", "hidden_size": 8}\n' },
  { "model.safetensors", bytes(BIG, 7), true },
  { "sub/extra.txt", "a file one folder down\n" },
})

-- ---- the server -----------------------------------------------------------------------

local started = {}

local function sleep_ms(ms) ffi.C.poll(nil, 0, ms) end

-- Starts hub_server with extra flags; returns it, or nil and why.
local function start(flags)
  local n = #started + 1
  local base = ("%s/server%d"):format(tmp, n)
  local cmd = ("%s --root %s --port-file %s.port --log %s.log --idle 60 %s >%s.out 2>&1 & echo $! >%s.pid"):format(
    Q(SERVER), Q(SRV_ROOT), base, base, flags or "", base, base)
  os.execute(cmd)
  local pid = tonumber(slurp(base .. ".pid") or "")
  if pid then started[#started + 1] = pid end
  for _ = 1, 200 do
    local port = tonumber(slurp(base .. ".port") or "")
    if port then
      return { port = port, url = "http://127.0.0.1:" .. port, log = base .. ".log", pid = pid }
    end
    local said = slurp(base .. ".out") or ""
    if said ~= "" then return nil, said:gsub("\n$", "") end
    sleep_ms(25)
  end
  return nil, "no port after 5 s"
end

local function stop_all()
  for _, pid in ipairs(started) do os.execute("kill " .. pid .. " 2>/dev/null") end
end

-- The requests a server logged, after the first `from` of them.
local function requests(srv, from)
  local out = {}
  for line in (slurp(srv.log) or ""):gmatch("[^\n]+") do out[#out + 1] = line end
  return { unpack(out, (from or 0) + 1) }
end

local function count(lines, pattern)
  local n = 0
  for _, l in ipairs(lines) do if l:find(pattern) then n = n + 1 end end
  return n
end

local CLEAN = "env -u HF_TOKEN -u HUGGING_FACE_HUB_TOKEN -u HF_TOKEN_PATH -u HF_HUB_CACHE "
  .. "-u HUGGINGFACE_HUB_CACHE -u XDG_CACHE_HOME -u HF_HUB_OFFLINE"

local function fetch_cmd(srv, home, args, vars)
  return ("cd %s && %s HF_HOME=%s HF_ENDPOINT=%s %s %s fetch %s"):format(Q(tmp), CLEAN, Q(home), srv.url,
    vars or "", Q(FMSEG), args)
end

local function fetch(srv, home, args, vars) return sh(fetch_cmd(srv, home, args, vars)) end

-- Polls until ready() or 10 s have passed; returns ready()'s last value.
local function wait_for(ready)
  for _ = 1, 400 do
    local v = ready()
    if v then return v end
    ffi.C.poll(nil, 0, 25)
  end
  return ready()
end

local function storage(home, id) return ("%s/hub/models--%s"):format(home, id:gsub("/", "--")) end

-- Every file of `r` is in the cache at `home` as huggingface_hub lays it out.
local function check_cache(home, id, r, name, only)
  local st = storage(home, id)
  local bad = {}
  for path, f in pairs(r.files) do
    if not only or only[path] then
      local pointer = ("%s/snapshots/%s/%s"):format(st, r.commit, path)
      local depth = select(2, path:gsub("/", ""))
      local want = ("../"):rep(2 + depth) .. "blobs/" .. f.etag
      if readlink(pointer) ~= want then bad[#bad + 1] = ("%s -> %s, want %s"):format(path, tostring(readlink(pointer)), want) end
      if slurp(st .. "/blobs/" .. f.etag) ~= f.data then bad[#bad + 1] = path .. ": blob bytes differ" end
      if fs.exists(st .. "/blobs/" .. f.etag .. ".incomplete") then bad[#bad + 1] = path .. ": .incomplete left" end
    end
  end
  return tap.ok(#bad == 0, name, table.concat(bad, "\n"))
end

local function main()
  if not fs.exists(SERVER) then
    tap.ok(false, "the test server is built", SERVER .. " is missing: make build/tests/hub_server")
    return
  end
  local srv, why = start()
  if not srv then
    if tostring(why):find("cannot bind", 1, true) then
      tap.skip("fetch against a local hub", "the test server cannot bind 127.0.0.1: " .. why)
      return
    end
    tap.ok(false, "the test server starts", why)
    return
  end

  -- a full download into the cache
  local home = tmp .. "/home1"
  local rc, out, err = fetch(srv, home, "org/name")
  local _
  local snap = storage(home, "org/name") .. "/snapshots/" .. COMMIT
  tap.ok(rc == 0 and out:match("([^\n]+)\n$") == snap, "fetch prints the snapshot folder", err)
  check_cache(home, "org/name", repo, "blobs named by etag, relative symlinks from snapshots/<commit>, bytes as served")
  tap.eq(slurp(storage(home, "org/name") .. "/refs/main"), COMMIT, "refs/main holds the commit, as huggingface_hub writes it")
  tap.ok(fs.exists(home .. "/hub/CACHEDIR.TAG"), "the cache is tagged (CACHEDIR.TAG)")
  local log = requests(srv)
  tap.ok(count(log, "^GET /api/models/org/name/revision/main") == 1 and count(log, "^HEAD /org/name/resolve/" .. COMMIT) == 3
         and count(log, "^GET /cdn/org/name/") == 1, "one API call, a HEAD per file at the commit, the LFS file from the CDN",
         table.concat(log, "\n"))
  tap.ok(err:find("model.safetensors", 1, true) and err:find("300.0 kB", 1, true) and err:find("/s", 1, true),
         "a progress line with the file, its size and a rate on stderr", err)

  -- a second fetch downloads nothing
  local before = #requests(srv)
  rc, _, err = fetch(srv, home, "org/name")
  log = requests(srv, before)
  tap.ok(rc == 0 and #log == 1 and log[1]:find("^GET /api/"), "a second fetch only asks for the file list",
         table.concat(log, "\n") .. "\n" .. err)
  tap.ok(err:find("0 downloaded", 1, true) and err:find("3 already there", 1, true), "and says nothing was downloaded", err)

  rc, _, err = fetch(srv, home, "org/name", "HF_HUB_OFFLINE=1")
  tap.ok(rc == 1 and err:find("HF_HUB_OFFLINE", 1, true), "HF_HUB_OFFLINE=1: no download, and says why", err)

  -- a blob whose lock another process holds (huggingface_hub's
  -- .locks/<repo>/<etag>.lock, an flock) is waited for, then fetched
  local home8 = tmp .. "/home8"
  local lfs = repo.files["model.safetensors"]
  local lock_path = ("%s/hub/.locks/models--org--name/%s.lock"):format(home8, lfs.etag)
  fs.mkdir_p(lock_path:match("^(.*)/"))
  local lock = assert(fs.lock(lock_path))
  os.execute(("(%s >%s/bg.out 2>%s/bg.err; echo $? >%s/bg.rc) &"):format(fetch_cmd(srv, home8, "org/name"), tmp, tmp, tmp))
  local waiting = wait_for(function() return (slurp(tmp .. "/bg.err") or ""):find("waiting for another download", 1, true) end)
  local blob8 = storage(home8, "org/name") .. "/blobs/" .. lfs.etag
  tap.ok(waiting and not fs.exists(blob8) and not fs.exists(blob8 .. ".incomplete"),
         "a fetch waits while another process holds the blob's lock", slurp(tmp .. "/bg.err"))
  lock.release()
  local bg_rc = wait_for(function() return tonumber(slurp(tmp .. "/bg.rc") or "") end)
  tap.ok(bg_rc == 0, "and goes on once it is released", slurp(tmp .. "/bg.err"))
  check_cache(home8, "org/name", repo, "and the cache is whole")

  -- a tag: refs/v1.0, the same snapshot
  rc = fetch(srv, home, "org/name --revision v1.0")
  tap.ok(rc == 0 and slurp(storage(home, "org/name") .. "/refs/v1.0") == COMMIT, "--revision v1.0 writes refs/v1.0")

  -- a partial blob from an earlier run resumes with a Range
  local home2 = tmp .. "/home2"
  write(storage(home2, "org/name") .. "/blobs/" .. lfs.etag .. ".incomplete", lfs.data:sub(1, 100000))
  before = #requests(srv)
  rc, _, err = fetch(srv, home2, "org/name")
  log = requests(srv, before)
  tap.ok(rc == 0 and count(log, "^GET /cdn/.* range=bytes=100000%- ") == 1 and count(log, "^GET /cdn/.* range=%- ") == 0,
         "a .incomplete blob resumes with Range: bytes=100000-", table.concat(log, "\n") .. "\n" .. err)
  check_cache(home2, "org/name", repo, "the resumed blob is whole and right")

  -- a connection dropped mid-body resumes within the same fetch
  local dropper = assert(start("--drop model.safetensors:120000"))
  local home3 = tmp .. "/home3"
  rc, _, err = fetch(dropper, home3, "org/name")
  log = requests(dropper)
  tap.ok(rc == 0 and count(log, "^GET /cdn/.* range=%- ") == 1 and count(log, "^GET /cdn/.* range=bytes=120000%- ") == 1,
         "a dropped transfer is resumed from byte 120000", table.concat(log, "\n") .. "\n" .. err)
  tap.ok(err:find("resuming", 1, true) ~= nil, "and the user is told", err)
  check_cache(home3, "org/name", repo, "the file resumed after the drop is right")

  -- corrupt bytes: refused, named, fetched again
  local cases = {
    { "model.safetensors", "sha256", "^GET /cdn/org/name/" .. lfs.etag .. " " },
    { "config.json", "git-sha1", "^GET /org/name/resolve/" .. COMMIT .. "/config%.json " },
  }
  for _, case in ipairs(cases) do
    local corrupter = assert(start("--corrupt " .. case[1]))
    local h = tmp .. "/home-corrupt-" .. case[1]
    rc, _, err = fetch(corrupter, h, "org/name")
    log = requests(corrupter)
    tap.ok(rc == 0 and err:find(case[1] .. ": the download's " .. case[2], 1, true)
           and err:find("refused, fetching it again", 1, true) and count(log, case[3]) == 2,
           ("a corrupt %s is refused by its %s, named, and fetched again"):format(case[1], case[2]),
           table.concat(log, "\n") .. "\n" .. err)
    check_cache(h, "org/name", repo, "and the cache then holds the right bytes (" .. case[1] .. ")")
  end

  -- tokens
  local guarded = assert(start("--token sekrit"))
  rc, _, err = fetch(guarded, tmp .. "/home-t1", "org/name")
  tap.ok(rc == 1 and err:find("HTTP 401", 1, true) and err:find("HF_TOKEN", 1, true),
         "without a token: 401, and the message says to set HF_TOKEN", err)
  rc, _, err = fetch(guarded, tmp .. "/home-t2", "org/name", "HF_TOKEN=sekrit")
  tap.ok(rc == 0, "with HF_TOKEN", err)
  check_cache(tmp .. "/home-t2", "org/name", repo, "with HF_TOKEN: all files")
  write(tmp .. "/home-t3/token", "sekrit\n")
  rc, _, err = fetch(guarded, tmp .. "/home-t3", "org/name")
  tap.ok(rc == 0, "with the token in $HF_HOME/token (huggingface-cli login)", err)
  log = requests(guarded)
  tap.ok(count(log, "^GET /cdn/.* auth=yes") >= 1, "a CDN on the same host gets the token (as requests keeps it)",
         table.concat(log, "\n"))
  local cdn = assert(start("--token sekrit --cdn-host localhost"))
  rc, _, err = fetch(cdn, tmp .. "/home-t4", "org/name", "HF_TOKEN=sekrit")
  log = requests(cdn)
  tap.ok(rc == 0 and count(log, "^HEAD .* auth=yes") == 3 and count(log, "^GET /cdn/.* auth=no") == 1
         and count(log, "^GET /cdn/.* auth=yes") == 0, "a CDN on another host gets no Authorization header",
         table.concat(log, "\n") .. "\n" .. err)

  -- a revision the hub does not have
  rc, _, err = fetch(srv, tmp .. "/home-r", "org/name --revision nope")
  tap.ok(rc == 1 and err:find("revision 'nope' not found", 1, true) and err:find("RevisionNotFound", 1, true),
         "a missing revision is an error naming it", err)
  rc, _, err = fetch(srv, tmp .. "/home-r", "org/name@nope")
  tap.ok(rc == 1 and err:find("revision 'nope' not found", 1, true), "org/name@rev names a revision too", err)
  rc, _, err = fetch(srv, tmp .. "/home-r", "'org/na me'")
  tap.ok(rc == 1 and err:find("not a Hugging Face repository id", 1, true), "a malformed id is refused", err)

  -- --include
  local home4 = tmp .. "/home4"
  rc, _, err = fetch(srv, home4, "org/name --include '*.json' --include 'sub/'")
  local st4 = storage(home4, "org/name") .. "/snapshots/" .. COMMIT
  tap.ok(rc == 0 and fs.exists(st4 .. "/config.json") and fs.exists(st4 .. "/sub/extra.txt")
         and not fs.exists(st4 .. "/model.safetensors"), "--include '*.json' --include 'sub/' fetches only those", err)
  check_cache(home4, "org/name", repo, "the included files are right", { ["config.json"] = true, ["sub/extra.txt"] = true })
  rc, _, err = fetch(srv, home4, "org/name --include '*.bin'")
  tap.ok(rc == 1 and err:find("no file", 1, true) and err:find("*.bin", 1, true),
         "an --include matching nothing is an error", err)

  -- --local-dir: plain files and huggingface_hub's metadata
  local home5, ldir = tmp .. "/home5", tmp .. "/local"
  rc, out, err = fetch(srv, home5, "org/name --local-dir " .. Q(ldir))
  local bad = {}
  for path, f in pairs(repo.files) do
    if readlink(ldir .. "/" .. path) or slurp(ldir .. "/" .. path) ~= f.data then bad[#bad + 1] = path end
    local meta = slurp(ldir .. "/.cache/huggingface/download/" .. path .. ".metadata") or ""
    if not meta:find("^" .. COMMIT .. "\n" .. f.etag .. "\n%d+") then bad[#bad + 1] = path .. ".metadata: " .. meta end
  end
  tap.ok(rc == 0 and #bad == 0 and out:match("([^\n]+)\n$") == ldir,
         "--local-dir: real files, and .cache/huggingface/download/<file>.metadata (commit, etag, time)",
         table.concat(bad, ", ") .. "\n" .. err)
  tap.ok(slurp(ldir .. "/.cache/huggingface/.gitignore") == "*" and not fs.exists(home5 .. "/hub/models--org--name"),
         "--local-dir: .gitignore '*', nothing in the cache")
  before = #requests(srv)
  rc = fetch(srv, home5, "org/name --local-dir " .. Q(ldir))
  log = requests(srv, before)
  tap.ok(rc == 0 and #log == 1, "--local-dir a second time: only the file list", table.concat(log, "\n"))

  -- a renamed repository: the hub answers with relative redirects
  local renamed = assert(start("--alias old/gone=org/name"))
  local home6 = tmp .. "/home6"
  rc, _, err = fetch(renamed, home6, "old/gone")
  log = requests(renamed)
  tap.ok(rc == 0 and count(log, "^HEAD /old/gone/resolve/") == 3 and count(log, "^HEAD /org/name/resolve/") == 3,
         "a renamed repository: relative redirects followed", table.concat(log, "\n") .. "\n" .. err)
  check_cache(home6, "old/gone", repo, "and stored under the name asked for")

  -- hub ids from the cache: hf.open and config keys, never the network
  local hf = require("fmseg.io.hf")
  ffi.C.setenv("HF_HUB_CACHE", home .. "/hub", 1)
  tap.eq(hf.open("org/name").path, snap, "hf.open('org/name') is the cached snapshot")
  tap.eq(hf.open("org/name@v1.0").path, snap, "hf.open('org/name@v1.0') through refs/v1.0")
  tap.raises(function() hf.open("org/absent") end, "download it with: fmseg fetch org/absent",
             "an id not in the cache is an error that says how to fetch it")
  tap.raises(function() hf.open("org/name@v9") end, "fmseg fetch org/name@v9", "so is a revision not in the cache")

  -- the tiny CLIP fixture served as openai/clip-vit-base-patch16: a config
  -- key and `fmseg demo` find it in the cache
  local clip = tap.fixtures("clip-tiny")
  if clip then
    local files = {}
    for _, name in ipairs({ "config.json", "preprocessor_config.json", "tokenizer_config.json", "vocab.json", "merges.txt" }) do
      files[#files + 1] = { name, assert(slurp(clip .. "/" .. name)) }
    end
    files[#files + 1] = { "model.safetensors", assert(slurp(clip .. "/model.safetensors")), true }
    make_repo("openai/clip-vit-base-patch16", ("c"):rep(40), { "main" }, files)
    local home7 = tmp .. "/home7"
    rc, out, err = fetch(srv, home7, "openai/clip-vit-base-patch16")
    local clip_snap = storage(home7, "openai/clip-vit-base-patch16") .. "/snapshots/" .. ("c"):rep(40)
    tap.ok(rc == 0 and out:find(clip_snap, 1, true), "fetch openai/clip-vit-base-patch16 (the tiny fixture)", err)

    ffi.C.setenv("HF_HUB_CACHE", home7 .. "/hub", 1)
    local config = require("fmseg.io.config")
    write(tmp .. "/clip.yaml", "models:\n  clip: openai/clip-vit-base-patch16\n")
    local cfg = config.load(tmp .. "/clip.yaml")
    local model = require("fmseg.models").load("clip", config.get(cfg, "models.clip"))
    tap.eq(model.path, clip_snap, "a config's models.clip: openai/clip-vit-base-patch16 loads the cached snapshot")

    local cwd = tmp .. "/demo"
    fs.mkdir_p(cwd)
    rc, out, err = sh(("cd %s && %s HF_HOME=%s FMSEG_FIXTURES=/nonexistent %s demo"):format(Q(cwd), CLEAN, Q(home7), Q(FMSEG)))
    tap.ok(rc == 0 and out:find("using openai/clip-vit-base-patch16 from the Hugging Face cache", 1, true)
           and out:find(clip_snap, 1, true) and fs.exists(cwd .. "/out/demo/astronaut.png"),
           "fmseg demo finds openai/clip-vit-base-patch16 in the hub cache and segments with it", out .. err)
    rc, out, err = sh(("cd %s && %s HF_HOME=%s FMSEG_FIXTURES=/nonexistent %s demo"):format(Q(cwd), CLEAN,
      Q(tmp .. "/empty-home"), Q(FMSEG)))
    tap.ok(rc == 1 and err:find("fmseg fetch openai/clip-vit-base-patch16", 1, true),
           "with no model anywhere, demo says: fmseg fetch openai/clip-vit-base-patch16", out .. err)
    -- the commands' --model takes the hub id too (classify also reads the
    -- tokenizer's files, which tokenizer.load resolves itself)
    rc, out, err = sh(("cd %s && %s HF_HOME=%s %s classify --model openai/clip-vit-base-patch16 %s --labels 'a cat,a dog'")
      :format(Q(cwd), CLEAN, Q(home7), Q(FMSEG), Q(core.root .. "/tests/data/astronaut.jpg")))
    tap.ok(rc == 0 and out:find("a cat", 1, true) ~= nil, "fmseg classify --model openai/clip-vit-base-patch16", out .. err)
  end
end

-- what needs no server: --include's globs (fnmatchcase, as
-- huggingface_hub's filter_repo_objects) and which texts are hub ids
do
  local hub = require("fmseg.io.hub")
  local cases = {
    { "*.json", "config.json", true }, { "*.json", "sub/a.json", true }, { "*.json", "config.jsonl", false },
    { "sub/", "sub/x/y.txt", true }, { "sub/", "subway.txt", false }, { "model-?.bin", "model-1.bin", true },
    { "[!a]b", "cb", true }, { "[!a]b", "ab", false }, { "[^a]b", "^b", true }, { "[^a]b", "cb", false },
    { "a.b", "axb", false }, { "*%", "50%x", false }, { "*%", "50%", true },
  }
  local bad = {}
  for _, c in ipairs(cases) do
    if hub.glob_match(c[1], c[2]) ~= c[3] then bad[#bad + 1] = ("%s on %s"):format(c[1], c[2]) end
  end
  tap.ok(#bad == 0, "--include globs match as Python's fnmatchcase", table.concat(bad, ", "))
  local ids = {
    { "openai/clip-vit-base-patch16", true }, { "openai/clip-vit-base-patch16@v1", true }, { "models/clip", true },
    { "./models/clip", false }, { "/data/clip", false }, { "a--b/c", false }, { "a/b/c", false }, { "gpt2", false },
    { "-a/b", false }, { "a/b.", false },
  }
  bad = {}
  for _, c in ipairs(ids) do
    if hub.looks_like_id(c[1]) ~= c[2] then bad[#bad + 1] = c[1] end
  end
  tap.ok(#bad == 0, "hub ids are org/name[@rev]; paths stay paths", table.concat(bad, ", "))
end

local ok, failure = pcall(main)
stop_all()
if not ok then tap.ok(false, "the test ran to its end", failure) end
os.execute("rm -rf " .. Q(tmp))
os.exit(tap.done())
