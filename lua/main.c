/* main.c — the fmseg executable: LuaJIT with libfmseg, running
 * lua/fmseg/cli/init.lua. Lua calls C; C only starts Lua and reports errors. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <libgen.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fmseg.h"

/* The repository root: FMSEG_ROOT, else the directory of the executable. */
static void find_root(char *root, size_t len) {
  const char *env = getenv("FMSEG_ROOT");
  if (env && *env) {
    snprintf(root, len, "%s", env);
    return;
  }
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) {
    snprintf(root, len, ".");
    return;
  }
  exe[n] = '\0';
  snprintf(root, len, "%s", dirname(exe));
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = "(error object is not a string)";
  if (getenv("FMSEG_DEBUG")) {
    luaL_traceback(L, L, msg, 1);
  } else {
    lua_pushstring(L, msg);
  }
  return 1;
}

/* libgomp reads OMP_WAIT_POLICY and OpenBLAS reads OPENBLAS_CORETYPE when
 * they load, before main: to change them we set them and start again.
 * Spinning threads cost up to 5x on a busy 2-core machine (a segment run:
 * 0.9-5.9 s spinning, 1 s passive). OpenBLAS falls back to pre-AVX2 kernels
 * on CPUs newer than it knows (4x slower products; fm_blas_core_upgrade):
 * FMSEG_BLAS_UPGRADE=1 asks for the kernels the CPU can run. That is not
 * the default because other kernels sum in another order, and results move
 * in their last digits (fmseg --version says what runs). Values the user
 * set are kept. */
static void ensure_runtime_env(char **argv) {
  int again = 0;
  if (!getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    again = 1;
  }
  const char *upgrade = getenv("FMSEG_BLAS_UPGRADE");
  const char *core = upgrade && strcmp(upgrade, "1") == 0 ? fm_blas_core_upgrade() : NULL;
  if (core) {
    setenv("FMSEG_BLAS_FALLBACK", fm_blas_core(), 1);   /* for fmseg --version */
    setenv("OPENBLAS_CORETYPE", core, 1);
    again = 1;
  }
  if (again) execv("/proc/self/exe", argv);
  /* execv failed: carry on with the defaults */
}

int main(int argc, char **argv) {
  ensure_runtime_env(argv);

  /* Activations of hundreds of MB are allocated and freed per layer; with
   * glibc's defaults each one is a fresh mmap whose pages fault in again
   * (measured: 1.46 s of system time per SAM encoder pass, 0.27 s with
   * these). Keep freed blocks for reuse instead. */
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);

  /* Threads first (FMSEG_THREADS), then OpenBLAS's buffers for them:
   * under a too small ulimit -v this is a message, not a hang later. */
  const char *max_pixels = getenv("FMSEG_MAX_IMAGE_PIXELS");
  if (max_pixels && *max_pixels) fm_image_set_max_pixels(strtoll(max_pixels, NULL, 10));
  const char *threads = getenv("FMSEG_THREADS");
  if (threads && *threads) fm_set_threads(atoi(threads));
  if (fm_blas_reserve() != 0) {
    fprintf(stderr, "fmseg: %s\n", fm_last_error());
    return 1;
  }

  char root[PATH_MAX];
  find_root(root, sizeof root);

  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "fmseg: cannot create the Lua state\n");
    return 1;
  }
  luaL_openlibs(L);

  /* package.path: our modules first; recipes load as "recipes.<name>". */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s/?.lua;%s", root, root, root,
                  lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 1);
  /* package.loaded["fmseg.host"] = { root = ..., linked = true } */
  lua_getfield(L, -1, "loaded");
  lua_newtable(L);
  lua_pushstring(L, root);
  lua_setfield(L, -2, "root");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "linked");
  lua_setfield(L, -2, "fmseg.host");
  lua_pop(L, 2);

  lua_pushcfunction(L, traceback);
  lua_getglobal(L, "require");
  lua_pushstring(L, "fmseg.cli");
  int rc = 1;
  if (lua_pcall(L, 1, 1, -3) == 0) {
    lua_getfield(L, -1, "main");
    lua_newtable(L);
    for (int i = 1; i < argc; ++i) {
      lua_pushstring(L, argv[i]);
      lua_rawseti(L, -2, i);
    }
    if (lua_pcall(L, 1, 1, -4) == 0) {
      rc = lua_isnumber(L, -1) ? (int)lua_tointeger(L, -1) : 0;
    } else {
      fprintf(stderr, "fmseg: %s\n", lua_tostring(L, -1));
    }
  } else {
    fprintf(stderr, "fmseg: %s\n", lua_tostring(L, -1));
  }
  fflush(stdout);
  lua_close(L);
  return rc;
}
