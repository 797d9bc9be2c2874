-- fsdp.kernels: the kernels of each backend behind one calling convention,
-- so an op is written once and runs where its tensors live.
--
--   local K = kernels.of(x)            -- x's backend (raises if not loaded)
--   K.rmsnorm_forward(out, rstd, inp, w, rows, D, eps)
--
-- Names and arguments are those of the CPU kernels (engine/include/fsdp.h)
-- without the _cpu suffix. The cuda table calls the same-named _cuda entry
-- point of build/libfsdp_cuda.so with the backend's stream appended; the
-- special case is sumsq(x), which returns a Lua number on both (the device
-- writes a double that is read back; sumsq_many reads many at once).
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

   -- sumsq_read: device doubles the sums are written to, and their host copy
   local slots, nslots, host = nil, 0, nil
   local function reserve(n)
      if n <= nslots then return end
      if slots ~= nil then lib.fsdp_cuda_free(slots) end
      slots = ffi.cast('double*', lib.fsdp_cuda_alloc(cuda.device, 8 * n, stream))
      if slots == nil then nslots = 0; error('sumsq: ' .. bind.last_error(), 3) end
      host, nslots = ffi.new('double[?]', n), n
   end
   -- the sums of squares of the device tensors xs and the values of the
   -- one-element f32 device tensors vals, with one read (one host
   -- synchronisation) for all of them
   function cuda.sumsq_read(xs, vals)
      local nx, n = #xs, #xs + #vals
      reserve(math.max(n, 1))
      for i, x in ipairs(xs) do bind.check(lib.fsdp_sumsq_cuda(slots + i - 1, x:ptr(), x:numel(), stream), 'sumsq') end
      for j, v in ipairs(vals) do -- the f32 into the first 4 bytes of its slot (a device copy)
         bind.check(lib.fsdp_cuda_memcpy(slots + nx + j - 1, v:ptr(), 4, stream), 'sumsq')
      end
      bind.check(lib.fsdp_cuda_read(host, slots, 8 * n, stream), 'sumsq')
      local sums, out = {}, {}
      for i = 1, nx do sums[i] = tonumber(host[i - 1]) end
      for j = 1, #vals do out[j] = tonumber(ffi.cast('float*', host + nx + j - 1)[0]) end
      return sums, out
   end
   function cuda.sumsq(x) return cuda.sumsq_read({x}, {})[1] end
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

-- The sums of squares of the contiguous f32 tensors in list (on any
-- devices) and the values of the one-element f32 tensors in values
-- (optional), as two tables of Lua numbers. What lives on the GPU comes back
-- in one read: a model's gradient norm (one sum per unit) and its loss cost
-- one host synchronisation, not one per tensor.
function M.sumsq_many(list, values)
   values = values or {}
   local sums, vals, dx, dxi, dv, dvi = {}, {}, {}, {}, {}, {}
   for i, x in ipairs(list) do
      if not x:is_contiguous() then error('kernels.sumsq_many: tensor ' .. i .. ' is not contiguous', 2) end
      if x.device < 0 then sums[i] = M.cpu.sumsq(x) else local k = #dx + 1; dx[k], dxi[k] = x, i end
   end
   for j, v in ipairs(values) do
      if v:numel() ~= 1 or v.dtype ~= 'f32' then
         error('kernels.sumsq_many: value ' .. j .. ' is not a one-element f32 tensor', 2)
      end
      if v.device < 0 then vals[j] = v:item() else local k = #dv + 1; dv[k], dvi[k] = v, j end
   end
   if #dx + #dv > 0 then
      local s, v = M.for_device((dx[1] or dv[1]).device).sumsq_read(dx, dv)
      for k, i in ipairs(dxi) do sums[i] = s[k] end
      for k, j in ipairs(dvi) do vals[j] = v[k] end
   end
   return sums, vals
end

return M
