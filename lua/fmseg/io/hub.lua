-- fmseg.io.hub — Hugging Face hub repositories: the hub's own HTTP API and
-- the cache that huggingface_hub keeps, in its layout, so that a cache made
-- by Python tools is used here and the reverse.
--
--   local hub = require("fmseg.io.hub")
--   local r = hub.fetch("openai/clip-vit-base-patch16", { include = { "*.json", "*.txt", "*.safetensors" } })
--   print(r.path)                              -- .../snapshots/<commit>
--   local dir = hub.snapshot("openai/clip-vit-base-patch16")   -- cache only, never the network
--
-- The cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub):
--   models--<org>--<name>/blobs/<etag>            the bytes (etag: git blob id, or sha256 for LFS)
--   models--<org>--<name>/blobs/<etag>.incomplete  while downloading; resumed with a Range
--   models--<org>--<name>/snapshots/<commit>/<file> -> ../../blobs/<etag>   (relative symlinks)
--   models--<org>--<name>/refs/<revision>         the commit the revision named
-- as huggingface_hub's snapshot_download / hf_hub_download write it
-- (ref: huggingface_hub/file_download.py, _hf_hub_download_to_cache_dir,
-- get_hf_file_metadata; _snapshot_download.py; _local_folder.py).
-- Errors raise one line naming the repository, file or URL.
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")
local json = require("fmseg.io.json")

local ffi, C = core.ffi, core.C

-- one declaration each, so that another module's own one leaves the rest
pcall(ffi.cdef, "int symlink(const char *target, const char *linkpath);")
pcall(ffi.cdef, "int poll(void *fds, unsigned long nfds, int timeout);")

local M = {}

M.DEFAULT_ENDPOINT = "https://huggingface.co"
M.DEFAULT_REVISION = "main"

-- ---- where things are (huggingface_hub/constants.py) ---------------------------

local function env(name)
  local v = os.getenv(name)
  if v == nil or v == "" then return nil end
  return v
end

local function expand_user(path)
  if path:sub(1, 1) == "~" and (path:sub(2, 2) == "/" or #path == 1) then
    return (env("HOME") or "") .. path:sub(2)
  end
  return path
end

function M.endpoint() return ((env("HF_ENDPOINT") or M.DEFAULT_ENDPOINT):gsub("/+$", "")) end

function M.home()
  return expand_user(env("HF_HOME") or ((env("XDG_CACHE_HOME") or "~/.cache") .. "/huggingface"))
end

function M.cache_dir()
  return expand_user(env("HF_HUB_CACHE") or env("HUGGINGFACE_HUB_CACHE") or (M.home() .. "/hub"))
end

local function clean_token(t)
  if not t then return nil end
  t = t:gsub("[\r\n]", ""):match("^%s*(.-)%s*$")
  return t ~= "" and t or nil
end

-- HF_TOKEN (or the older HUGGING_FACE_HUB_TOKEN), else the file that
-- `huggingface-cli login` writes ($HF_TOKEN_PATH, else $HF_HOME/token).
function M.token()
  local t = clean_token(env("HF_TOKEN") or env("HUGGING_FACE_HUB_TOKEN"))
  if t then return t end
  return clean_token(fs.read(expand_user(env("HF_TOKEN_PATH") or (M.home() .. "/token"))))
end

-- ---- repository ids -------------------------------------------------------------

-- "org/name" or "name": letters, digits, - _ . ; no "--" or "..", no
-- leading or trailing - or . in a part, at most 96 characters
-- (huggingface_hub/utils/_validators.py, validate_repo_id).
local function valid_part(p)
  return #p > 0 and p:match("^[%w_.%-]+$") ~= nil and not p:match("^[.%-]") and not p:match("[.%-]$")
end

function M.valid_id(id)
  if type(id) ~= "string" or #id > 96 or id:find("--", 1, true) or id:find("..", 1, true) then return false end
  local org, name = id:match("^([^/]+)/([^/]+)$")
  if org then return valid_part(org) and valid_part(name) end
  return valid_part(id)
end

-- "org/name[@revision]" → id, revision (nil when not given), or nil and why.
function M.parse(text)
  local id, rev = text:match("^([^@]+)@(.+)$")
  id = id or text
  if not M.valid_id(id) then
    return nil, ("'%s' is not a Hugging Face repository id (org/name, letters, digits, - _ .)"):format(id)
  end
  return id, rev
end

-- Could `text` name a hub model rather than a path? Only org/name[@rev]
-- with no leading ./ or /, so that paths stay paths.
function M.looks_like_id(text)
  if type(text) ~= "string" or text:find("^[./~]") then return false end
  local id = text:match("^([^@]+)@.+$") or text
  return id:find("/", 1, true) ~= nil and M.valid_id(id)
end

function M.repo_folder(id) return "models--" .. id:gsub("/", "--") end

local function is_commit(rev) return #rev == 40 and rev:match("^%x+$") ~= nil end

-- ---- paths ----------------------------------------------------------------------

-- size in bytes and modification time of path, or nil when it is not there
local function file_stat(path)
  local size, t = ffi.new("int64_t[1]"), ffi.new("double[1]")
  if C.fm_file_stat(path, size, t) ~= 0 then
    C.fm_clear_error()
    return nil
  end
  return tonumber(size[0]), t[0]
end

local function file_size(path) return (file_stat(path)) end

local function dirname(path) return path:match("^(.*)/[^/]*$") or "." end

local function file_digest(path, algo, git_blob)
  local hex = ffi.new("char[65]")
  if C.fm_file_digest(path, algo, git_blob and 1 or 0, hex, 65) ~= 0 then core.raise() end
  return ffi.string(hex)
end

local function sha1_raw(s)
  local hex = ffi.new("char[41]")
  if C.fm_digest(s, #s, "sha1", hex, 41) ~= 0 then core.raise() end
  return (ffi.string(hex):gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

-- base64.urlsafe_b64encode
local function b64url(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = {}
    for k = 3, 0, -1 do
      local v = math.floor(n / 64 ^ k) % 64
      chars[#chars + 1] = B64:sub(v + 1, v + 1)
    end
    if not b then chars[3], chars[4] = "=", "="
    elseif not c then chars[4] = "=" end
    out[#out + 1] = table.concat(chars)
  end
  return table.concat(out)
end

-- A file name inside a repository: relative, no "." or ".." parts
-- (huggingface_hub's _validate_relative_filename).
local function check_filename(repo_id, name)
  local bad = type(name) ~= "string" or name == "" or name:sub(1, 1) == "/" or name:find("\\", 1, true)
  for part in (type(name) == "string" and name or ""):gmatch("[^/]+") do
    if part == "." or part == ".." then bad = true end
  end
  if bad then error(("%s: the hub lists a file named %q, which is not a relative path"):format(repo_id,
    tostring(name)), 0) end
end

local function write_file(path, text)
  fs.mkdir_p(dirname(path))
  fs.write_atomic(path, text)
end

local function copy_file(src, dst)
  fs.atomically(dst, function(tmp)
    local i = assert(io.open(src, "rb"))
    local o, err = io.open(tmp, "wb")
    if not o then i:close(); error(("cannot write %s: %s"):format(dst, tostring(err)), 0) end
    while true do
      local chunk = i:read(1048576)
      if not chunk then break end
      if not o:write(chunk) then i:close(); o:close(); error(("cannot write %s"):format(dst), 0) end
    end
    i:close()
    if not o:close() then error(("cannot write %s"):format(dst), 0) end
  end)
end

local function sleep_ms(ms) ffi.C.poll(nil, 0, ms) end

-- ---- the cache, without the network --------------------------------------------

-- The snapshot folder of `id` at `revision` (default main) in the cache, or
-- nil and why. Never downloads.
function M.snapshot(id, revision, cache)
  revision = revision or M.DEFAULT_REVISION
  cache = cache or M.cache_dir()
  local storage = cache .. "/" .. M.repo_folder(id)
  local commit = revision
  if not is_commit(revision) then
    commit = fs.read(storage .. "/refs/" .. revision)
    if not commit then
      return nil, ("%s (revision %s) is not in the Hugging Face cache %s"):format(id, revision, cache)
    end
    commit = commit:match("^%s*(%x+)%s*$") or commit
  end
  local path = storage .. "/snapshots/" .. commit
  if not fs.is_dir(path) then
    return nil, ("%s: the cache %s names commit %s for %s, whose snapshot is missing"):format(id, cache, commit, revision)
  end
  return path
end

-- ---- HTTP -------------------------------------------------------------------------

local function header_text(headers)
  local lines = {}
  for k, v in pairs(headers) do lines[#lines + 1] = k .. ": " .. v end
  table.sort(lines)
  return table.concat(lines, "\n")
end

local function parse_headers(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    local k, v = line:match("^([^:]+):%s*(.-)%s*$")
    if k then out[k:lower()] = v end
  end
  return out
end

-- One request, driven to its end; on_step(received_now) between steps.
-- Returns { status, headers, body, received, offset, url, failed = message or nil }.
function M.request(method, url, o)
  o = o or {}
  local h = C.fm_http_open(method, url, header_text(o.headers or {}), o.out, o.resume or 0, o.follow and 1 or 0)
  if h == nil then core.raise() end
  h = ffi.gc(h, C.fm_http_close)
  local rc
  repeat
    rc = C.fm_http_step(h, 100)
    if o.on_step then o.on_step(tonumber(C.fm_http_offset(h)) + tonumber(C.fm_http_received(h))) end
  until rc ~= 1
  local failed = nil
  if rc < 0 then
    failed = ffi.string(C.fm_last_error())
    C.fm_clear_error()
  end
  local len = ffi.new("size_t[1]")
  local body = C.fm_http_body(h, len)
  local res = {
    status = C.fm_http_status(h), headers = parse_headers(ffi.string(C.fm_http_headers(h))),
    body = ffi.string(body, len[0]), received = tonumber(C.fm_http_received(h)),
    offset = tonumber(C.fm_http_offset(h)), url = ffi.string(C.fm_http_effective_url(h)), failed = failed,
  }
  C.fm_http_close(ffi.gc(h, nil))
  return res
end

-- urllib.parse.quote: everything but letters, digits, _.-~ (and `safe`)
local function quote(s, safe)
  return (s:gsub("[^%w_.%-~" .. (safe or "") .. "]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local function netloc(url) return url:match("^%a[%w+.%-]*://([^/?#]*)") end

-- The hub's answer as one line (hf_raise_for_status): what was asked, the
-- status, the hub's own error code and message.
local function hub_error(res, what, ctx)
  local code, msg = res.headers["x-error-code"], res.headers["x-error-message"]
  if not msg then
    local ok, body = pcall(json.decode, res.body)
    if ok and type(body) == "table" and type(body.error) == "string" then msg = body.error end
  end
  local detail = ("HTTP %d%s%s"):format(res.status, code and (", " .. code) or "", msg and (": " .. msg) or "")
  if code == "RevisionNotFound" then
    return ("%s: revision '%s' not found on the hub (%s; %s)"):format(ctx.id, ctx.revision, what, detail)
  elseif code == "EntryNotFound" then
    return ("%s: file %s not found at revision %s (%s; %s)"):format(ctx.id, ctx.file or "?", ctx.revision, what, detail)
  elseif code == "GatedRepo" then
    return ("%s: a gated repository; accept its conditions on the hub and set HF_TOKEN (%s; %s)"):format(
      ctx.id, what, detail)
  elseif code == "RepoNotFound" or res.status == 401 then
    return ("%s: repository not found or not accessible (%s; %s); a private or gated one needs a token: "
            .. "set HF_TOKEN, or put it in %s"):format(ctx.id, what, detail, M.home() .. "/token")
  end
  return ("%s: %s failed (%s)"):format(ctx.id, what, detail)
end

local function auth_headers(token)
  local h = {}
  if token then h.Authorization = "Bearer " .. token end
  return h
end

-- etag as a file name: W/"x" and "x" -> x (file_download.py, _normalize_etag)
local function normalize_etag(etag)
  if not etag then return nil end
  return (etag:gsub("^W/", ""):gsub('^"', ""):gsub('"$', ""))
end

-- HEAD on the resolve URL without following the CDN redirect, following
-- relative ones (a renamed repository): the file's etag, commit, size and
-- where its bytes are (get_hf_file_metadata and
-- _httpx_follow_relative_redirects_with_backoff).
local function file_metadata(url, headers, ctx)
  local h = {}
  for k, v in pairs(headers) do h[k] = v end
  h["Accept-Encoding"] = "identity"
  for _ = 1, 10 do
    local res = M.request("HEAD", url, { headers = h })
    if res.failed then error(("%s: %s"):format(ctx.id, res.failed), 0) end
    if res.status >= 400 then error(hub_error(res, "HEAD " .. url, ctx), 0) end
    local loc = res.headers["location"]
    local redirect = res.status >= 300 and res.status < 400
    if redirect and loc and not netloc(loc) and not loc:find("^//") then
      url = url:match("^(%a[%w+.%-]*://[^/?#]*)") .. loc:gsub("[?#].*$", "")
    else
      local size = res.headers["x-linked-size"] or (not redirect and res.headers["content-length"]) or nil
      return {
        commit = res.headers["x-repo-commit"],
        etag = normalize_etag(res.headers["x-linked-etag"] or res.headers["etag"]),
        location = loc or url, size = tonumber(size), url = url,
      }
    end
  end
  error(("%s: more than 10 redirects from %s"):format(ctx.id, url), 0)
end

-- GET `url` into `dest`, resuming what dest already holds with a Range, and
-- resuming again after a broken connection while bytes keep coming
-- (file_download.py, http_get: 5 tries without progress).
local function download(url, dest, expected, headers, ctx, progress)
  local idle_tries = 0
  while true do
    local have = file_size(dest)
    if have == expected then return end
    have = have or 0
    if have > expected then
      os.remove(dest)
      have = 0
    end
    if progress then progress(have, true) end
    local res = M.request("GET", url, { headers = headers, out = dest, resume = have, follow = true,
                                        on_step = progress })
    if not res.failed and res.status == 416 then
      os.remove(dest)                            -- what we had is not a prefix of this file
    elseif not res.failed and res.status >= 400 then
      error(hub_error(res, "GET " .. url, ctx), 0)
    elseif not res.failed then
      local now = file_size(dest) or 0
      if now ~= expected then
        os.remove(dest)
        error(("%s: %s: got %d bytes, the hub said %d (GET %s)"):format(ctx.id, ctx.file, now, expected, url), 0)
      end
      return
    else
      local now = file_size(dest) or 0
      idle_tries = now > have and 0 or idle_tries + 1
      if idle_tries >= 5 then error(("%s: %s: %s"):format(ctx.id, ctx.file, res.failed), 0) end
      if ctx.note then ctx.note(("%s: the transfer broke at %d of %d bytes (%s); resuming"):format(
        ctx.file, now, expected, res.failed)) end
      if now <= have then sleep_ms(1000) end
    end
  end
end

-- The digest a file's bytes must have: an LFS file's sha256 (the etag, or
-- the listing's lfs.sha256), a git file's blob id when the listing and the
-- etag agree on it. nil, nil when neither is known.
local function expected_digest(meta, sibling)
  if meta.etag:match("^%x+$") and #meta.etag == 64 then return "sha256", meta.etag end
  if sibling and type(sibling.lfs) == "table" and type(sibling.lfs.sha256) == "string" then
    return "sha256", sibling.lfs.sha256
  end
  if sibling and sibling.blobId == meta.etag and #meta.etag == 40 then return "git-sha1", meta.etag end
  return nil, nil
end

local function verify(path, meta, sibling)
  local algo, want = expected_digest(meta, sibling)
  if not algo then return true end
  local got = algo == "sha256" and file_digest(path, "sha256") or file_digest(path, "sha1", true)
  return got == want, algo, got, want
end

-- Downloads into `dest` (an .incomplete path) and checks its digest; a
-- mismatch is refused and fetched once more from the start.
local function fetch_verified(meta, sibling, dest, headers, ctx, progress)
  for attempt = 1, 2 do
    download(meta.location, dest, meta.size, headers, ctx, progress)
    local ok, algo, got, want = verify(dest, meta, sibling)
    if ok then return end
    os.remove(dest)
    local what = ("%s: %s: the download's %s is %s, expected %s"):format(ctx.id, ctx.file, algo, got, want)
    if attempt == 2 then error(what .. "; refused", 0) end
    if ctx.note then ctx.note(what .. "; refused, fetching it again") end
  end
end

-- ---- fnmatch (filter_repo_objects: fnmatchcase, "dir/" means "dir/*") -------------

local function glob_to_pattern(glob)
  local out, i = { "^" }, 1
  while i <= #glob do
    local c = glob:sub(i, i)
    if c == "*" then
      out[#out + 1] = ".*"
    elseif c == "?" then
      out[#out + 1] = "."
    elseif c == "[" and glob:find("]", i + 2, true) then
      local j = glob:find("]", i + 2, true)
      local set = glob:sub(i + 1, j - 1)
      local neg = set:sub(1, 1) == "!"
      if neg then set = set:sub(2) end
      set = set:gsub("%%", "%%%%"):gsub("%]", "%%]"):gsub("%^", "%%^")
      out[#out + 1] = "[" .. (neg and "^" or "") .. set .. "]"
      i = j
    else
      out[#out + 1] = c:match("%w") and c or ("%" .. c)
    end
    i = i + 1
  end
  out[#out + 1] = "$"
  return table.concat(out)
end

function M.glob_match(glob, path)
  glob = glob:gsub("\\", "/")
  if glob:sub(-1) == "/" then glob = glob .. "*" end
  return path:find(glob_to_pattern(glob)) ~= nil
end

local function selected(path, include)
  if not include or #include == 0 then return true end
  for _, g in ipairs(include) do
    if M.glob_match(g, path) then return true end
  end
  return false
end

-- ---- fetch ------------------------------------------------------------------------

local CACHEDIR_TAG = "Signature: 8a477f597d28d172789f06886806bc55\n"
  .. "# This file is a cache directory tag created by huggingface_hub.\n"
  .. "# For information about cache directory tags, see:\n"
  .. "#\thttps://bford.info/cachedir/\n"

local function tag_cache_dir(dir)
  if not fs.exists(dir .. "/CACHEDIR.TAG") then pcall(write_file, dir .. "/CACHEDIR.TAG", CACHEDIR_TAG) end
end

-- GET /api/models/<id>/revision/<rev>?blobs=true: the commit and the files,
-- with sizes and LFS digests (hf_api.py, model_info(files_metadata=True)).
local function repo_info(ctx, endpoint, headers)
  local url = ("%s/api/models/%s/revision/%s?blobs=true"):format(endpoint, ctx.id, quote(ctx.revision))
  local res = M.request("GET", url, { headers = headers, follow = true })
  if res.failed then error(("%s: %s"):format(ctx.id, res.failed), 0) end
  if res.status >= 400 then error(hub_error(res, "GET " .. url, ctx), 0) end
  local ok, info = pcall(json.decode, res.body, url)
  if not ok or type(info) ~= "table" or type(info.sha) ~= "string" or type(info.siblings) ~= "table" then
    error(("%s: GET %s: not the hub's answer (no sha and siblings)"):format(ctx.id, url), 0)
  end
  return info
end

local function link_blob(pointer, etag, file)
  local depth = select(2, file:gsub("/", ""))
  local target = ("../"):rep(2 + depth) .. "blobs/" .. etag
  fs.mkdir_p(dirname(pointer))
  os.remove(pointer)
  if ffi.C.symlink(target, pointer) ~= 0 then
    error(("cannot create the symlink %s -> %s: %s"):format(pointer, target, ffi.string(ffi.C.strerror(ffi.errno()))), 0)
  end
end

-- fn() holding the lock file `path`: .locks/<repo folder>/<etag>.lock, the
-- flock that huggingface_hub's filelock takes too, so that two downloads
-- of one blob (ours or Python's) never write the same .incomplete.
local function with_lock(path, file, note, fn)
  fs.mkdir_p(dirname(path))
  local lock, holder = fs.lock(path)
  if not lock and note then note(("%s: waiting for another download of it (pid %s)"):format(file, tostring(holder))) end
  while not lock do
    sleep_ms(200)
    lock = fs.lock(path)
  end
  local ok, err = pcall(fn)
  lock.release()
  if not ok then error(err, 0) end
end

-- One file into the cache (hf_hub_download with revision = the commit).
-- Returns the bytes downloaded (0 when already there).
local function cache_file(st, file, sibling)
  local pointer = ("%s/snapshots/%s/%s"):format(st.storage, st.commit, file)
  if fs.exists(pointer) then return 0 end
  local ctx = { id = st.id, revision = st.commit, file = file, note = st.note }
  local url = ("%s/%s/resolve/%s/%s"):format(st.endpoint, st.id, st.commit, quote(file, "/"))
  local meta = file_metadata(url, st.headers, ctx)
  if not meta.commit or not meta.etag or not meta.size then
    error(("%s: HEAD %s: no X-Repo-Commit, ETag or size; is %s the hub?"):format(st.id, url, st.endpoint), 0)
  end
  pointer = ("%s/snapshots/%s/%s"):format(st.storage, meta.commit, file)
  local blob = st.storage .. "/blobs/" .. meta.etag
  local got = 0
  if not fs.exists(blob) then
    fs.mkdir_p(st.storage .. "/blobs")
    -- a CDN on another host gets no token (its URL is signed), as requests does
    local headers = st.headers
    if netloc(meta.location) ~= netloc(url) then headers = {} end
    with_lock(("%s/.locks/%s/%s.lock"):format(st.cache, M.repo_folder(st.id), meta.etag), file, st.note, function()
      if fs.exists(blob) then return end        -- another process finished it while we waited
      fetch_verified(meta, sibling, blob .. ".incomplete", headers, ctx, st.progress and st.progress(file, meta.size))
      local ok, err = os.rename(blob .. ".incomplete", blob)
      if not ok then error(("cannot move the download into %s: %s"):format(blob, tostring(err)), 0) end
      got = meta.size
    end)
  end
  link_blob(pointer, meta.etag, file)
  return got
end

-- .cache/huggingface/download/<file>.metadata: commit, etag, time
-- (_local_folder.py), valid while the file is not newer than it.
local function read_local_metadata(path, file_path)
  local text = fs.read(path)
  if not text then return nil end
  local commit, etag, stamp = text:match("^([^\n]*)\n([^\n]*)\n([^\n]*)")
  stamp = tonumber(stamp)
  local _, mtime = file_stat(file_path)
  if not (commit and stamp and mtime) or mtime - 1 > stamp then return nil end
  return { commit = commit, etag = etag }
end

local function write_local_metadata(path, commit, etag)
  write_file(path, ("%s\n%s\n%.6f\n"):format(commit, etag, os.time()))
end

-- One file into a plain folder, as `huggingface-cli download --local-dir`
-- does (_hf_hub_download_to_local_dir). Returns the bytes downloaded.
local function local_file(st, file, sibling)
  local dest = st.local_dir .. "/" .. file
  local hfdir = st.local_dir .. "/.cache/huggingface"
  local meta_path = ("%s/download/%s.metadata"):format(hfdir, file)
  local known = read_local_metadata(meta_path, dest)
  if known and known.commit == st.commit and fs.exists(dest) then return 0 end
  local ctx = { id = st.id, revision = st.commit, file = file, note = st.note }
  local url = ("%s/%s/resolve/%s/%s"):format(st.endpoint, st.id, st.commit, quote(file, "/"))
  local meta = file_metadata(url, st.headers, ctx)
  if not meta.commit or not meta.etag or not meta.size then
    error(("%s: HEAD %s: no X-Repo-Commit, ETag or size; is %s the hub?"):format(st.id, url, st.endpoint), 0)
  end
  if fs.exists(dest) and ((known and known.etag == meta.etag) or
      (not known and #meta.etag == 64 and file_digest(dest, "sha256") == meta.etag)) then
    write_local_metadata(meta_path, meta.commit, meta.etag)
    return 0
  end
  fs.mkdir_p(dirname(dest))
  local cached = ("%s/snapshots/%s/%s"):format(st.storage, meta.commit, file)
  if fs.exists(cached) then
    copy_file(cached, dest)
    write_local_metadata(meta_path, meta.commit, meta.etag)
    return 0
  end
  local name = file:match("([^/]+)$") .. ".metadata"
  local incomplete = ("%s/%s.%s.incomplete"):format(dirname(meta_path), b64url(sha1_raw(name)), meta.etag)
  fs.mkdir_p(dirname(incomplete))
  local headers = st.headers
  if netloc(meta.location) ~= netloc(url) then headers = {} end
  fetch_verified(meta, sibling, incomplete, headers, ctx, st.progress and st.progress(file, meta.size))
  os.remove(dest)
  local ok, err = os.rename(incomplete, dest)
  if not ok then error(("cannot move the download into %s: %s"):format(dest, tostring(err)), 0) end
  write_local_metadata(meta_path, meta.commit, meta.etag)
  return meta.size
end

local function prepare_local_dir(dir)
  local hfdir = dir .. "/.cache/huggingface"
  fs.mkdir_p(hfdir)
  tag_cache_dir(hfdir)
  if not fs.exists(hfdir .. "/.gitignore") then write_file(hfdir .. "/.gitignore", "*") end
end

-- fetch(id, opts) downloads repository `id` (snapshot_download):
--   opts.revision  branch, tag or commit (default main)
--   opts.include   list of fnmatch globs (allow_patterns); all files when empty
--   opts.local_dir a plain folder instead of the cache
--   opts.cache, opts.endpoint, opts.token   default: the environment's
--   opts.progress(file, size) → function(bytes_so_far, restarted) or nil
--   opts.note(message)        what happened that the user should know
-- Returns { id, revision, commit, path, files = {...}, downloaded = n, bytes = n }.
function M.fetch(id, opts)
  opts = opts or {}
  if not M.valid_id(id) then error(select(2, M.parse(id)), 0) end
  local offline = (env("HF_HUB_OFFLINE") or ""):upper()
  if offline == "1" or offline == "ON" or offline == "YES" or offline == "TRUE" then
    error(("%s: HF_HUB_OFFLINE is set, so nothing is downloaded (unset it to fetch)"):format(id), 0)
  end
  local revision = opts.revision or M.DEFAULT_REVISION
  local cache = opts.cache or M.cache_dir()
  local token = opts.token
  if token == nil then token = M.token() end
  local st = {
    id = id, endpoint = ((opts.endpoint or M.endpoint()):gsub("/+$", "")), headers = auth_headers(token),
    cache = cache, storage = cache .. "/" .. M.repo_folder(id), local_dir = opts.local_dir and opts.local_dir:gsub("/+$", ""),
    progress = opts.progress, note = opts.note,
  }
  local info = repo_info({ id = id, revision = revision }, st.endpoint, st.headers)
  st.commit = info.sha
  if not is_commit(st.commit) then error(("%s: the hub gave %q as the commit of %s"):format(id, st.commit, revision), 0) end
  local files = {}
  for _, s in ipairs(info.siblings) do
    if type(s) == "table" then
      check_filename(id, s.rfilename)
      if selected(s.rfilename, opts.include) then files[#files + 1] = s end
    end
  end
  if #files == 0 then
    error(("%s: no file of revision %s matches --include %s"):format(id, revision,
      table.concat(opts.include or {}, " ")), 0)
  end
  if st.local_dir then
    prepare_local_dir(st.local_dir)
  else
    fs.mkdir_p(st.storage)
    tag_cache_dir(cache)
    if revision ~= st.commit then write_file(st.storage .. "/refs/" .. revision, st.commit) end
  end
  local out = { id = id, revision = revision, commit = st.commit, files = {}, downloaded = 0, bytes = 0 }
  for _, s in ipairs(files) do
    local got = (st.local_dir and local_file or cache_file)(st, s.rfilename, s)
    out.files[#out.files + 1] = s.rfilename
    if got > 0 then out.downloaded, out.bytes = out.downloaded + 1, out.bytes + got end
  end
  out.path = st.local_dir or (st.storage .. "/snapshots/" .. st.commit)
  return out
end

return M
