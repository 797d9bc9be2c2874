-- Host synchronisations in a training step on the GPU, counted by the CUDA
-- library (fsdp_cuda_sync_count: every wait of the host for the device and
-- every read of device data; fsdp_cuda_upload_sync_count: host-to-device
-- tensor copies, which wait so the host buffer can be reused), run on the
-- emulated backend (build/libfsdp_cuda_emu.so: the same engine/cuda code
-- that counts on a GPU).
--
-- What must hold, for minGPT and Llama (and minGPT with bf16 GEMMs):
--   * forward and backward (the tape, the shard hooks, every op) wait for
--     the device zero times and upload nothing once the first step is done;
--   * a step that keeps its loss on the device (autograd.backward_no_read)
--     reads once per optimizer step: the units' gradient sums of squares
--     and the loss in one read (kernels.sumsq_many), then AdamW and
--     zero_grad wait for nothing; its losses and norms are the CPU's;
--   * the usual step (autograd.backward returns the loss, clip.global_norm)
--     waits exactly twice: the loss read and the norm read (one read for
--     all units, not one per unit);
--   * the data loader's batches are two uploads per step and no read.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local T = require 'fsdp.tensor'
local AG = fsdp.autograd
local device = require 'fsdp.device'
local kernels = require 'fsdp.kernels'
local AdamW = require 'optim.adamw'
local clip = require 'optim.clip'
fsdp.set_num_threads(1)

device.set_library(device.emulated_library_path())
local dev = device.get('cuda')
t.check(dev.kind == 'cuda' and dev.emulated, 'the emulated backend did not load: %s', device.describe(dev))
local D, lib = dev.index, dev.cuda

local function counts() return tonumber(lib.fsdp_cuda_sync_count()), tonumber(lib.fsdp_cuda_upload_sync_count()) end

local function token_batch(V, B, T_)
   return function(s)
      local x, y = T.empty({B, T_}, 'i32'), T.empty({B, T_}, 'i32')
      for i = 0, B * T_ - 1 do
         x:ptr()[i] = (i * 7 + s * 3) % V
         y:ptr()[i] = (i * 5 + s) % V
         if i % 11 == 3 then y:ptr()[i] = -100 end -- some ignored targets: the count matters
      end
      return x, y
   end
end

-- steps on the device; mode 'kept' (loss kept on the device, one read per
-- step) or 'usual' (backward returns the loss, clip.global_norm reads the
-- norm). Returns the losses, norms and per-step counts of each phase.
local function device_steps(make_model, batch, steps, mode)
   local model = make_model()
   local sharded = fsdp.shard(model, {seed = 5, device = D})
   local opt = AdamW.new(sharded, {lr = 3e-3, weight_decay = 0.1})
   local K = kernels.for_device(D)
   local acc = T.zeros({1}, 'f32', nil, D) -- the step's loss, kept across the step on the device
   local grads = {}
   for i, u in ipairs(sharded.units) do grads[i] = u.grad_shard end
   local losses, norms, phases = {}, {}, {}
   for s = 1, steps do
      local x, y = batch(s)
      local c0, u0 = counts()
      local dx, dy = x:to_device(D), y:to_device(D)
      local c1, u1 = counts()
      local loss = model:loss(dx, dy)
      local c2, u2 = counts()
      if mode == 'kept' then
         acc:zero()
         require('fsdp.ffi').check(K.axpy(acc:ptr(), 1, loss:ptr(), 1), 'loss')
         AG.backward_no_read(loss)
      else
         losses[s] = AG.backward(loss)
      end
      local c3, u3 = counts()
      local norm
      if mode == 'kept' then
         local sums, vals = kernels.sumsq_many(grads, {acc})
         local sq = 0
         for i = 1, #sums do sq = sq + sums[i] end
         norm, losses[s] = math.sqrt(sq), vals[1]
      else
         norm = clip.global_norm(sharded)
      end
      opt:step(nil, clip.clip_factor(norm, 1.0))
      sharded:zero_grad()
      local c4, u4 = counts()
      norms[s] = norm
      phases[s] = {data = {c1 - c0, u1 - u0}, forward = {c2 - c1, u2 - u1}, backward = {c3 - c2, u3 - u2},
                   optimizer = {c4 - c3, u4 - u3}}
      dx:free(); dy:free()
   end
   acc:free()
   return losses, norms, phases
end

-- the same steps on the CPU: losses and norms to compare with
local function cpu_steps(make_model, batch, steps)
   local model = make_model()
   local sharded = fsdp.shard(model, {seed = 5})
   local opt = AdamW.new(sharded, {lr = 3e-3, weight_decay = 0.1})
   local losses, norms = {}, {}
   for s = 1, steps do
      local x, y = batch(s)
      losses[s] = AG.backward(model:loss(x, y))
      norms[s] = clip.global_norm(sharded)
      opt:step(nil, clip.clip_factor(norms[s], 1.0))
      sharded:zero_grad()
   end
   return losses, norms
end

local function fmt(p) return string.format('%d/%d', p[1], p[2]) end

local function check_model(name, make_model, V, steps, tol)
   local batch = token_batch(V, 2, 8)
   local l_cpu, n_cpu = cpu_steps(make_model, batch, steps)
   for _, mode in ipairs({'kept', 'usual'}) do
      local l, n, ph = device_steps(make_model, batch, steps, mode)
      local want_bwd = mode == 'kept' and 0 or 1 -- the usual backward reads its loss
      local want_opt = mode == 'kept' and 1 or 1 -- the one read (sums and loss) / the norm read
      for s = 1, steps do
         local p = ph[s]
         local what = string.format('%s, %s step %d', name, mode, s)
         t.check(p.data[1] == 0 and p.data[2] == 2, '%s: the batch upload counted %s (want 0 reads, 2 uploads)',
                 what, fmt(p.data))
         t.check(p.forward[1] == 0, '%s: forward waited for the device %d times', what, p.forward[1])
         t.check(p.backward[1] == want_bwd, '%s: backward waited for the device %d times (want %d)', what,
                 p.backward[1], want_bwd)
         t.check(p.optimizer[1] == want_opt, '%s: the optimizer step waited %d times (want %d)', what,
                 p.optimizer[1], want_opt)
         if s > 1 then
            t.check(p.forward[2] == 0 and p.backward[2] == 0 and p.optimizer[2] == 0,
                    '%s: uploads inside the step: forward %d, backward %d, optimizer %d', what, p.forward[2],
                    p.backward[2], p.optimizer[2])
         end
         t.close(l[s], l_cpu[s], tol, 0, '%s: loss', what)
         t.close(n[s], n_cpu[s], tol * 10, 0, '%s: gradient norm', what)
      end
      local per = {}
      for s = 1, steps do
         local p = ph[s]
         per[s] = string.format('fwd %s bwd %s opt %s data %s', fmt(p.forward), fmt(p.backward), fmt(p.optimizer),
                                fmt(p.data))
      end
      print(string.format('%s (%s): waits/uploads per step: %s; losses %s (cpu %s)', name, mode,
                          table.concat(per, ' | '), table.concat(l, ' '), table.concat(l_cpu, ' ')))
   end
end

local mingpt = require 'models.mingpt'
local make_gpt = function() return mingpt.GPT {n_layer = 2, n_head = 2, n_embd = 32, vocab_size = 50, block_size = 8} end
check_model('minGPT', make_gpt, 50, 3, 1e-5)

local llama = require 'models.llama'
check_model('Llama (GQA, RoPE)', function()
   return llama.Llama {hidden_size = 32, intermediate_size = 48, num_hidden_layers = 2, num_attention_heads = 4,
                       num_key_value_heads = 2, vocab_size = 40, max_position_embeddings = 16}
end, 40, 3, 1e-5)

-- bf16 GEMMs (the policy's scratch casts): still no wait inside the step
kernels.set_compute_dtype('bf16')
do
   local batch = token_batch(50, 2, 8)
   local _, _, ph = device_steps(make_gpt, batch, 2, 'kept')
   for s = 1, 2 do
      local p = ph[s]
      t.check(p.forward[1] == 0 and p.backward[1] == 0 and p.optimizer[1] == 1,
              'minGPT bf16 step %d: waits forward %d backward %d optimizer %d (want 0 0 1)', s, p.forward[1],
              p.backward[1], p.optimizer[1])
   end
   print('minGPT, bf16 GEMMs: forward and backward wait 0 times, the optimizer step once')
end
kernels.set_compute_dtype(nil)

-- the counter counts: a read of a device tensor is one wait, an upload one upload
do
   local c0, u0 = counts()
   local x = fsdp.full({4}, 2, 'f32', D)
   local v = x:get(2)
   local h = x:cpu()
   local c1, u1 = counts()
   t.check(v == 2 and c1 - c0 == 2 and u1 == u0, 'get + cpu: %d waits, %d uploads (want 2, 0)', c1 - c0, u1 - u0)
   local y = h:to_device(D)
   local c2, u2 = counts()
   t.check(c2 == c1 and u2 - u1 == 1, 'to_device: %d waits, %d uploads (want 0, 1)', c2 - c1, u2 - u1)
   t.close(x:sumsq(), 16, 0, 0, 'sumsq on the device')
   t.check(counts() - c2 == 1, 'sumsq: %d waits (want 1)', counts() - c2)
   x:free(); y:free(); h:free()
end

return t.done()
