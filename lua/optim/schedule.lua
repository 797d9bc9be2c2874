-- Learning-rate schedules as pure functions of the step (0-based): linear
-- warmup to lr over `warmup` steps (step s < warmup gets lr * (s+1)/warmup), then decay to min_lr by
-- `total` steps, holding min_lr after. decay: 'cosine' | 'linear' | 'constant'.
local M = {}

function M.lr_at(step, cfg)
   local lr, min_lr = cfg.lr, cfg.min_lr or 0
   local warmup, total = cfg.warmup or 0, cfg.total or 1
   if step < warmup then return lr * (step + 1) / warmup end
   local decay = cfg.decay or 'cosine'
   if decay == 'constant' then return lr end
   if step >= total then return min_lr end
   local progress = (step - warmup) / math.max(1, total - warmup)
   if decay == 'linear' then return lr + (min_lr - lr) * progress end
   if decay == 'cosine' then return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress)) end
   error("schedule: unknown decay '" .. tostring(decay) .. "' (cosine, linear, constant)", 2)
end

-- a function step -> lr bound to cfg
function M.new(cfg)
   for _, k in ipairs({'lr'}) do
      if type(cfg[k]) ~= 'number' then error('schedule: ' .. k .. ' must be a number', 2) end
   end
   return function(step) return M.lr_at(step, cfg) end
end

return M
