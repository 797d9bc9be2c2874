-- fsdp.kernels: the kernels of each backend behind one calling convention,
-- so an op is written once and runs where its tensors live.
--
--   local K = kernels.of(x)            -- x's backend (raises if not loaded)
--   K.rmsnorm_forward(out, rstd, inp, w, rows, D, eps)
--
-- Names and arguments are those of the CPU kernels (engine/include/fsdp.h)
-- without the _cpu suffix. The cuda table calls the same-named _cuda entry
-- point of build/libfsdp_cuda.so with the backend's stream appended; the
-- one special case is sumsq(x), which returns a Lua number on both (the
-- device writes a double that is copied back).
--
-- The GPU's mixed-precision policy lives in the CUDA library
-- (engine/cuda/policy_cuda.cu): fsdp_matmul_*_cuda and fsdp_attention_*_cuda
-- take f32 tensors and compute in the compute dtype set here
-- (set_compute_dtype('bf16' | 'f16'), what PyTorch FSDP's
-- MixedPrecision(param_dtype=bf16) does to a module's math): cuBLASLt on the
-- tensor cores and cuDNN's flash SDPA in that dtype, with the f32 kernels
-- as fallbacks. Every other op, the tape and the optimizer are unchanged.
local bind = require 'fsdp.ffi'
local ffi, C = bind.ffi, bind.C

local M = {}

local unpack, select = unpack, select

M.cpu = setmetatable({}, {__index = function(t, name)
   local ok, f = pcall(function() return C['fsdp_' .. name .. '_cpu'] end)
   if not ok then error('kernels: the CPU backend has no kernel ' .. name, 2) end
   t[name] = f
   return f
end})

function M.cpu.sumsq(x) return tonumber(C.fsdp_sumsq_cpu(x:ptr(), x:numel())) end

local cuda -- the cuda table, once a CUDA library is installed

-- installs lib (the ffi namespace of libfsdp_cuda) as the cuda backend of
-- device
function M.install_cuda(lib, device)
   local stream = nil -- the default stream; fsdp_cuda_set_stream keeps copies on it too
   cuda = setmetatable({lib = lib, device = device or 0}, {__index = function(t, name)
      local ok, f = pcall(function() return lib['fsdp_' .. name .. '_cuda'] end)
      if not ok then
         error(string.format('kernels: the CUDA backend has no kernel %s (fsdp_%s_cuda)', name, name), 2)
      end
      -- the same arguments plus the stream, last
      local w = function(...)
         local n = select('#', ...)
         local args = {...}
         args[n + 1] = stream
         return f(unpack(args, 1, n + 1))
      end
      t[name] = w
      return w
   end})

   local scratch, host = nil, ffi.new('double[1]')
   function cuda.sumsq(x)
      if scratch == nil then
         scratch = ffi.cast('double*', lib.fsdp_cuda_alloc(x.device, 8, stream))
         if scratch == nil then error('sumsq: ' .. bind.last_error(), 2) end
      end
      bind.check(lib.fsdp_sumsq_cuda(scratch, x:ptr(), x:numel(), stream), 'sumsq')
      bind.check(lib.fsdp_cuda_memcpy(host, scratch, 8, stream), 'sumsq')
      bind.check(lib.fsdp_cuda_stream_synchronize(stream), 'sumsq')
      return tonumber(host[0])
   end
   return cuda
end

function M.cuda() return cuda end

-- GEMMs and attention on the GPU in dtype ('bf16' or 'f16'); nil or 'f32':
-- in f32 (see the top of this file). The CPU backend always computes in f32.
local COMPUTE_DTYPES = {f32 = C.FSDP_F32, bf16 = C.FSDP_BF16, f16 = C.FSDP_F16}
function M.set_compute_dtype(dtype)
   if not cuda then error('kernels: set_compute_dtype needs the CUDA backend', 2) end
   local code = COMPUTE_DTYPES[dtype or 'f32']
   if not code then
      error("kernels: compute dtype must be f32, bf16 or f16, got '" .. tostring(dtype) .. "'", 2)
   end
   bind.check(cuda.lib.fsdp_cuda_set_compute_dtype(code), 'set_compute_dtype')
end

-- the backend of device (-1: host)
function M.for_device(device)
   if device < 0 then return M.cpu end
   if not cuda then
      error(string.format('cuda:%d tensor, but no CUDA backend is loaded (pick one with --device cuda)',
                          device), 2)
   end
   return cuda
end

-- the backend of tensor x
function M.of(x) return M.for_device(x.device) end

function M.sumsq(x) return M.of(x).sumsq(x) end

return M
