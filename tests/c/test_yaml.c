/* test_yaml.c — YAML → JSON: scalar resolution, anchors and merges,
 * errors with positions, and garbage that must fail cleanly. */
#include "fmseg.h"
#include "tap.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* ---- a strict JSON checker (RFC 8259), so every output can be validated -- */

typedef struct { const char *s; int depth; } jp;

static void ws(jp *p) { while (*p->s == ' ' || *p->s == '\n' || *p->s == '\r' || *p->s == '\t') p->s++; }
static int value(jp *p);

static int string(jp *p) {
  if (*p->s++ != '"') return 0;
  for (;;) {
    unsigned char c = (unsigned char)*p->s++;
    if (c == '"') return 1;
    if (c < 0x20) return 0;  /* raw control characters (and the end) are invalid */
    if (c == '\\') {
      c = (unsigned char)*p->s++;
      if (c == 'u') {
        for (int i = 0; i < 4; ++i, ++p->s)
          if (!strchr("0123456789abcdefABCDEF", *p->s) || !*p->s) return 0;
      } else if (!strchr("\"\\/bfnrt", c) || !c) {
        return 0;
      }
    }
  }
}

static int digits(jp *p) {
  const char *s0 = p->s;
  while (*p->s >= '0' && *p->s <= '9') p->s++;
  return p->s > s0;
}

static int number(jp *p) {
  if (*p->s == '-') p->s++;
  if (*p->s == '0') p->s++;
  else if (!digits(p)) return 0;
  if (*p->s == '.') { p->s++; if (!digits(p)) return 0; }
  if (*p->s == 'e' || *p->s == 'E') {
    p->s++;
    if (*p->s == '+' || *p->s == '-') p->s++;
    if (!digits(p)) return 0;
  }
  return 1;
}

static int word(jp *p, const char *w) {
  size_t n = strlen(w);
  if (strncmp(p->s, w, n)) return 0;
  p->s += n;
  return 1;
}

static int container(jp *p, char open, char close) {
  if (++p->depth > 10000) return 0;
  p->s++;
  ws(p);
  if (*p->s == close) { p->s++; p->depth--; return 1; }
  for (;;) {
    if (open == '{') {
      if (!string(p)) return 0;
      ws(p);
      if (*p->s++ != ':') return 0;
    }
    if (!value(p)) return 0;
    ws(p);
    if (*p->s == close) { p->s++; p->depth--; return 1; }
    if (*p->s++ != ',') return 0;
  }
}

static int value(jp *p) {
  ws(p);
  switch (*p->s) {
  case '{': return container(p, '{', '}');
  case '[': return container(p, '[', ']');
  case '"': return string(p);
  case 't': return word(p, "true");
  case 'f': return word(p, "false");
  case 'n': return word(p, "null");
  default: return number(p);
  }
}

static int valid_json(const char *s) {
  jp p = {s, 0};
  if (!value(&p)) return 0;
  ws(&p);
  return *p.s == '\0';
}

/* ---- helpers ------------------------------------------------------------- */

/* JSON of `text`, or "ERR:" + the message; caller frees. */
static char *run(const char *text) {
  char *j = fm_yaml_string_to_json(text, "t.yaml");
  if (j) return j;
  const char *e = fm_last_error();
  char *r = malloc(strlen(e) + 5);
  sprintf(r, "ERR:%s", e);
  return r;
}

static void expect_json(const char *yaml, const char *want, const char *name) {
  char *got = run(yaml);
  if (!ok(strcmp(got, want) == 0, name)) {
    printf("#   got:  %s\n#   want: %s\n", got, want);
  }
  free(got);
}

/* an error whose message starts with `prefix` and contains `phrase` */
static void expect_error(const char *yaml, const char *prefix, const char *phrase,
                         const char *name) {
  char *j = fm_yaml_string_to_json(yaml, "t.yaml");
  const char *e = fm_last_error();
  int good = !j && strncmp(e, prefix, strlen(prefix)) == 0 && strstr(e, phrase);
  if (!ok(good, name)) printf("#   got: %s\n", j ? j : e);
  fm_free(j);
}

/* ---- scalar resolution, from the YAML 1.1 type repository (as PyYAML) ---- */

typedef struct {
  const char *yaml;   /* the plain scalar as written */
  char kind;          /* n null, b bool, i int, f float, s string */
  const char *want;   /* n/b/i: the JSON token; s: the string; f: a C literal */
} scalar_case;

static const scalar_case SCALARS[] = {
  {"null", 'n', "null"}, {"~", 'n', "null"}, {"", 'n', "null"}, {"Null", 'n', "null"},
  {"NULL", 'n', "null"}, {"nULL", 's', "nULL"},
  {"true", 'b', "true"}, {"True", 'b', "true"}, {"TRUE", 'b', "true"},
  {"yes", 'b', "true"}, {"Yes", 'b', "true"}, {"YES", 'b', "true"},
  {"on", 'b', "true"}, {"On", 'b', "true"}, {"ON", 'b', "true"},
  {"false", 'b', "false"}, {"no", 'b', "false"}, {"No", 'b', "false"},
  {"off", 'b', "false"}, {"OFF", 'b', "false"},
  {"tRUE", 's', "tRUE"}, {"y", 's', "y"}, {"n", 's', "n"}, {"oN", 's', "oN"},
  {"0", 'i', "0"}, {"-0", 'i', "0"}, {"12", 'i', "12"}, {"+12", 'i', "12"},
  {"-12", 'i', "-12"}, {"1_000", 'i', "1000"}, {"0x1F", 'i', "31"},
  {"-0x1f", 'i', "-31"}, {"0b1010", 'i', "10"}, {"0755", 'i', "493"},
  {"0o17", 'i', "15"}, {"1:30", 'i', "90"}, {"1:00:00", 'i', "3600"},
  {"9007199254740993", 'i', "9007199254740993"},
  {"09", 's', "09"}, {"0x", 's', "0x"}, {"0xZ", 's', "0xZ"}, {"1:60", 's', "1:60"},
  {"1.5", 'f', "1.5"}, {"-1.5", 'f', "-1.5"}, {".5", 'f', "0.5"}, {"-.5", 'f', "-0.5"},
  {"1.", 'f', "1.0"}, {"1.0e+3", 'f', "1000.0"}, {"6.8523015e+5", 'f', "685230.15"},
  {"1e-4", 'f', "1e-4"}, {"2E3", 'f', "2000.0"}, {"1_000.5", 'f', "1000.5"},
  {"1:30.5", 'f', "90.5"}, {"0.1", 'f', "0.1"},
  {".", 's', "."}, {"1.2.3", 's', "1.2.3"}, {"1e", 's', "1e"}, {"e5", 's', "e5"},
  {"._5", 's', "._5"}, {"-.nan", 's', "-.nan"}, {"2001-12-14", 's', "2001-12-14"},
  {"abc def", 's', "abc def"}, {"+", 's', "+"},
};

static void test_scalars(void) {
  char yaml[128], name[160];
  for (size_t i = 0; i < sizeof SCALARS / sizeof *SCALARS; ++i) {
    const scalar_case *c = &SCALARS[i];
    snprintf(yaml, sizeof yaml, "k: %s", c->yaml);
    snprintf(name, sizeof name, "plain scalar '%s' resolves as %c", c->yaml, c->kind);
    char *got = run(yaml);
    int good = strncmp(got, "{\"k\":", 5) == 0 && got[strlen(got) - 1] == '}';
    char *tok = got + 5;
    if (good) got[strlen(got) - 1] = '\0';
    if (good && c->kind == 'f') {
      /* a float stays visibly a float, and has the right value */
      good = strpbrk(tok, ".eE") && tok[0] != '"' && strtod(tok, NULL) == strtod(c->want, NULL);
    } else if (good && c->kind == 's') {
      good = tok[0] == '"' && strlen(tok) == strlen(c->want) + 2 &&
             strncmp(tok + 1, c->want, strlen(c->want)) == 0;
    } else if (good) {
      good = strcmp(tok, c->want) == 0;
    }
    if (!ok(good, name)) printf("#   got: %s\n", got);
    free(got);
  }
  /* infinities: JSON has none; 1e999 reads back as inf with strtod */
  const char *infs[] = {".inf", "+.inf", ".Inf", ".INF", "-.inf", "1.0e999"};
  for (int i = 0; i < 6; ++i) {
    snprintf(yaml, sizeof yaml, "k: %s", infs[i]);
    char *got = run(yaml);
    double want = infs[i][0] == '-' ? -INFINITY : INFINITY;
    snprintf(name, sizeof name, "'%s' is written as a number that reads back as %g", infs[i], want);
    ok(strncmp(got, "{\"k\":", 5) == 0 && got[5] != '"' && strtod(got + 5, NULL) == want, name);
    free(got);
  }
  expect_json("k: .nan", "{\"k\":null}", ".nan becomes null (JSON has no NaN)");
  expect_json("k: .NaN", "{\"k\":null}", ".NaN becomes null");
  /* quoted and tagged scalars */
  expect_json("a: '1'\nb: \"true\"\nc: 'null'\nd: \"\"", "{\"a\":\"1\",\"b\":\"true\",\"c\":\"null\",\"d\":\"\"}",
              "quoted scalars stay strings");
  expect_json("a: !!str 1\nb: !!str yes\nc: ! 12", "{\"a\":\"1\",\"b\":\"yes\",\"c\":\"12\"}",
              "!!str and ! keep strings");
  expect_json("a: !!int '7'\nb: !!bool 'no'\nc: !!null ''", "{\"a\":7,\"b\":false,\"c\":null}",
              "!!int, !!bool, !!null convert quoted text");
  char *f = run("a: !!float 3");
  ok(strcmp(f, "{\"a\":3.0}") == 0 || strcmp(f, "{\"a\":3e0}") == 0, "!!float 3 is a float");
  free(f);
  expect_error("a: !!int abc", "t.yaml:1:4:", "!!int", "!!int on a non-integer is an error");
  expect_error("a: !!float x", "t.yaml:1:4:", "!!float", "!!float on text is an error");
  expect_error("a: !custom 1", "t.yaml:1:4:", "unsupported tag !custom", "unknown tags refused");
  expect_error("a: !!set {x}", "t.yaml:1:4:", "unsupported tag", "!!set refused");
  /* non-string keys become their JSON text */
  expect_json("1: a\ntrue: b\n~: c\n0x10: d", "{\"1\":\"a\",\"true\":\"b\",\"null\":\"c\",\"16\":\"d\"}",
              "scalar keys become strings");
}

/* ---- strings ------------------------------------------------------------- */

static void test_strings(void) {
  expect_json("s: \"q\\\"uote back\\\\slash\"", "{\"s\":\"q\\\"uote back\\\\slash\"}",
              "quotes and backslashes escaped");
  expect_json("s: \"\\t\\n\\r\\b\\f\"", "{\"s\":\"\\t\\n\\r\\b\\f\"}", "short escapes");
  expect_json("s: \"\\x01\\x1f\\0\"", "{\"s\":\"\\u0001\\u001f\\u0000\"}",
              "other control characters as \\u00XX, NUL included");
  expect_json("s: \"\\u00e9\"\nt: 日本", "{\"s\":\"\xc3\xa9\",\"t\":\"\xe6\x97\xa5\xe6\x9c\xac\"}",
              "UTF-8 passes through");
  expect_json("s: |\n  one\n  two\nt: >\n  a\n  b\n", "{\"s\":\"one\\ntwo\\n\",\"t\":\"a b\\n\"}",
              "block scalars (literal and folded)");
  expect_json("\"k\\\"\": 1", "{\"k\\\"\":1}", "keys escaped too");
  expect_json("\"<<\": 1", "{\"<<\":1}", "a quoted << is an ordinary key");
}

/* ---- structure, anchors, merges ------------------------------------------ */

static void test_structure(void) {
  expect_json("", "null", "empty stream is null");
  expect_json("# only a comment\n", "null", "comment-only stream is null");
  expect_json("- 1\n- [2, 3]\n- {a: [], b: {}}", "[1,[2,3],{\"a\":[],\"b\":{}}]", "nested flow and block");
  expect_json("a:\n  b:\n    c: 1\n  d: [x, y]\ne: 2", "{\"a\":{\"b\":{\"c\":1},\"d\":[\"x\",\"y\"]},\"e\":2}",
              "nested block mappings keep order");
  expect_json("---\na: 1\n...\n", "{\"a\":1}", "explicit document markers");
  expect_json("a: &x [1, 2]\nb: *x\nc: *x", "{\"a\":[1,2],\"b\":[1,2],\"c\":[1,2]}",
              "aliases expand to copies");
  expect_json("a: &s hello\nb: *s", "{\"a\":\"hello\",\"b\":\"hello\"}", "scalar anchor");
  expect_json("base: &b {a: 1, b: 2}\nd:\n  <<: *b\n  b: 3\n  c: 4",
              "{\"base\":{\"a\":1,\"b\":2},\"d\":{\"a\":1,\"b\":3,\"c\":4}}",
              "merge: explicit keys override the merged mapping");
  expect_json("b: &b {a: 1}\nd:\n  a: 0\n  <<: *b", "{\"b\":{\"a\":1},\"d\":{\"a\":0}}",
              "merge: explicit key wins even when written before <<");
  expect_json("x: &x {a: 1, b: 1}\ny: &y {b: 2, c: 2}\nz:\n  <<: [*x, *y]\n  d: 3",
              "{\"x\":{\"a\":1,\"b\":1},\"y\":{\"b\":2,\"c\":2},\"z\":{\"b\":1,\"c\":2,\"a\":1,\"d\":3}}",
              "merge list: the first mapping listed wins");
  expect_json("a: &a {x: 1}\nb: &b {<<: *a, y: 2}\nc: {<<: *b, z: 3}",
              "{\"a\":{\"x\":1},\"b\":{\"x\":1,\"y\":2},\"c\":{\"x\":1,\"y\":2,\"z\":3}}",
              "merges chain through merged mappings");
  expect_json("m: {<<: {k: v}}", "{\"m\":{\"k\":\"v\"}}", "merge an inline mapping");
  expect_error("<<: 5", "t.yaml:1:5:", "merge key", "merge of a scalar is an error");
  expect_error("m: {<<: [1]}", "t.yaml:1:10:", "merge key", "merge list of non-mappings is an error");
  expect_error("a: 1\nb: 2\na: 3", "t.yaml:3:1:", "duplicate key \"a\"", "duplicate key names key and line");
  expect_error("1: a\n\"1\": b", "t.yaml:2:1:", "duplicate key \"1\"", "keys that collide in JSON are duplicates");
  expect_error("? [1]\n: a", "t.yaml:1:3:", "keys must be scalars", "collection keys refused");
  expect_error("a: *nope", "t.yaml:1:4:", "undefined alias *nope", "undefined alias");
  expect_error("a: &a [1, *a]", "t.yaml:1:11:", "contains it", "recursive alias");
  expect_error("a: &a 1\nb: &a 2", "t.yaml:2:4:", "duplicate anchor &a", "duplicate anchor");
  expect_error("a: 1\n---\nb: 2", "t.yaml:2:1:", "single document", "a second document is an error");
}

/* ---- syntax errors carry positions --------------------------------------- */

static void test_errors(void) {
  expect_error("a: \"unterminated\nb: 1", "t.yaml:2:5:", "quoted scalar", "unterminated quote");
  expect_error("a:\n\tb: 1", "t.yaml:2:1:", "cannot start any token", "tab indentation");
  expect_error("a:\n  b: 1\n c: 2", "t.yaml:3:2:", "did not find expected key", "bad indentation");
  expect_error("a: [1, 2\nb: 3", "t.yaml:", "flow sequence", "unclosed flow sequence");
  expect_error("a: b: c", "t.yaml:1:5:", "mapping values are not allowed", "mapping value in a plain scalar");
  expect_error("a: \xff\xfe", "t.yaml:1:4:", "UTF-8", "invalid UTF-8 placed by line and column");
  expect_error("x: 1\ny: \xc3", "t.yaml:2:4:", "UTF-8", "truncated UTF-8 sequence");
  ok(fm_yaml_string_to_json(NULL, "x") == NULL && fm_last_error()[0], "NULL text is an error");
  char *j = fm_yaml_string_to_json("a: [", NULL);
  ok(!j && strncmp(fm_last_error(), "<string>:", 9) == 0, "no name: errors say <string>");

  /* nesting and alias bombs fail instead of exhausting stack or memory */
  size_t depth = 100000;
  char *deep = malloc(depth + 1);
  memset(deep, '[', depth);
  deep[depth] = '\0';
  j = fm_yaml_string_to_json(deep, "deep");
  ok(!j && strstr(fm_last_error(), "deep:"), "100000 nested [ fail cleanly");
  free(deep);
  const char *bomb =
      "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
      "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
      "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
      "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
      "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
      "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
      "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
      "h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]\n"
      "i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]\n";
  j = fm_yaml_string_to_json(bomb, "bomb");
  ok(!j && strstr(fm_last_error(), "bomb:"), "alias bomb (10^9 scalars) refused");
  fm_free(j);
  /* a chain of aliases each one level deeper exceeds the depth limit */
  char *chain = malloc(64 * 1024), *o = chain;
  o += sprintf(o, "a0: &a0 [1]\n");
  for (int i = 1; i < 600; ++i) o += sprintf(o, "a%d: &a%d [*a%d]\n", i, i, i - 1);
  j = fm_yaml_string_to_json(chain, "chain");
  ok(!j && strstr(fm_last_error(), "too deep"), "alias chains deeper than the limit refused");
  free(chain);
}

/* ---- files ---------------------------------------------------------------- */

static void test_files(void) {
  char dir[] = "/tmp/fmseg_yaml_XXXXXX";
  if (!mkdtemp(dir)) { ok(0, "mkdtemp"); return; }
  char path[256];
  snprintf(path, sizeof path, "%s/c.yaml", dir);
  FILE *f = fopen(path, "w");
  fputs("model:\n  size: 448\n  name: clip\n", f);
  fclose(f);
  char *j = fm_yaml_to_json(path);
  ok(j && strcmp(j, "{\"model\":{\"size\":448,\"name\":\"clip\"}}") == 0, "file parsed");
  fm_free(j);

  f = fopen(path, "w");
  fputs("a: 1\nb: [1,\n", f);
  fclose(f);
  j = fm_yaml_to_json(path);
  char prefix[300];
  snprintf(prefix, sizeof prefix, "%s:3:1:", path);
  ok(!j && strncmp(fm_last_error(), prefix, strlen(prefix)) == 0, "file error is PATH:LINE:COL:");
  if (j || strncmp(fm_last_error(), prefix, strlen(prefix))) printf("#   got: %s\n", fm_last_error());
  unlink(path);

  snprintf(path, sizeof path, "%s/missing.yaml", dir);
  j = fm_yaml_to_json(path);
  ok(!j && strstr(fm_last_error(), path) && strstr(fm_last_error(), "No such file"),
     "missing file names the path");
  ok(fm_yaml_to_json(NULL) == NULL, "NULL path is an error");
  rmdir(dir);
}

/* ---- garbage -------------------------------------------------------------- */

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint32_t next(void) {
  rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
  return (uint32_t)(rng >> 32);
}

/* Every input either yields valid JSON or fails with a "name:" message. */
static int clean_outcome(const char *text) {
  char *j = fm_yaml_string_to_json(text, "g");
  int good = j ? valid_json(j) : strncmp(fm_last_error(), "g", 1) == 0 && fm_last_error()[1] == ':';
  if (!good) printf("#   bad outcome for input of %zu bytes: %s\n", strlen(text), j ? j : fm_last_error());
  fm_free(j);
  return good;
}

static const char *VALID =
    "# a config\n_base_: [../base.yaml, 'other.yaml']\n"
    "model: &m\n  name: clip\n  size: 448\n  mean: [0.48, 0.45, 0.40]\n"
    "data:\n  <<: *m\n  root: \"/data/voc\\tx\"\n  classes: |\n    cat\n    dog\n"
    "flags: {a: yes, b: ~, c: !!str 3, d: 0x1F, e: .inf, f: -1.5e-3}\n"
    "list:\n  - one\n  - - nested\n    - 'two'\n  - {k: v}\n? complex\n: value\n";

static void test_garbage(void) {
  ok(clean_outcome(VALID), "the reference document parses");
  char buf[512];
  int all = 1;
  for (int i = 0; i < 200; ++i) {       /* random bytes, no NUL */
    size_t len = next() % 256;
    for (size_t k = 0; k < len; ++k) buf[k] = (char)(1 + next() % 255);
    buf[len] = '\0';
    all &= clean_outcome(buf);
  }
  ok(all, "200 random byte strings: valid JSON or a clean error");
  static const char alphabet[] = "ab01:-?[]{},&*!|>'\"#%@`~<. \n\n\t\\x";
  all = 1;
  for (int i = 0; i < 200; ++i) {       /* random YAML punctuation */
    size_t len = next() % 200;
    for (size_t k = 0; k < len; ++k) buf[k] = alphabet[next() % (sizeof alphabet - 1)];
    buf[len] = '\0';
    all &= clean_outcome(buf);
  }
  ok(all, "200 random strings of YAML punctuation: valid JSON or a clean error");
  size_t n = strlen(VALID);
  all = 1;
  for (size_t cut = 0; cut < n; ++cut) { /* every truncation */
    memcpy(buf, VALID, cut);
    buf[cut] = '\0';
    all &= clean_outcome(buf);
  }
  ok(all, "every truncation of a valid document: valid JSON or a clean error");
  all = 1;
  for (int i = 0; i < 300; ++i) {       /* one or two bytes mutated */
    memcpy(buf, VALID, n + 1);
    for (int m = 0; m < 2; ++m) buf[next() % n] = (char)(1 + next() % 255);
    all &= clean_outcome(buf);
  }
  ok(all, "300 mutations of a valid document: valid JSON or a clean error");
}

int main(void) {
  ok(valid_json("{\"a\":[1,-2.5e3,true,null,\"\\u00e9\"]}") && !valid_json("{\"a\":}") &&
     !valid_json("[1,]") && !valid_json("\"\x01\""), "the test's JSON checker works");
  test_scalars();
  test_strings();
  test_structure();
  test_errors();
  test_files();
  test_garbage();
  return done_testing();
}
