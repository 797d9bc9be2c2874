# engine/cuda/cuda.mk - the CUDA backend's build, included by the Makefile.
#
# 1. Emulation tests (part of `make all`, run by tests/run.sh): our kernels
#    (kernels/*_cuda.cu) compiled as C++ by g++ against the fiber emulation of
#    CUDA in tests/cuda/emu/cuda_emu.h, with AddressSanitizer, and linked into
#    build/tests/test_cuda_emu_* with the CPU library as the reference
#    (test_cuda_emu_policy instead calls build/libfsdp_cuda_emu.so, as Lua does).
# 2. build/libfsdp_cuda_emu.so (part of `make all`): the CUDA backend as
#    Lua loads it (engine/cuda/*.cu but NCCL, our kernels, and
#    tests/cuda/emu/emu_backend.cc in place of cuBLASLt, cuDNN and NCCL),
#    compiled by g++ against the same emulation, with device memory in a
#    guarded arena. FSDP_CUDA_LIB=build/libfsdp_cuda_emu.so makes
#    `--device cuda` run on the CPU: the tests of the Lua CUDA path use it.
# 3. build/libfsdp_cuda.so (`make cuda`): every kernels/*.cu (ours, cuBLASLt
#    GEMM, cuDNN attention) and engine/cuda/*.cu, by nvcc with warnings as
#    errors for sm_80 and sm_90a, linked against libfsdp and the CUDA
#    libraries. libfsdp itself never needs CUDA. `make test` builds it when
#    nvcc is installed; `make test-cuda` runs tests/cuda (skipped without GPU).

CXX           ?= g++
CUDA_EMU_SRC  := $(wildcard kernels/*_cuda.cu)
CUDA_EMU_OBJ  := $(patsubst %.cu,$(BUILD)/emu/%.o,$(CUDA_EMU_SRC))
EMU_TEST_SRC  := $(wildcard tests/c/test_cuda_emu_*.cc)
EMU_TEST_BIN  := $(patsubst tests/c/%.cc,$(BUILD)/tests/%,$(EMU_TEST_SRC))
EMU_CXXFLAGS  := $(OPT) $(ARCH) -g -std=gnu++17 $(WARN) -fsanitize=address -fno-omit-frame-pointer \
                 -DFSDP_EMULATE_CUDA -Itests/cuda/emu -Iengine/include -Iengine -Ikernels -Itests/c
CUDA_HEADERS  := $(HEADERS) $(wildcard kernels/*.cuh engine/cuda/*.cuh) tests/cuda/emu/cuda_emu.h \
                 tests/c/check.h

EMU_LIB_SRC   := $(CUDA_EMU_SRC) $(filter-out %nccl.cu %nccl_cuda.cu,$(wildcard engine/cuda/*.cu)) \
                 tests/cuda/emu/emu_backend.cc
EMU_LIB_OBJ   := $(patsubst %,$(BUILD)/emu-lib/%.o,$(basename $(EMU_LIB_SRC)))
EMU_LIB_FLAGS := -O2 -g -fPIC -std=gnu++17 $(WARN) -DFSDP_EMULATE_CUDA -DFSDP_EMU_DEVICE_ARENA \
                 -Itests/cuda/emu -Iengine/include -Iengine -Ikernels

CUDA_HOME     ?= /usr/local/cuda
NVCC          ?= $(CUDA_HOME)/bin/nvcc
CUDA_ARCH     ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a
cuda_comma    := ,
cuda_space    := $(subst ,, )
NVCCFLAGS     := -std=c++17 -O3 -g -Xcompiler -fPIC -Werror all-warnings \
                 -Xcompiler $(subst $(cuda_space),$(cuda_comma),$(strip $(WARN))) $(CUDA_ARCH) \
                 -Iengine/include -Iengine -Ikernels
CUDA_SRC      := $(wildcard kernels/*.cu engine/cuda/*.cu)
CUDA_OBJ      := $(patsubst %.cu,$(BUILD)/cuda/%.o,$(CUDA_SRC))
CUDA_LIBS     := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublasLt -lcudnn -lnccl
CUDA_TEST_SRC := $(wildcard tests/cuda/test_*.c)
CUDA_TEST_BIN := $(patsubst tests/cuda/%.c,$(BUILD)/cuda-tests/%,$(CUDA_TEST_SRC))
CUDA_BENCH    := $(patsubst bench/%.c,$(BUILD)/%,$(wildcard bench/gpu_*.c))

.PHONY: cuda test-cuda cuda-if-nvcc

DEB_PKGS += g++

all: $(EMU_TEST_BIN) $(BUILD)/libfsdp_cuda_emu.so
test: cuda-if-nvcc

$(BUILD)/emu/%.o: %.cu $(CUDA_HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -x c++ -c $< -o $@

$(BUILD)/tests/test_cuda_emu_%: tests/c/test_cuda_emu_%.cc $(CUDA_EMU_OBJ) $(CUDA_HEADERS) $(BUILD)/libfsdp.so
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) $< $(CUDA_EMU_OBJ) -o $@ -L$(BUILD) -Wl,-rpath,'$$ORIGIN/..' -lfsdp

# the policy test calls the emulated backend library as Lua does (no ASan:
# the library is not instrumented)
$(BUILD)/tests/test_cuda_emu_policy: tests/c/test_cuda_emu_policy.cc tests/c/check.h $(HEADERS) \
		$(BUILD)/libfsdp_cuda_emu.so
	@mkdir -p $(dir $@)
	$(CXX) $(OPT) $(ARCH) -g -std=gnu++17 $(WARN) -Iengine/include -Itests/c $< -o $@ -L$(BUILD) \
		-Wl,-rpath,'$$ORIGIN/..' -lfsdp_cuda_emu -lfsdp

$(BUILD)/emu-lib/%.o: %.cu $(CUDA_HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_LIB_FLAGS) -x c++ -c $< -o $@

$(BUILD)/emu-lib/%.o: %.cc $(CUDA_HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_LIB_FLAGS) -c $< -o $@

$(BUILD)/libfsdp_cuda_emu.so: $(EMU_LIB_OBJ) $(BUILD)/libfsdp.so
	$(CXX) -shared -o $@ $(EMU_LIB_OBJ) -L$(BUILD) -Wl,-rpath,'$$ORIGIN' -lfsdp $(LDLIBS)

$(BUILD)/cuda/%.o: %.cu $(CUDA_HEADERS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/libfsdp_cuda.so: $(CUDA_OBJ) $(BUILD)/libfsdp.so
	$(CXX) -shared -o $@ $(CUDA_OBJ) -L$(BUILD) -Wl,-rpath,'$$ORIGIN' -lfsdp $(CUDA_LIBS)

# GPU tests (tests/cuda/test_*.c) and benchmarks (bench/gpu_*.c) against both libraries
$(BUILD)/cuda-tests/%: tests/cuda/%.c tests/c/check.h $(BUILD)/libfsdp_cuda.so
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/c $< -o $@ -L$(BUILD) -Wl,-rpath,'$$ORIGIN/..' -lfsdp_cuda -lfsdp $(LDLIBS)

$(BUILD)/gpu_%: bench/gpu_%.c $(BUILD)/libfsdp_cuda.so
	$(CC) $(CFLAGS) $< -o $@ -L$(BUILD) -Wl,-rpath,'$$ORIGIN' -lfsdp_cuda -lfsdp $(LDLIBS)

cuda: all $(BUILD)/libfsdp_cuda.so $(CUDA_TEST_BIN) $(CUDA_BENCH)

# on a machine without a GPU the tests say "skipped: no GPU" and exit 0
test-cuda: cuda
	bash tests/cuda/run.sh

cuda-if-nvcc:
	@if [ -x "$(NVCC)" ]; then $(MAKE) --no-print-directory cuda; \
	else echo "cuda: $(NVCC) not found: the CUDA backend is not built"; fi

# keep the objects between builds (make would delete them as intermediates)
.SECONDARY: $(CUDA_EMU_OBJ) $(CUDA_OBJ) $(EMU_LIB_OBJ)
