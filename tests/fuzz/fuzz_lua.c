/* fuzz_lua.c — one libFuzzer driver for the parsers written in Lua: LuaJIT
 * embedded with the sanitized core linked in (found through ffi.C, as in
 * the ./fmseg executable, lua/main.c), calling targets.lua's function
 * FUZZ_LUA_TARGET (compiled in: build/fuzz/fuzz_NAME) with the input as a
 * string, inside pcall.
 *
 * A Lua error is an expected outcome: the parser refused the input. A
 * finding is a crash or sanitizer report in C, a hang (-timeout), a memory
 * blow-up (-rss_limit_mb, or LuaJIT's "not enough memory"), or a broken
 * property, which targets.lua reports through fuzz_fail(message). With
 * FMSEG_FUZZ_STRICT=1, Lua's own runtime errors ("attempt to index a nil
 * value", "bad argument", "stack overflow"...) count as findings too: a
 * parser should refuse bad input with its own message.
 *
 * LuaJIT itself is not instrumented, so the driver gives libFuzzer coverage
 * of the Lua code: a line hook counts (previous line, line) pairs of the
 * running chunks in libFuzzer's extra counters, with the JIT off so that
 * every line is seen (FMSEG_FUZZ_LUA_COVERAGE=0 turns it off: blind and
 * faster). */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <luajit.h>

#include <limits.h>
#include <unistd.h>

#include "fuzz_util.h"

#ifndef FUZZ_LUA_TARGET
#error "build with -DFUZZ_LUA_TARGET='\"name\"' (mk/fuzz.mk does)"
#endif

static lua_State *L;
static int target_ref = LUA_NOREF, traceback_ref = LUA_NOREF;
static int strict;

/* libFuzzer reads this section as coverage counters */
__attribute__((section("__libfuzzer_extra_counters"), used)) static uint8_t lua_edges[1 << 16];
static uint32_t prev_line;

static void line_hook(lua_State *l, lua_Debug *ar) {
  if (!lua_getinfo(l, "Sl", ar)) return;
  /* the chunk name is an interned string: its address names the file */
  uint32_t at = (uint32_t)((uintptr_t)ar->source >> 3) * 2654435761u ^ (uint32_t)ar->currentline * 40503u;
  uint8_t *c = &lua_edges[(at ^ prev_line) & 0xffff];
  if (*c < 255) ++*c;
  prev_line = at >> 1;
}

static int fuzz_fail_l(lua_State *l) {
  luaL_traceback(l, l, luaL_optstring(l, 1, "(no message)"), 1);
  fprintf(stderr, "fuzz[%s]: contract broken: %s\n", FUZZ_LUA_TARGET, lua_tostring(l, -1));
  abort();
}

/* pcall's message handler in strict mode: the traceback of the error */
static int traceback_l(lua_State *l) {
  const char *msg = lua_tostring(l, 1);
  luaL_traceback(l, l, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

/* Lua's and LuaJIT's own runtime errors, as opposed to a parser's message:
 * "FILE.lua:LINE: attempt to ...". (Matched at the start only: libFuzzer
 * learns the strings a target compares with and puts them in inputs.) */
static int is_runtime_error(const char *msg) {
  static const char *const forms[] = {
    "attempt to ", "bad argument #", "stack overflow", "table index is ",
    "invalid value (at index", "string length overflow", "invalid key to 'next'",
    "loop in gettable", "loop in settable", NULL};
  const char *p = strstr(msg, ".lua:");
  if (!p || p - msg > 200) return 0;
  for (p += 5; *p >= '0' && *p <= '9'; ++p) {}
  if (p[0] != ':' || p[1] != ' ') return 0;
  for (const char *const *f = forms; *f; ++f)
    if (strncmp(p + 2, *f, strlen(*f)) == 0) return 1;
  return 0;
}

/* FMSEG_ROOT, else the working directory: tests/fuzz/run.sh runs every
 * target from the repository's root. */
static void find_root(char *root, size_t len) {
  const char *env = getenv("FMSEG_ROOT");
  if (env && *env) {
    snprintf(root, len, "%s", env);
  } else if (!getcwd(root, len)) {
    snprintf(root, len, ".");
  }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  const char *s = getenv("FMSEG_FUZZ_STRICT");
  strict = s && *s && strcmp(s, "0") != 0;
  char root[PATH_MAX];
  find_root(root, sizeof root);
  L = luaL_newstate();
  if (!L) abort();
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s/tests/fuzz/?.lua", root, root, root);
  lua_setfield(L, -2, "path");
  lua_getfield(L, -1, "loaded");
  lua_newtable(L);                        /* fmseg.host: the core is linked in */
  lua_pushstring(L, root);
  lua_setfield(L, -2, "root");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "linked");
  lua_setfield(L, -2, "fmseg.host");
  lua_pop(L, 2);
  lua_register(L, "fuzz_fail", fuzz_fail_l);
  const char *cov = getenv("FMSEG_FUZZ_LUA_COVERAGE");
  if (!cov || strcmp(cov, "0") != 0) {
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    lua_sethook(L, line_hook, LUA_MASKLINE, 0);
  }

  lua_pushcfunction(L, traceback_l);
  traceback_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getglobal(L, "require");
  lua_pushstring(L, "targets");
  if (lua_pcall(L, 1, 1, 0) != 0) {
    fprintf(stderr, "fuzz_lua: cannot load tests/fuzz/targets.lua: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_getfield(L, -1, FUZZ_LUA_TARGET);
  if (!lua_isfunction(L, -1)) {
    fprintf(stderr, "fuzz_lua: targets.lua has no function %s\n", FUZZ_LUA_TARGET);
    abort();
  }
  target_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int base = lua_gettop(L);
  if (strict) lua_rawgeti(L, LUA_REGISTRYINDEX, traceback_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, target_ref);
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, strict ? base + 1 : 0) != 0) {
    const char *msg = lua_tostring(L, -1);
    if (!msg) msg = "(error object is not a string)";
    if (strcmp(msg, "not enough memory") == 0 || (strict && is_runtime_error(msg))) {
      fprintf(stderr, "fuzz[%s]: Lua error: %s\n", FUZZ_LUA_TARGET, msg);
      abort();
    }
  }
  lua_settop(L, base);
  fm_clear_error();
  return 0;
}
