-- fsdp.sample: picking the next token from a row of logits with
-- temperature, top-k and top-p (nucleus) filtering.
local bind = require 'fsdp.ffi'
local C = bind.C

local M = {}

-- row: float* of V logits; returns a 0-based token id
function M.pick(row, V, temperature, top_k, rng, top_p)
   temperature = temperature or 1
   if temperature <= 0 then -- greedy
      local best = 0
      for i = 1, V - 1 do if row[i] > row[best] then best = i end end
      return best
   end
   local cand = {}
   for i = 0, V - 1 do cand[i + 1] = {i, row[i] / temperature} end
   table.sort(cand, function(a, b) return a[2] > b[2] end)
   local k = (top_k and top_k > 0) and math.min(top_k, V) or V
   local maxv, total = cand[1][2], 0
   local probs = {}
   for i = 1, k do probs[i] = math.exp(cand[i][2] - maxv); total = total + probs[i] end
   if top_p and top_p < 1 then
      local acc, cut = 0, k
      for i = 1, k do
         acc = acc + probs[i] / total
         if acc >= top_p then cut = i; break end
      end
      k, total = cut, 0
      for i = 1, k do total = total + probs[i] end
   end
   local u = C.fsdp_rng_uniform(rng) * total
   for i = 1, k do
      u = u - probs[i]
      if u <= 0 then return cand[i][1] end
   end
   return cand[k][1]
end

return M
