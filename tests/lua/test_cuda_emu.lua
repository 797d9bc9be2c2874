-- The Lua side of `--device cuda`, run in CI on the emulated CUDA backend
-- (build/libfsdp_cuda_emu.so: engine/cuda and our kernels/*_cuda.cu compiled
-- against tests/cuda/emu, device memory in a guarded arena that the host
-- cannot touch outside kernels and copies). On a GPU, tests/cuda/
-- test_train_cuda.lua runs the same comparisons against libfsdp_cuda.so.
--
-- What must hold:
--   * every op, forward and backward through the tape, on cuda:0 equals
--     the CPU backend on the same inputs (within f32 reordering);
--   * ops refuse tensors on two devices, naming both;
--   * minGPT, Llama (RoPE, GQA, RMSNorm, SwiGLU) and Mixtral training steps
--     (shard, AdamW, clipping) on the device track the CPU run step by step;
--   * a checkpoint saved from the device loads on the CPU, bit for bit;
--   * device memory stats count live tensors and return to the start;
--   * host code that reads device memory directly dies (the guard works);
--   * the recipe with --device cuda gives the CPU run's losses.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local T = require 'fsdp.tensor'
local ops, AG = fsdp.ops, fsdp.autograd
local device = require 'fsdp.device'
local G = require 'tests.lua.gradcheck'
local randn = G.randn
fsdp.set_num_threads(1)

-- tests/cuda/test_lua_cuda.lua runs this file on a GPU with REAL_GPU set
local real = rawget(_G, 'REAL_GPU') == true
if not real then device.set_library(device.emulated_library_path()) end
local dev = device.get('cuda')
t.check(dev.kind == 'cuda' and dev.emulated == not real, 'the %s backend did not load: %s',
        real and 'real' or 'emulated', device.describe(dev))
print('device: ' .. device.describe(dev))
local D = dev.index
-- cuBLASLt and the fused GPU reductions add in another order than OpenBLAS
local TOL = real and 10 or 1

-- largest |a - b| over two tensors (any devices), relative to max |b|
local function max_rel_diff(a, b)
   local x, y = a:totable(), b:totable()
   if #x ~= #y then return math.huge end
   local diff, scale = 0, 1e-6
   for i = 1, #x do
      diff = math.max(diff, math.abs(x[i] - y[i]))
      scale = math.max(scale, math.abs(y[i]))
   end
   return diff / scale
end

-- runs f on host inputs and on their device copies; compares outputs and
-- the gradients of sum(out .* R) for every input that wants one
local function compare(name, f, inputs, tol)
   tol = (tol or 2e-5) * TOL
   local runs, R = {}, nil
   for _, where in ipairs({-1, D}) do
      local xs = {}
      for i, x in ipairs(inputs) do
         xs[i] = x:to_device(where)
         if where >= 0 then xs[i] = xs[i] ~= x and xs[i] or x:clone() end
         xs[i].requires_grad = x.dtype == 'f32' and x.requires_grad ~= false
      end
      local out = f(unpack(xs))
      R = R or G.randn(out.shape)
      local r = R:to_device(where)
      local loss = ops.sum(ops.mul(out, r))
      local out_h = out:cpu():keep()
      if out_h == out then out_h = out:clone() end
      AG.backward(loss)
      local grads = {}
      for i, x in ipairs(xs) do
         if x.grad then grads[i] = x.grad:cpu():keep(); if grads[i] == x.grad then grads[i] = x.grad:clone() end end
      end
      runs[#runs + 1] = {out = out_h, grads = grads}
      if r ~= R then r:free() end
   end
   R:free()
   local cpu, gpu = runs[1], runs[2]
   local d = max_rel_diff(gpu.out, cpu.out)
   t.check(d <= tol, '%s: forward differs from the CPU by %.3g (relative)', name, d)
   for i, g in pairs(cpu.grads) do
      local gg = gpu.grads[i]
      if t.check(gg ~= nil, '%s: no gradient for input %d on the device', name, i) then
         local dg = max_rel_diff(gg, g)
         t.check(dg <= tol, '%s: gradient of input %d differs from the CPU by %.3g', name, i, dg)
      end
   end
end

---------------------------------------------------------------------------
-- every op

compare('linear', function(x, w, b) return ops.linear(x, w, b) end, {randn({2, 5, 12}), randn({7, 12}), randn({7})})
compare('linear ragged', function(x, w) return ops.linear(x, w) end, {randn({37, 19}), randn({23, 19})})
for _, ta in ipairs({false, true}) do
   for _, tb in ipairs({false, true}) do
      local a = ta and randn({9, 6}) or randn({6, 9})
      local b = tb and randn({11, 9}) or randn({9, 11})
      compare(string.format('matmul ta=%s tb=%s', ta, tb), function(x, y) return ops.matmul(x, y, ta, tb) end, {a, b})
   end
end
do
   local idx = fsdp.from_table({1, 3, 3, 0, 6, 2, 5, 1}, {2, 4}, 'i32')
   idx.requires_grad = false
   compare('embedding', function(i, w) return ops.embedding(i, w) end, {idx, randn({7, 10})})
   compare('embedding padded', function(i, w) return ops.embedding_padded(i, w, 3) end, {idx, randn({7, 10})})
end
compare('layernorm', function(x, w, b) return ops.layernorm(x, w, b, 1e-5) end, {randn({5, 33}), randn({33}), randn({33})})
compare('rmsnorm', function(x, w) return ops.rmsnorm(x, w, 1e-6) end, {randn({5, 33}), randn({33})})
for _, name in ipairs({'gelu', 'relu', 'silu'}) do
   compare(name, function(x) return ops[name](x) end, {randn({3, 41})})
end
compare('swiglu', function(g, u) return ops.swiglu(g, u) end, {randn({3, 41}), randn({3, 41})})
compare('add', function(a, b) return ops.add(a, b) end, {randn({4, 9}), randn({4, 9})})
compare('mul', function(a, b) return ops.mul(a, b) end, {randn({4, 9}), randn({4, 9})})
compare('scale', function(a) return ops.scale(a, -0.37) end, {randn({4, 9})})
compare('sum', function(a) return ops.sum(a) end, {randn({4, 9})})
compare('mean', function(a) return ops.mean(a) end, {randn({4, 9})})
compare('reshape', function(a) return ops.reshape(a, {9, 4}) end, {randn({4, 9})})
compare('attention gpt2 qkv', function(x) return ops.attention(x, nil, nil, {n_head = 2}) end, {randn({2, 7, 3 * 16})}, 1e-4)
compare('softcap', function(x) return ops.softcap(x, 1.3) end, {randn({3, 41})})
compare('attention softcap', function(q, k, v)
   return ops.attention(q, k, v, {n_head = 4, n_kv_head = 2, window = 3, softcap = 1.5})
end, {randn({2, 7, 32}), randn({2, 7, 16}), randn({2, 7, 16})}, 1e-4)
compare('attention gqa window', function(q, k, v)
   return ops.attention(q, k, v, {n_head = 4, n_kv_head = 2, window = 3})
end, {randn({2, 9, 4 * 8}), randn({2, 9, 2 * 8}), randn({2, 9, 2 * 8})}, 1e-4)
do -- packed samples: positions restart at 0 where a sample starts
   local pos = fsdp.from_table({0, 1, 2, 0, 1, 2, 3, 4, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}, {2, 9}, 'i32')
   compare('attention packed gqa', function(q, k, v, p)
      return ops.attention(q, k, v, {n_head = 4, n_kv_head = 2, positions = p})
   end, {randn({2, 9, 4 * 8}), randn({2, 9, 2 * 8}), randn({2, 9, 2 * 8}), pos}, 1e-4)
   compare('attention packed qkv window', function(x, p)
      return ops.attention(x, nil, nil, {n_head = 2, window = 2, positions = p})
   end, {randn({2, 9, 3 * 16}), pos}, 1e-4)
   -- positions the device kernels cannot take are refused before they run
   local bad = fsdp.from_table({0, 1, 3}, {1, 3}, 'i32'):to_device(D)
   local q = randn({1, 3, 8}):to_device(D)
   local ok, err = pcall(ops.attention, q, q, q, {n_head = 1, positions = bad})
   t.check(not ok and tostring(err):find('positions[0, 2] = 3', 1, true),
           'device positions that do not count up within a sample are an error naming the entry, got: %s', tostring(err))
   AG.reset()
end
do
   local targets = fsdp.from_table({3, -100, 1, 4, -100, 0}, {6}, 'i32')
   compare('cross_entropy over a denominator', function(l, y) return ops.cross_entropy(l, y, -100, 7.5) end,
           {randn({6, 5}), targets})
end
do
   local cos, sin = randn({6, 4}), randn({6, 4})
   cos.requires_grad, sin.requires_grad = false, false
   compare('rope', function(x, c, s) return ops.rope(x, c, s, 2) end, {randn({2, 6, 16}), cos, sin})
end
do
   local tg = fsdp.from_table({0, 3, -100, 9, 2, 2}, {2, 3}, 'i32')
   tg.requires_grad = false
   compare('cross_entropy', function(l, y) return ops.cross_entropy(l, y) end, {randn({2, 3, 10}), tg})
   compare('linear_cross_entropy chunks of 4', function(x, w, y)
      return ops.linear_cross_entropy(x, w, y, -100, {chunk_rows = 4})
   end, {randn({2, 3, 12}), randn({37, 12}), tg}, 1e-5)
end
-- LoRA's fused linear (engine/cuda/lora_cuda.cu): the policy's GEMMs and
-- the CPU's dropout mask (kernels/lora_math.h), so with dropout on the same
-- elements are dropped on both
compare('lora_linear', function(x, w, b, a, bb) return ops.lora_linear(x, w, b, a, bb, {scale = 1.5}) end,
        {randn({2, 5, 12}), randn({7, 12}), randn({7}), randn({3, 12}), randn({7, 3})})
compare('lora_linear ragged, dropout 0.3', function(x, w, a, bb)
   return ops.lora_linear(x, w, nil, a, bb, {scale = 0.5, dropout = 0.3, seed = 42})
end, {randn({37, 19}), randn({23, 19}), randn({3, 19}), randn({23, 3})})
do -- a frozen base weight: no dw asked of either backend
   local w = randn({7, 12})
   w.requires_grad = false
   compare('lora_linear frozen base', function(x, ww, a, bb)
      return ops.lora_linear(x, ww, nil, a, bb, {scale = 2, dropout = 0.1, seed = 7})
   end, {randn({4, 12}), w, randn({2, 12}), randn({7, 2})})
end
-- mixture-of-experts routing ops
do
   local idx = fsdp.from_table({4, 0, 2, 2, 1}, {5}, 'i32')
   idx.requires_grad = false
   compare('gather_rows', function(x, i) return ops.gather_rows(x, i) end, {randn({6, 7}), idx})
   compare('scatter_add_rows', function(b, i, s) return ops.scatter_add_rows(b, i, s) end,
           {randn({6, 7}), idx, randn({5, 7})})
end
compare('softmax', function(x) return ops.softmax(x) end, {randn({5, 13})})
compare('row_scale', function(x, s) return ops.row_scale(x, s) end, {randn({5, 13}), randn({5})})
compare('topk', function(x) return (ops.topk(x, 3)) end, {randn({5, 13})})

-- GEMMs and attention in bf16 (set_compute_dtype: PyTorch FSDP's
-- MixedPrecision(param_dtype=bf16) math). Against the f32 CPU the results
-- differ by bf16 rounding of the operands (8 bits: ~0.4% per element, less
-- on sums); a wrong cast, layout or accumulation is off by far more.
do
   local kernels = require 'fsdp.kernels'
   kernels.set_compute_dtype('bf16')
   compare('linear bf16', function(x, w, b) return ops.linear(x, w, b) end,
           {randn({2, 5, 12}), randn({7, 12}), randn({7})}, 2e-2 / TOL)
   compare('matmul bf16 ta tb', function(x, y) return ops.matmul(x, y, true, true) end,
           {randn({9, 6}), randn({11, 9})}, 2e-2 / TOL)
   compare('lora_linear bf16', function(x, w, b, a, bb)
      return ops.lora_linear(x, w, b, a, bb, {scale = 1.5, dropout = 0.2, seed = 9})
   end, {randn({2, 5, 12}), randn({7, 12}), randn({7}), randn({3, 12}), randn({7, 3})}, 2e-2 / TOL)
   -- cuDNN (real GPU) or the f32 kernel (the emulation, where cuDNN declines)
   compare('attention bf16', function(q, k, v) return ops.attention(q, k, v, {n_head = 4, n_kv_head = 2}) end,
           {randn({2, 16, 4 * 16}), randn({2, 16, 2 * 16}), randn({2, 16, 2 * 16})}, 3e-2 / TOL)
   kernels.set_compute_dtype(nil)
   t.raises(function() kernels.set_compute_dtype('i32') end, {'compute dtype', 'i32'}, 'bad compute dtype')
end

-- tensors on two devices
do
   local a, b = randn({3, 4}), randn({3, 4}):to_device(D)
   t.raises(function() ops.add(a, b) end, {'add', 'different devices', 'cpu', 'cuda:' .. D}, 'mixed devices')
   a:free(); b:free()
end

---------------------------------------------------------------------------
-- memory: live tensors counted on the device, back to the start when freed
do
   T.end_step()
   local warm = fsdp.zeros({1}, 'f32', nil, D)
   warm:sumsq() -- its 8-byte result buffer stays allocated for later calls
   warm:free()
   local before = fsdp.memory_stats(D).current
   local x = fsdp.zeros({1000}, 'f32', nil, D)
   local y = fsdp.full({10, 10}, 2.5, 'f32', D)
   t.check(fsdp.memory_stats(D).current == before + 4400, 'device bytes in use: %d, want %d',
           fsdp.memory_stats(D).current, before + 4400)
   t.close(y:get(3, 4), 2.5, 0, 0, 'fill on the device')
   t.close(x:sumsq(), 0, 0, 0, 'zeros on the device')
   y:set_flat(23, -1) -- through a one-element copy
   t.close(y:cpu():sumsq(), 99 * 6.25 + 1, 0, 1e-9, 'set on the device')
   x:free(); y:free()
   t.check(fsdp.memory_stats(D).current == before, 'device bytes after free: %d, want %d',
           fsdp.memory_stats(D).current, before)
end

---------------------------------------------------------------------------
-- training steps: the same model on the CPU and on the device

local AdamW = require 'optim.adamw'
local clip = require 'optim.clip'

local function train_steps(make_model, where, steps, batch, offload)
   local model = make_model()
   local sharded = fsdp.shard(model, {seed = 5, device = where, cpu_offload = offload})
   local opt = AdamW.new(sharded, {lr = 3e-3, weight_decay = 0.1})
   local losses, grads = {}, {}
   for s = 1, steps do
      local x, y = batch(s)
      local dx, dy = x:to_device(where), y:to_device(where)
      sharded:zero_grad()
      local loss = model:loss(dx, dy)
      losses[s] = AG.backward(loss)
      if s == 1 then
         for i, u in ipairs(sharded.units) do grads[i] = u.grad_shard:clone(nil, -1) end
      end
      local norm = clip.global_norm(sharded)
      opt:step(nil, clip.clip_factor(norm, 1.0))
      if dx ~= x then dx:free(); dy:free() end
   end
   local params = sharded:full_state_dict()
   return losses, params, sharded, opt, grads
end

local function token_batch(V, B, T_)
   return function(s)
      local x, y = T.empty({B, T_}, 'i32'), T.empty({B, T_}, 'i32')
      for i = 0, B * T_ - 1 do
         x:ptr()[i] = (i * 7 + s * 3) % V
         y:ptr()[i] = (i * 5 + s) % V
      end
      return x, y
   end
end

local function compare_training(name, make_model, V, steps, tol, offload)
   tol = tol * TOL
   local batch = token_batch(V, 2, 8)
   local l_cpu, p_cpu, _, _, g_cpu = train_steps(make_model, -1, steps, batch)
   local l_gpu, p_gpu, sh, opt, g_gpu = train_steps(make_model, D, steps, batch, offload)
   if offload then
      local u = sh.units[2]
      t.check(u.shard.device == -1 and u.shard:is_pinned() and u.grad_shard:is_pinned(),
              '%s: offloaded shards must be pinned host tensors', name)
      t.check(opt.groups[2].exp_avg.device == -1, '%s: offloaded optimizer state must be on the host', name)
      t.check(u.full == nil, '%s: an offloaded unit keeps no device copy between steps', name)
   end
   for s = 1, steps do
      t.close(l_gpu[s], l_cpu[s], tol, 0, '%s: loss at step %d on the device', name, s)
   end
   -- the first backward's gradients, unit by unit, tightly
   local gworst = 0
   for i, g in ipairs(g_cpu) do
      local d = max_rel_diff(g_gpu[i], g)
      gworst = math.max(gworst, d)
      t.check(d <= tol * 5, '%s: gradient of unit %d differs from the CPU by %.3g', name, i, d)
   end
   -- parameters after the steps (absolute: AdamW's first updates are about
   -- lr * sign(g), so rounding in a gradient near zero moves its weight by
   -- more than its relative size; seen here: at most 2.4e-5 with lr 3e-3)
   local worst, worst_name = 0, ''
   for k, v in pairs(p_cpu) do
      t.check(p_gpu[k] and p_gpu[k].device == -1, '%s: parameter %s missing from the device state', name, k)
      if p_gpu[k] then
         local a, b = p_gpu[k]:totable(), v:totable()
         for i = 1, #b do
            local d = math.abs(a[i] - b[i])
            if d > worst then worst, worst_name = d, k end
         end
      end
   end
   t.check(worst <= 5e-4 * TOL, '%s: parameter %s differs from the CPU by %.3g after %d steps', name,
           worst_name, worst, steps)
   print(string.format('%s: %d steps, losses %s (cpu %s), first gradients within %.3g, parameters within %.3g (%s)',
                       name, steps, table.concat(l_gpu, ' '), table.concat(l_cpu, ' '), gworst, worst, worst_name))
end

local mingpt = require 'models.mingpt'
compare_training('minGPT', function()
   return mingpt.GPT {n_layer = 2, n_head = 2, n_embd = 32, vocab_size = 50, block_size = 8}
end, 50, 3, 1e-5)

compare_training('minGPT, CPU offload', function()
   return mingpt.GPT {n_layer = 2, n_head = 2, n_embd = 32, vocab_size = 50, block_size = 8}
end, 50, 3, 1e-5, true)

-- bf16 math on the device vs f32 on the CPU: close, not equal
do
   local kernels = require 'fsdp.kernels'
   local make = function() return mingpt.GPT {n_layer = 2, n_head = 2, n_embd = 32, vocab_size = 50, block_size = 8} end
   local batch = token_batch(50, 2, 8)
   local l_cpu = train_steps(make, -1, 3, batch)
   kernels.set_compute_dtype('bf16')
   local l_bf = train_steps(make, D, 3, batch)
   kernels.set_compute_dtype(nil)
   for s = 1, 3 do t.close(l_bf[s], l_cpu[s], 2e-3 * TOL, 0, 'minGPT bf16 compute: loss at step %d', s) end
   print(string.format('minGPT, bf16 GEMMs on the device: losses %s (cpu f32 %s)', table.concat(l_bf, ' '),
                       table.concat(l_cpu, ' ')))
end

local llama = require 'models.llama'
compare_training('Llama (GQA, RoPE)', function()
   return llama.Llama {hidden_size = 32, intermediate_size = 48, num_hidden_layers = 2, num_attention_heads = 4,
                       num_key_value_heads = 2, vocab_size = 40, max_position_embeddings = 16}
end, 40, 2, 1e-5)

compare_training('Llama + LoRA (q, v, gate; dropout 0.2)', function()
   local m = llama.Llama {hidden_size = 32, intermediate_size = 48, num_hidden_layers = 2, num_attention_heads = 4,
                          num_key_value_heads = 2, vocab_size = 40, max_position_embeddings = 16}
   return fsdp.lora(m, {targets = {'q_proj', 'v_proj', 'gate_proj'}, r = 2, alpha = 4, dropout = 0.2, seed = 3})
end, 40, 3, 1e-5)

local mixtral = require 'models.mixtral'
compare_training('Mixtral (top-2 of 4 experts)', function()
   return mixtral.Mixtral {hidden_size = 24, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2,
                           num_key_value_heads = 1, vocab_size = 30, max_position_embeddings = 16,
                           num_local_experts = 4, num_experts_per_tok = 2}
end, 30, 2, 1e-5)

---------------------------------------------------------------------------
-- a checkpoint saved from the device loads on the CPU, bit for bit
do
   local make = function() return mingpt.GPT {n_layer = 1, n_head = 2, n_embd = 16, vocab_size = 20, block_size = 8} end
   local _, params, sharded, opt = train_steps(make, D, 2, token_batch(20, 2, 8))
   local dir = os.tmpname()
   os.remove(dir)
   local ckpt = fsdp.checkpoint
   local path = ckpt.save(dir, {step = 2, sharded = sharded, optimizer = opt, trainer = {step = 2},
                                model_config = {}, model_name = 'mingpt'})
   local model2 = make()
   local sh2 = fsdp.shard(model2, {seed = 99})
   local opt2 = AdamW.new(sh2, {lr = 1e-3})
   ckpt.load(path, sh2, opt2)
   local p2 = sh2:full_state_dict()
   local same = true
   for k, v in pairs(params) do
      if max_rel_diff(p2[k], v) ~= 0 then same = false; print('differs: ' .. k) end
   end
   t.check(same, 'parameters saved from the device and loaded on the CPU differ')
   t.check(max_rel_diff(opt2.groups[1].exp_avg, opt.groups[1].exp_avg) == 0, 'optimizer state across devices differs')
   os.execute('rm -rf ' .. dir)
end

---------------------------------------------------------------------------
-- the guard: reading device memory from the host is a fault, not a value
if not real then
   local script = os.tmpname() .. '.lua'
   local f = assert(io.open(script, 'w'))
   f:write("local d = require('fsdp.device'); d.set_library(d.emulated_library_path()); d.get('cuda')\n",
           "local x = require('fsdp.tensor').full({4}, 1, 'f32', 0)\n",
           "print('read from the host: ' .. x:ptr()[0])\n")
   f:close()
   local status, out = t.sh(string.format('%s/build/fsdp-lua %s', fsdp.root, script))
   os.remove(script)
   -- 139: the shell's code for a process killed by SIGSEGV
   t.check(status == 139 and not out:find('read from the host', 1, true),
           'a host read of device memory went unnoticed (status %d): %s', status, out)
end

---------------------------------------------------------------------------
-- out of device memory: an error naming the rank, the device, the request
-- and the usage (a 16 MiB emulated device; 8 MiB live, then 12 MiB asked)
if not real then
   local script = os.tmpname() .. '.lua'
   local f = assert(io.open(script, 'w'))
   f:write("local d = require('fsdp.device'); d.set_library(d.emulated_library_path()); d.get('cuda', 0, 3)\n",
           "local T = require('fsdp.tensor')\n",
           "local keep = T.zeros({2 * 1024 * 1024}, 'f32', nil, 0)\n",
           "local ok, err = pcall(T.zeros, {3 * 1024 * 1024}, 'f32', nil, 0)\n",
           "print(ok and 'allocated' or err)\n",
           "print('still usable: ' .. keep:sumsq())\n")
   f:close()
   local status, out = t.sh(string.format('FSDP_EMU_DEVICE_MEMORY=16777216 %s/build/fsdp-lua %s', fsdp.root, script))
   os.remove(script)
   t.check(status == 0, 'the out-of-memory script failed (%d):\n%s', status, out)
   for _, want in ipairs({'rank 3', 'cuda:0', 'cannot allocate 12582912 bytes', 'in use by live blocks',
                          'still usable: 0'}) do
      t.check(out:find(want, 1, true), 'out-of-memory report lacks %q:\n%s', want, out)
   end
   print('device OOM: ' .. (out:match('[^\n]*cannot allocate[^\n]*') or out))
end

---------------------------------------------------------------------------
-- the recipe: --device cuda trains like --device cpu
do
   local lib = real and device.cuda_library_path() or device.emulated_library_path()
   local corpus = fsdp.root .. '/data/tinyshakespeare.txt'
   if not require('fsdp.fs').exists(corpus) then corpus = '/usr/share/games/fortunes/cookie' end
   local function run(devname, ranks)
      local status, out = t.sh(string.format(
         'FSDP_CUDA_LIB=%s %s/build/fsdp-lua --nproc-per-node %d recipes/train_mingpt.lua --data %s --preset gpt-nano --n-layer 1 ' ..
         '--n-embd 16 --n-head 2 --max-steps 3 --warmup-steps 1 --batch-size 2 --seq-len 8 --eval-every 0 ' ..
         '--eval-batches 1 --log-every 1 --sample-tokens 4 --threads 1 --run-dir %s --device %s',
         lib, fsdp.root, ranks or 1, corpus, os.tmpname() .. '.d', devname))
      t.check(status == 0, 'recipe with --device %s on %d rank(s) failed (%d):\n%s', devname, ranks or 1, status, out)
      local losses = {}
      for l in out:gmatch('step%s+%d+/%d+[^\n]-loss%s+([%d.]+)') do losses[#losses + 1] = tonumber(l) end
      return losses, out
   end
   local lc = run('cpu')
   local lg, out = run('cuda')
   t.check(out:find('device: cuda:0 (' .. (real and '' or 'emulated'), 1, true),
           'the recipe did not say it runs on the device:\n%s', out)
   t.check(#lc == 3 and #lg == 3, 'expected 3 logged losses each, got %d and %d', #lc, #lg)
   for i = 1, math.min(#lc, #lg) do t.close(lg[i], lc[i], 1e-3 * TOL, 0, 'recipe loss at step %d', i) end
   -- two ranks, each with its device, sharded over (emulated) NCCL; then
   -- with the shards and optimizer state offloaded to pinned host memory
   if not real then
      local l2 = run('cuda', 2)
      local lo = run('cuda --cpu-offload', 2)
      for _, r in ipairs({{'2-rank cuda', l2}, {'2-rank cuda offload', lo}}) do
         t.check(#r[2] == 3, 'expected 3 logged losses from the %s run, got %d', r[1], #r[2])
         for i = 1, math.min(#lc, #r[2]) do t.close(r[2][i], lc[i], 1e-3, 0, '%s recipe loss at step %d', r[1], i) end
      end
      print('recipe losses: cpu ' .. table.concat(lc, ' ') .. ' | cuda ' .. table.concat(lg, ' ') ..
            ' | 2 ranks cuda ' .. table.concat(l2, ' ') .. ' | 2 ranks cuda offload ' .. table.concat(lo, ' '))
      -- ZeRO-2 with activation checkpointing (recompute in backward) and two
      -- micro-batches per step, bf16 gathers: the CPU's run of the same flags
      local flags = ' --strategy grad_op --activation-checkpointing --grad-accum-steps 2 --param-dtype bf16'
      local lcz = run('cpu' .. flags)
      local lgz = run('cuda' .. flags, 2)
      t.check(#lcz == 3 and #lgz == 3, 'expected 3 logged losses from the grad_op runs, got %d and %d', #lcz, #lgz)
      for i = 1, math.min(#lcz, #lgz) do
         t.close(lgz[i], lcz[i], 3e-3, 0, 'grad_op + checkpointing + accumulation, bf16: loss at step %d', i)
      end
      print('grad_op, checkpointing, 2 micro-batches, bf16: cpu ' .. table.concat(lcz, ' ') .. ' | 2 ranks cuda ' ..
            table.concat(lgz, ' '))
   end
end

---------------------------------------------------------------------------
-- without a usable GPU: --device cuda is a clear error naming the reason,
-- --device auto runs on the CPU and says why
if not real then
   local corpus = fsdp.root .. '/data/tinyshakespeare.txt'
   if not require('fsdp.fs').exists(corpus) then corpus = '/usr/share/games/fortunes/cookie' end
   local function run(env, devname)
      return t.sh(string.format('%s %s/build/fsdp-lua recipes/train_mingpt.lua --data %s --preset gpt-nano ' ..
                                '--max-steps 1 --batch-size 2 --seq-len 8 --sample-tokens 0 --eval-every 0 ' ..
                                '--eval-batches 1 --run-dir %s --device %s', env, fsdp.root, corpus,
                                os.tmpname() .. '.d', devname))
   end
   local status, out = run('FSDP_CUDA_LIB=/nonexistent/libfsdp_cuda.so', 'cuda')
   t.check(status == 1 and out:find('--device cuda', 1, true) and out:find('make cuda', 1, true),
           'a missing CUDA library: want exit 1 naming `make cuda`, got %d:\n%s', status, out)
   status, out = run('FSDP_CUDA_LIB=/nonexistent/libfsdp_cuda.so', 'auto')
   t.check(status == 0 and out:find('device: cpu (no GPU:', 1, true),
           '--device auto without a backend: want a CPU run that says why, got %d:\n%s', status, out)
   status, out = run('', 'cuda:7')
   t.check(status == 1 and out:find('--device cuda:7', 1, true),
           '--device cuda:7 here: want exit 1 naming it, got %d:\n%s', status, out)
   print('no GPU: ' .. (out:match('error: ([^\n]*)') or out))
   -- planning a GPU job on a machine without one
   status, out = t.sh(string.format('%s/build/fsdp-lua plan recipes/pretrain.lua --world-size 8 --size 7B ' ..
                                    '--vocab-size 32000 --memory-per-rank 80GiB --device cuda', fsdp.root))
   t.check(status == 0 and out:find('peak per rank', 1, true), 'plan --device cuda without a GPU (%d):\n%s', status, out)
end

---------------------------------------------------------------------------
-- eval.lua --device cuda on a Hugging Face model (the Llama fixture): the
-- CPU's loss
do
   local lib = real and device.cuda_library_path() or device.emulated_library_path()
   -- a token file of ids below the fixture's vocabulary of 100
   local corpus = os.tmpname() .. '.bin'
   local n = 4000
   local ids = fsdp.ffi.new('int32_t[?]', n)
   for i = 0, n - 1 do ids[i] = (i * 37 + math.floor(i / 7)) % 100 end
   require('fsdp.ffi').check(fsdp.C.fsdp_tokens_write(corpus, ids, n, 2, 100), 'token file')
   local function eval(devname, ranks)
      local status, out = t.sh(string.format(
         'FSDP_CUDA_LIB=%s %s/build/fsdp-lua --nproc-per-node %d recipes/eval.lua --model %s/tests/golden/hf/llama ' ..
         '--data %s --seq-len 16 --batch-size 2 --batches 10 --device %s', lib, fsdp.root, ranks or 1, fsdp.root,
         corpus, devname))
      t.check(status == 0, 'eval --device %s on %d rank(s) failed (%d):\n%s', devname, ranks or 1, status, out)
      return tonumber(out:match('loss ([%d.]+)'))
   end
   local lc, lg = eval('cpu'), eval('cuda')
   t.check(lc and lg and math.abs(lc - lg) <= 1e-4 * TOL * lc, 'eval loss on the device %s vs the CPU %s',
           tostring(lg), tostring(lc))
   -- two ranks: 30 gathers of forward-only passes over NCCL, no backward to drain them
   local l2 = not real and eval('cuda', 2) or lg
   t.check(l2 and math.abs(l2 - lc) <= 1e-4 * lc, 'eval loss on 2 devices %s vs the CPU %s', tostring(l2), tostring(lc))
   print(string.format('eval.lua llama fixture: cpu loss %s, cuda loss %s, 2 ranks cuda %s', tostring(lc),
                       tostring(lg), tostring(l2)))
   os.remove(corpus)
end

---------------------------------------------------------------------------
-- generate.lua --device cuda: the CPU's greedy text, with the KV cache
-- (minGPT's fused qkv and Llama's RoPE/GQA caches) and without
do
   local lib = real and device.cuda_library_path() or device.emulated_library_path()
   for _, m in ipairs({'gpt2', 'llama'}) do
      local function gen(devname, extra)
         local status, out = t.sh(string.format(
            'FSDP_CUDA_LIB=%s %s/build/fsdp-lua recipes/generate.lua --model %s/tests/golden/hf/%s --tokenizer bytes ' ..
            '--prompt ab --max-new-tokens 6 --temperature 0 --device %s %s 2>/dev/null', lib, fsdp.root, fsdp.root,
            m, devname, extra or ''))
         t.check(status == 0, 'generate (%s) --device %s %s failed (%d):\n%s', m, devname, extra or '', status, out)
         return out
      end
      local cpu, gpu, nocache = gen('cpu'), gen('cuda'), gen('cuda', '--no-kv-cache')
      t.check(cpu == gpu and cpu == nocache and #cpu > 0, '%s: greedy text differs: cpu %q, cuda %q, cuda without cache %q',
              m, cpu, gpu, nocache)
   end
end

return t.done()
