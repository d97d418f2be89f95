/* hub_server.c — the Hugging Face hub's download endpoints on 127.0.0.1,
 * for tests/lua/test_fetch.lua. One process, one connection at a time,
 * HTTP/1.1 with "Connection: close"; POSIX sockets, no libraries.
 *
 *   hub_server --root DIR [--port-file FILE] [--log FILE] [--token T]
 *              [--drop PATH:N] [--corrupt PATH] [--cdn-host HOST]
 *              [--alias OLD_ORG/OLD_NAME=ORG/NAME] [--idle SECONDS]
 *
 * DIR/<org>/<name>/manifest describes a repository, its files are under
 * DIR/<org>/<name>/tree/:
 *   commit <40 hex>
 *   ref <name>                          (a branch or tag naming that commit)
 *   file <size> <blob id> <sha256|-> <path>   (a sha256: stored in LFS)
 * The test writes it, digests included, so nothing here computes one.
 *
 * Endpoints, as the hub answers them:
 *   GET  /api/models/<org>/<name>/revision/<rev>[?blobs=true]  the file list
 *   HEAD|GET /<org>/<name>/resolve/<rev>/<path>   a small file: 200, ETag (git
 *        blob id), X-Repo-Commit, Range honoured; an LFS file: 302 to
 *        http://<cdn-host>:<port>/cdn/<org>/<name>/<sha256> with ETag,
 *        X-Linked-Etag (the sha256), X-Linked-Size, X-Repo-Commit
 *   GET  /cdn/<org>/<name>/<sha256>    the LFS bytes, Range honoured
 * Errors carry the hub's X-Error-Code / X-Error-Message headers and a JSON
 * body: an unknown revision 404 RevisionNotFound, an unknown file 404
 * EntryNotFound, no or a wrong token 401 RepoNotFound.
 *
 * Faults: --token T requires "Authorization: Bearer T" on /api and
 * /resolve (never on /cdn, whose real URLs are signed); --drop PATH:N
 * closes the connection after N body bytes of the first GET of PATH's
 * bytes; --corrupt PATH flips one byte of the first GET of PATH's bytes;
 * --cdn-host names another host for the CDN (an Authorization header sent
 * there shows in the log); --alias makes OLD a renamed repository, answered
 * with a relative 307 to NEW, as the hub does.
 *
 * The port goes to --port-file (written whole, then renamed) or stdout.
 * Each request is one line in --log: "METHOD TARGET range=R auth=yes|no".
 * The server exits after --idle seconds (default 120) without a request,
 * so that a test that dies leaves nothing running for long; when it
 * cannot bind 127.0.0.1 it says so and exits 2. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

enum { MAX_FILES = 64, MAX_REFS = 16, REQ_MAX = 16384 };

typedef struct {
  long long size;
  char blob[64];
  char sha256[80];     /* "-" for a file stored in git */
  char path[512];
} entry;

typedef struct {
  char commit[64];
  char refs[MAX_REFS][128];
  int nrefs;
  entry files[MAX_FILES];
  int nfiles;
} repo;

static struct {
  const char *root, *port_file, *log, *token, *cdn_host, *alias;
  char drop_path[512];
  long long drop_after;
  char corrupt_path[512];
  int idle;
  int port;
} opt = { .cdn_host = "127.0.0.1", .idle = 120, .drop_after = -1 };

typedef struct {
  char method[16];
  char target[4096];
  char range[128];
  char auth[512];
} request;

/* ---- output ---------------------------------------------------------------- */

static int send_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k <= 0) return -1;
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

/* status line, the extra header lines (each ending "\r\n"), Content-Length */
static int send_head(int fd, int status, const char *reason, const char *extra, long long length) {
  char buf[8192];
  int n = snprintf(buf, sizeof buf, "HTTP/1.1 %d %s\r\n%sContent-Length: %lld\r\nConnection: close\r\n\r\n",
                   status, reason, extra ? extra : "", length);
  if (n < 0 || (size_t)n >= sizeof buf) return -1;
  return send_all(fd, buf, (size_t)n);
}

static void send_error(int fd, const request *rq, int status, const char *reason, const char *code,
                       const char *message, const char *commit) {
  char extra[2048], body[1024];
  int n = snprintf(body, sizeof body, "{\"error\":\"%s\"}", message);
  snprintf(extra, sizeof extra,
           "Content-Type: application/json\r\nX-Error-Code: %s\r\nX-Error-Message: %s\r\n%s%s%s", code, message,
           commit ? "X-Repo-Commit: " : "", commit ? commit : "", commit ? "\r\n" : "");
  if (send_head(fd, status, reason, extra, n) == 0 && strcmp(rq->method, "HEAD") != 0) send_all(fd, body, (size_t)n);
}

/* ---- repositories ----------------------------------------------------------- */

static int load_repo(const char *org, const char *name, repo *r) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s/%s/manifest", opt.root, org, name);
  if (strstr(org, "..") || strstr(name, "..")) return -1;
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  memset(r, 0, sizeof *r);
  char line[1024];
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = '\0';
    if (strncmp(line, "commit ", 7) == 0) {
      snprintf(r->commit, sizeof r->commit, "%.63s", line + 7);
    } else if (strncmp(line, "ref ", 4) == 0 && r->nrefs < MAX_REFS) {
      snprintf(r->refs[r->nrefs++], sizeof r->refs[0], "%.127s", line + 4);
    } else if (strncmp(line, "file ", 5) == 0 && r->nfiles < MAX_FILES) {
      entry *e = &r->files[r->nfiles];
      int used = 0;
      if (sscanf(line + 5, "%lld %63s %79s %n", &e->size, e->blob, e->sha256, &used) == 3 && used > 0) {
        snprintf(e->path, sizeof e->path, "%s", line + 5 + used);
        r->nfiles++;
      }
    }
  }
  fclose(f);
  return 0;
}

static int known_revision(const repo *r, const char *rev) {
  if (strcmp(rev, r->commit) == 0) return 1;
  for (int i = 0; i < r->nrefs; i++)
    if (strcmp(rev, r->refs[i]) == 0) return 1;
  return 0;
}

static const entry *find_file(const repo *r, const char *path, const char *sha) {
  for (int i = 0; i < r->nfiles; i++) {
    if (path && strcmp(r->files[i].path, path) == 0) return &r->files[i];
    if (sha && strcmp(r->files[i].sha256, sha) == 0) return &r->files[i];
  }
  return NULL;
}

/* ---- requests --------------------------------------------------------------- */

static void url_decode(char *s) {
  char *o = s;
  for (char *p = s; *p; p++) {
    if (*p == '%' && p[1] && p[2]) {
      char hex[3] = { p[1], p[2], 0 };
      *o++ = (char)strtol(hex, NULL, 16);
      p += 2;
    } else {
      *o++ = *p;
    }
  }
  *o = '\0';
}

static int read_request(int fd, request *rq) {
  char buf[REQ_MAX + 1];
  size_t len = 0;
  memset(rq, 0, sizeof *rq);
  while (len < REQ_MAX) {
    ssize_t k = recv(fd, buf + len, REQ_MAX - len, 0);
    if (k <= 0) return -1;
    len += (size_t)k;
    buf[len] = '\0';
    if (strstr(buf, "\r\n\r\n")) break;
  }
  if (sscanf(buf, "%15s %4095s", rq->method, rq->target) != 2) return -1;
  for (char *line = strstr(buf, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
    char *h = line + 2;
    char *end = strstr(h, "\r\n");
    if (!end || end == h) break;
    size_t n = (size_t)(end - h);
    if (n > 6 && strncasecmp(h, "Range:", 6) == 0)
      snprintf(rq->range, sizeof rq->range, "%.*s", (int)(n - 6), h + 6);
    if (n > 14 && strncasecmp(h, "Authorization:", 14) == 0)
      snprintf(rq->auth, sizeof rq->auth, "%.*s", (int)(n - 14), h + 14);
  }
  char *r = rq->range, *a = rq->auth;
  while (*r == ' ') memmove(r, r + 1, strlen(r));
  while (*a == ' ') memmove(a, a + 1, strlen(a));
  return 0;
}

static void log_request(const request *rq) {
  if (!opt.log) return;
  FILE *f = fopen(opt.log, "a");
  if (!f) return;
  fprintf(f, "%s %s range=%s auth=%s\n", rq->method, rq->target, rq->range[0] ? rq->range : "-",
          rq->auth[0] ? "yes" : "no");
  fclose(f);
}

static int authorized(const request *rq) {
  if (!opt.token) return 1;
  char want[600];
  snprintf(want, sizeof want, "Bearer %s", opt.token);
  return strcmp(rq->auth, want) == 0;
}

/* ---- bodies ----------------------------------------------------------------- */

/* The bytes of e (with Range and the armed faults), after the head. */
static void send_file(int fd, const request *rq, const repo *r, const char *org, const char *name,
                      const entry *e, const char *extra_in) {
  long long start = 0, end = e->size - 1;
  int partial = 0;
  if (rq->range[0]) {
    long long a = -1, b = -1;
    int n = sscanf(rq->range, "bytes=%lld-%lld", &a, &b);
    if (n >= 1 && a >= 0) {
      if (a >= e->size) {
        char extra[256];
        snprintf(extra, sizeof extra, "Content-Range: bytes */%lld\r\n", e->size);
        send_head(fd, 416, "Range Not Satisfiable", extra, 0);
        return;
      }
      start = a;
      if (n == 2 && b >= a && b < e->size) end = b;
      partial = 1;
    }
  }
  char extra[4096];
  int k = snprintf(extra, sizeof extra, "%sAccept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n",
                   extra_in ? extra_in : "");
  if (partial)
    snprintf(extra + k, sizeof extra - (size_t)k, "Content-Range: bytes %lld-%lld/%lld\r\n", start, end, e->size);
  long long length = e->size > 0 ? end - start + 1 : 0;
  if (send_head(fd, partial ? 206 : 200, partial ? "Partial Content" : "OK", extra, length) != 0) return;
  if (strcmp(rq->method, "HEAD") == 0) return;

  long long limit = length;
  int corrupt = 0;
  if (opt.drop_after >= 0 && strcmp(opt.drop_path, e->path) == 0) {
    if (opt.drop_after < limit) limit = opt.drop_after;
    opt.drop_after = -1;           /* once */
  }
  if (opt.corrupt_path[0] && strcmp(opt.corrupt_path, e->path) == 0) {
    corrupt = 1;
    opt.corrupt_path[0] = '\0';    /* once */
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/%s/%s/tree/%s", opt.root, org, name, e->path);
  (void)r;
  FILE *f = fopen(path, "rb");
  if (!f || fseeko(f, start, SEEK_SET) != 0) {
    if (f) fclose(f);
    return;
  }
  char buf[65536];
  long long sent = 0, flip_at = e->size / 2;
  while (sent < limit) {
    size_t want = (size_t)(limit - sent < (long long)sizeof buf ? limit - sent : (long long)sizeof buf);
    size_t got = fread(buf, 1, want, f);
    if (got == 0) break;
    long long at = start + sent;
    if (corrupt && flip_at >= at && flip_at < at + (long long)got) buf[flip_at - at] ^= 0x5a;
    if (send_all(fd, buf, got) != 0) break;
    sent += (long long)got;
  }
  fclose(f);
}

static void send_api(int fd, const request *rq, const repo *r, const char *org, const char *name) {
  size_t cap = 4096 + (size_t)r->nfiles * 1024, len = 0;
  char *body = malloc(cap);
  if (!body) return;
  len += (size_t)snprintf(body + len, cap - len,
                          "{\"_id\":\"x\",\"id\":\"%s/%s\",\"modelId\":\"%s/%s\",\"private\":false,\"sha\":\"%s\","
                          "\"siblings\":[", org, name, org, name, r->commit);
  for (int i = 0; i < r->nfiles; i++) {
    const entry *e = &r->files[i];
    len += (size_t)snprintf(body + len, cap - len, "%s{\"rfilename\":\"%s\",\"size\":%lld,\"blobId\":\"%s\"",
                            i ? "," : "", e->path, e->size, e->blob);
    if (strcmp(e->sha256, "-") != 0)
      len += (size_t)snprintf(body + len, cap - len, ",\"lfs\":{\"sha256\":\"%s\",\"size\":%lld,\"pointerSize\":134}",
                              e->sha256, e->size);
    len += (size_t)snprintf(body + len, cap - len, "}");
  }
  len += (size_t)snprintf(body + len, cap - len, "]}");
  if (send_head(fd, 200, "OK", "Content-Type: application/json\r\n", (long long)len) == 0 &&
      strcmp(rq->method, "HEAD") != 0)
    send_all(fd, body, len);
  free(body);
}

static void send_resolve(int fd, const request *rq, const repo *r, const char *org, const char *name,
                         const char *path) {
  const entry *e = find_file(r, path, NULL);
  if (!e) {
    send_error(fd, rq, 404, "Not Found", "EntryNotFound", "Entry not found", r->commit);
    return;
  }
  char extra[2048];
  if (strcmp(e->sha256, "-") != 0) {
    snprintf(extra, sizeof extra,
             "ETag: \"%s\"\r\nX-Linked-Etag: \"%s\"\r\nX-Linked-Size: %lld\r\nX-Repo-Commit: %s\r\n"
             "Location: http://%s:%d/cdn/%s/%s/%s\r\n",
             e->blob, e->sha256, e->size, r->commit, opt.cdn_host, opt.port, org, name, e->sha256);
    send_head(fd, 302, "Found", extra, 0);
    return;
  }
  snprintf(extra, sizeof extra, "ETag: \"%s\"\r\nX-Repo-Commit: %s\r\n", e->blob, r->commit);
  send_file(fd, rq, r, org, name, e, extra);
}

/* "/a/b/c?x" -> segments (raw, %-encoded), the query dropped */
static int split(char *target, char **seg, int max) {
  char *q = strchr(target, '?');
  if (q) *q = '\0';
  int n = 0;
  for (char *p = strtok(target, "/"); p && n < max; p = strtok(NULL, "/")) seg[n++] = p;
  return n;
}

static char *join(char **seg, int from, int n, char *out, size_t size) {
  out[0] = '\0';
  size_t len = 0;
  for (int i = from; i < n; i++) {
    char part[1024];
    snprintf(part, sizeof part, "%s", seg[i]);
    url_decode(part);
    int k = snprintf(out + len, size - len, "%s%s", i > from ? "/" : "", part);
    if (k < 0 || (size_t)k >= size - len) break;
    len += (size_t)k;
  }
  return out;
}

/* A renamed repository: a relative redirect to the same URL under NEW. */
static int redirect_alias(int fd, const request *rq, const char *org, const char *name) {
  if (!opt.alias) return 0;
  char old[512];
  snprintf(old, sizeof old, "%s/%s=", org, name);
  if (strncmp(opt.alias, old, strlen(old)) != 0) return 0;
  const char *to = opt.alias + strlen(old);
  char target[4096], oldpath[600], extra[5000];
  snprintf(oldpath, sizeof oldpath, "/%s/%s/", org, name);
  const char *at = strstr(rq->target, oldpath);
  if (!at) return 0;
  snprintf(target, sizeof target, "%.*s/%s/%s", (int)(at - rq->target), rq->target, to, at + strlen(oldpath));
  snprintf(extra, sizeof extra, "Location: %s\r\n", target);
  send_head(fd, 307, "Temporary Redirect", extra, 0);
  return 1;
}

static void handle(int fd, request *rq) {
  char target[4096], *seg[256], rest[4096];
  snprintf(target, sizeof target, "%s", rq->target);
  int n = split(target, seg, 256);
  repo r;
  if (strcmp(rq->method, "GET") != 0 && strcmp(rq->method, "HEAD") != 0) {
    send_head(fd, 405, "Method Not Allowed", NULL, 0);
  } else if (n == 4 && strcmp(seg[0], "cdn") == 0) {
    const entry *e = load_repo(seg[1], seg[2], &r) == 0 ? find_file(&r, NULL, seg[3]) : NULL;
    if (!e) send_head(fd, 404, "Not Found", NULL, 0);
    else send_file(fd, rq, &r, seg[1], seg[2], e, NULL);
  } else if (n >= 6 && strcmp(seg[0], "api") == 0 && strcmp(seg[1], "models") == 0 &&
             strcmp(seg[4], "revision") == 0) {
    if (redirect_alias(fd, rq, seg[2], seg[3])) return;
    if (!authorized(rq) || load_repo(seg[2], seg[3], &r) != 0) {
      send_error(fd, rq, 401, "Unauthorized", "RepoNotFound", "Repository not found", NULL);
      return;
    }
    join(seg, 5, n, rest, sizeof rest);
    if (!known_revision(&r, rest)) {
      char msg[600];
      snprintf(msg, sizeof msg, "Invalid rev id: %.500s", rest);
      send_error(fd, rq, 404, "Not Found", "RevisionNotFound", msg, NULL);
      return;
    }
    send_api(fd, rq, &r, seg[2], seg[3]);
  } else if (n >= 5 && strcmp(seg[2], "resolve") == 0) {
    if (redirect_alias(fd, rq, seg[0], seg[1])) return;
    if (!authorized(rq) || load_repo(seg[0], seg[1], &r) != 0) {
      send_error(fd, rq, 401, "Unauthorized", "RepoNotFound", "Repository not found", NULL);
      return;
    }
    char rev[1024];
    snprintf(rev, sizeof rev, "%s", seg[3]);
    url_decode(rev);
    if (!known_revision(&r, rev)) {
      char msg[1200];
      snprintf(msg, sizeof msg, "Invalid rev id: %.1000s", rev);
      send_error(fd, rq, 404, "Not Found", "RevisionNotFound", msg, NULL);
      return;
    }
    send_resolve(fd, rq, &r, seg[0], seg[1], join(seg, 4, n, rest, sizeof rest));
  } else {
    send_head(fd, 404, "Not Found", NULL, 0);
  }
}

/* ---- the server ------------------------------------------------------------- */

static int parse_args(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) { fprintf(stderr, "hub_server: %s needs a value\n", a); return -1; }
    i++;
    if (strcmp(a, "--root") == 0) opt.root = v;
    else if (strcmp(a, "--port-file") == 0) opt.port_file = v;
    else if (strcmp(a, "--log") == 0) opt.log = v;
    else if (strcmp(a, "--token") == 0) opt.token = v;
    else if (strcmp(a, "--cdn-host") == 0) opt.cdn_host = v;
    else if (strcmp(a, "--alias") == 0) opt.alias = v;
    else if (strcmp(a, "--idle") == 0) opt.idle = atoi(v);
    else if (strcmp(a, "--corrupt") == 0) snprintf(opt.corrupt_path, sizeof opt.corrupt_path, "%s", v);
    else if (strcmp(a, "--drop") == 0) {
      const char *colon = strrchr(v, ':');
      if (!colon) { fprintf(stderr, "hub_server: --drop PATH:N\n"); return -1; }
      snprintf(opt.drop_path, sizeof opt.drop_path, "%.*s", (int)(colon - v), v);
      opt.drop_after = atoll(colon + 1);
    } else { fprintf(stderr, "hub_server: unknown option %s\n", a); return -1; }
  }
  if (!opt.root) { fprintf(stderr, "hub_server: --root DIR is required\n"); return -1; }
  return 0;
}

static int write_port(void) {
  if (!opt.port_file) {
    printf("%d\n", opt.port);
    return fflush(stdout);
  }
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", opt.port_file);
  FILE *f = fopen(tmp, "w");
  if (!f) return -1;
  fprintf(f, "%d\n", opt.port);
  if (fclose(f) != 0) return -1;
  return rename(tmp, opt.port_file);
}

int main(int argc, char **argv) {
  if (parse_args(argc, argv) != 0) return 1;
  signal(SIGPIPE, SIG_IGN);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = 0 };
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof addr;
  if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(s, 16) != 0 ||
      getsockname(s, (struct sockaddr *)&addr, &alen) != 0) {
    fprintf(stderr, "hub_server: cannot bind 127.0.0.1: %s\n", strerror(errno));
    return 2;
  }
  opt.port = ntohs(addr.sin_port);
  if (write_port() != 0) { fprintf(stderr, "hub_server: cannot write the port\n"); return 1; }
  for (;;) {
    struct pollfd p = { .fd = s, .events = POLLIN };
    int k = poll(&p, 1, opt.idle * 1000);
    if (k == 0) return 0;                 /* idle: the test is gone */
    if (k < 0) { if (errno == EINTR) continue; return 1; }
    int c = accept(s, NULL, NULL);
    if (c < 0) continue;
    struct timeval tv = { .tv_sec = 10 };
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    request rq;
    if (read_request(c, &rq) == 0) {
      log_request(&rq);
      handle(c, &rq);
    }
    shutdown(c, SHUT_WR);
    close(c);
  }
}
