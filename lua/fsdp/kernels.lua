-- fsdp.kernels: the kernels of each backend behind one calling convention,
-- so an op is written once and runs where its tensors live.
--
--   local K = kernels.of(x)            -- x's backend (raises if not loaded)
--   K.rmsnorm_forward(out, rstd, inp, w, rows, D, eps)
--
-- Names and arguments are those of the CPU kernels (engine/include/fsdp.h)
-- without the _cpu suffix. The cuda table calls the same-named _cuda kernel
-- of build/libfsdp_cuda.so with the backend's stream appended, and papers
-- over the few places where the device changes the contract:
--   matmul_*    cuBLASLt in f32 (our SIMT kernel when cuBLASLt says a shape
--               is unsupported);
--   attention_* the fallback kernel (cuDNN's SDPA graph is bf16/f16 only,
--               and the ops compute in f32);
--   sumsq(x)    returns a Lua number on both (the device writes a double
--               that is copied back).
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
local ERR_UNSUPPORTED = 5

-- installs lib (the ffi namespace of libfsdp_cuda) as the cuda backend
function M.install_cuda(lib)
   local stream = nil -- the default stream; fsdp_cuda_set_stream keeps copies on it too
   local F32 = 0
   cuda = setmetatable({lib = lib}, {__index = function(t, name)
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
   function cuda.matmul_forward(out, a, b, bias, m, n, k, ta, tb, acc)
      local rc = lib.fsdp_matmul_forward_cuda(out, nil, a, b, bias, m, n, k, ta, tb, acc, 0, F32, stream)
      if rc == ERR_UNSUPPORTED then
         rc = lib.fsdp_matmul_forward_simt_cuda(out, a, b, bias, m, n, k, ta, tb, acc, stream)
      end
      return rc
   end
   function cuda.matmul_backward(da, db, dbias, dout, a, b, m, n, k, ta, tb)
      local rc = lib.fsdp_matmul_backward_cuda(da, db, dbias, dout, a, b, m, n, k, ta, tb, F32, stream)
      if rc == ERR_UNSUPPORTED then
         rc = lib.fsdp_matmul_backward_simt_cuda(da, db, dbias, dout, a, b, m, n, k, ta, tb, stream)
      end
      return rc
   end
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
