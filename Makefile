# fsdp-lua build. `make deps` installs the Debian packages, `make` builds
# build/libfsdp.so and build/fsdp-lua, `make test` runs every test.
#
# Sources are found by wildcard: engine/*.c and kernels/*_cpu.c make the
# library, tests/c/test_*.c each become a test binary.

CC       ?= gcc
ARCH     ?= -march=native
OPT      ?= -O3
WARN     := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wno-sign-compare
CFLAGS   += $(OPT) $(ARCH) -g -std=gnu11 -fPIC -fvisibility=hidden -fopenmp $(WARN) -Iengine/include -Iengine -Ikernels \
            -I/usr/include/x86_64-linux-gnu/openblas-openmp -I/usr/include/luajit-2.1 \
            -I/usr/include/x86_64-linux-gnu/mpich
LDLIBS   := -L/usr/lib/x86_64-linux-gnu/openblas-openmp -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -lmpich -ljansson -lpcre2-8 -lz -lm -lpthread
BUILD    := build

LIB_SRC  := $(wildcard engine/*.c) $(wildcard kernels/*_cpu.c)
LIB_OBJ  := $(patsubst %.c,$(BUILD)/obj/%.o,$(LIB_SRC))
TEST_SRC := $(wildcard tests/c/test_*.c)
TEST_BIN := $(patsubst tests/c/%.c,$(BUILD)/tests/%,$(TEST_SRC))
# multi-rank C programs, run under mpiexec by tests/dist/*.sh
DIST_SRC := $(wildcard tests/c/dist_*.c)
DIST_BIN := $(patsubst tests/c/%.c,$(BUILD)/tests/%,$(DIST_SRC))
HEADERS  := $(wildcard engine/include/*.h engine/*.h kernels/*.h)

.PHONY: all deps test test-c test-lua demo bench bench-venv vec-report clean check-deps test-interop deps-interop venv

all: $(BUILD)/libfsdp.so $(BUILD)/fsdp-lua $(BUILD)/fsdp_cdef.h $(TEST_BIN) $(DIST_BIN)

$(BUILD)/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# Built with -fvisibility=hidden: the library exports what fsdp.h declares
# (and the backend interface of engine/comm_ops.h and engine/internal.h, for
# libfsdp_cuda); tests/lua/test_exports.lua checks it with nm.
$(BUILD)/libfsdp.so: $(LIB_OBJ)
	$(CC) -shared -fopenmp -Wl,-z,nodelete -o $@ $^ $(LDLIBS)

# The C tests link the objects themselves, so they may test internals too.
$(BUILD)/libfsdp.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

# The Lua cdefs come from the public header, preprocessed; never hand-copied.
$(BUILD)/fsdp_cdef.h: engine/include/fsdp.h
	@mkdir -p $(BUILD)
	$(CC) -E -P -DFSDP_CDEF engine/include/fsdp.h > $@

$(BUILD)/fsdp-lua: launch/fsdp-lua.c
	@mkdir -p $(BUILD)
	$(CC) $(OPT) -g -std=gnu11 $(WARN) -I/usr/include/luajit-2.1 $< -o $@ -lluajit-5.1 -lm -ldl

$(BUILD)/tests/%: tests/c/%.c tests/c/check.h $(BUILD)/libfsdp.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/c $< -o $@ $(BUILD)/libfsdp.a $(LDLIBS)

# Debian packages for the build and the tests; idempotent, installs only what
# is missing (root or sudo needed then).
DEB_PKGS := gcc make luajit libluajit-5.1-dev libopenblas0-openmp libopenblas-openmp-dev \
            mpich libmpich-dev libjansson-dev zlib1g-dev libreadline-dev libpcre2-dev fortunes procps gzip
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	else echo "deps: all Debian packages present"; fi

# the benchmark peer (PyTorch eager, Debian's build)
deps-bench: deps
	@dpkg -s python3-torch libjemalloc2 >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-torch libjemalloc2 >/dev/null; }

test: deps
	$(MAKE) all asan
	bash tests/run.sh

demo: deps
	$(MAKE) all
	$(BUILD)/fsdp-lua recipes/train_mingpt.lua --max-steps 300

# the current torch from PyPI for the peer bench: /work/venv when it is
# there, else a venv of our own under build/ (CPU wheels)
BENCH_VENV ?= $(if $(wildcard /work/venv/bin/python),/work/venv,$(BUILD)/venv)
bench-venv:
	@if $(BENCH_VENV)/bin/python -c 'import torch, transformers' 2>/dev/null; then \
	  echo "bench-venv: $(BENCH_VENV) has torch and transformers"; \
	else \
	  python3 -m venv $(BUILD)/venv && \
	  $(BUILD)/venv/bin/pip install -q --index-url https://download.pytorch.org/whl/cpu torch && \
	  $(BUILD)/venv/bin/pip install -q transformers; \
	fi

bench: deps-bench bench-venv
	$(MAKE) all
	VENV=$(BENCH_VENV) bash bench/run.sh

# GCC's vectorisation verdict on the loops of the hot CPU kernels (every
# loop there should say "loop vectorized")
VEC_KERNELS := kernels/adamw_cpu.c kernels/sumsq_cpu.c kernels/crossentropy_cpu.c kernels/elementwise_cpu.c \
               kernels/activation_cpu.c kernels/layernorm_cpu.c kernels/rmsnorm_cpu.c
vec-report:
	@for f in $(VEC_KERNELS); do \
	  $(CC) $(CFLAGS) -fopt-info-vec-optimized-missed -c $$f -o /dev/null 2>&1 | \
	    grep -E "optimized: loop vectorized|missed: couldn't vectorize loop|missed: not vectorized: [a-z]" | sort -u; \
	done

# transformers loads our exports and gives our logits, with each version we
# read: 4.49 (Debian's torch 1.13 + transformers from PyPI) and the current
# 5.x (a venv: INTEROP_VENV, by default /work/venv where it exists, else one
# `make venv` makes under build/; torch's PyPI wheel runs on the CPU). Python
# only here: not part of `make test`.
INTEROP_VENV ?= $(firstword $(wildcard /work/venv) $(BUILD)/venv)
INTEROP_PY   := $(INTEROP_VENV)/bin/python
INTEROP_DIR  := $(CURDIR)/$(BUILD)/interop

deps-interop: deps-bench
	@/usr/bin/python3 -c 'import transformers' 2>/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq python3-pip >/dev/null; \
	  $$SUDO /usr/bin/python3 -m pip install -q --break-system-packages 'transformers==4.49.0' safetensors; }

# a venv with the current torch, transformers and safetensors (also what
# tests/golden/make_hf5_fixtures.py runs with). PYTHONDONTWRITEBYTECODE must
# be empty for ensurepip with some Python builds (pyenv's).
venv: $(BUILD)/venv/bin/python
$(BUILD)/venv/bin/python:
	PYTHONDONTWRITEBYTECODE= python3 -m venv $(BUILD)/venv
	$(BUILD)/venv/bin/python -m pip install -q --upgrade pip
	$(BUILD)/venv/bin/python -m pip install -q torch transformers safetensors

test-interop: deps-interop $(INTEROP_PY)
	$(MAKE) all
	rm -rf $(BUILD)/interop
	FSDP_EXPORT_TEST_DIR=$(INTEROP_DIR) OMP_NUM_THREADS=1 $(BUILD)/fsdp-lua tests/lua/test_export.lua
	OMP_NUM_THREADS=1 $(BUILD)/fsdp-lua tests/interop/export_fixtures.lua $(INTEROP_DIR)/fixtures
	FSDP_EXPORT_TEST_DIR=$(INTEROP_DIR) /usr/bin/python3 tests/interop/check_export.py
	FSDP_EXPORT_TEST_DIR=$(INTEROP_DIR) $(INTEROP_PY) tests/interop/check_export.py
	FSDP_EXPORT_TEST_DIR=$(INTEROP_DIR) OMP_NUM_THREADS=1 $(BUILD)/fsdp-lua tests/lua/test_lora_peft.lua
	FSDP_EXPORT_TEST_DIR=$(INTEROP_DIR) $(INTEROP_PY) tests/interop/check_lora.py

clean:
	rm -rf $(BUILD)

# the CUDA backend and the emulation tests of its kernels
include engine/cuda/cuda.mk

# ---- sanitizers ------------------------------------------------------------
# `make asan`: libfsdp and the C unit tests again under AddressSanitizer and
# UndefinedBehaviorSanitizer in build/asan (-O1; any UB report aborts the
# test); tests/run.sh runs build/asan/tests/test_* as "asan/test_*" after the
# plain ones, and `make test` builds them. Leaks in MPICH's and OpenBLAS's own
# start-up are suppressed by tests/asan.supp, nothing of ours.
ASAN_DIR    := $(BUILD)/asan
SAN_FLAGS   := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
ASAN_CFLAGS := -O1 -g -std=gnu11 -fPIC -fopenmp $(WARN) $(SAN_FLAGS) -Iengine/include -Iengine -Ikernels \
               -I/usr/include/x86_64-linux-gnu/openblas-openmp -I/usr/include/x86_64-linux-gnu/mpich
ASAN_OBJ    := $(patsubst %.c,$(ASAN_DIR)/obj/%.o,$(LIB_SRC))
ASAN_TESTS  := $(patsubst tests/c/%.c,$(ASAN_DIR)/tests/%,$(TEST_SRC))

.PHONY: asan
asan: $(ASAN_TESTS)

$(ASAN_DIR)/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(ASAN_CFLAGS) -c $< -o $@

$(ASAN_DIR)/libfsdp.so: $(ASAN_OBJ)
	$(CC) -shared -fopenmp $(SAN_FLAGS) -o $@ $^ $(LDLIBS)

$(ASAN_DIR)/tests/%: tests/c/%.c tests/c/check.h $(ASAN_DIR)/libfsdp.so
	@mkdir -p $(dir $@)
	$(CC) $(ASAN_CFLAGS) -Itests/c $< -o $@ -L$(ASAN_DIR) -Wl,-rpath,'$$ORIGIN/..' -lfsdp $(LDLIBS)

# ---- fuzzing ---------------------------------------------------------------
# `make fuzz FUZZ_SECONDS=N` builds the fuzz targets of tests/fuzz under
# ASan + UBSan and runs each for N seconds from its seeds (tests/fuzz/seeds/,
# made by tests/fuzz/make_seeds.lua); the corpus grows in build/fuzz/corpus,
# crashing inputs land in build/fuzz/artifacts, and the run fails if any
# target crashed. The engine is clang's libFuzzer when it is installed, else
# tests/fuzz/driver.c (a plain mutation loop, gcc). C targets: safetensors
# headers, tokenizer.json load + encode, token files, prepare's gzip/plain
# reader; Lua targets (LuaJIT embedded, tests/fuzz/fuzz_lua.lua): JSON, YAML,
# index.json + trainer_state.json, prepare's documents, config.json.
FUZZ_SECONDS ?= 60
FUZZ_DIR     := $(BUILD)/fuzz
FUZZ_C       := safetensors tokenizer tokens gzip
FUZZ_LUA     := json yaml ckpt prepare config
FUZZ_ENGINE  ?= $(shell echo 'int LLVMFuzzerTestOneInput(const char*d,unsigned long n){return 0;}' | \
                  clang -x c -fsanitize=fuzzer - -o /dev/null 2>/dev/null && echo libfuzzer || echo driver)
ifeq ($(FUZZ_ENGINE),libfuzzer)
FUZZ_CC      := clang
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_LIBSAN  := $(FUZZ_SAN) -fsanitize=fuzzer-no-link
FUZZ_LINK    := $(FUZZ_SAN) -fsanitize=fuzzer
FUZZ_MAIN    :=
else
FUZZ_CC      := $(CC)
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_LIBSAN  := $(FUZZ_SAN)
FUZZ_LINK    := $(FUZZ_SAN)
FUZZ_MAIN    := tests/fuzz/driver.c
endif
FUZZ_CFLAGS  := -O1 -g -std=gnu11 -D_GNU_SOURCE -Iengine/include -Iengine -Ikernels -Itests/fuzz \
                -I/usr/include/x86_64-linux-gnu/mpich -I/usr/include/luajit-2.1 -Wall -Wno-unused-parameter
FUZZ_SRC     := engine/error.c engine/fileio.c engine/safetensors.c engine/tokenizer.c engine/tokens.c engine/tensor.c engine/alloc.c
FUZZ_OBJ     := $(patsubst %.c,$(FUZZ_DIR)/obj/%.o,$(FUZZ_SRC))
FUZZ_BINS    := $(addprefix $(FUZZ_DIR)/fuzz_,$(FUZZ_C) $(FUZZ_LUA))

.PHONY: fuzz fuzz-build
.SECONDARY: $(FUZZ_OBJ)
fuzz-build: $(FUZZ_BINS) $(BUILD)/libfsdp.so $(BUILD)/fsdp_cdef.h

$(FUZZ_DIR)/obj/%.o: %.c $(HEADERS) $(FUZZ_DIR)/engine
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_LIBSAN) -c $< -o $@

# rebuilt when the engine changes (libfuzzer or driver)
$(FUZZ_DIR)/engine: FORCE
	@mkdir -p $(FUZZ_DIR)
	@echo $(FUZZ_ENGINE) | cmp -s - $@ || echo $(FUZZ_ENGINE) > $@

$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h $(FUZZ_OBJ) $(FUZZ_MAIN)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_LINK) $< $(FUZZ_MAIN) $(FUZZ_OBJ) -o $@ -ljansson -lpcre2-8 -lz -lm -lpthread

$(FUZZ_DIR)/fuzz_json $(FUZZ_DIR)/fuzz_yaml $(FUZZ_DIR)/fuzz_ckpt $(FUZZ_DIR)/fuzz_prepare $(FUZZ_DIR)/fuzz_config: \
		tests/fuzz/fuzz_lua.c $(FUZZ_MAIN) $(FUZZ_DIR)/engine
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_LINK) -DFUZZ_LUA_TARGET='"$(patsubst fuzz_%,%,$(notdir $@))"' \
	    -DFSDP_ROOT_DIR='"$(CURDIR)"' $< $(FUZZ_MAIN) -o $@ -lluajit-5.1 -lm -ldl

fuzz: fuzz-build
	@mkdir -p $(FUZZ_DIR)/artifacts; failed=""; \
	for t in $(FUZZ_C) $(FUZZ_LUA); do \
	  mkdir -p $(FUZZ_DIR)/corpus/$$t; \
	  echo "== fuzz_$$t ($(FUZZ_ENGINE), $(FUZZ_SECONDS) s)"; \
	  if ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 OMP_NUM_THREADS=1 \
	     $(FUZZ_DIR)/fuzz_$$t $(FUZZ_DIR)/corpus/$$t tests/fuzz/seeds/$$t -max_total_time=$(FUZZ_SECONDS) \
	     -timeout=20 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
	     -artifact_prefix=$(FUZZ_DIR)/artifacts/$$t- > $(FUZZ_DIR)/$$t.log 2>&1; then \
	    grep -E 'stat::number_of_executed_units|driver:' $(FUZZ_DIR)/$$t.log | tail -1 | sed 's/^/   /'; \
	    echo "   clean"; \
	  else failed="$$failed $$t"; tail -n 30 $(FUZZ_DIR)/$$t.log | sed 's/^/   | /'; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: FAILED:$$failed (logs and inputs in $(FUZZ_DIR))"; exit 1; fi; \
	echo "fuzz: every target ran $(FUZZ_SECONDS) s clean"

.PHONY: FORCE
FORCE:
