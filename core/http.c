/* http.c — HTTP transfers for `fmseg fetch` (libcurl's multi interface),
 * and the file digests that verify what they bring (OpenSSL's EVP).
 *
 * The caller drives a transfer step by step (fm_http_step), so the Lua
 * side can draw its progress bar between steps: C never calls back into
 * Lua. One handle is one request (and the redirects it follows); the body
 * goes to a file (appended at `resume_from` when the server honours the
 * Range) or, for small API answers, to memory.
 *
 *   fm_http *h = fm_http_open("GET", url, "Authorization: Bearer x\n", "blob.incomplete", 0, 1);
 *   int rc;
 *   while ((rc = fm_http_step(h, 200)) == 1) show(fm_http_received(h));
 *   if (rc < 0) puts(fm_last_error());   // names the URL and curl's error
 *   else printf("%d %s\n", fm_http_status(h), fm_http_header(h, "ETag"));
 *   fm_http_close(h);
 */
#include "internal.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* API answers (file lists) are small; a body beyond this in memory is an error */
static const size_t FM__HTTP_MEMORY_LIMIT = (size_t)64 << 20;

struct fm_http {
  CURLM *multi;
  CURL *easy;
  struct curl_slist *headers;
  char *method;
  char *url;
  char *out_path;
  FILE *out;
  int64_t resume_from;
  int64_t offset;          /* where this transfer's body starts in out_path */
  int64_t received;        /* body bytes taken in this transfer */
  int32_t status;          /* of the latest response */
  int32_t body_started;
  int32_t done;            /* 1 finished well, -1 failed */
  char *hdr;               /* the latest response's headers, "Name: value\n" */
  size_t hdr_len, hdr_cap;
  char *body;              /* in-memory body (no out_path, or an error answer) */
  size_t body_len, body_cap;
  char why[512];           /* a failure found in a callback */
  char message[1024];      /* the failure, kept for later steps */
  char value[2048];        /* fm_http_header's answer */
  char curl_error[CURL_ERROR_SIZE];
};

static char *fm__strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

static int fm__append(char **buf, size_t *len, size_t *cap, const char *data, size_t n) {
  if (*len + n + 1 > *cap) {
    size_t want = *cap ? *cap : 1024;
    while (want < *len + n + 1) want *= 2;
    char *p = realloc(*buf, want);
    if (!p) return -1;
    *buf = p;
    *cap = want;
  }
  memcpy(*buf + *len, data, n);
  *len += n;
  (*buf)[*len] = '\0';
  return 0;
}

/* The value of header `name` in "Name: value\n" lines, copied into out. */
static const char *fm__find_header(const char *lines, const char *name, char *out, size_t size) {
  size_t n = strlen(name);
  for (const char *p = lines; p && *p;) {
    const char *end = strchr(p, '\n');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len > n && p[n] == ':' && strncasecmp(p, name, n) == 0) {
      const char *v = p + n + 1;
      while (v < p + len && (*v == ' ' || *v == '\t')) v++;
      size_t vlen = (size_t)(p + len - v);
      if (vlen >= size) vlen = size - 1;
      memcpy(out, v, vlen);
      out[vlen] = '\0';
      return out;
    }
    p = end ? end + 1 : NULL;
  }
  return NULL;
}

/* A status line starts a new response (each redirect hop has its own). */
static size_t fm__on_header(char *data, size_t size, size_t count, void *user) {
  fm_http *h = user;
  size_t n = size * count;
  if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
    h->hdr_len = 0;
    if (h->hdr) h->hdr[0] = '\0';
    const char *sp = memchr(data, ' ', n);
    h->status = sp ? (int32_t)strtol(sp + 1, NULL, 10) : 0;
    return n;
  }
  while (n > 0 && (data[n - 1] == '\r' || data[n - 1] == '\n')) n--;
  if (n == 0) return size * count;
  if (fm__append(&h->hdr, &h->hdr_len, &h->hdr_cap, data, n) != 0 ||
      fm__append(&h->hdr, &h->hdr_len, &h->hdr_cap, "\n", 1) != 0) {
    snprintf(h->why, sizeof h->why, "out of memory for the response headers");
    return 0;
  }
  return size * count;
}

/* The first body byte of a resumed download: a 200 is the whole file again
 * (the server ignored the Range: start over), a 206 must start where asked. */
static int fm__start_body(fm_http *h) {
  h->body_started = 1;
  if (!h->out || h->status >= 300) return 0;
  if (h->resume_from > 0 && h->status == 200) {
    if (fflush(h->out) != 0 || ftruncate(fileno(h->out), 0) != 0) {
      snprintf(h->why, sizeof h->why, "cannot truncate %s: %s", h->out_path, strerror(errno));
      return -1;
    }
    h->offset = 0;
  } else if (h->resume_from > 0 && h->status == 206) {
    char range[128];
    long long start = -1;
    if (!fm__find_header(h->hdr, "Content-Range", range, sizeof range) ||
        sscanf(range, "bytes %lld-", &start) != 1 || start != h->resume_from) {
      snprintf(h->why, sizeof h->why, "asked for bytes from %lld, the server sent Content-Range '%s'",
               (long long)h->resume_from, fm__find_header(h->hdr, "Content-Range", range, sizeof range) ? range : "");
      return -1;
    }
  }
  return 0;
}

static size_t fm__on_body(char *data, size_t size, size_t count, void *user) {
  fm_http *h = user;
  size_t n = size * count;
  if (h->status >= 300 && h->status < 400) return n;    /* a redirect hop being followed */
  if (!h->body_started && fm__start_body(h) != 0) return 0;
  if (h->out && h->status < 300) {
    if (fwrite(data, 1, n, h->out) != n) {
      snprintf(h->why, sizeof h->why, "cannot write %s: %s", h->out_path, strerror(errno));
      return 0;
    }
  } else {
    if (h->body_len + n > FM__HTTP_MEMORY_LIMIT) {
      snprintf(h->why, sizeof h->why, "the answer is larger than %zu MiB", FM__HTTP_MEMORY_LIMIT >> 20);
      return 0;
    }
    if (fm__append(&h->body, &h->body_len, &h->body_cap, data, n) != 0) {
      snprintf(h->why, sizeof h->why, "out of memory for the answer");
      return 0;
    }
  }
  h->received += (int64_t)n;
  return n;
}

static struct curl_slist *fm__header_list(const char *headers, int *ok) {
  struct curl_slist *list = NULL;
  *ok = 1;
  for (const char *p = headers; p && *p;) {
    const char *end = strchr(p, '\n');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len > 0) {
      char line[4096];
      if (len >= sizeof line) { *ok = 0; break; }
      memcpy(line, p, len);
      line[len] = '\0';
      struct curl_slist *next = curl_slist_append(list, line);
      if (!next) { *ok = 0; break; }
      list = next;
    }
    p = end ? end + 1 : NULL;
  }
  return list;
}

static int fm__configure(fm_http *h, const char *method, int32_t follow) {
  CURL *e = h->easy;
  int bad = 0;
  bad |= curl_easy_setopt(e, CURLOPT_URL, h->url) != CURLE_OK;
#if LIBCURL_VERSION_NUM >= 0x075500
  bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https") != CURLE_OK;
#else
  bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS)) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS)) != CURLE_OK;
#endif
  /* Redirects followed by curl never carry a custom Authorization header to
   * another host (or port), as requests drops it for the hub's CDN. */
  bad |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, follow ? 1L : 0L) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_MAXREDIRS, 10L) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_NOBODY, strcmp(method, "HEAD") == 0 ? 1L : 0L) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, h->headers) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_USERAGENT, "fmseg/0.1.0") != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, fm__on_header) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_HEADERDATA, h) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, fm__on_body) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, h) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, h->curl_error) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, 30L) != CURLE_OK;
  /* a stalled connection (under 1 byte/s for a minute) fails rather than hangs */
  bad |= curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, 60L) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
  if (h->resume_from > 0) {
    char range[64];
    snprintf(range, sizeof range, "%lld-", (long long)h->resume_from);
    bad |= curl_easy_setopt(e, CURLOPT_RANGE, range) != CURLE_OK;
  }
  return bad ? fm__error("%s %s: libcurl refused an option", method, h->url) : 0;
}

static int fm__curl_ready(void) {
  static int state = 0;      /* 0 not yet, 1 ready, -1 failed */
  if (state == 0) state = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 1 : -1;
  return state == 1 ? 0 : fm__error("libcurl failed to initialise");
}

fm_http *fm_http_open(const char *method, const char *url, const char *headers, const char *out_path,
                      int64_t resume_from, int32_t follow) {
  if (!method || (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0))
    return fm__error_null("fm_http_open: method must be GET or HEAD, got %s", method ? method : "NULL");
  if (!url || !*url) return fm__error_null("fm_http_open: no URL");
  if (resume_from < 0 || (resume_from > 0 && !out_path))
    return fm__error_null("fm_http_open %s: resume_from %lld needs an output file", url, (long long)resume_from);
  if (fm__curl_ready() != 0) return NULL;
  fm_http *h = calloc(1, sizeof *h);
  if (!h) return fm__error_null("fm_http_open %s: out of memory", url);
  h->method = fm__strdup(method);
  h->url = fm__strdup(url);
  h->out_path = out_path ? fm__strdup(out_path) : NULL;
  h->resume_from = resume_from;
  h->offset = resume_from;
  int ok = 1;
  h->headers = fm__header_list(headers, &ok);
  if (!h->method || !h->url || (out_path && !h->out_path) || !ok) {
    fm_http_close(h);
    return fm__error_null("fm_http_open %s: out of memory (or a header line over 4 KiB)", url);
  }
  if (out_path) {
    h->out = fopen(out_path, resume_from > 0 ? "ab" : "wb");
    if (!h->out) {
      fm__error("cannot write %s: %s", out_path, strerror(errno));
      fm_http_close(h);
      return NULL;
    }
  }
  h->easy = curl_easy_init();
  h->multi = curl_multi_init();
  if (!h->easy || !h->multi) {
    fm_http_close(h);
    return fm__error_null("fm_http_open %s: libcurl could not make a handle", url);
  }
  if (fm__configure(h, method, follow) != 0 || curl_multi_add_handle(h->multi, h->easy) != CURLM_OK) {
    if (!fm_last_error()[0]) fm__error("%s %s: libcurl refused the transfer", method, url);
    fm_http_close(h);
    return NULL;
  }
  return h;
}

static int fm__fail(fm_http *h, const char *fmt_why) {
  snprintf(h->message, sizeof h->message, "%s %s: %s (after %lld body bytes)", h->method, h->url, fmt_why,
           (long long)h->received);
  h->done = -1;
  return fm__error("%s", h->message);
}

/* The transfer has ended: its outcome, and the body file closed. */
static int fm__finish(fm_http *h, CURLcode result) {
  int close_failed = 0;
  if (h->out) {
    close_failed = fclose(h->out) != 0;
    h->out = NULL;
  }
  if (result != CURLE_OK) {
    char why[900];
    snprintf(why, sizeof why, "%s", h->why[0] ? h->why : (h->curl_error[0] ? h->curl_error : curl_easy_strerror(result)));
    return fm__fail(h, why);
  }
  if (close_failed) {
    char why[600];
    snprintf(why, sizeof why, "cannot write %s: %s", h->out_path, strerror(errno));
    return fm__fail(h, why);
  }
  h->done = 1;
  return 0;
}

int fm_http_step(fm_http *h, int32_t timeout_ms) {
  if (!h) return fm__error("fm_http_step: no handle");
  if (h->done == 1) return 0;
  if (h->done == -1) return fm__error("%s", h->message);
  int running = 0;
  CURLMcode mc = curl_multi_perform(h->multi, &running);
  if (mc == CURLM_OK && running) {
    mc = curl_multi_poll(h->multi, NULL, 0, timeout_ms > 0 ? timeout_ms : 0, NULL);
    if (mc == CURLM_OK) mc = curl_multi_perform(h->multi, &running);
  }
  if (mc != CURLM_OK) return fm__fail(h, curl_multi_strerror(mc));
  if (running) return 1;
  int left = 0;
  CURLcode result = CURLE_OK;
  for (CURLMsg *m; (m = curl_multi_info_read(h->multi, &left)) != NULL;)
    if (m->msg == CURLMSG_DONE) result = m->data.result;
  return fm__finish(h, result) == 0 ? 0 : -1;
}

int32_t fm_http_status(const fm_http *h) { return h ? h->status : 0; }
int64_t fm_http_received(const fm_http *h) { return h ? h->received : 0; }
int64_t fm_http_offset(const fm_http *h) { return h ? h->offset : 0; }

const char *fm_http_header(fm_http *h, const char *name) {
  if (!h || !name) return NULL;
  return fm__find_header(h->hdr, name, h->value, sizeof h->value);
}

const char *fm_http_headers(const fm_http *h) { return h && h->hdr ? h->hdr : ""; }

const char *fm_http_body(const fm_http *h, size_t *len) {
  if (len) *len = h && h->body ? h->body_len : 0;
  return h && h->body ? h->body : "";
}

const char *fm_http_effective_url(fm_http *h) {
  char *u = NULL;
  if (h && h->easy && curl_easy_getinfo(h->easy, CURLINFO_EFFECTIVE_URL, &u) == CURLE_OK && u) return u;
  return h ? h->url : "";
}

void fm_http_close(fm_http *h) {
  if (!h) return;
  if (h->multi && h->easy) curl_multi_remove_handle(h->multi, h->easy);
  if (h->easy) curl_easy_cleanup(h->easy);
  if (h->multi) curl_multi_cleanup(h->multi);
  curl_slist_free_all(h->headers);
  if (h->out) fclose(h->out);
  free(h->hdr);
  free(h->body);
  free(h->method);
  free(h->url);
  free(h->out_path);
  free(h);
}

/* ---- files: size, time, digests ------------------------------------------ */

int fm_file_stat(const char *path, int64_t *size, double *mtime) {
  struct stat st;
  if (!path || stat(path, &st) != 0) return fm__error("%s: %s", path ? path : "NULL", strerror(errno));
  if (size) *size = (int64_t)st.st_size;
  if (mtime) *mtime = (double)st.st_mtim.tv_sec + 1e-9 * (double)st.st_mtim.tv_nsec;
  return 0;
}

static void fm__hex(char *out, const unsigned char *md, unsigned n) {
  static const char digits[] = "0123456789abcdef";
  for (unsigned i = 0; i < n; i++) {
    out[2 * i] = digits[md[i] >> 4];
    out[2 * i + 1] = digits[md[i] & 15];
  }
  out[2 * n] = '\0';
}

static int fm__digest_stream(EVP_MD_CTX *ctx, FILE *f, const char *path) {
  enum { CHUNK = 1 << 20 };
  unsigned char *buf = malloc(CHUNK);
  if (!buf) return fm__error("%s: out of memory for hashing", path);
  size_t n;
  int rc = 0;
  while ((n = fread(buf, 1, CHUNK, f)) > 0)
    if (EVP_DigestUpdate(ctx, buf, n) != 1) { rc = fm__error("%s: digest update failed", path); break; }
  if (rc == 0 && ferror(f)) rc = fm__error("cannot read %s: %s", path, strerror(errno));
  free(buf);
  return rc;
}

static const EVP_MD *fm__md(const char *algo) {
  return strcmp(algo, "sha256") == 0 ? EVP_sha256() : strcmp(algo, "sha1") == 0 ? EVP_sha1() : NULL;
}

int fm_digest(const void *data, size_t len, const char *algo, char *hex, size_t hex_size) {
  if ((!data && len) || !algo || !hex) return fm__error("fm_digest: NULL argument");
  const EVP_MD *md = fm__md(algo);
  if (!md) return fm__error("fm_digest: algo must be sha256 or sha1, got %s", algo);
  if (hex_size < 2 * (size_t)EVP_MD_get_size(md) + 1) return fm__error("fm_digest: hex buffer too small");
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  if (EVP_Digest(data ? data : "", len, out, &n, md, NULL) != 1) return fm__error("fm_digest: %s failed", algo);
  fm__hex(hex, out, n);
  return 0;
}

int fm_file_digest(const char *path, const char *algo, int32_t git_blob, char *hex, size_t hex_size) {
  if (!path || !algo || !hex) return fm__error("fm_file_digest: NULL argument");
  const EVP_MD *md = fm__md(algo);
  if (!md) return fm__error("fm_file_digest: algo must be sha256 or sha1, got %s", algo);
  if (hex_size < 2 * (size_t)EVP_MD_get_size(md) + 1) return fm__error("fm_file_digest: hex buffer too small");
  FILE *f = fopen(path, "rb");
  if (!f) return fm__error("cannot read %s: %s", path, strerror(errno));
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int rc = ctx && EVP_DigestInit_ex(ctx, md, NULL) == 1 ? 0 : fm__error("%s: %s unavailable", path, algo);
  if (rc == 0 && git_blob) {
    /* git's object id of a blob: sha1 of "blob <size>\0" then the bytes */
    struct stat st;
    char prefix[64];
    if (fstat(fileno(f), &st) != 0) rc = fm__error("%s: %s", path, strerror(errno));
    int n = rc == 0 ? snprintf(prefix, sizeof prefix, "blob %lld", (long long)st.st_size) : 0;
    if (rc == 0 && EVP_DigestUpdate(ctx, prefix, (size_t)n + 1) != 1) rc = fm__error("%s: digest failed", path);
  }
  if (rc == 0) rc = fm__digest_stream(ctx, f, path);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  if (rc == 0 && EVP_DigestFinal_ex(ctx, out, &len) != 1) rc = fm__error("%s: digest failed", path);
  if (rc == 0) fm__hex(hex, out, len);
  EVP_MD_CTX_free(ctx);
  fclose(f);
  return rc;
}
