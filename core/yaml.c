/* yaml.c — YAML file → compact JSON text, through libyaml's event parser.
 *
 * The Lua side decodes the JSON into tables, so it never sees libyaml's
 * large parser struct (DESIGN.md, "From stb and libyaml").
 *
 * Scalars follow PyYAML (YAML 1.1) for plain, untagged scalars:
 *   null   ~ null Null NULL and the empty scalar
 *   bool   yes/no/true/false/on/off in the spellings yes Yes YES (etc.)
 *   int    decimal, 0x hex, 0b binary, 0-prefixed octal (0755), 1_000,
 *          sexagesimal 1:30 (= 90); and 0o17 octal (YAML 1.2, an addition)
 *   float  1.5, .5, 1.0e+3, 1:30.5, .inf, -.inf, .nan; and, unlike
 *          PyYAML, YAML 1.2's 1e-4 / 1E5 (PyYAML would give the string
 *          "1e-4", the classic learning-rate surprise)
 * Quoted scalars and scalars tagged !!str or ! stay strings; !!int,
 * !!float, !!bool and !!null force their type (or fail). Timestamps stay
 * strings. Other tags are refused, like PyYAML's safe_load.
 * JSON has no infinities: +-inf are written 1e999 / -1e999 (which any JSON
 * reader, LuaJIT's tonumber included, reads back as +-inf) and NaN as null.
 *
 * Anchors and aliases are expanded (a duplicate anchor, an undefined or a
 * recursive alias is an error). Merge keys (<<: *base or <<: [*a, *b])
 * merge as PyYAML does: explicit keys win, then the first mapping listed.
 * Keys must be scalars; non-string keys become their JSON text (1 → "1",
 * yes → "true"). A key given twice is an error. A stream holds one
 * document (a second one is an error, as in safe_load); an empty stream
 * is `null`.
 *
 * Errors read "FILE:LINE:COL: problem". */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

/* Nesting (counting what aliases bring in) and output size limits: garbage
 * and alias bombs fail quickly instead of exhausting the stack or memory.
 * The output's size is known before it is built; YAML here is configs,
 * which are kilobytes, so 16 MiB is far above any real one. */
enum { YAML_MAX_DEPTH = 512 };
static const size_t YAML_MAX_JSON = (size_t)16 << 20;

/* ---- nodes --------------------------------------------------------------- */

typedef enum { YN_NULL, YN_BOOL, YN_INT, YN_FLOAT, YN_STR, YN_SEQ, YN_MAP } yn_kind;

typedef struct ynode ynode;
struct ynode {
  yn_kind kind;
  /* scalars: YN_STR holds the raw UTF-8 text; the others their JSON token */
  char *text;
  size_t len;
  /* YN_SEQ: items; YN_MAP while parsing: key, value, key, value...; once
   * finished: keys (YN_STR nodes) and values alternating, deduplicated */
  ynode **items;
  size_t n, cap;
  int merge_key;     /* a plain "<<" */
  int done;          /* finished; aliases to unfinished nodes are recursive */
  int depth;         /* levels including aliased content */
  size_t json_len;   /* exact length of the JSON text, saturated */
  size_t line, col;  /* 1-based, where the node starts */
};

/* A string → pointer table (open addressing), for anchors and for finding
 * duplicate keys. Keys are borrowed, not copied. */
typedef struct {
  const char **keys;
  size_t *lens;
  void **vals;
  size_t cap, n;
} smap;

typedef struct {
  const char *name;
  const unsigned char *src;   /* whole input, to place reader errors */
  size_t src_len;
  ynode **all;                   /* every node, freed together (aliases share) */
  size_t nall, capall;
  smap anchors;
  ynode **stack;                 /* open collections */
  size_t depth, capstack;
  ynode *root;
  int ndocs;
} ctx;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 8;
  while (c < need) c *= 2;
  void *q = realloc(*p, c * elem);
  if (!q) return fm__error("yaml: out of memory");
  *p = q;
  *cap = c;
  return 0;
}

static size_t sat_add(size_t a, size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }

static uint64_t hash_str(const char *s, size_t len) {
  uint64_t h = 1469598103934665603ULL;   /* FNV-1a */
  for (size_t i = 0; i < len; ++i) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
  return h;
}

static void smap_free(smap *m) {
  free(m->keys);
  free(m->lens);
  free(m->vals);
  memset(m, 0, sizeof *m);
}

/* slot of key, or of the empty slot where it would go */
static size_t smap_slot(const smap *m, const char *k, size_t len) {
  size_t i = hash_str(k, len) & (m->cap - 1);
  while (m->keys[i] && !(m->lens[i] == len && memcmp(m->keys[i], k, len) == 0))
    i = (i + 1) & (m->cap - 1);
  return i;
}

static void *smap_get(const smap *m, const char *k, size_t len) {
  if (!m->cap) return NULL;
  size_t i = smap_slot(m, k, len);
  return m->keys[i] ? m->vals[i] : NULL;
}

static int smap_put(smap *m, const char *k, size_t len, void *v) {
  if (2 * (m->n + 1) > m->cap) {
    smap old = *m;
    size_t cap = old.cap ? old.cap * 2 : 16;
    m->keys = calloc(cap, sizeof *m->keys);
    m->lens = calloc(cap, sizeof *m->lens);
    m->vals = calloc(cap, sizeof *m->vals);
    m->cap = cap;
    m->n = 0;
    if (!m->keys || !m->lens || !m->vals) {
      smap_free(m);
      *m = old;
      return fm__error("yaml: out of memory");
    }
    for (size_t i = 0; i < old.cap; ++i)
      if (old.keys[i]) {
        size_t j = smap_slot(m, old.keys[i], old.lens[i]);
        m->keys[j] = old.keys[i];
        m->lens[j] = old.lens[i];
        m->vals[j] = old.vals[i];
        m->n++;
      }
    smap_free(&old);
  }
  size_t i = smap_slot(m, k, len);
  if (!m->keys[i]) {
    m->keys[i] = k;
    m->lens[i] = len;
    m->n++;
  }
  m->vals[i] = v;
  return 0;
}

static ynode *node_new(ctx *c, yn_kind kind, const yaml_mark_t *mark) {
  if (grow((void **)&c->all, &c->capall, c->nall + 1, sizeof *c->all)) return NULL;
  ynode *n = calloc(1, sizeof *n);
  if (!n) return fm__error_null("yaml: out of memory");
  c->all[c->nall++] = n;
  n->kind = kind;
  n->depth = 1;
  n->line = mark->line + 1;
  n->col = mark->column + 1;
  return n;
}

static int node_set_text(ynode *n, const char *s, size_t len) {
  n->text = malloc(len + 1);
  if (!n->text) return fm__error("yaml: out of memory");
  memcpy(n->text, s, len);
  n->text[len] = '\0';
  n->len = len;
  return 0;
}

static int node_push(ynode *n, ynode *child) {
  if (grow((void **)&n->items, &n->cap, n->n + 1, sizeof *n->items)) return -1;
  n->items[n->n++] = child;
  return 0;
}

static void ctx_free(ctx *c) {
  for (size_t i = 0; i < c->nall; ++i) {
    free(c->all[i]->text);
    free(c->all[i]->items);
    free(c->all[i]);
  }
  free(c->all);
  free(c->stack);
  smap_free(&c->anchors);
}

static int error_at(const ctx *c, size_t line, size_t col, const char *what) {
  return fm__error("%s:%zu:%zu: %s", c->name, line, col, what);
}

/* ---- JSON escaping -------------------------------------------------------- */

static size_t escaped_len(const char *s, size_t len) {
  size_t n = 2;
  for (size_t i = 0; i < len; ++i) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\' || ch == '\b' || ch == '\f' || ch == '\n' ||
        ch == '\r' || ch == '\t') n += 2;
    else if (ch < 0x20) n += 6;
    else n += 1;
  }
  return n;
}

static char *write_escaped(char *o, const char *s, size_t len) {
  static const char hex[] = "0123456789abcdef";
  *o++ = '"';
  for (size_t i = 0; i < len; ++i) {
    unsigned char ch = (unsigned char)s[i];
    switch (ch) {
    case '"': *o++ = '\\'; *o++ = '"'; break;
    case '\\': *o++ = '\\'; *o++ = '\\'; break;
    case '\b': *o++ = '\\'; *o++ = 'b'; break;
    case '\f': *o++ = '\\'; *o++ = 'f'; break;
    case '\n': *o++ = '\\'; *o++ = 'n'; break;
    case '\r': *o++ = '\\'; *o++ = 'r'; break;
    case '\t': *o++ = '\\'; *o++ = 't'; break;
    default:
      if (ch < 0x20) {
        memcpy(o, "\\u00", 4);
        o[4] = hex[ch >> 4];
        o[5] = hex[ch & 15];
        o += 6;
      } else {
        *o++ = (char)ch;   /* UTF-8 passes through (libyaml validated it) */
      }
    }
  }
  *o++ = '"';
  return o;
}

/* ---- scalar resolution (PyYAML's implicit resolvers) ---------------------- */

typedef struct { const char *s, *end; } cur;

static int at(const cur *p, char ch) { return p->s < p->end && *p->s == ch; }
static int is_dig(char ch) { return ch >= '0' && ch <= '9'; }
static int is_hex(char ch) {
  return is_dig(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static int one_of(const char *s, size_t len, const char *const *words) {
  for (; *words; ++words)
    if (strlen(*words) == len && memcmp(*words, s, len) == 0) return 1;
  return 0;
}

static const char *const NULL_WORDS[] = {"~", "null", "Null", "NULL", NULL};
static const char *const TRUE_WORDS[] = {"yes", "Yes", "YES", "true", "True", "TRUE",
                                         "on", "On", "ON", NULL};
static const char *const FALSE_WORDS[] = {"no", "No", "NO", "false", "False", "FALSE",
                                          "off", "Off", "OFF", NULL};

/* [0-9_]* run; returns how many characters it took */
static size_t take_digits(cur *p, int (*ok)(char)) {
  const char *s0 = p->s;
  while (p->s < p->end && (ok(*p->s) || *p->s == '_')) p->s++;
  return (size_t)(p->s - s0);
}
static int is_oct(char ch) { return ch >= '0' && ch <= '7'; }
static int is_bin(char ch) { return ch == '0' || ch == '1'; }

/* (:[0-5]?[0-9])+ ; returns how many groups */
static int take_sexagesimal(cur *p) {
  int groups = 0;
  while (at(p, ':')) {
    const char *save = p->s++;
    if (p->s < p->end && p->s[0] >= '0' && p->s[0] <= '5' && p->s + 1 < p->end &&
        is_dig(p->s[1])) p->s += 2;
    else if (p->s < p->end && is_dig(p->s[0])) p->s += 1;
    else { p->s = save; break; }
    groups++;
  }
  return groups;
}

/* Value of digits in `base`, skipping '_'; exact while it fits 64 bits. */
static double digits_value(const char *s, const char *end, int base, int *exact,
                           uint64_t *u) {
  double d = 0;
  *u = 0;
  *exact = 1;
  for (; s < end; ++s) {
    if (*s == '_') continue;
    int v = is_dig(*s) ? *s - '0' : (*s | 0x20) - 'a' + 10;
    d = d * base + v;
    if (*u > (UINT64_MAX - (uint64_t)v) / (uint64_t)base) *exact = 0;
    *u = *u * (uint64_t)base + (uint64_t)v;
  }
  return d;
}

/* Writes the JSON token for an integer of magnitude (u exact, else d). */
static int int_token(ynode *n, int neg, int exact, uint64_t u, double d) {
  char buf[64];
  if (exact) snprintf(buf, sizeof buf, "%s%llu", neg && u ? "-" : "", (unsigned long long)u);
  else snprintf(buf, sizeof buf, "%.17g", neg ? -d : d);
  return node_set_text(n, buf, strlen(buf));
}

/* Shortest "%.*g" that reads back to x, always with a '.' or exponent so
 * that a dump shows it as a float. */
static int float_token(ynode *n, double x) {
  char buf[64];
  if (isnan(x)) return node_set_text(n, "null", 4);
  if (isinf(x)) return node_set_text(n, x > 0 ? "1e999" : "-1e999", x > 0 ? 5 : 6);
  for (int prec = 15; prec <= 17; ++prec) {
    snprintf(buf, sizeof buf, "%.*g", prec, x);
    if (strtod(buf, NULL) == x) break;
  }
  if (!strpbrk(buf, ".eE")) strcat(buf, ".0");
  return node_set_text(n, buf, strlen(buf));
}

/* Tries an int; 1 = resolved (token written), 0 = not an int, -1 = error. */
static int resolve_int(ynode *n, const char *s, size_t len) {
  cur p = {s, s + len};
  int neg = 0;
  if (at(&p, '-') || at(&p, '+')) neg = *p.s++ == '-';
  const char *body = p.s;
  int exact;
  uint64_t u;
  double d;
  if (p.end - body >= 2 && body[0] == '0' && (body[1] == 'x' || body[1] == 'b' ||
                                               body[1] == 'o')) {
    int base = body[1] == 'x' ? 16 : body[1] == 'b' ? 2 : 8;
    p.s += 2;
    if (!take_digits(&p, base == 16 ? is_hex : base == 2 ? is_bin : is_oct) || p.s != p.end)
      return 0;
    d = digits_value(body + 2, p.end, base, &exact, &u);
  } else if (at(&p, '0') && p.end - body >= 2) {       /* 0[0-7_]+ : YAML 1.1 octal */
    p.s++;
    if (!take_digits(&p, is_oct) || p.s != p.end) return 0;
    d = digits_value(body + 1, p.end, 8, &exact, &u);
  } else if (at(&p, '0')) {
    d = 0, u = 0, exact = 1;
  } else if (p.s < p.end && *p.s >= '1' && *p.s <= '9') {
    take_digits(&p, is_dig);
    const char *colon = p.s;
    if (p.s == p.end) {
      d = digits_value(body, p.end, 10, &exact, &u);
    } else {                                           /* 1:30:00 base 60 */
      if (!take_sexagesimal(&p) || p.s != p.end) return 0;
      d = digits_value(body, colon, 10, &exact, &u);
      for (const char *q = colon; q < p.end;) {
        const char *e = memchr(q + 1, ':', (size_t)(p.end - q - 1));
        if (!e) e = p.end;
        uint64_t part;
        int ex2;
        double dp = digits_value(q + 1, e, 10, &ex2, &part);
        d = d * 60 + dp;
        if (u > (UINT64_MAX - part) / 60) exact = 0;
        u = u * 60 + part;
        q = e;
      }
    }
  } else {
    return 0;
  }
  return int_token(n, neg, exact, u, d) ? -1 : 1;
}

/* Copy of s without '_' (strtod does not know them). */
static char *strip_underscores(const char *s, size_t len) {
  char *t = malloc(len + 1);
  if (!t) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < len; ++i)
    if (s[i] != '_') t[k++] = s[i];
  t[k] = '\0';
  return t;
}

/* Tries a float; 1 = resolved, 0 = not a float, -1 = error. */
static int resolve_float(ynode *n, const char *s, size_t len) {
  static const char *const INF[] = {".inf", ".Inf", ".INF", NULL};
  static const char *const NAN_[] = {".nan", ".NaN", ".NAN", NULL};
  cur p = {s, s + len};
  int neg = 0;
  if (at(&p, '-') || at(&p, '+')) neg = *p.s++ == '-';
  size_t rest = (size_t)(p.end - p.s);
  if (one_of(p.s, rest, INF)) return float_token(n, neg ? -INFINITY : INFINITY) ? -1 : 1;
  if (one_of(s, len, NAN_)) return float_token(n, NAN) ? -1 : 1;

  const char *body = p.s;
  int has_dot = 0, has_exp = 0, groups = 0;
  size_t int_digits = 0;
  if (p.s < p.end && is_dig(*p.s)) {
    int_digits = take_digits(&p, is_dig);
    groups = take_sexagesimal(&p);
  }
  if (at(&p, '.')) {
    p.s++;
    has_dot = 1;
    size_t frac = take_digits(&p, is_dig);
    if (!int_digits && (!frac || body[1] == '_')) return 0;   /* "." "._" */
  }
  if (!int_digits && !has_dot) return 0;
  if (groups && !has_dot) return 0;
  if (!groups && (at(&p, 'e') || at(&p, 'E'))) {
    p.s++;
    if (at(&p, '-') || at(&p, '+')) p.s++;
    const char *e0 = p.s;
    while (p.s < p.end && is_dig(*p.s)) p.s++;
    if (p.s == e0) return 0;
    has_exp = 1;
  }
  if (p.s != p.end || (!has_dot && !has_exp)) return 0;

  double x;
  if (groups) {                                        /* 1:30.5 base 60 */
    x = 0;
    const char *q = body;
    for (;;) {
      const char *e = q;
      while (e < p.end && *e != ':') ++e;
      if (e == p.end) {
        char *t = strip_underscores(q, (size_t)(e - q));
        if (!t) return fm__error("yaml: out of memory");
        x = x * 60 + strtod(t, NULL);
        free(t);
        break;
      }
      int exact;
      uint64_t u;
      x = x * 60 + digits_value(q, e, 10, &exact, &u);
      q = e + 1;
    }
  } else {
    char *t = strip_underscores(body, (size_t)(p.end - body));
    if (!t) return fm__error("yaml: out of memory");
    x = strtod(t, NULL);                               /* overflow gives inf */
    free(t);
  }
  return float_token(n, neg ? -x : x) ? -1 : 1;
}

/* Plain scalar, no tag: PyYAML's order (bool, float, int, null; the sets do
 * not overlap). */
static int resolve_plain(ynode *n, const char *s, size_t len) {
  if (len == 0 || one_of(s, len, NULL_WORDS)) {
    n->kind = YN_NULL;
    return node_set_text(n, "null", 4);
  }
  if (one_of(s, len, TRUE_WORDS) || one_of(s, len, FALSE_WORDS)) {
    n->kind = YN_BOOL;
    return one_of(s, len, TRUE_WORDS) ? node_set_text(n, "true", 4)
                                      : node_set_text(n, "false", 5);
  }
  int r;
  n->kind = YN_INT;
  if ((r = resolve_int(n, s, len)) != 0) return r < 0 ? -1 : 0;
  n->kind = YN_FLOAT;
  if ((r = resolve_float(n, s, len)) != 0) return r < 0 ? -1 : 0;
  n->kind = YN_STR;
  return node_set_text(n, s, len);
}

/* A scalar with an explicit !!type tag must be of that type. */
static int resolve_tagged(ctx *c, ynode *n, const char *tag, const char *s, size_t len) {
  const char *t = tag + strlen("tag:yaml.org,2002:");
  if (strcmp(t, "str") == 0) {
    n->kind = YN_STR;
    return node_set_text(n, s, len);
  }
  if (resolve_plain(n, s, len)) return -1;
  int fits = (strcmp(t, "null") == 0 && n->kind == YN_NULL) ||
             (strcmp(t, "bool") == 0 && n->kind == YN_BOOL) ||
             (strcmp(t, "int") == 0 && n->kind == YN_INT) ||
             (strcmp(t, "float") == 0 && (n->kind == YN_FLOAT || n->kind == YN_INT));
  if (!fits) {
    char msg[160];
    snprintf(msg, sizeof msg, "\"%.*s\" is not a valid !!%s", (int)(len > 60 ? 60 : len), s, t);
    return error_at(c, n->line, n->col, msg);
  }
  if (strcmp(t, "float") == 0 && n->kind == YN_INT) {
    double x = strtod(n->text, NULL);
    free(n->text);
    n->text = NULL;
    n->kind = YN_FLOAT;
    return float_token(n, x);
  }
  return 0;
}

static int is_core_tag(const char *tag, const char *name) {
  static const char prefix[] = "tag:yaml.org,2002:";
  return strncmp(tag, prefix, sizeof prefix - 1) == 0 &&
         strcmp(tag + sizeof prefix - 1, name) == 0;
}

static int unknown_tag(ctx *c, const yaml_mark_t *m, const char *tag) {
  char msg[200];
  snprintf(msg, sizeof msg, "unsupported tag %.150s", tag);
  return error_at(c, m->line + 1, m->column + 1, msg);
}

static ynode *make_scalar(ctx *c, const yaml_event_t *ev) {
  const char *s = (const char *)ev->data.scalar.value;
  size_t len = ev->data.scalar.length;
  const char *tag = (const char *)ev->data.scalar.tag;
  int plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
  ynode *n = node_new(c, YN_STR, &ev->start_mark);
  if (!n) return NULL;
  int rc;
  if (!tag) {
    n->merge_key = plain && len == 2 && memcmp(s, "<<", 2) == 0;
    rc = plain ? resolve_plain(n, s, len) : node_set_text(n, s, len);
  } else if (strcmp(tag, "!") == 0) {
    rc = node_set_text(n, s, len);                  /* "!" forces a string */
  } else if (is_core_tag(tag, "str") || is_core_tag(tag, "null") ||
             is_core_tag(tag, "bool") || is_core_tag(tag, "int") ||
             is_core_tag(tag, "float")) {
    rc = resolve_tagged(c, n, tag, s, len);
  } else if (is_core_tag(tag, "merge")) {
    n->merge_key = 1;
    rc = node_set_text(n, s, len);
  } else {
    rc = unknown_tag(c, &ev->start_mark, tag);
  }
  if (rc) return NULL;
  n->json_len = n->kind == YN_STR ? escaped_len(n->text, n->len) : n->len;
  n->done = 1;
  return n;
}

/* ---- collections ---------------------------------------------------------- */

static void finish_seq(ynode *n) {
  size_t len = 2 + (n->n ? n->n - 1 : 0);
  int depth = 0;
  for (size_t i = 0; i < n->n; ++i) {
    len = sat_add(len, n->items[i]->json_len);
    if (n->items[i]->depth > depth) depth = n->items[i]->depth;
  }
  n->json_len = len;
  n->depth = depth + 1;
}

/* The JSON object key of a scalar key node. */
static ynode *key_string(ctx *c, ynode *k) {
  if (k->kind == YN_SEQ || k->kind == YN_MAP) {
    error_at(c, k->line, k->col, "mapping keys must be scalars, not collections");
    return NULL;
  }
  if (k->kind == YN_STR) return k;
  ynode *s = node_new(c, YN_STR, &(yaml_mark_t){0, k->line - 1, k->col - 1});
  if (!s || node_set_text(s, k->text, k->len)) return NULL;
  s->json_len = escaped_len(s->text, s->len);
  s->done = 1;
  return s;
}

/* Entries of the final mapping, in first-insertion order, later puts
 * replacing the value (Python dict semantics, as PyYAML builds it). */
typedef struct {
  ynode **kv;           /* key, value, ... */
  size_t n, cap;     /* in nodes */
  smap index;        /* key → 1 + entry index */
} entries;

static int entries_put(entries *e, ynode *key, ynode *value) {
  size_t at1 = (size_t)(uintptr_t)smap_get(&e->index, key->text, key->len);
  if (at1) {
    e->kv[2 * (at1 - 1) + 1] = value;
    return 0;
  }
  if (grow((void **)&e->kv, &e->cap, e->n + 2, sizeof *e->kv)) return -1;
  e->kv[e->n++] = key;
  e->kv[e->n++] = value;
  return smap_put(&e->index, key->text, key->len, (void *)(uintptr_t)(e->n / 2));
}

static int merge_sources(ctx *c, ynode *value, ynode ***srcs, size_t *nsrc, size_t *cap) {
  static const char *bad = "a merge key (<<) takes a mapping or a list of mappings";
  if (value->kind == YN_MAP) {
    if (grow((void **)srcs, cap, *nsrc + 1, sizeof **srcs)) return -1;
    (*srcs)[(*nsrc)++] = value;
    return 0;
  }
  if (value->kind != YN_SEQ) return error_at(c, value->line, value->col, bad);
  for (size_t i = 0; i < value->n; ++i) {
    if (value->items[i]->kind != YN_MAP)
      return error_at(c, value->items[i]->line, value->items[i]->col, bad);
    if (grow((void **)srcs, cap, *nsrc + 1, sizeof **srcs)) return -1;
    (*srcs)[(*nsrc)++] = value->items[i];
  }
  return 0;
}

/* Turns the raw key/value list into deduplicated entries with merges. */
static int finish_map(ctx *c, ynode *n) {
  entries explicit_ = {0}, out = {0};
  ynode **srcs = NULL;
  size_t nsrc = 0, capsrc = 0;
  int merged = 0, rc = -1;
  for (size_t i = 0; i + 1 < n->n; i += 2) {
    ynode *k = n->items[i], *v = n->items[i + 1];
    if (k->merge_key) {
      if (merged++) {
        error_at(c, k->line, k->col, "duplicate merge key <<");
        goto done;
      }
      if (merge_sources(c, v, &srcs, &nsrc, &capsrc)) goto done;
      continue;
    }
    ynode *ks = key_string(c, k);
    if (!ks) goto done;
    if (smap_get(&explicit_.index, ks->text, ks->len)) {
      char msg[160];
      snprintf(msg, sizeof msg, "duplicate key \"%.100s\"", ks->text);
      error_at(c, k->line, k->col, msg);
      goto done;
    }
    if (entries_put(&explicit_, ks, v)) goto done;
  }
  /* later puts win: the last listed source first, explicit keys last */
  for (size_t s = nsrc; s-- > 0;)
    for (size_t i = 0; i < srcs[s]->n; i += 2)
      if (entries_put(&out, srcs[s]->items[i], srcs[s]->items[i + 1])) goto done;
  for (size_t i = 0; i < explicit_.n; i += 2)
    if (entries_put(&out, explicit_.kv[i], explicit_.kv[i + 1])) goto done;

  free(n->items);
  n->items = out.kv;
  n->n = out.n;
  n->cap = out.cap;
  out.kv = NULL;
  size_t len = 2 + (n->n ? n->n / 2 - 1 : 0);
  int depth = 0;
  for (size_t i = 0; i < n->n; i += 2) {
    len = sat_add(len, sat_add(n->items[i]->json_len + 1, n->items[i + 1]->json_len));
    if (n->items[i + 1]->depth > depth) depth = n->items[i + 1]->depth;
  }
  n->json_len = len;
  n->depth = depth + 1;
  rc = 0;
done:
  free(explicit_.kv);
  smap_free(&explicit_.index);
  free(out.kv);
  smap_free(&out.index);
  free(srcs);
  return rc;
}

/* ---- the event loop ------------------------------------------------------- */

static int register_anchor(ctx *c, const yaml_char_t *anchor, ynode *n) {
  if (!anchor) return 0;
  const char *a = (const char *)anchor;
  if (smap_get(&c->anchors, a, strlen(a))) {
    char msg[160];
    snprintf(msg, sizeof msg, "duplicate anchor &%.100s", a);
    return error_at(c, n->line, n->col, msg);
  }
  /* the name must outlive the event: keep it in a node-owned string */
  ynode *holder = node_new(c, YN_STR, &(yaml_mark_t){0, n->line - 1, n->col - 1});
  if (!holder || node_set_text(holder, a, strlen(a))) return -1;
  return smap_put(&c->anchors, holder->text, holder->len, n);
}

/* Places a finished node in the open collection (or as the root). */
static int attach(ctx *c, ynode *n) {
  if (n->depth + (int)c->depth > YAML_MAX_DEPTH)
    return error_at(c, n->line, n->col, "nesting too deep (aliases included)");
  if (c->depth == 0) {
    c->root = n;
    return 0;
  }
  return node_push(c->stack[c->depth - 1], n);
}

static int open_collection(ctx *c, const yaml_event_t *ev, yn_kind kind) {
  const char *tag = kind == YN_SEQ ? (const char *)ev->data.sequence_start.tag
                                   : (const char *)ev->data.mapping_start.tag;
  const yaml_char_t *anchor = kind == YN_SEQ ? ev->data.sequence_start.anchor
                                             : ev->data.mapping_start.anchor;
  if (tag && strcmp(tag, "!") != 0 && !is_core_tag(tag, kind == YN_SEQ ? "seq" : "map"))
    return unknown_tag(c, &ev->start_mark, tag);
  if (c->depth >= YAML_MAX_DEPTH)
    return error_at(c, ev->start_mark.line + 1, ev->start_mark.column + 1, "nesting too deep");
  ynode *n = node_new(c, kind, &ev->start_mark);
  if (!n || register_anchor(c, anchor, n)) return -1;
  if (grow((void **)&c->stack, &c->capstack, c->depth + 1, sizeof *c->stack)) return -1;
  c->stack[c->depth++] = n;
  return 0;
}

static int close_collection(ctx *c) {
  ynode *n = c->stack[--c->depth];
  if (n->kind == YN_SEQ) finish_seq(n);
  else if (finish_map(c, n)) return -1;
  n->done = 1;
  return attach(c, n);
}

static int on_alias(ctx *c, const yaml_event_t *ev) {
  const char *a = (const char *)ev->data.alias.anchor;
  ynode *n = smap_get(&c->anchors, a, strlen(a));
  char msg[160];
  if (!n || !n->done) {
    snprintf(msg, sizeof msg, n ? "alias *%.100s refers to a node that contains it"
                                : "undefined alias *%.100s", a);
    return error_at(c, ev->start_mark.line + 1, ev->start_mark.column + 1, msg);
  }
  return attach(c, n);
}

/* line and column (1-based, in characters) of a byte offset */
static void place(const ctx *c, size_t offset, size_t *line, size_t *col) {
  *line = 1;
  *col = 1;
  for (size_t i = 0; i < offset && i < c->src_len; ++i) {
    if (c->src[i] == '\n') ++*line, *col = 1;
    else if ((c->src[i] & 0xC0) != 0x80) ++*col;
  }
}

static int parser_error(ctx *c, const yaml_parser_t *p) {
  const char *problem = p->problem ? p->problem : "cannot parse";
  if (p->error == YAML_MEMORY_ERROR) return fm__error("%s: yaml: out of memory", c->name);
  if (p->error == YAML_READER_ERROR) {
    size_t line, col;
    place(c, p->problem_offset, &line, &col);
    if (p->problem_value != -1)
      return fm__error("%s:%zu:%zu: %s (#%X)", c->name, line, col, problem,
                       (unsigned)p->problem_value);
    return fm__error("%s:%zu:%zu: %s", c->name, line, col, problem);
  }
  if (p->context)
    return fm__error("%s:%zu:%zu: %s (%s at line %zu, column %zu)", c->name,
                     p->problem_mark.line + 1, p->problem_mark.column + 1, problem,
                     p->context, p->context_mark.line + 1, p->context_mark.column + 1);
  return fm__error("%s:%zu:%zu: %s", c->name, p->problem_mark.line + 1,
                   p->problem_mark.column + 1, problem);
}

static int on_event(ctx *c, const yaml_event_t *ev) {
  switch (ev->type) {
  case YAML_DOCUMENT_START_EVENT:
    if (++c->ndocs > 1)
      return error_at(c, ev->start_mark.line + 1, ev->start_mark.column + 1,
                      "expected a single document, found a second one");
    return 0;
  case YAML_SCALAR_EVENT: {
    ynode *n = make_scalar(c, ev);
    if (!n || register_anchor(c, ev->data.scalar.anchor, n)) return -1;
    return attach(c, n);
  }
  case YAML_ALIAS_EVENT: return on_alias(c, ev);
  case YAML_SEQUENCE_START_EVENT: return open_collection(c, ev, YN_SEQ);
  case YAML_MAPPING_START_EVENT: return open_collection(c, ev, YN_MAP);
  case YAML_SEQUENCE_END_EVENT:
  case YAML_MAPPING_END_EVENT: return close_collection(c);
  default: return 0;
  }
}

static int parse(ctx *c) {
  yaml_parser_t p;
  if (!yaml_parser_initialize(&p)) return fm__error("%s: yaml: out of memory", c->name);
  yaml_parser_set_input_string(&p, c->src, c->src_len);
  int rc = 0;
  for (int end = 0; !end && rc == 0;) {
    yaml_event_t ev;
    if (!yaml_parser_parse(&p, &ev)) {
      rc = parser_error(c, &p);
      break;
    }
    end = ev.type == YAML_STREAM_END_EVENT;
    rc = on_event(c, &ev);
    yaml_event_delete(&ev);
  }
  yaml_parser_delete(&p);
  return rc;
}

/* ---- output --------------------------------------------------------------- */

static char *emit(char *o, const ynode *n) {
  switch (n->kind) {
  case YN_STR: return write_escaped(o, n->text, n->len);
  case YN_SEQ:
    *o++ = '[';
    for (size_t i = 0; i < n->n; ++i) {
      if (i) *o++ = ',';
      o = emit(o, n->items[i]);
    }
    *o++ = ']';
    return o;
  case YN_MAP:
    *o++ = '{';
    for (size_t i = 0; i < n->n; i += 2) {
      if (i) *o++ = ',';
      o = write_escaped(o, n->items[i]->text, n->items[i]->len);
      *o++ = ':';
      o = emit(o, n->items[i + 1]);
    }
    *o++ = '}';
    return o;
  default:
    memcpy(o, n->text, n->len);
    return o + n->len;
  }
}

static char *to_json(const char *name, const unsigned char *src, size_t len) {
  ctx c = {.name = name, .src = src, .src_len = len};
  char *out = NULL;
  if (parse(&c) == 0) {
    size_t n = c.root ? c.root->json_len : 4;
    if (n > YAML_MAX_JSON) {
      fm__error("%s: the document expands to more than %zu MiB of JSON (alias bomb?)",
                name, YAML_MAX_JSON >> 20);
    } else if (!(out = malloc(n + 1))) {
      fm__error("%s: yaml: out of memory", name);
    } else {
      char *end = c.root ? emit(out, c.root) : (memcpy(out, "null", 4), out + 4);
      *end = '\0';
    }
  }
  ctx_free(&c);
  return out;
}

char *fm_yaml_string_to_json(const char *text, const char *name_for_errors) {
  const char *name = name_for_errors ? name_for_errors : "<string>";
  if (!text) return fm__error_null("fm_yaml_string_to_json: text is NULL");
  return to_json(name, (const unsigned char *)text, strlen(text));
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return fm__error_null("%s: %s", path, strerror(errno));
  char *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (grow((void **)&buf, &cap, n + 65536, 1)) break;
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (got == 0) {
      if (ferror(f)) {
        fm__error("%s: read error: %s", path, strerror(errno));
        break;
      }
      fclose(f);
      *len = n;
      return buf;
    }
  }
  fclose(f);
  free(buf);
  return NULL;
}

char *fm_yaml_to_json(const char *path) {
  if (!path) return fm__error_null("fm_yaml_to_json: path is NULL");
  size_t len = 0;
  char *src = read_file(path, &len);
  if (!src) return NULL;
  char *out = to_json(path, (const unsigned char *)src, len);
  free(src);
  return out;
}
