-- fsdp.ops: differentiable operations. Each checks its arguments (errors say
-- which op and which shapes), allocates its result as a step temporary, calls
-- the C kernel, and records its backward on the tape when an input needs a
-- gradient. Backward kernels accumulate into .grad, so a tensor used twice
-- (a residual, a tied weight) sums both contributions.
local bind = require 'fsdp.ffi'
local T = require 'fsdp.tensor'
local AG = require 'fsdp.autograd'
local kernels = require 'fsdp.kernels'
local ffi, check = bind.ffi, bind.check

local M = {}
local needs, grad_of, gp = AG.needs_grad, AG.grad_of, AG.grad_ptr
-- records an op's backward with the output it made: the tape frees both
-- the output and its gradient once the backward ran
local function record(out, fn) AG.record(fn, out) end
local write_grad = AG.write_grad
local shape_str = T.shape_str
local NULL = nil

local function fail(op, fmt, ...)
   error(op .. ': ' .. string.format(fmt, ...), 0)
end

local function want_f32(op, what, t)
   if not T.is_tensor(t) then fail(op, '%s must be a Tensor, got %s', what, type(t)) end
   if t:is_freed() then fail(op, '%s was freed (op results live until the end of the step)', what) end
   if t.dtype ~= 'f32' then fail(op, '%s must be f32, got %s', what, t.dtype) end
   if not t:is_contiguous() then fail(op, '%s must be contiguous', what) end
end

-- a loss's optional denominator (its sum over it instead of the mean)
local function want_denominator(op, d)
   if d ~= nil and not (type(d) == 'number' and d > 0 and d < math.huge) then
      fail(op, 'the denominator must be a positive number, got %s', tostring(d))
   end
end

local function want_i32(op, what, t)
   if not T.is_tensor(t) then fail(op, '%s must be a Tensor of token ids, got %s', what, type(t)) end
   if t.dtype ~= 'i32' then fail(op, '%s must be i32 token ids, got %s', what, t.dtype) end
end

local function with_last(shape, n)
   local s = {unpack(shape)}
   s[#s] = n
   return s
end

local function out_like(shape, dev)
   return T.empty(shape, 'f32', true, dev)
end

-- the backend and device of an op's tensors (nil entries are skipped);
-- tensors on two devices are an error naming both
local function kern(op, first, ...)
   local dev = first.device
   for i = 1, select('#', ...) do
      local t = select(i, ...)
      if t and t.device ~= dev then
         fail(op, 'its tensors are on different devices (%s and %s)', T.device_name(dev), T.device_name(t.device))
      end
   end
   return kernels.for_device(dev), dev
end

local function result(out, ...)
   if needs(...) then out.requires_grad = true; return true end
   return false
end

---------------------------------------------------------------------------
-- linear algebra

-- x[..., K] @ w[N, K]^T (+ b[N]) -> [..., N]   (PyTorch's Linear layout)
function M.linear(x, w, b)
   want_f32('linear', 'input', x); want_f32('linear', 'weight', w)
   local K = x.shape[#x.shape]
   if #w.shape ~= 2 or w.shape[2] ~= K then
      fail('linear', 'input %s has %d features but the weight is %s (out, in)',
           shape_str(x.shape), K, shape_str(w.shape))
   end
   local N = w.shape[1]
   if b then
      want_f32('linear', 'bias', b)
      if b:numel() ~= N then fail('linear', 'bias has %d elements, the weight has %d outputs', b:numel(), N) end
   end
   local rows = x:numel() / K
   local Kn, dev = kern('linear', x, w, b)
   local out = out_like(with_last(x.shape, N), dev)
   check(Kn.matmul_forward(out:ptr(), x:ptr(), w:ptr(), b and b:ptr() or NULL, rows, N, K, 0, 1, 0), 'linear')
   if result(out, x, w, b) then
      record(out, function()
         local g = out.grad
         if not g then return end
         -- dx = g @ w and dw (+)= g^T @ x as products that write a fresh
         -- gradient instead of adding to a zero-filled one
         if x.requires_grad then
            check(write_grad(x, function(dx, acc)
               return Kn.matmul_forward(dx, g:ptr(), w:ptr(), NULL, rows, K, N, 0, 0, acc)
            end), 'linear backward')
         end
         if w.requires_grad then
            check(write_grad(w, function(dw, acc)
               return Kn.matmul_forward(dw, g:ptr(), x:ptr(), NULL, N, K, rows, 1, 0, acc)
            end), 'linear backward')
         end
         if b and b.requires_grad then
            check(Kn.matmul_backward(NULL, NULL, gp(b), g:ptr(), x:ptr(), w:ptr(), rows, N, K, 0, 1),
                  'linear backward')
         end
      end)
   end
   return out
end

-- general matmul of 2-d tensors: op(a) @ op(b)
function M.matmul(a, b, trans_a, trans_b)
   want_f32('matmul', 'a', a); want_f32('matmul', 'b', b)
   if #a.shape ~= 2 or #b.shape ~= 2 then fail('matmul', 'wants 2-d tensors, got %s and %s', shape_str(a.shape), shape_str(b.shape)) end
   local m, k = a.shape[1], a.shape[2]
   if trans_a then m, k = k, m end
   local k2, n = b.shape[1], b.shape[2]
   if trans_b then k2, n = n, k2 end
   if k ~= k2 then fail('matmul', 'inner sizes differ: %s and %s', shape_str(a.shape), shape_str(b.shape)) end
   local ta, tb = trans_a and 1 or 0, trans_b and 1 or 0
   local K, dev = kern('matmul', a, b)
   local out = out_like({m, n}, dev)
   check(K.matmul_forward(out:ptr(), a:ptr(), b:ptr(), NULL, m, n, k, ta, tb, 0), 'matmul')
   if result(out, a, b) then
      record(out, function()
         if not out.grad then return end
         check(K.matmul_backward(gp(a), gp(b), NULL, out.grad:ptr(), a:ptr(), b:ptr(), m, n, k, ta, tb),
               'matmul backward')
      end)
   end
   return out
end

-- A linear layer with a low-rank adapter (LoRA), fused:
-- x[..., K] @ w[N, K]^T (+ b[N]) + scale * (drop(x) @ a[R, K]^T) @ bb[N, R]^T.
-- opts: scale (alpha / r), dropout (rate of the adapter input's dropout,
-- applied only while training: autograd.training()), seed (the mask's: the
-- same seed draws the same mask, as a checkpointed recompute must). A frozen
-- w (requires_grad false) gets no gradient.
function M.lora_linear(x, w, b, a, bb, opts)
   local op = 'lora_linear'
   want_f32(op, 'input', x); want_f32(op, 'weight', w); want_f32(op, 'lora_A', a); want_f32(op, 'lora_B', bb)
   local K = x.shape[#x.shape]
   if #w.shape ~= 2 or w.shape[2] ~= K then
      fail(op, 'input %s has %d features but the weight is %s (out, in)', shape_str(x.shape), K, shape_str(w.shape))
   end
   local N = w.shape[1]
   if #a.shape ~= 2 or a.shape[2] ~= K then fail(op, 'lora_A is %s, wants [r, %d]', shape_str(a.shape), K) end
   local R = a.shape[1]
   if #bb.shape ~= 2 or bb.shape[1] ~= N or bb.shape[2] ~= R then
      fail(op, 'lora_B is %s, wants [%d, %d]', shape_str(bb.shape), N, R)
   end
   if b then
      want_f32(op, 'bias', b)
      if b:numel() ~= N then fail(op, 'bias has %d elements, the weight has %d outputs', b:numel(), N) end
   end
   local scale = opts and opts.scale or 1
   local p = (opts and opts.dropout or 0)
   if not AG.training() then p = 0 end
   local seed = opts and opts.seed or 0
   local rows = x:numel() / K
   local Kn, dev = kern(op, x, w, b, a, bb)
   local out = out_like(with_last(x.shape, N), dev)
   local xa = out_like({rows, R}, dev)
   check(Kn.lora_forward(out:ptr(), xa:ptr(), x:ptr(), w:ptr(), b and b:ptr() or NULL, a:ptr(), bb:ptr(),
                         rows, N, K, R, scale, p, seed), op)
   if result(out, x, w, b, a) or result(out, bb) then
      record(out, function()
         local g = out.grad
         if not g then return end
         check(Kn.lora_backward(gp(x), gp(w), gp(b), gp(a), gp(bb), g:ptr(), x:ptr(), w:ptr(), a:ptr(), bb:ptr(),
                                xa:ptr(), rows, N, K, R, scale, p, seed), op .. ' backward')
      end)
   end
   return out
end

---------------------------------------------------------------------------
-- embeddings and norms

function M.embedding(idx, table_)
   want_i32('embedding', 'indices', idx); want_f32('embedding', 'table', table_)
   if #table_.shape ~= 2 then fail('embedding', 'table must be [vocab, dim], got %s', shape_str(table_.shape)) end
   local V, D = table_.shape[1], table_.shape[2]
   local shape = {unpack(idx.shape)}
   shape[#shape + 1] = D
   local K, dev = kern('embedding', table_, idx)
   local out = out_like(shape, dev)
   local n = idx:numel()
   check(K.embedding_forward(out:ptr(), idx:ptr(), table_:ptr(), n, V, D), 'embedding')
   if result(out, table_) then
      record(out, function()
         if not out.grad then return end
         check(K.embedding_backward(grad_of(table_):ptr(), out.grad:ptr(), idx:ptr(), n, V, D),
               'embedding backward')
      end)
   end
   return out
end

local function check_norm_params(op, x, w, b)
   want_f32(op, 'input', x); want_f32(op, 'weight', w)
   local D = x.shape[#x.shape]
   if w:numel() ~= D then fail(op, 'weight has %d elements but the input %s has %d features', w:numel(), shape_str(x.shape), D) end
   if b then
      want_f32(op, 'bias', b)
      if b:numel() ~= D then fail(op, 'bias has %d elements but the input has %d features', b:numel(), D) end
   end
   return D, x:numel() / D
end

function M.layernorm(x, w, b, eps)
   local D, rows = check_norm_params('layernorm', x, w, b)
   local K, dev = kern('layernorm', x, w, b)
   local out = out_like(x.shape, dev)
   local mean, rstd = out_like({rows}, dev), out_like({rows}, dev)
   check(K.layernorm_forward(out:ptr(), mean:ptr(), rstd:ptr(), x:ptr(), w:ptr(), b and b:ptr() or NULL,
                                      rows, D, eps or 1e-5), 'layernorm')
   if result(out, x, w, b) then
      record(out, function()
         if not out.grad then return end
         check(K.layernorm_backward(gp(x), gp(w), gp(b), out.grad:ptr(), x:ptr(), w:ptr(),
                                             mean:ptr(), rstd:ptr(), rows, D), 'layernorm backward')
      end)
   end
   return out
end

function M.rmsnorm(x, w, eps)
   local D, rows = check_norm_params('rmsnorm', x, w)
   local K, dev = kern('rmsnorm', x, w)
   local out = out_like(x.shape, dev)
   local rstd = out_like({rows}, dev)
   check(K.rmsnorm_forward(out:ptr(), rstd:ptr(), x:ptr(), w:ptr(), rows, D, eps or 1e-6), 'rmsnorm')
   if result(out, x, w) then
      record(out, function()
         if not out.grad then return end
         check(K.rmsnorm_backward(gp(x), gp(w), out.grad:ptr(), x:ptr(), w:ptr(), rstd:ptr(), rows, D),
               'rmsnorm backward')
      end)
   end
   return out
end

---------------------------------------------------------------------------
-- pointwise

local function pointwise(name, fwd, bwd)
   M[name] = function(x)
      want_f32(name, 'input', x)
      local K, dev = kern(name, x)
      local out = out_like(x.shape, dev)
      local n = x:numel()
      check(K[fwd](out:ptr(), x:ptr(), n), name)
      if result(out, x) then
         record(out, function()
            if not out.grad then return end
            check(K[bwd](grad_of(x):ptr(), out.grad:ptr(), x:ptr(), n), name .. ' backward')
         end)
      end
      return out
   end
end
pointwise('gelu', 'gelu_forward', 'gelu_backward')
pointwise('relu', 'relu_forward', 'relu_backward')
pointwise('silu', 'silu_forward', 'silu_backward')

-- soft-capping: cap * tanh(x / cap), cap > 0 (models cap their final logits with it)
function M.softcap(x, cap)
   want_f32('softcap', 'input', x)
   if type(cap) ~= 'number' or not (cap > 0) or cap == math.huge then
      fail('softcap', 'cap must be a positive number, got %s', tostring(cap))
   end
   local K, dev = kern('softcap', x)
   local out = out_like(x.shape, dev)
   local n = x:numel()
   check(K.softcap_forward(out:ptr(), x:ptr(), cap, n), 'softcap')
   if result(out, x) then
      record(out, function()
         if not out.grad then return end
         check(K.softcap_backward(grad_of(x):ptr(), out.grad:ptr(), x:ptr(), cap, n), 'softcap backward')
      end)
   end
   return out
end

local function same_shape(op, a, b)
   want_f32(op, 'a', a); want_f32(op, 'b', b)
   if a:numel() ~= b:numel() or #a.shape ~= #b.shape then
      fail(op, 'shapes differ: %s and %s', shape_str(a.shape), shape_str(b.shape))
   end
   for i = 1, #a.shape do
      if a.shape[i] ~= b.shape[i] then fail(op, 'shapes differ: %s and %s', shape_str(a.shape), shape_str(b.shape)) end
   end
end

-- silu(gate) * up
function M.swiglu(gate, up)
   same_shape('swiglu', gate, up)
   local K, dev = kern('swiglu', gate, up)
   local out = out_like(gate.shape, dev)
   local n = gate:numel()
   check(K.swiglu_forward(out:ptr(), gate:ptr(), up:ptr(), n), 'swiglu')
   if result(out, gate, up) then
      record(out, function()
         if not out.grad then return end
         check(K.swiglu_backward(gp(gate), gp(up), out.grad:ptr(), gate:ptr(), up:ptr(), n), 'swiglu backward')
      end)
   end
   return out
end

function M.add(a, b)
   same_shape('add', a, b)
   local K, dev = kern('add', a, b)
   local out = out_like(a.shape, dev)
   local n = a:numel()
   check(K.add(out:ptr(), a:ptr(), b:ptr(), n), 'add')
   if result(out, a, b) then
      record(out, function()
         local g = out.grad
         if not g then return end
         if a.requires_grad then check(K.axpy(grad_of(a):ptr(), 1, g:ptr(), n), 'add backward') end
         if b.requires_grad then check(K.axpy(grad_of(b):ptr(), 1, g:ptr(), n), 'add backward') end
      end)
   end
   return out
end

function M.mul(a, b)
   same_shape('mul', a, b)
   local K, dev = kern('mul', a, b)
   local out = out_like(a.shape, dev)
   local n = a:numel()
   check(K.mul(out:ptr(), a:ptr(), b:ptr(), n), 'mul')
   if result(out, a, b) then
      record(out, function()
         local g = out.grad
         if not g then return end
         local tmp = out_like(a.shape, dev)
         if a.requires_grad then
            K.mul(tmp:ptr(), g:ptr(), b:ptr(), n)
            K.axpy(grad_of(a):ptr(), 1, tmp:ptr(), n)
         end
         if b.requires_grad then
            K.mul(tmp:ptr(), g:ptr(), a:ptr(), n)
            K.axpy(grad_of(b):ptr(), 1, tmp:ptr(), n)
         end
      end)
   end
   return out
end

function M.scale(x, s)
   want_f32('scale', 'input', x)
   local K, dev = kern('scale', x)
   local out = out_like(x.shape, dev)
   local n = x:numel()
   check(K.scale(out:ptr(), s, x:ptr(), n), 'scale')
   if result(out, x) then
      record(out, function()
         if not out.grad then return end
         check(K.axpy(grad_of(x):ptr(), s, out.grad:ptr(), n), 'scale backward')
      end)
   end
   return out
end

-- sum of all elements -> a one-element tensor
function M.sum(x)
   want_f32('sum', 'input', x)
   local K, dev = kern('sum', x)
   local out = out_like({1}, dev)
   local n = x:numel()
   if dev >= 0 then
      check(K.sum(out:ptr(), x:ptr(), n), 'sum')
   else
      local p, s = x:ptr(), 0
      for i = 0, n - 1 do s = s + p[i] end
      out:ptr()[0] = s
   end
   if result(out, x) then
      record(out, function()
         if not out.grad then return end
         local ones = T.full(x.shape, out.grad:item(), 'f32', dev)
         check(K.axpy(grad_of(x):ptr(), 1, ones:ptr(), n), 'sum backward')
         ones:free()
      end)
   end
   return out
end

function M.mean(x) return M.scale(M.sum(x), 1 / x:numel()) end

-- a differentiable reshape (shares storage; the grad is summed back)
function M.reshape(x, shape)
   local out = x:view(shape, nil, nil, true)
   if result(out, x) then
      record(out, function()
         if not out.grad then return end
         check(kernels.of(x).axpy(grad_of(x):ptr(), 1, out.grad:ptr(), x:numel()), 'reshape backward')
      end)
   end
   return out
end

---------------------------------------------------------------------------
-- attention

-- opts.softcap: 0 (none) or a positive number
local function softcap_of(op, opts)
   local cap = opts.softcap or 0
   if type(cap) ~= 'number' or cap < 0 or cap ~= cap or cap == math.huge then
      fail(op, 'softcap must be 0 (none) or a positive number, got %s', tostring(opts.softcap))
   end
   return cap
end

local function run_attention(op, qp, kp, vp, dq, dk, dv, B, T_, NH, NKV, HD, ldq, ldk, ldv, opts, inputs)
   local window = opts.window or 0
   local scale = opts.scale or 1 / math.sqrt(HD)
   local softcap = softcap_of(op, opts)
   local pos = opts.positions
   local K, dev = kern(op, inputs[1], inputs[2], inputs[3], pos)
   local out = out_like({B, T_, NH * HD}, dev)
   local lse = out_like({B, NH, T_}, dev)
   if pos then
      -- packed samples: each query sees only the keys of its own sample
      want_i32(op, 'positions', pos)
      if pos:numel() ~= B * T_ then
         fail(op, 'positions %s do not match %d sequences of %d', shape_str(pos.shape), B, T_)
      end
      if pos.device >= 0 and not pos.checked_positions then
         -- the device kernels take the positions as they are: check them here
         -- (once for a tensor whose maker vouches for them: checked_positions)
         local h = pos:cpu()
         local ok, err = pcall(check, kernels.cpu.attention_positions_check(h:ptr(), B, T_), op)
         h:free()
         if not ok then error(err, 0) end
      end
      check(K.attention_packed_forward(out:ptr(), lse:ptr(), qp(), kp(), vp(), pos:ptr(), B, T_, NH, NKV, HD,
                                       ldq, ldk, ldv, window, scale, softcap), op)
   else
      check(K.attention_forward(out:ptr(), lse:ptr(), qp(), kp(), vp(), B, T_, NH, NKV, HD,
                                ldq, ldk, ldv, window, scale, softcap), op)
   end
   if result(out, inputs[1], inputs[2], inputs[3]) then
      record(out, function()
         if not out.grad then return end
         if pos then
            check(K.attention_packed_backward(dq(), dk(), dv(), out.grad:ptr(), qp(), kp(), vp(), out:ptr(),
                                              lse:ptr(), pos:ptr(), B, T_, NH, NKV, HD, ldq, ldk, ldv, window,
                                              scale, softcap), op .. ' backward')
         else
            check(K.attention_backward(dq(), dk(), dv(), out.grad:ptr(), qp(), kp(), vp(), out:ptr(),
                                       lse:ptr(), B, T_, NH, NKV, HD, ldq, ldk, ldv, window, scale, softcap),
                  op .. ' backward')
         end
      end)
   end
   return out
end

-- decoding over a KV cache (opts.cache, the slot of opts.layer): stores the
-- new keys and values, attends the new queries over every cached position
local function run_decode(op, qp, kp, vp, B, T_, NH, NKV, HD, ldq, ldk, ldv, opts, inputs)
   local cache = opts.cache
   if needs(inputs[1], inputs[2], inputs[3]) then
      fail(op, 'attention with a KV cache is for generation and has no backward: run it under fsdp.no_grad')
   end
   if opts.layer == nil then fail(op, 'a KV cache needs opts.layer (the attention module whose slot it is)') end
   cache:check(B, T_)
   local K, dev = kern(op, inputs[1], inputs[2], inputs[3])
   local kc, vc = cache:slot(opts.layer, NKV * HD, dev)
   local out = out_like({B, T_, NH * HD}, dev)
   check(K.attention_decode(out:ptr(), kc:ptr(), vc:ptr(), qp(), kp(), vp(), B, T_, cache.pos, cache.max,
                            NH, NKV, HD, ldq, ldk, ldv, opts.window or 0, opts.scale or 1 / math.sqrt(HD),
                            softcap_of(op, opts)), op)
   return out
end

-- Causal self-attention with grouped-query heads, the one attention path of
-- every model, in training and in decoding:
--   attention(q, k, v, opts)      q [B, T, NH*HD], k and v [B, T, NKV*HD]
--   attention(qkv, nil, nil, opts) q, k and v side by side in one
--                                 [B, T, 3*NH*HD] tensor (GPT-2's c_attn)
-- -> [B, T, NH*HD]. opts: n_head, n_kv_head (default n_head), window (0:
-- none; query t sees keys t-window+1 .. t), scale (default 1/sqrt(HD)),
-- softcap (0: none; > 0: every score s = scale q.k becomes softcap *
-- tanh(s / softcap) before the softmax: attention logit soft-capping),
-- positions (i32 [B, T]: several samples packed in a row, each token's
-- position in its own sample, 0 at a sample's start; a query then sees only
-- its sample's keys), cache (an fsdp.kv_cache object: decode, the new
-- positions start at cache.pos) and layer (whose slot of the cache).
function M.attention(q, k, v, opts)
   local op = 'attention'
   local NH = opts.n_head
   local B, T_, HD, NKV, ldq, ldk, ldv, qp, kp, vp, dq, dk, dv, inputs
   local function p(t, off) return function() return t:ptr() + off end end
   local function g(t, off) return function() local x = gp(t); return x and (x + off) or nil end end
   if k == nil and v == nil then -- packed
      want_f32(op, 'qkv', q)
      if #q.shape ~= 3 or q.shape[3] % (3 * NH) ~= 0 then
         fail(op, 'qkv must be [batch, time, 3*heads*head_dim] with %d heads, got %s', NH, shape_str(q.shape))
      end
      B, T_ = q.shape[1], q.shape[2]
      local C3 = q.shape[3]
      local Cc = C3 / 3
      HD, NKV, ldq, ldk, ldv = Cc / NH, NH, C3, C3, C3
      qp, kp, vp, dq, dk, dv = p(q, 0), p(q, Cc), p(q, 2 * Cc), g(q, 0), g(q, Cc), g(q, 2 * Cc)
      inputs = {q}
   else
      want_f32(op, 'q', q); want_f32(op, 'k', k); want_f32(op, 'v', v)
      NKV = opts.n_kv_head or NH
      if #q.shape ~= 3 then fail(op, 'q must be [batch, time, heads*head_dim], got %s', shape_str(q.shape)) end
      B, T_ = q.shape[1], q.shape[2]
      local QC = q.shape[3]
      if QC % NH ~= 0 then fail(op, 'q has %d channels, not a multiple of n_head %d', QC, NH) end
      HD = QC / NH
      for _, pair in ipairs({{'k', k}, {'v', v}}) do
         local t = pair[2]
         if #t.shape ~= 3 or t.shape[1] ~= B or t.shape[2] ~= T_ or t.shape[3] ~= NKV * HD then
            fail(op, '%s is %s but q is %s with %d kv heads of %d', pair[1], shape_str(t.shape), shape_str(q.shape),
                 NKV, HD)
         end
      end
      if NH % NKV ~= 0 then fail(op, 'n_head %d is not a multiple of n_kv_head %d', NH, NKV) end
      ldq, ldk, ldv = NH * HD, NKV * HD, NKV * HD
      qp, kp, vp, dq, dk, dv = p(q, 0), p(k, 0), p(v, 0), g(q, 0), g(k, 0), g(v, 0)
      inputs = {q, k, v}
   end
   if opts.cache then
      if opts.positions then fail(op, 'decoding with a KV cache takes no packed positions') end
      return run_decode(op, qp, kp, vp, B, T_, NH, NKV, HD, ldq, ldk, ldv, opts, inputs)
   end
   return run_attention(op, qp, kp, vp, dq, dk, dv, B, T_, NH, NKV, HD, ldq, ldk, ldv, opts, inputs)
end

-- rotary embedding on x [B, T, NH*HD] with cos/sin [>= T, HD/2] (row p:
-- the rotation of position p). Token t is at position t, or at
-- positions[b, t] when given (i32 [B, T]: packed samples restarting at 0),
-- whose rows are then gathered from the tables first.
function M.rope(x, cos, sin, n_head, positions)
   local op = 'rope'
   want_f32(op, 'input', x)
   local B, T_, Cc = x.shape[1], x.shape[2], x.shape[3]
   if #x.shape ~= 3 or Cc % n_head ~= 0 then fail(op, 'input %s does not split into %d heads', shape_str(x.shape), n_head) end
   local HD = Cc / n_head
   if positions then
      want_i32(op, 'positions', positions)
      if positions:numel() ~= B * T_ then
         fail(op, 'positions %s do not match the input %s', shape_str(positions.shape), shape_str(x.shape))
      end
      -- one table row per token: the kernel then walks B*T rows of one sequence
      local flat = positions:view({B * T_})
      cos, sin = M.gather_rows(cos, flat), M.gather_rows(sin, flat)
      flat:free()
      B, T_ = 1, B * T_
   end
   if cos.shape[1] < T_ or cos:numel() < T_ * HD / 2 then
      fail(op, 'cos/sin tables %s are too short for %d positions of head_dim %d', shape_str(cos.shape), T_, HD)
   end
   local K, dev = kern(op, x, cos, sin)
   local out = out_like(x.shape, dev)
   check(K.rope_forward(out:ptr(), x:ptr(), cos:ptr(), sin:ptr(), B, T_, n_head, HD, Cc), op)
   if result(out, x) then
      record(out, function()
         if not out.grad then return end
         check(K.rope_backward(grad_of(x):ptr(), out.grad:ptr(), cos:ptr(), sin:ptr(), B, T_, n_head, HD, Cc),
               'rope backward')
      end)
   end
   return out
end

---------------------------------------------------------------------------
-- losses

-- softmax cross-entropy over the rows whose target is not ignore_index: their
-- mean, or their sum divided by `denominator` when given (a loss normalised
-- by the count of targets over a whole global batch, which every rank and
-- micro-batch shares)
function M.cross_entropy(logits, targets, ignore_index, denominator)
   local op = 'cross_entropy'
   want_f32(op, 'logits', logits); want_i32(op, 'targets', targets)
   local V = logits.shape[#logits.shape]
   local N = logits:numel() / V
   if targets:numel() ~= N then
      fail(op, 'logits %s have %d rows but targets %s have %d', shape_str(logits.shape), N, shape_str(targets.shape), targets:numel())
   end
   ignore_index = ignore_index or -100
   local K, dev = kern(op, logits, targets)
   local losses, lse = out_like({N}, dev), out_like({N}, dev)
   check(K.crossentropy_forward(losses:ptr(), lse:ptr(), logits:ptr(), targets:ptr(), N, V, ignore_index), op)
   want_denominator(op, denominator)
   -- the mean over the counted rows (or their sum over the denominator),
   -- where the tensors live: the count stays there too, so a device copies
   -- nothing to the host
   local out, count = out_like({1}, dev), T.empty({1}, 'i32', true, dev)
   check(K.crossentropy_mean_forward(out:ptr(), count:ptr(), losses:ptr(), targets:ptr(), N, ignore_index,
                                     denominator or 0), op)
   if result(out, logits) then
      record(out, function()
         if not out.grad then return end
         local dloss = T.zeros({N}, 'f32', nil, dev)
         local ok, err = pcall(function()
            check(K.crossentropy_mean_backward(dloss:ptr(), out.grad:ptr(), count:ptr(), targets:ptr(), N,
                                               ignore_index, denominator or 0), 'cross_entropy backward')
            check(K.crossentropy_backward(grad_of(logits):ptr(), dloss:ptr(), logits:ptr(), lse:ptr(), targets:ptr(),
                                          N, V, ignore_index), 'cross_entropy backward')
         end)
         dloss:free()
         if not ok then error(err, 0) end
      end)
   end
   return out
end


-- A language model's loss from its last hidden states x and the head's
-- weight [V, C] (no bias): on the host, linear_cross_entropy (the [tokens,
-- vocab] logits never whole); on a GPU the unfused linear and
-- cross_entropy, whose row count stays on the device (the chunked form
-- reads the targets and the losses on the host: two synchronisations per
-- step). ignore_index and denominator as cross_entropy's.
function M.lm_loss(x, weight, targets, ignore_index, denominator)
   if x.device >= 0 then return M.cross_entropy(M.linear(x, weight), targets, ignore_index, denominator) end
   return M.linear_cross_entropy(x, weight, targets, ignore_index, {denominator = denominator})
end

-- bytes of logits one chunk of linear_cross_entropy may hold (the default
-- chunk is as many rows as fit)
M.LINEAR_CE_CHUNK_BYTES = 128 * 2^20

-- The LM head and its loss without the [rows, vocab] logits: the mean
-- cross-entropy of x[..., C] @ weight[V, C]^T against targets over the rows
-- whose target is not ignore_index (or their sum over opts.denominator),
-- the same number as cross_entropy(linear(x, weight), targets,
-- ignore_index, opts.denominator). The head's GEMM
-- and the loss run opts.chunk_rows rows at a time (default: the rows whose
-- logits fit in LINEAR_CE_CHUNK_BYTES). With a gradient wanted, each chunk's
-- backward runs right after its forward: the chunk of logits becomes its
-- gradient in place (softmax - onehot), goes into dx's rows (a GEMM) and
-- into dweight (a GEMM adding over the chunks), so backward only scales by
-- d loss / count. Three GEMMs, as unfused; memory: one chunk of logits, dx
-- [rows, C] and dweight [V, C] instead of logits and their gradient. Under
-- fsdp.shard, call it where the head's linear was, inside the model's
-- forward: a sharded unit's parameter gradients are bound only while that
-- unit's backward runs.
function M.linear_cross_entropy(x, weight, targets, ignore_index, opts)
   local op = 'linear_cross_entropy'
   want_f32(op, 'input', x); want_f32(op, 'weight', weight); want_i32(op, 'targets', targets)
   if not targets:is_contiguous() then fail(op, 'targets must be contiguous') end
   local Cc = x.shape[#x.shape]
   if #weight.shape ~= 2 or weight.shape[2] ~= Cc then
      fail(op, 'input %s has %d features but the weight is %s (vocab, features)', shape_str(x.shape), Cc,
           shape_str(weight.shape))
   end
   local V, N = weight.shape[1], x:numel() / Cc
   if targets:numel() ~= N then
      fail(op, 'input %s has %d rows but targets %s have %d', shape_str(x.shape), N, shape_str(targets.shape),
           targets:numel())
   end
   ignore_index = ignore_index or -100
   opts = opts or {}
   local denominator = opts.denominator
   want_denominator(op, denominator)
   local R = opts.chunk_rows or math.max(1, math.floor(M.LINEAR_CE_CHUNK_BYTES / (4 * V)))
   if type(R) ~= 'number' or R < 1 or R ~= math.floor(R) then
      fail(op, 'chunk_rows must be a positive integer, got %s', tostring(opts.chunk_rows))
   end
   R = math.min(R, N)
   local K, dev = kern(op, x, weight, targets)
   -- targets checked and counted on the host (a device copy comes back)
   local ht = targets:cpu()
   local tp, count = ht:ptr(), 0
   for i = 0, N - 1 do
      local t = tp[i]
      if t ~= ignore_index then
         if t < 0 or t >= V then
            if ht ~= targets then ht:free() end
            fail(op, 'targets[%d] = %d is outside [0, %d) and is not ignore_index (%d)', i, t, V, ignore_index)
         end
         count = count + 1
      end
   end
   if ht ~= targets then ht:free() end
   local grad = needs(x, weight)
   local losses = out_like({N}, dev)
   local dx = grad and x.requires_grad and out_like(x.shape, dev) or nil
   local dw = grad and weight.requires_grad and out_like(weight.shape, dev) or nil
   local buf = T.empty({R, V}, 'f32', false, dev)
   local lse = not grad and T.empty({R}, 'f32', false, dev) or nil
   local xp, wp, tgt, lp, bp = x:ptr(), weight:ptr(), targets:ptr(), losses:ptr(), buf:ptr()
   local ok, err = pcall(function()
      for r0 = 0, N - 1, R do
         local r = math.min(R, N - r0)
         -- logits of rows [r0, r0 + r): x_c @ weight^T -> buf [r, V]
         check(K.matmul_forward(bp, xp + r0 * Cc, wp, NULL, r, V, Cc, 0, 1, 0), op)
         if grad then
            -- the losses, and buf becomes d loss_row / d logits
            check(K.crossentropy_inplace(lp + r0, NULL, bp, tgt + r0, r, V, ignore_index), op)
            -- dx rows = buf @ weight: [r, V] @ [V, C]
            if dx then check(K.matmul_forward(dx:ptr() + r0 * Cc, bp, wp, NULL, r, Cc, V, 0, 0, 0), op) end
            -- dweight (+)= buf^T @ x_c: [V, r] @ [r, C], written by the first chunk
            if dw then check(K.matmul_forward(dw:ptr(), bp, xp + r0 * Cc, NULL, V, Cc, r, 1, 0, r0 > 0 and 1 or 0), op) end
         else
            check(K.crossentropy_forward(lp + r0, lse:ptr(), bp, tgt + r0, r, V, ignore_index), op)
         end
      end
   end)
   buf:free()
   if lse then lse:free() end
   if not ok then error(err, 0) end
   -- the mean over the counted rows, on the host (N numbers)
   local hl = losses:cpu()
   local hp, total = hl:ptr(), 0
   for i = 0, N - 1 do total = total + hp[i] end -- ignored rows hold 0
   if hl ~= losses then hl:free() end
   local out = out_like({1}, dev)
   local div = denominator or count
   out:fill(count > 0 and total / div or 0)
   if result(out, x, weight) then
      record(out, function()
         if not out.grad or count == 0 then return end
         local s = out.grad:item() / div
         if dx then
            if not x.grad and x._temp ~= nil then
               -- first gradient of a step temporary: the buffer becomes it
               check(K.scale(dx:ptr(), s, dx:ptr(), dx:numel()), op .. ' backward')
               x.grad, dx = dx, nil
            else
               check(K.axpy(grad_of(x):ptr(), s, dx:ptr(), dx:numel()), op .. ' backward')
            end
         end
         if dw then check(K.axpy(grad_of(weight):ptr(), s, dw:ptr(), dw:numel()), op .. ' backward') end
      end)
   end
   return out
end


---------------------------------------------------------------------------
-- mixture of experts: routing ops (kernels/moe_cpu.c). Rows are the last
-- dimension's vectors: a [B, T, C] tensor is B*T rows of C.

local function rows_of(op, what, x)
   want_f32(op, what, x)
   local Cc = x.shape[#x.shape]
   return x:numel() / Cc, Cc
end

local function want_index(op, what, idx, limit)
   want_i32(op, what, idx)
   if not idx:is_contiguous() then fail(op, '%s must be contiguous', what) end
   if idx:numel() == 0 then fail(op, '%s is empty', what) end
   -- checked on the host before any kernel runs (a device copy comes back)
   local h = idx:cpu()
   local p = h:ptr()
   for i = 0, idx:numel() - 1 do
      if p[i] < 0 or p[i] >= limit then
         local v = p[i]
         if h ~= idx then h:free() end
         fail(op, '%s[%d] = %d is outside [0, %d)', what, i, v, limit)
      end
   end
   if h ~= idx then h:free() end
   return idx:numel()
end

-- rows idx (i32, M of them) of x [..., C] -> [M, C]
function M.gather_rows(x, idx)
   local op = 'gather_rows'
   local N, Cc = rows_of(op, 'input', x)
   local Mr = want_index(op, 'indices', idx, N)
   local K, dev = kern(op, x, idx)
   local out = out_like({Mr, Cc}, dev)
   check(K.gather_rows_forward(out:ptr(), x:ptr(), idx:ptr(), Mr, N, Cc), op)
   if result(out, x) then
      record(out, function()
         if not out.grad then return end
         check(K.gather_rows_backward(grad_of(x):ptr(), out.grad:ptr(), idx:ptr(), Mr, N, Cc),
               op .. ' backward')
      end)
   end
   return out
end

-- base [..., C] with the rows of src [M, C] added to its rows idx (a row
-- named twice gets both) -> a new tensor shaped like base
function M.scatter_add_rows(base, idx, src)
   local op = 'scatter_add_rows'
   local N, Cc = rows_of(op, 'base', base)
   local Ms, Cs = rows_of(op, 'src', src)
   if Cs ~= Cc then fail(op, 'src %s has rows of %d but base %s has rows of %d', shape_str(src.shape), Cs,
                         shape_str(base.shape), Cc) end
   local Mr = want_index(op, 'indices', idx, N)
   if Mr ~= Ms then fail(op, '%d indices for %d rows of src %s', Mr, Ms, shape_str(src.shape)) end
   local K, dev = kern(op, base, idx, src)
   local out = out_like(base.shape, dev)
   out:copy(base)
   check(K.scatter_add_rows_forward(out:ptr(), src:ptr(), idx:ptr(), Mr, N, Cc), op)
   if result(out, base, src) then
      record(out, function()
         local g = out.grad
         if not g then return end
         if base.requires_grad then check(K.axpy(grad_of(base):ptr(), 1, g:ptr(), g:numel()), op .. ' backward') end
         if src.requires_grad then
            check(K.scatter_add_rows_backward(grad_of(src):ptr(), g:ptr(), idx:ptr(), Mr, N, Cc),
                  op .. ' backward')
         end
      end)
   end
   return out
end

-- softmax over the last dimension
function M.softmax(x)
   local op = 'softmax'
   local N, Cc = rows_of(op, 'input', x)
   local K, dev = kern(op, x)
   local out = out_like(x.shape, dev)
   check(K.softmax_forward(out:ptr(), x:ptr(), N, Cc), op)
   if result(out, x) then
      record(out, function()
         if not out.grad then return end
         check(K.softmax_backward(grad_of(x):ptr(), out.grad:ptr(), out:ptr(), N, Cc), op .. ' backward')
      end)
   end
   return out
end

-- every row of x [..., C] times its own factor: s has one element per row
function M.row_scale(x, s)
   local op = 'row_scale'
   local N, Cc = rows_of(op, 'input', x)
   want_f32(op, 'scale', s)
   if s:numel() ~= N then fail(op, 'scale %s has %d elements for the %d rows of %s', shape_str(s.shape), s:numel(),
                               N, shape_str(x.shape)) end
   local K, dev = kern(op, x, s)
   local out = out_like(x.shape, dev)
   check(K.row_scale_forward(out:ptr(), x:ptr(), s:ptr(), N, Cc), op)
   if result(out, x, s) then
      record(out, function()
         if not out.grad then return end
         check(K.row_scale_backward(gp(x), gp(s), out.grad:ptr(), x:ptr(), s:ptr(), N, Cc), op .. ' backward')
      end)
   end
   return out
end

-- the k largest along the last dimension, descending: values (the gradient
-- flows back to the chosen elements) and their positions (i32, 0-based; no
-- gradient), both shaped [..., k]
function M.topk(x, k)
   local op = 'topk'
   local N, Cc = rows_of(op, 'input', x)
   if type(k) ~= 'number' or k < 1 or k > Cc or k ~= math.floor(k) then
      fail(op, 'k = %s must be an integer in [1, %d]', tostring(k), Cc)
   end
   local shape = with_last(x.shape, k)
   local K, dev = kern(op, x)
   local values, indices = out_like(shape, dev), T.empty(shape, 'i32', true, dev)
   check(K.topk_forward(values:ptr(), indices:ptr(), x:ptr(), N, Cc, k), op)
   if result(values, x) then
      record(values, function()
         if not values.grad then return end
         check(K.topk_backward(grad_of(x):ptr(), values.grad:ptr(), indices:ptr(), N, Cc, k), op .. ' backward')
      end)
   end
   return values, indices
end

-- embedding lookup whose row padding_idx receives no gradient from this
-- lookup (torch's nn.Embedding(padding_idx=...)); the row's other gradient
-- contributions (a tied output head) are kept
function M.embedding_padded(idx, table_, padding_idx)
   if padding_idx == nil then return M.embedding(idx, table_) end
   local op = 'embedding'
   want_i32(op, 'indices', idx); want_f32(op, 'table', table_)
   if #table_.shape ~= 2 then fail(op, 'table must be [vocab, dim], got %s', shape_str(table_.shape)) end
   local V, D = table_.shape[1], table_.shape[2]
   if padding_idx < 0 or padding_idx >= V then fail(op, 'padding_idx %d is outside [0, %d)', padding_idx, V) end
   local shape = {unpack(idx.shape)}
   shape[#shape + 1] = D
   local K, dev = kern(op, table_, idx)
   local out = out_like(shape, dev)
   local n = idx:numel()
   check(K.embedding_forward(out:ptr(), idx:ptr(), table_:ptr(), n, V, D), op)
   if result(out, table_) then
      record(out, function()
         if not out.grad then return end
         local g = grad_of(table_)
         local row = g:view({D}, {1}, padding_idx * D)
         local saved = row:clone()
         check(K.embedding_backward(g:ptr(), out.grad:ptr(), idx:ptr(), n, V, D), 'embedding backward')
         row:copy(saved)
         saved:free(); row:free()
      end)
   end
   return out
end

return M
