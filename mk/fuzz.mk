# fuzz.mk — libFuzzer targets for every parser that reads outside data
# (tests/fuzz/README.md). clang builds the core again with ASan + UBSan into
# build/fuzz/obj (build/obj is gcc's); each target runs from a scratch copy
# of its committed seed corpus, so tests/fuzz/corpus is never written.
#   make fuzz                  every target for FUZZ_TIME seconds (default 60)
#   make fuzz FUZZ_TARGETS=yaml FUZZ_TIME=600
#   make fuzz-smoke            every target for FUZZ_SMOKE_TIME seconds (2):
#                              the corpus, then a few mutations; fails on any
#                              finding (part of `make test` under CI)
#   make fuzz-build            only the binaries (build/fuzz/fuzz_TARGET)
# A finding is saved as build/fuzz/run/TARGET/{crash,leak,timeout,oom}-*;
# replay it with build/fuzz/fuzz_TARGET FILE.

FUZZ_CC         ?= clang
FUZZ_TIME       ?= 60
FUZZ_SMOKE_TIME ?= 2
FUZZ_TIMEOUT    ?= 10
FUZZ_RSS_MB     ?= 2048
# OpenMP is left out (its pragmas are ignored): one thread keeps each run
# deterministic, and clang's libomp would meet OpenBLAS's libgomp.
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer \
                -fsanitize=address,undefined -fno-sanitize-recover=all \
                -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas \
                -Icore -I/usr/include/stb -I/usr/include/luajit-2.1
FUZZ_LIBS    := $(filter-out -fopenmp,$(LIBS)) -lgomp

FUZZ_C_TARGETS   := safetensors yaml image png_indices palette_png rle_string rle_roundtrip tiff matfile
FUZZ_LUA_TARGETS := json hf_index yaml_config set_override tokenizer classes voc_xml pickle
FUZZ_ALL         := $(FUZZ_C_TARGETS) $(FUZZ_LUA_TARGETS)
FUZZ_TARGETS     ?= $(FUZZ_ALL)

# Longest input per target (bytes): big enough for every seed and for the
# structure the parser has, small enough to keep executions fast.
FUZZ_MAXLEN_safetensors   := 16384
FUZZ_MAXLEN_yaml          := 8192
FUZZ_MAXLEN_image         := 65536
FUZZ_MAXLEN_png_indices   := 16384
FUZZ_MAXLEN_palette_png   := 8192
FUZZ_MAXLEN_rle_string    := 4096
FUZZ_MAXLEN_rle_roundtrip := 8192
FUZZ_MAXLEN_json          := 4096
FUZZ_MAXLEN_pickle        := 4096
FUZZ_MAXLEN_hf_index      := 4096
FUZZ_MAXLEN_yaml_config   := 4096
FUZZ_MAXLEN_set_override  := 1024
FUZZ_MAXLEN_tokenizer     := 1024
FUZZ_MAXLEN_classes       := 2048
FUZZ_MAXLEN_voc_xml       := 4096
FUZZ_MAXLEN_tiff          := 8192
FUZZ_MAXLEN_matfile       := 8192
FUZZ_MAXLEN_DEFAULT       := 4096

# clang 14 has no _Float16 on x86 (diffseg.c) and leaves the dispatcher of a
# target_clones function local (nn.c's softmax): these two kernel files read
# no outside data and are gcc's, uninstrumented, as in build/obj.
FUZZ_GCC_SRC := core/diffseg.c core/nn.c
FUZZ_OBJ := $(CORE_SRC:core/%.c=build/fuzz/obj/%.o)
# stb_image 2.27 reads a zero-length first IDAT chunk into NULL + 0 with
# memcpy(NULL, p, 0), which C leaves undefined and every libc and compiler
# treat as doing nothing: those two checks are off in image.c.
build/fuzz/obj/image.o: FUZZ_CFLAGS += -fno-sanitize=pointer-overflow,nonnull-attribute

.PHONY: fuzz fuzz-smoke fuzz-build

build/fuzz/obj/%.o: core/%.c $(wildcard core/*.h)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_GCC_SRC:core/%.c=build/fuzz/obj/%.o): build/fuzz/obj/%.o: core/%.c $(wildcard core/*.h)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@

$(FUZZ_C_TARGETS:%=build/fuzz/fuzz_%): build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_util.h $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -Itests/fuzz -o $@ $< $(FUZZ_OBJ) $(FUZZ_LIBS)

# One driver, one binary per Lua target (the name is compiled in, so a saved
# finding replays with no setup); -E exports the core to LuaJIT's ffi.C.
$(FUZZ_LUA_TARGETS:%=build/fuzz/fuzz_%): build/fuzz/fuzz_%: tests/fuzz/fuzz_lua.c tests/fuzz/fuzz_util.h $(FUZZ_OBJ) \
                                          tests/fuzz/targets.lua
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -Itests/fuzz -DFUZZ_LUA_TARGET='"$*"' -o $@ $< \
	  $(FUZZ_OBJ) $(LUAJIT) $(FUZZ_LIBS) -Wl,-E

fuzz-build: $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)

fuzz_maxlen = $(or $(FUZZ_MAXLEN_$(1)),$(FUZZ_MAXLEN_DEFAULT))
fuzz_run = rm -f build/fuzz/summary.txt; fail=0; \
	$(foreach t,$(FUZZ_TARGETS),FUZZ_TIMEOUT=$(FUZZ_TIMEOUT) FUZZ_RSS_MB=$(FUZZ_RSS_MB) \
	  sh tests/fuzz/run.sh $(t) $(1) $(call fuzz_maxlen,$(t)) || fail=1;) \
	echo "== fuzz summary (build/fuzz/summary.txt)"; cat build/fuzz/summary.txt; exit $$fail

fuzz: fuzz-build
	@$(call fuzz_run,$(FUZZ_TIME))

fuzz-smoke: fuzz-build
	@$(call fuzz_run,$(FUZZ_SMOKE_TIME))
