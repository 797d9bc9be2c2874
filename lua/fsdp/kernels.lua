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
--
-- Compute dtype (set_compute_dtype('bf16' | 'f16'), what PyTorch FSDP's
-- MixedPrecision(param_dtype=bf16) does to a module's math): on the GPU the
-- GEMMs then run in that dtype on the tensor cores (cuBLASLt, f32
-- accumulation) and attention through cuDNN's flash SDPA graph (our f32
-- kernel when cuDNN declines a shape, or with a sliding window). Tensors
-- stay f32 between ops: operands are cast down into scratch before the
-- call, results cast up after (gradients added in f32), so every other op,
-- the tape and the optimizer are unchanged.
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
local ERR_UNSUPPORTED = C.FSDP_ERR_UNSUPPORTED

-- installs lib (the ffi namespace of libfsdp_cuda) as the cuda backend of
-- device (its scratch memory comes from there)
function M.install_cuda(lib, device)
   local stream = nil -- the default stream; fsdp_cuda_set_stream keeps copies on it too
   local F32 = 0
   device = device or 0
   cuda = setmetatable({lib = lib, device = device, compute_dtype = false}, {__index = function(t, name)
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
   -- scratch for the compute-dtype path: stream-ordered, so freeing right
   -- after queueing the kernels that use it is safe
   local scratch_list = {}
   local function alloc(bytes)
      local p = lib.fsdp_cuda_alloc(device, bytes, stream)
      if p == nil then error('kernels: ' .. bind.last_error(), 0) end
      scratch_list[#scratch_list + 1] = p
      return p
   end
   local function release()
      for i = #scratch_list, 1, -1 do lib.fsdp_cuda_free(scratch_list[i]); scratch_list[i] = nil end
   end
   local function ok(rc)
      if rc ~= 0 then release(); error(bind.last_error(), 0) end
   end
   local function down(src, n, dt) -- f32 -> dt scratch
      local p = alloc(n * 2)
      ok(lib.fsdp_cast_cuda(p, dt, src, F32, n, stream))
      return p
   end
   local function zeros(n)
      local p = alloc(n * 2)
      ok(lib.fsdp_cuda_memset(p, 0, n * 2, stream))
      return p
   end
   local function up(dst, src, n, dt, add) -- dt scratch -> f32 (dst = or dst +=)
      if not add then return ok(lib.fsdp_cast_cuda(dst, F32, src, dt, n, stream)) end
      local tmp = alloc(n * 4)
      ok(lib.fsdp_cast_cuda(tmp, F32, src, dt, n, stream))
      ok(lib.fsdp_axpy_cuda(dst, 1, tmp, n, stream))
   end
   -- runs f with the scratch released afterwards, errors included; f returns a status
   local function with_scratch(f, ...)
      local okp, rc = pcall(f, ...)
      release()
      if not okp then error(rc, 0) end
      return rc
   end

   local function matmul_forward_half(dt, out, a, b, bias, m, n, k, ta, tb, acc)
      local ah, bh = down(a, m * k, dt), down(b, k * n, dt)
      local biash = bias ~= nil and down(bias, n, dt) or nil
      local oh = alloc(m * n * 2)
      local rc = lib.fsdp_matmul_forward_cuda(oh, nil, ah, bh, biash, m, n, k, ta, tb, 0, 0, dt, stream)
      if rc ~= 0 then return rc end
      up(out, oh, m * n, dt, acc ~= 0)
      return 0
   end
   local function matmul_backward_half(dt, da, db, dbias, dout, a, b, m, n, k, ta, tb)
      local douth, ah, bh = down(dout, m * n, dt), down(a, m * k, dt), down(b, k * n, dt)
      local dah = da ~= nil and zeros(m * k) or nil
      local dbh = db ~= nil and zeros(k * n) or nil
      local dbiash = dbias ~= nil and zeros(n) or nil
      local rc = lib.fsdp_matmul_backward_cuda(dah, dbh, dbiash, douth, ah, bh, m, n, k, ta, tb, dt, stream)
      if rc ~= 0 then return rc end
      if dah then up(da, dah, m * k, dt, true) end
      if dbh then up(db, dbh, k * n, dt, true) end
      if dbiash then up(dbias, dbiash, n, dt, true) end
      return 0
   end

   function cuda.matmul_forward(out, a, b, bias, m, n, k, ta, tb, acc)
      local dt = cuda.compute_dtype
      if dt then return with_scratch(matmul_forward_half, dt, out, a, b, bias, m, n, k, ta, tb, acc) end
      local rc = lib.fsdp_matmul_forward_cuda(out, nil, a, b, bias, m, n, k, ta, tb, acc, 0, F32, stream)
      if rc == ERR_UNSUPPORTED then
         rc = lib.fsdp_matmul_forward_simt_cuda(out, a, b, bias, m, n, k, ta, tb, acc, stream)
      end
      return rc
   end
   function cuda.matmul_backward(da, db, dbias, dout, a, b, m, n, k, ta, tb)
      local dt = cuda.compute_dtype
      if dt then return with_scratch(matmul_backward_half, dt, da, db, dbias, dout, a, b, m, n, k, ta, tb) end
      local rc = lib.fsdp_matmul_backward_cuda(da, db, dbias, dout, a, b, m, n, k, ta, tb, F32, stream)
      if rc == ERR_UNSUPPORTED then
         rc = lib.fsdp_matmul_backward_simt_cuda(da, db, dbias, dout, a, b, m, n, k, ta, tb, stream)
      end
      return rc
   end
   -- attention: cuDNN in the compute dtype (no window, no soft-capping), else
   -- our f32 kernel.
   -- q/k/v rows are ld apart: a span from the first element to the last
   -- is cast (for a packed qkv, the other columns ride along as zeros in the
   -- gradient scratch and add nothing).
   local function span(B, T, ld, width) return (B * T - 1) * ld + width end
   local function attention_forward_half(dt, out, lse, q, k, v, B, T, NH, NKV, HD, ldq, ldk, ldv, scale)
      local nq, nk, nv = span(B, T, ldq, NH * HD), span(B, T, ldk, NKV * HD), span(B, T, ldv, NKV * HD)
      local qh, kh, vh = down(q, nq, dt), down(k, nk, dt), down(v, nv, dt)
      local oh = alloc(B * T * NH * HD * 2)
      local rc = lib.fsdp_attention_forward_cudnn(oh, lse, qh, kh, vh, B, T, NH, NKV, HD, ldq, ldk, ldv, scale, dt,
                                                  stream)
      if rc ~= 0 then return rc end
      up(out, oh, B * T * NH * HD, dt, false)
      return 0
   end
   local function attention_backward_half(dt, dq, dk, dv, dout, q, k, v, out, lse, B, T, NH, NKV, HD, ldq, ldk,
                                          ldv, scale)
      local nq, nk, nv = span(B, T, ldq, NH * HD), span(B, T, ldk, NKV * HD), span(B, T, ldv, NKV * HD)
      local no = B * T * NH * HD
      local qh, kh, vh = down(q, nq, dt), down(k, nk, dt), down(v, nv, dt)
      local oh, douth = down(out, no, dt), down(dout, no, dt)
      local dqh = dq ~= nil and zeros(nq) or nil
      local dkh = dk ~= nil and zeros(nk) or nil
      local dvh = dv ~= nil and zeros(nv) or nil
      local rc = lib.fsdp_attention_backward_cudnn(dqh, dkh, dvh, douth, qh, kh, vh, oh, lse, B, T, NH, NKV, HD,
                                                   ldq, ldk, ldv, scale, dt, stream)
      if rc ~= 0 then return rc end
      if dqh then up(dq, dqh, nq, dt, true) end
      if dkh then up(dk, dkh, nk, dt, true) end
      if dvh then up(dv, dvh, nv, dt, true) end
      return 0
   end
   -- shapes cuDNN declined, so their backward does not try again
   local declined = {}
   local function shape_key(...) return table.concat({...}, 'x') end
   function cuda.attention_forward(out, lse, q, k, v, B, T, NH, NKV, HD, ldq, ldk, ldv, window, scale, softcap)
      local dt = cuda.compute_dtype
      local key = shape_key(B, T, NH, NKV, HD, ldq, ldk, ldv)
      if dt and window == 0 and softcap == 0 and not declined[key] then
         local rc = with_scratch(attention_forward_half, dt, out, lse, q, k, v, B, T, NH, NKV, HD, ldq, ldk, ldv,
                                 scale)
         if rc ~= ERR_UNSUPPORTED then return rc end
         declined[key] = true
      end
      return lib.fsdp_attention_forward_cuda(out, lse, q, k, v, B, T, NH, NKV, HD, ldq, ldk, ldv, window, scale,
                                             softcap, stream)
   end
   function cuda.attention_backward(dq, dk, dv, dout, q, k, v, out, lse, B, T, NH, NKV, HD, ldq, ldk, ldv, window,
                                    scale, softcap)
      local dt = cuda.compute_dtype
      if dt and window == 0 and softcap == 0 and not declined[shape_key(B, T, NH, NKV, HD, ldq, ldk, ldv)] then
         return with_scratch(attention_backward_half, dt, dq, dk, dv, dout, q, k, v, out, lse, B, T, NH, NKV, HD,
                             ldq, ldk, ldv, scale)
      end
      return lib.fsdp_attention_backward_cuda(dq, dk, dv, dout, q, k, v, out, lse, B, T, NH, NKV, HD, ldq, ldk, ldv,
                                              window, scale, softcap, stream)
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

-- GEMMs and attention on the GPU in dtype ('bf16' or 'f16'); nil or 'f32':
-- in f32 (see the top of this file). The CPU backend always computes in f32.
function M.set_compute_dtype(dtype)
   if not cuda then error('kernels: set_compute_dtype needs the CUDA backend', 2) end
   local codes = {bf16 = 1, f16 = 2}
   if dtype ~= nil and dtype ~= 'f32' and not codes[dtype] then
      error("kernels: compute dtype must be f32, bf16 or f16, got '" .. tostring(dtype) .. "'", 2)
   end
   cuda.compute_dtype = codes[dtype] or false
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
