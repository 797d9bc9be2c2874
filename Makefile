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

.PHONY: all deps test test-c test-lua demo bench clean check-deps test-interop deps-interop

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
	$(MAKE) all
	bash tests/run.sh

demo: deps
	$(MAKE) all
	$(BUILD)/fsdp-lua recipes/train_mingpt.lua --max-steps 300

bench: deps-bench
	$(MAKE) all
	bash bench/run.sh

# transformers loads our exports and gives our logits (Python only here:
# Debian's torch + transformers from PyPI; not part of `make test`)
deps-interop: deps-bench
	@/usr/bin/python3 -c 'import transformers' 2>/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq python3-pip >/dev/null; \
	  $$SUDO /usr/bin/python3 -m pip install -q --break-system-packages 'transformers==4.49.0' safetensors; }

test-interop: deps-interop
	$(MAKE) all
	rm -rf $(BUILD)/interop && FSDP_EXPORT_TEST_DIR=$(CURDIR)/$(BUILD)/interop $(BUILD)/fsdp-lua tests/lua/test_export.lua
	FSDP_EXPORT_TEST_DIR=$(CURDIR)/$(BUILD)/interop /usr/bin/python3 tests/interop/check_export.py

clean:
	rm -rf $(BUILD)

# the CUDA backend and the emulation tests of its kernels
include engine/cuda/cuda.mk
