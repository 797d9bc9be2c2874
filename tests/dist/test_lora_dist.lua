-- LoRA under sharding (tests/dist/lora_probe.lua: a tiny Llama with
-- adapters on q/k/v/o, block 0 wholly frozen, AdamW with weight decay and a
-- parameter group for lora_B):
--  * 1 rank vs 2/3/4 ranks x full / grad_op / none (and hybrid_full,
--    activation checkpointing, gradient accumulation): per-step losses and
--    the adapter weights within 1e-5 relative; every frozen weight bitwise
--    unchanged after training with weight decay on;
--  * a unit whose forward records no backward op (block 0: nothing in it
--    or below it trains) is gathered once a step, for its forward only;
--  * each rank's model state is its slice of the frozen values (4 bytes an
--    element, 2 when gathered in bf16) plus the trainable parameters'
--    values and gradients: 4F/N + 8A/N (+ padding), nothing for the rest;
--  * an adapter checkpoint saved on 4 ranks holds the adapters and their
--    optimizer state only, resumes on 2 and 3 ranks (other strategies,
--    activation checkpointing) and continues with the uninterrupted run's
--    losses (with bf16 gathers: close to them, the base recognised); a run
--    on another frozen base is refused with both named, and so are a full
--    checkpoint for a model with frozen parameters and the reverse.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'

local dir = D.tmpdir()
local n_out = 0

-- runs the probe on n ranks; returns its JSON (nil, output on failure)
local function probe(n, args, may_fail)
   n_out = n_out + 1
   local out_file = string.format('%s/out%d.json', dir, n_out)
   local status, out = D.run(n, 'tests/dist/lora_probe.lua out=' .. out_file .. ' ' .. args)
   if status ~= 0 then
      if not may_fail then t.check(false, '%d rank(s) %s: exit %d\n%s', n, args, status, out) end
      return nil, out
   end
   return fsdp.json.decode(require('fsdp.fs').read(out_file)), out
end

local function rel_losses(a, b)
   local worst = 0
   for k, v in pairs(b.losses) do
      local x = a.losses[k]
      if not x then return math.huge end
      worst = math.max(worst, math.abs(x - v) / math.abs(v))
   end
   return worst
end

local function rel_adapters(a, b)
   local worst = 0
   for name, vb in pairs(b.adapters) do
      local va = a.adapters[name]
      if not va or #va ~= #vb then return math.huge end
      local scale, diff = 0, 0
      for i = 1, #vb do
         scale = math.max(scale, math.abs(vb[i]))
         diff = math.max(diff, math.abs(va[i] - vb[i]))
      end
      worst = math.max(worst, diff / math.max(scale, 1e-30))
   end
   return worst
end

local ref = probe(1, 'strategy=none')
t.check(ref and ref.frozen_same, 'one rank: the frozen weights moved')
local F, A = ref.params - ref.trainable, ref.trainable
print(string.format('1 rank: %d parameters, %d trainable (adapters of blocks 1-2), state %d bytes', ref.params, A,
                    ref.state_bytes))
t.check(ref.state_bytes >= 4 * F + 8 * A and ref.state_bytes <= 4 * F + 8 * A + 64,
        'one rank: model state %d bytes, want 4F + 8A = %d (frozen values, adapter values and gradients)',
        ref.state_bytes, 4 * F + 8 * A)

local cases = {
   {2, 'full'}, {2, 'grad_op'}, {2, 'none'}, {3, 'full'}, {3, 'grad_op'}, {3, 'none'},
   {4, 'full'}, {4, 'grad_op'}, {4, 'none'}, {4, 'hybrid_full'}, {4, 'hybrid_grad_op'},
   {2, 'full', 'ac=1'}, {3, 'grad_op', 'ac=1'}, {3, 'full', 'accum=2'},
}
for _, c in ipairs(cases) do
   local n, strategy, extra = c[1], c[2], c[3] or ''
   local name = string.format('%d %s %s', n, strategy, extra)
   local r = probe(n, 'strategy=' .. strategy .. ' ' .. extra)
   if r then
      local lr, ar = rel_losses(r, ref), rel_adapters(r, ref)
      print(string.format('%-22s losses %.2e, adapters %.2e relative; gathers of blocks 0/1: %d/%d; state %d bytes',
                          name, lr, ar, r.gathers[1], r.gathers[2], r.state_bytes))
      t.check(lr <= 1e-5, '%s: losses differ from one rank by %.3g relative', name, lr)
      t.check(ar <= 1e-5, '%s: adapter weights differ from one rank by %.3g relative', name, ar)
      t.check(r.frozen_same, '%s: a frozen weight moved (weight decay 0.1)', name)
      t.check(r.pinned == 0, '%s: %d times a unit was still gathered after a backward', name, r.pinned)
      local G = (strategy == 'none' and 1) or (strategy:match('^hybrid') and 2) or n
      if G > 1 then
         -- block 0 records nothing: gathered for its forward only
         t.check(r.gathers[1] == r.steps * (extra:match('accum=(%d)') or 1), '%s: block 0 gathered %d times in %d steps',
                 name, r.gathers[1], r.steps)
         local want = strategy:match('grad_op') and 1 or 2
         t.check(r.gathers[2] == want * r.steps * (extra:match('accum=(%d)') or 1),
                 '%s: block 1 gathered %d times in %d steps', name, r.gathers[2], r.steps)
         -- the frozen values' slice, the adapters' values and gradients
         local bound = (4 * F + 8 * A) / G + 16 * 4 * G
         t.check(r.state_bytes <= bound, '%s: model state %d bytes > 4F/G + 8A/G + padding = %d', name,
                 r.state_bytes, bound)
      end
   end
end

-- LoRA holds less than training the whole model, at the same batch
do
   local lo, full = probe(2, 'strategy=full'), probe(2, 'strategy=full lora=0')
   if lo and full then
      print(string.format('2 ranks, full shard: peak %d bytes with LoRA, %d training everything (%.2fx); state %d vs %d',
                          lo.peak, full.peak, lo.peak / full.peak, lo.state_bytes, full.state_bytes))
      t.check(lo.peak < full.peak, 'LoRA peaked at %d bytes, training everything at %d', lo.peak, full.peak)
      t.check(full.pinned == 0, 'full fine-tune: a unit stayed gathered after a backward')
   end
end

-- a bf16 gather: frozen slices stored in bf16 (half the bytes), nothing moves
do
   local r = probe(2, 'strategy=full dtype=bf16')
   if r then
      local lr = rel_losses(r, ref)
      print(string.format('2 full bf16             losses %.2e relative (bf16 gathers); state %d bytes', lr, r.state_bytes))
      t.check(r.frozen_same, 'bf16: a frozen weight moved')
      t.check(lr <= 1e-2, 'bf16 gathers: losses %.3g relative from f32', lr)
      t.check(r.state_bytes <= (2 * F + 8 * A) / 2 + 16 * 4 * 2, 'bf16: model state %d bytes > 2F/2 + 8A/2 + padding',
              r.state_bytes)
   end
end

-- adapter checkpoints: saved on 4 ranks after step 3 of 6
local ck = dir .. '/ck'
local straight = probe(4, 'strategy=full save_at=3 save_dir=' .. ck)
local step3 = ck .. '/step_00000003'
local index = fsdp.json.decode(require('fsdp.fs').read(step3 .. '/index.json') or '{}')
local saved_params, files = 0, 0
for _, u in ipairs(index.units or {}) do saved_params = saved_params + u.numel end
for r = 0, 3 do
   local f = io.open(string.format('%s/rank_%05d.safetensors', step3, r), 'rb')
   if f then files = files + f:seek('end'); f:close() end
end
t.check(saved_params == A, 'the adapter checkpoint lists %d parameters, want the %d trainable ones', saved_params, A)
t.check(index.frozen and index.frozen.parameters == F and index.frozen.fingerprint,
        'index.json records the frozen base: %s', fsdp.json.encode(index.frozen or {}))
-- the trainable values and two moments, padding and safetensors headers
t.check(files <= 12 * (A + 4 * 4 * 4) + 4 * 4096, 'the adapter checkpoint has %d bytes, more than its adapters\' %d',
        files, 12 * A)
print(string.format('adapter checkpoint: %d bytes in rank files (%d adapter elements; a full one holds %d)', files, A,
                    ref.params))
-- (a bf16 gather rounds the weights it computes with, so it only comes near)
for _, c in ipairs({{2, 'grad_op'}, {3, 'none'}, {2, 'full', 'ac=1'}, {2, 'full', 'dtype=bf16', 1e-2}}) do
   local r = probe(c[1], 'strategy=' .. c[2] .. ' resume=' .. step3 .. ' ' .. (c[3] or ''))
   if r and straight then
      local lr = rel_losses(straight, r) -- over the resumed run's steps
      local ar = rel_adapters(r, straight)
      print(string.format('resumed 4 -> %d %-8s %-10s losses 4-6 %.2e, adapters %.2e relative', c[1], c[2], c[3] or '',
                          lr, ar))
      t.check(r.losses['3'] == nil and r.losses['4'] ~= nil, 'the resumed run should start at step 4')
      t.check(lr <= (c[4] or 1e-5), 'resumed at %d ranks %s: losses differ by %.3g relative', c[1], c[3] or '', lr)
      t.check(ar <= (c[4] or 1e-5), 'resumed at %d ranks %s: adapters differ by %.3g relative', c[1], c[3] or '', ar)
      t.check(r.frozen_same, 'resumed at %d ranks: a frozen weight moved', c[1])
   end
end
-- the frozen base is part of what it resumes onto
local _, out = probe(2, 'strategy=full base_seed=8 resume=' .. step3, true)
t.check(out:find("trained over the frozen base 'tiny-llama seed 7'", 1, true) and
        out:find("this run's frozen base is 'tiny-llama seed 8'", 1, true) and out:find(index.frozen.fingerprint, 1, true),
        'resuming onto another base should be refused naming both:\n%s', out)

-- a full checkpoint is not an adapter one, nor the reverse
local full_ck = dir .. '/full_ck'
probe(2, 'strategy=full lora=0 steps=2 save_at=2 save_dir=' .. full_ck)
local _, out2 = probe(2, 'strategy=full resume=' .. full_ck .. '/step_00000002', true)
t.check(out2:find('is a full checkpoint (every parameter trainable), but this model freezes', 1, true),
        'an adapter run resuming a full checkpoint should be refused:\n%s', out2)
local _, out3 = probe(2, 'strategy=full lora=0 resume=' .. step3, true)
t.check(out3:find("holds trainable parameters only, trained over the frozen base 'tiny-llama seed 7'", 1, true),
        'a full run resuming an adapter checkpoint should be refused:\n%s', out3)

os.execute('rm -rf ' .. dir)
return t.done()
