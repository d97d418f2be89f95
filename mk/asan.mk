# asan.mk — the whole test suite under AddressSanitizer + UBSan
# (tests/asan/README.md).
#   make test-asan    builds a shadow root, build/asan/root/ (sanitized
#                     ./fmseg, build/libfmseg.so and build/tests/, the rest of
#                     the tree symlinked in), runs `make test`'s list there
#                     through prove; fails on a failing test or on any
#                     sanitizer report (each one is kept in build/asan/reports/)
#   make asan-build   only the shadow root
# build/obj, build/libfmseg.so and ./fmseg are never touched.

ASAN_CC     ?= gcc
ASAN_ROOT   := build/asan/root
# -O2 -g; every UB check aborts (no recovery), so undefined behaviour fails
# the test that reached it. float-cast-overflow (a float out of an integer's
# range converted to it) is undefined too, but not part of gcc's
# -fsanitize=undefined.
ASAN_FLAGS  := -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all \
               -fno-omit-frame-pointer -g
ASAN_CFLAGS := $(filter-out -O%,$(CFLAGS)) -O2 $(ASAN_FLAGS)
ASAN_OBJ    := $(CORE_SRC:core/%.c=build/asan/obj/%.o)

# Two libraries. The C tests link build/tests/libfmseg.so, every file
# instrumented. ./fmseg (the Lua tests) links build/libfmseg.so, where the
# files with `omp simd` reductions are compiled as the normal build compiles
# them, uninstrumented: GCC inserts its ASan and UBSan checks before it
# vectorizes, and a checked loop is not vectorized, so those sums run in
# another order and differ in the last bits; the method fixtures compare
# labels exactly (tests/lua/test_method_fixtures.lua: diffseg-cityscapes,
# diffseg-cocostuff, diffusion_crossattn-voc fail with nn.c instrumented).
# gcc reorders a float sum only under `omp simd` (or -ffast-math, not used),
# so every other file computes the same bits instrumented or not.
ASAN_SIMD_SRC := $(shell grep -l 'omp simd' $(CORE_SRC))
ASAN_LUA_OBJ  := $(patsubst build/asan/obj/%,build/asan/plain/%,\
                   $(filter $(ASAN_SIMD_SRC:core/%.c=build/asan/obj/%.o),$(ASAN_OBJ))) \
                 $(filter-out $(ASAN_SIMD_SRC:core/%.c=build/asan/obj/%.o),$(ASAN_OBJ))
ASAN_TESTS    := $(TEST_SRC:tests/c/%.c=$(ASAN_ROOT)/build/tests/%)
# Everything at the top of the tree but the build outputs, linked into the
# root: lua/ and core/fmseg.h are read at run time, tests/ and configs/ by
# the tests; ../shared through FMSEG_FIXTURES (tests/asan/run.sh makes it
# absolute).
ASAN_LINKS  := $(filter-out build fmseg libfmseg.so out,$(wildcard * .luacheckrc))

.PHONY: test-asan asan-build asan-links

# The one object that compiles stb's headers gets the checks that
# tests/asan/ubsan.supp suppresses there as recoverable (UBSan can suppress
# no other kind); halt_on_error=1 (tests/asan/run.sh) still stops at any
# such report outside the suppressed header.
build/asan/obj/image.o: ASAN_CFLAGS += -fsanitize-recover=shift-base

build/asan/obj/%.o: core/%.c $(wildcard core/*.h) mk/asan.mk
	@mkdir -p $(@D)
	$(ASAN_CC) $(ASAN_CFLAGS) -c $< -o $@

build/asan/plain/%.o: core/%.c $(wildcard core/*.h) mk/asan.mk
	@mkdir -p $(@D)
	$(ASAN_CC) $(CFLAGS) -g -c $< -o $@

$(ASAN_ROOT)/build/libfmseg.so: $(ASAN_LUA_OBJ)
	@mkdir -p $(@D)
	$(ASAN_CC) $(ASAN_FLAGS) -shared -o $@ $^ $(LIBS)

$(ASAN_ROOT)/build/tests/libfmseg.so: $(ASAN_OBJ)
	@mkdir -p $(@D)
	$(ASAN_CC) $(ASAN_FLAGS) -shared -o $@ $^ $(LIBS)

$(ASAN_ROOT)/fmseg: lua/main.c $(ASAN_ROOT)/build/libfmseg.so mk/asan.mk
	$(ASAN_CC) $(ASAN_CFLAGS) -o $@ lua/main.c -L$(ASAN_ROOT)/build -Wl,--no-as-needed -lfmseg -Wl,--as-needed \
	  -Wl,-rpath,'$$ORIGIN/build' $(LUAJIT) $(LIBS) -Wl,-E

$(ASAN_ROOT)/build/tests/%: tests/c/%.c tests/c/tap.h $(ASAN_ROOT)/build/tests/libfmseg.so mk/asan.mk
	$(ASAN_CC) $(ASAN_CFLAGS) -Itests/c -o $@ $< -L$(ASAN_ROOT)/build/tests -lfmseg -Wl,-rpath,'$$ORIGIN' $(LIBS)

# The links are made again each time (a new top-level file appears in the
# root, one gone is dropped).
asan-links:
	@mkdir -p $(ASAN_ROOT)
	@find $(ASAN_ROOT) -maxdepth 1 -type l -delete
	@for f in $(ASAN_LINKS); do ln -s ../../../$$f $(ASAN_ROOT)/$$f; done

# The programs the Lua tests start from the root's build/tests (the fault
# shim that tests/lua/test_eval.lua LD_PRELOADs, the hub server): the
# Makefile's own, copied (test helpers, uninstrumented as in `make test`;
# tests/asan/run.sh says why ASan accepts the shim first).
ASAN_HELPERS := $(TEST_HELPERS:%=$(ASAN_ROOT)/%)
$(ASAN_HELPERS): $(ASAN_ROOT)/%: %
	@mkdir -p $(@D)
	cp $< $@

asan-build: asan-links $(ASAN_ROOT)/fmseg $(ASAN_TESTS) $(ASAN_HELPERS)

test-asan: export FMSEG_CACHE = off
test-asan: deps
	@$(MAKE) --no-print-directory asan-build
	@sh tests/asan/run.sh $(ASAN_ROOT) $(TEST_BIN) $(sort $(wildcard tests/lua/test_*.lua))
