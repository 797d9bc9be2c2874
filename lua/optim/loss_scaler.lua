-- Dynamic loss scaling for f16 gradients: the loss is multiplied by
-- `scale` before backward; a step whose gradients overflowed (non-finite
-- global norm) is skipped and the scale halved; after `growth_interval`
-- good steps in a row the scale doubles. A pure state machine with a
-- state_dict, so checkpoints carry it.
local LossScaler = {}
LossScaler.__index = LossScaler

function LossScaler.new(opts)
   opts = opts or {}
   return setmetatable({scale = opts.init_scale or 2 ^ 16, growth_interval = opts.growth_interval or 2000,
                        good_steps = 0, min_scale = opts.min_scale or 1, skipped = 0}, LossScaler)
end

-- after backward: norm is the global norm of the *scaled* gradients.
-- Returns ok (take the step?) and the factor that unscales the gradients.
function LossScaler:update(norm)
   if norm ~= norm or norm == math.huge or norm == -math.huge then
      self.scale = math.max(self.min_scale, self.scale / 2)
      self.good_steps = 0
      self.skipped = self.skipped + 1
      return false, 0
   end
   local unscale = 1 / self.scale
   self.good_steps = self.good_steps + 1
   if self.good_steps >= self.growth_interval then
      self.scale = self.scale * 2
      self.good_steps = 0
   end
   return true, unscale
end

function LossScaler:state_dict()
   return {scale = self.scale, good_steps = self.good_steps, skipped = self.skipped}
end

function LossScaler:load_state_dict(sd)
   self.scale, self.good_steps, self.skipped = sd.scale, sd.good_steps, sd.skipped or 0
end

return LossScaler
