# fmseg — build, test, bench.
#   make          libfmseg (build/libfmseg.so) and ./fmseg
#   make deps     install the Debian packages (as root), or print the command
#   make test     everything: C unit tests, Lua tests, fixture parity
#   make bench    benchmarks (never part of the tests)
#   make demo     segment a bundled image

CC      ?= cc
ARCH    := $(shell gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
# The OpenMP build of OpenBLAS shares one thread pool with our OpenMP loops
# (LAPACKE is linked statically: the shared one would load the default,
# pthread OpenBLAS beside it);
# two pools spinning on two cores cost 2-3x (see DESIGN.md, threads).
BLASDIR := /usr/lib/$(ARCH)/openblas-openmp
CFLAGS  ?= -O3 -march=x86-64-v2 -mtune=native
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -fPIC -fopenmp \
           -Icore -I/usr/include/stb -I/usr/include/luajit-2.1
comma   := ,
BLAS    := $(if $(wildcard $(BLASDIR)/libopenblas.so),-L$(BLASDIR) -Wl$(comma)-rpath$(comma)$(BLASDIR)) -lopenblas
LIBS    := $(BLAS) -l:liblapacke.a -lyaml -lcjson -lm -fopenmp
LUAJIT  := -lluajit-5.1

DEPS_DEB := build-essential luajit libluajit-5.1-dev libopenblas-openmp-dev libopenblas-dev \
            liblapacke-dev libstb-dev libyaml-dev libcjson-dev
DEPS_OPT :=

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

.PHONY: all deps test test-c test-lua bench demo clean

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

build/bench/%: bench/%.c build/libfmseg.so
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< -Lbuild -lfmseg -Wl,-rpath,'$$ORIGIN/..' $(LIBS)

deps:
	@if dpkg -s $(DEPS_DEB) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEPS_DEB) $(DEPS_OPT); \
	else echo "fmseg needs: sudo apt-get install $(DEPS_DEB)"; exit 1; fi

test: deps all $(TEST_BIN)
	@prove --exec 'sh tests/run1' $(TEST_BIN) $(sort $(wildcard tests/lua/test_*.lua))

test-c: all $(TEST_BIN)
	@prove --exec 'sh tests/run1' $(TEST_BIN)

test-lua: all
	@prove --exec 'sh tests/run1' $(sort $(wildcard tests/lua/test_*.lua))

bench: deps all $(BENCH_BIN)
	@for b in $(BENCH_BIN); do echo "== $$b"; $$b || exit 1; done
	@for b in bench/*.lua; do [ -f "$$b" ] || continue; echo "== $$b"; ./fmseg run $$b || exit 1; done
	@for py in python3 /usr/bin/python3; do if $$py -c 'import torch' 2>/dev/null; then \
	  echo "== bench/torch_vit.py ($$py)"; OMP_WAIT_POLICY=passive $$py bench/torch_vit.py; break; fi; done

demo: deps all
	./fmseg demo

clean:
	rm -rf build fmseg
