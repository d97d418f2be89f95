# fmseg — build, test, bench.
#   make          libfmseg (build/libfmseg.so) and ./fmseg
#   make deps     install the Debian packages (as root), or print the command
#   make test     everything: C unit tests, Lua tests, fixture parity
#                 (and, with CI set, a short run of every fuzz target)
#   make test-asan  the whole suite under AddressSanitizer + UBSan (mk/asan.mk)
#   make fuzz     the libFuzzer targets, FUZZ_TIME s each (mk/fuzz.mk)
#   make lint     luacheck over the Lua, every C file with -Werror
#   make docs     the Lua API reference in docs/api/
#   make bench    benchmarks (never part of the tests)
#   make demo     segment a bundled image

CC      ?= cc
ARCH    := $(shell gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
# The OpenMP build of OpenBLAS shares one thread pool with our OpenMP loops
# (LAPACKE is linked statically: the shared one would load the default,
# pthread OpenBLAS beside it);
# two pools spinning on two cores cost 2-3x (see DESIGN.md, threads).
# Whether it is there is decided when make reads this file, so targets that
# install it first (test, bench, demo) build in a second make started after
# `deps`: a fresh clone's first build then links it, not whichever
# libopenblas.so.0 the system's alternatives point to (tests/lua/test_build.lua).
BLASDIR := /usr/lib/$(ARCH)/openblas-openmp
CFLAGS  ?= -O3 -march=x86-64-v2 -mtune=native
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -fPIC -fopenmp \
           -Icore -I/usr/include/stb -I/usr/include/luajit-2.1
comma   := ,
BLAS    := $(if $(wildcard $(BLASDIR)/libopenblas.so),-L$(BLASDIR) -Wl$(comma)-rpath$(comma)$(BLASDIR)) -lopenblas
LIBS    := $(BLAS) -l:liblapacke.a -lyaml -lcjson -lcurl -lcrypto -lm -fopenmp
LUAJIT  := -lluajit-5.1

DEPS_DEB := build-essential luajit libluajit-5.1-dev libopenblas-openmp-dev libopenblas-dev \
            liblapacke-dev libstb-dev libyaml-dev libcjson-dev libcurl4-openssl-dev libssl-dev
DEPS_OPT :=
# for make lint and make fuzz, and the tests that need a browser (fmseg
# report) or a scheduler (Slurm); CI installs them: make deps-dev. make
# test-asan needs only gcc's libasan and libubsan, which build-essential brings
DEPS_DEV := lua-check clang chromium slurm-wlm

CORE_SRC := $(wildcard core/*.c)
CORE_OBJ := $(CORE_SRC:core/%.c=build/obj/%.o)
TEST_SRC := $(wildcard tests/c/test_*.c)
TEST_BIN := $(TEST_SRC:tests/c/%.c=build/tests/%)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=build/bench/%)

FMSEG_FIXTURES ?= ../shared/fixtures
export FMSEG_FIXTURES
# Tests leave no text-classifier cache in the user's home.
test test-lua: export FMSEG_CACHE = off

.PHONY: all deps deps-dev test test-c test-lua lint docs bench demo clean

all: build/libfmseg.so fmseg

build/obj/%.o: core/%.c $(wildcard core/*.h)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@

build/libfmseg.so: $(CORE_OBJ)
	$(CC) -shared -o $@ $^ $(LIBS)

fmseg: lua/main.c build/libfmseg.so
	$(CC) $(CFLAGS) -o $@ lua/main.c -Lbuild -Wl,--no-as-needed -lfmseg -Wl,--as-needed -Wl,-rpath,'$$ORIGIN/build' \
	  $(LUAJIT) $(LIBS) -Wl,-E

build/tests/%: tests/c/%.c tests/c/tap.h build/libfmseg.so
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -Itests/c -o $@ $< -Lbuild -lfmseg -Wl,-rpath,'$$ORIGIN/..' $(LIBS)

# LD_PRELOAD'ed by tests/lua/test_eval.lua: a disk that fills up
FAULT_SHIM := build/tests/fault_shim.so
$(FAULT_SHIM): tests/c/fault_shim.c
	@mkdir -p $(@D)
	$(CC) -O2 -fPIC -shared -Wall -Wextra -o $@ $< -ldl

# started by tests/lua/test_fetch.lua: the Hugging Face hub's endpoints on
# 127.0.0.1, with the faults the test asks for
HUB_SERVER := build/tests/hub_server
$(HUB_SERVER): tests/c/hub_server.c
	@mkdir -p $(@D)
	$(CC) -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -o $@ $<

# programs the Lua tests start
TEST_HELPERS := $(FAULT_SHIM) $(HUB_SERVER)

build/bench/%: bench/%.c build/libfmseg.so
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< -Lbuild -lfmseg -Wl,-rpath,'$$ORIGIN/..' $(LIBS)

deps:
	@if dpkg -s $(DEPS_DEB) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEPS_DEB) $(DEPS_OPT); \
	else echo "fmseg needs: sudo apt-get install $(DEPS_DEB)"; exit 1; fi

deps-dev: deps
	@if dpkg -s $(DEPS_DEV) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEPS_DEV); \
	else echo "make lint / fuzz / test-asan need: sudo apt-get install $(DEPS_DEV)"; exit 1; fi

# Under CI the fuzz targets also run briefly from their seed corpora
# (mk/fuzz.mk, make fuzz-smoke: any crash, leak or hang fails).
test: deps
	@$(MAKE) --no-print-directory all $(TEST_BIN) $(TEST_HELPERS)
	@prove --exec 'sh tests/run1' $(TEST_BIN) $(sort $(wildcard tests/lua/test_*.lua))
	@if [ -n "$$CI" ]; then $(MAKE) --no-print-directory fuzz-smoke; fi

test-c: all $(TEST_BIN)
	@prove --exec 'sh tests/run1' $(TEST_BIN)

test-lua: all $(TEST_HELPERS)
	@prove --exec 'sh tests/run1' $(sort $(wildcard tests/lua/test_*.lua))

# Each suite runs PyTorch's side (bench/torch_SUITE.py, where python3 has
# torch) just before fmseg's (bench/bench_SUITE.lua), so that both see the
# same load; bench/summary.lua then prints one table (build/bench/summary.md).
# The C benchmarks wait passively, as ./fmseg does (lua/main.c), and every
# process gets the same OpenBLAS kernels: those the CPU can run
# (bench/blas_core.lua, FMSEG_BLAS_UPGRADE's choice) unless OPENBLAS_CORETYPE
# is set.
# ONNX Runtime runs PyTorch's models too (exported by torch.onnx; the t/ort
# column) where npm exists: onnxruntime-node, CPU provider, installed under
# build/bench/node with --ignore-scripts (the CPU runtime is in the package;
# its install script only fetches GPU providers).
# FMSEG_BENCH_QUICK=1 skips SD, SAM and SAM 2 at 1024.
BENCH_SUITES := vit sam sam2 sd
ORT_VERSION := 1.30.0
ORT_DIR := build/bench/node
bench: deps
	@$(MAKE) --no-print-directory all $(BENCH_BIN)
	@mkdir -p build/bench && rm -rf build/bench/*.json build/bench/summary.md build/bench/onnx && \
	  cat /proc/loadavg > build/bench/loadavg.start
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
	  [ -d $(ORT_DIR)/node_modules/onnxruntime-node ] || npm install --prefix $(ORT_DIR) --ignore-scripts \
	    --no-audit --no-fund onnxruntime-node@$(ORT_VERSION) >/dev/null 2>&1 || \
	    echo "bench: npm could not install onnxruntime-node: no t/ort column"; \
	else echo "bench: node / npm not found: no t/ort column (ONNX Runtime)"; fi
	@export OPENBLAS_CORETYPE=$${OPENBLAS_CORETYPE:-$$(./fmseg run bench/blas_core.lua)}; \
	for b in $(BENCH_BIN); do echo "== $$b"; OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-passive} $$b || exit 1; done
	@export OPENBLAS_CORETYPE=$${OPENBLAS_CORETYPE:-$$(./fmseg run bench/blas_core.lua)}; \
	py=; for p in python3 /usr/bin/python3; do \
	  if $$p -c 'import torch' 2>/dev/null; then py=$$p; break; fi; done; \
	onnx=; [ -n "$$py" ] && [ -d $(ORT_DIR)/node_modules/onnxruntime-node ] && onnx=build/bench/onnx; \
	for s in $(BENCH_SUITES); do \
	  if [ -n "$$py" ]; then echo "== bench/torch_$$s.py ($$py)"; \
	    FMSEG_BENCH_ONNX=$$onnx PYTHONDONTWRITEBYTECODE=1 $$py bench/torch_$$s.py || exit 1; fi; \
	  if [ -n "$$onnx" ]; then echo "== bench/ort_bench.js $$s"; \
	    NODE_PATH=$(ORT_DIR)/node_modules node bench/ort_bench.js $$s || exit 1; rm -rf build/bench/onnx/$$s; fi; \
	  echo "== bench/bench_$$s.lua"; ./fmseg run bench/bench_$$s.lua || exit 1; \
	done
	@./fmseg run bench/summary.lua

# Lint: luacheck with .luacheckrc, and the C as the build compiles it plus
# -Werror (objects discarded), so a new warning fails CI.
LINT_C := $(CORE_SRC) lua/main.c $(TEST_SRC) tests/c/fault_shim.c tests/c/hub_server.c $(BENCH_SRC)
lint:
	@command -v luacheck >/dev/null || { echo "lint: luacheck missing (make deps-dev)"; exit 1; }
	@luacheck -qq --no-color lua recipes bench tests docs
	@for f in $(LINT_C); do $(CC) $(CFLAGS) -Itests/c -Werror -c $$f -o /dev/null || exit 1; done
	@echo "lint: Lua clean (luacheck), $(words $(LINT_C)) C files clean with -Werror"

# The Lua API reference, from the modules' comments (tests/lua/test_docs.lua
# fails when the committed pages are stale).
docs: all
	@./fmseg run docs/apidoc.lua

demo: deps
	@$(MAKE) --no-print-directory all
	./fmseg demo

clean:
	rm -rf build fmseg

-include mk/*.mk
