-- Global-norm gradient clipping over flat shards: the norm is the square
-- root of the sum over every rank's slices, so it is the same on every rank
-- and equal to the unsharded model's. Returns the norm and the factor to
-- scale gradients by (folded into the optimizer step, no extra pass).
local M = {}

-- allreduce: function(number) -> sum over ranks (identity in a world of one)
function M.global_norm(sharded, allreduce)
   local s = sharded:grad_sumsq()
   if allreduce then s = allreduce(s) end
   return math.sqrt(s)
end

function M.clip_factor(norm, max_norm)
   if not max_norm or max_norm <= 0 then return 1 end
   if norm ~= norm or norm == math.huge then return 1 end
   return math.min(1, max_norm / (norm + 1e-6))
end

return M
