-- fsdp.kv_cache: keys and values kept across decoding steps. While a cache
-- is active (generation), every attention module appends the keys and
-- values of the new positions to its own cache and attends over all of
-- them, so each new token costs one position, not the whole context.
-- Position-aware parts of the models (learned positions, RoPE) read the
-- offset of the first new position from kv_cache.offset().
--
--   kv_cache.start(max_positions)   -- batch of one
--   logits = model(prompt)          -- fills the caches, positions 0 .. n-1
--   kv_cache.advance(n)
--   logits = model(next_token)      -- position n
--   kv_cache.advance(1) ... kv_cache.stop()
local T = require 'fsdp.tensor'

local M = {}
local state = nil

function M.start(max_positions)
   M.stop()
   state = {pos = 0, max = max_positions, caches = {}}
end

function M.stop()
   if state then
      for _, c in pairs(state.caches) do c.k:free(); c.v:free() end
   end
   state = nil
end

function M.active() return state ~= nil end
function M.offset() return state and state.pos or 0 end
function M.advance(n) state.pos = state.pos + n end

-- q [1, Tq, NH*HD], k and v [1, Tq, NKV*HD] for the new positions (q and k
-- already rotated for their positions): stores k, v and returns the
-- attention output [1, Tq, NH*HD]. No gradient (generation only).
-- On a GPU the few new rows come down, the caches and this loop stay on the
-- host, and the output goes back up (the GEMMs, where the time goes at
-- these sizes, stay on the device).
local attend_host
function M.attend(module, q, k, v, NH, NKV, window)
   if q.device < 0 then return attend_host(module, q, k, v, NH, NKV, window) end
   local hq, hk, hv = q:cpu(), k:cpu(), v:cpu()
   local out = attend_host(module, hq, hk, hv, NH, NKV, window)
   local d = T.adopt(out:to_device(q.device))
   hq:free(); hk:free(); hv:free(); out:free()
   return d
end

attend_host = function(module, q, k, v, NH, NKV, window)
   if q.shape[1] ~= 1 then error('kv_cache: generation with a cache takes a batch of one', 0) end
   local Tq, HD = q.shape[2], q.shape[3] / NH
   local width = NKV * HD
   local P = state.pos
   if P + Tq > state.max then
      error(string.format('kv_cache: %d positions exceed the cache of %d', P + Tq, state.max), 0)
   end
   local c = state.caches[module]
   if not c then
      c = {k = T.empty({state.max, width}, 'f32'), v = T.empty({state.max, width}, 'f32')}
      state.caches[module] = c
   end
   local kc, vc = c.k:ptr(), c.v:ptr()
   local kp, vp, qp = k:ptr(), v:ptr(), q:ptr()
   for t = 0, Tq - 1 do
      for j = 0, width - 1 do
         kc[(P + t) * width + j] = kp[t * width + j]
         vc[(P + t) * width + j] = vp[t * width + j]
      end
   end
   local out = T.zeros({1, Tq, NH * HD}, 'f32', true)
   local op = out:ptr()
   local scale = 1 / math.sqrt(HD)
   local group = NH / NKV
   local scores = {}
   for t = 0, Tq - 1 do
      local pos = P + t
      local first = (window and window > 0) and math.max(0, pos - window + 1) or 0
      for h = 0, NH - 1 do
         local kvh = math.floor(h / group)
         local qo = t * NH * HD + h * HD
         local m = -math.huge
         for s = first, pos do
            local ko, dot = s * width + kvh * HD, 0
            for d = 0, HD - 1 do dot = dot + qp[qo + d] * kc[ko + d] end
            dot = dot * scale
            scores[s] = dot
            if dot > m then m = dot end
         end
         local sum = 0
         for s = first, pos do
            local e = math.exp(scores[s] - m)
            scores[s] = e
            sum = sum + e
         end
         for s = first, pos do
            local w, vo = scores[s] / sum, s * width + kvh * HD
            for d = 0, HD - 1 do op[qo + d] = op[qo + d] + w * vc[vo + d] end
         end
      end
   end
   return out
end

-- q, k, v column blocks of a fused [1, T, 3C] qkv (GPT-2's c_attn) as tensors
function M.split_qkv(qkv)
   if qkv.device >= 0 then -- split on the host (a few rows), the parts go back up
      local h = qkv:cpu()
      local parts = {M.split_qkv(h)}
      h:free()
      for i = 1, 3 do
         local d = T.adopt(parts[i]:to_device(qkv.device))
         parts[i]:free()
         parts[i] = d
      end
      return parts[1], parts[2], parts[3]
   end
   local Tq, C3 = qkv.shape[2], qkv.shape[3]
   local C = C3 / 3
   local parts = {}
   local src = qkv:ptr()
   for i = 0, 2 do
      local t = T.empty({1, Tq, C}, 'f32', true)
      local dst = t:ptr()
      for r = 0, Tq - 1 do
         for j = 0, C - 1 do dst[r * C + j] = src[r * C3 + i * C + j] end
      end
      parts[i + 1] = t
   end
   return parts[1], parts[2], parts[3]
end

return M
