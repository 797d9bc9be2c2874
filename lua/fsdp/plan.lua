-- fsdp.plan: per-rank memory of a training configuration, before launching.
--
--   fsdp-lua plan RECIPE --world-size N [recipe options] [--memory-per-rank 80GiB]
--
-- runs the recipe up to fsdp.shard, which hands the model (its parameter
-- shapes only: nothing is allocated) and the options here. Figures follow
-- what this engine allocates:
--   parameters, gradients   fp32 slices: 4 bytes x padded/G each (G = shard group)
--   optimizer (AdamW)       two fp32 slices
--   gathered units          full: the current block's params + grads, the next
--                           block prefetched, two gradient reductions in
--                           flight (each grads + a 1/G slice), the root unit;
--                           grad_op: every block stays gathered until its
--                           backward; none: nothing (the slices are whole)
--   activations             every op output of a step and its gradient, kept
--                           until the step ends (f32 on the CPU backend), by
--                           module kind; with activation checkpointing each
--                           block keeps its input, and one block is live again
--                           during its backward
local T = require 'fsdp.tensor'

local M = {}

local function numel(shape)
   local n = 1
   for _, d in ipairs(shape) do n = n * d end
   return n
end

-- elements one module's own forward saves (N = tokens on this rank): what
-- its activation_elems(N, B, T) says (the layers of fsdp.nn and the
-- attention modules, MLPs and blocks of the model files declare theirs);
-- a module without one counts as nothing
local function module_acts(m, N, B, T_)
   if m.activation_elems then return m:activation_elems(N, B, T_) end
   return 0
end

-- total over a module tree
local function tree_acts(m, N, B, T_)
   local n = module_acts(m, N, B, T_)
   for _, c in ipairs(m._children or {}) do n = n + tree_acts(c.module, N, B, T_) end
   return n
end

local function bytes(n)
   local units = {'B', 'KiB', 'MiB', 'GiB', 'TiB'}
   local i = 1
   while n >= 1024 and i < #units do n = n / 1024; i = i + 1 end
   return string.format(i == 1 and '%d %s' or '%.2f %s', n, units[i])
end
M.bytes = bytes

function M.parse_bytes(s)
   if type(s) == 'number' then return s end
   local n, unit = tostring(s):match('^([%d%.]+)%s*(%a*)$')
   local mult = {[''] = 1, B = 1, K = 1024, KiB = 1024, M = 1024 ^ 2, MiB = 1024 ^ 2, G = 1024 ^ 3, GiB = 1024 ^ 3,
                 GB = 1e9, T = 1024 ^ 4, TiB = 1024 ^ 4}
   if not n or not mult[unit] then error("plan: cannot read a size from '" .. tostring(s) .. "' (e.g. 80GiB)", 0) end
   return tonumber(n) * mult[unit]
end

-- model: built, not materialized; cfg: world_size, strategy, hybrid_group_size,
-- batch (per rank), seq_len, activation_checkpointing, vocab (for the logits)
function M.compute(model, cfg)
   local W = cfg.world_size or 1
   local strategy = cfg.strategy or 'full'
   local G = require('fsdp.shard').group_size(strategy, W, cfg.hybrid_group_size)
   -- the units as fsdp.shard lays them out: the root first, then the blocks
   local layout = require('fsdp.shard').layout(model, G)
   local root_n = layout[1].numel
   local units = {}
   for i = 2, #layout do units[#units + 1] = {numel = layout[i].numel, module = layout[i].module} end
   local function padded(n) return math.ceil(math.max(n, 1) / G) * G end
   local slice, P, max_unit, all_units = padded(root_n) / G, root_n, 0, padded(root_n)
   for _, u in ipairs(units) do
      slice = slice + padded(u.numel) / G
      P = P + u.numel
      max_unit = math.max(max_unit, padded(u.numel))
      all_units = all_units + padded(u.numel)
   end
   local r = {world_size = W, shard_group = G, strategy = strategy, parameters = P}
   r.params = 4 * slice
   r.grads = 4 * slice
   r.optimizer = 8 * slice
   local root_b = 4 * padded(root_n)
   if G == 1 then r.gathered = 0
   elseif strategy == 'grad_op' or strategy == 'hybrid_grad_op' then
      r.gathered = 4 * (all_units - padded(root_n)) + 4 * max_unit * (1 + 2 / G) + 2 * root_b
   else
      r.gathered = (5 + 2 / G) * 4 * max_unit + 2 * root_b
   end
   -- activations: forward outputs and their gradients
   local B, T_ = cfg.batch, cfg.seq_len
   local N = B * T_
   local per_block = 0
   for _, u in ipairs(units) do per_block = math.max(per_block, tree_acts(u.module, N, B, T_)) end
   local blocks_total = 0
   for _, u in ipairs(units) do blocks_total = blocks_total + tree_acts(u.module, N, B, T_) end
   local root_acts = tree_acts(model, N, B, T_) - blocks_total
   local V = cfg.vocab or 0
   root_acts = root_acts + N * V + 2 * N                                   -- logits, CE losses and lse
   local act_bytes = cfg.activation_bytes or 4
   r.activations = 2 * act_bytes * (blocks_total + root_acts)
   local width = cfg.width or 0
   r.activations_checkpointed = 2 * act_bytes * (#units * N * width + per_block + root_acts)
   r.total = r.params + r.grads + r.optimizer + r.gathered +
             (cfg.activation_checkpointing and r.activations_checkpointed or r.activations)
   r.units = #units
   r.max_unit = max_unit
   return r
end

function M.report(r, limit)
   local lines = {
      string.format('memory plan: %d rank(s), strategy %s (shard group %d), %s parameters',
                    r.world_size, r.strategy, r.shard_group, r.parameters >= 1e9 and string.format('%.2fB', r.parameters / 1e9)
                    or string.format('%.2fM', r.parameters / 1e6)),
      string.format('  parameters (fp32 slice)     %s', bytes(r.params)),
      string.format('  gradients (fp32 slice)      %s', bytes(r.grads)),
      string.format('  optimizer state (AdamW)     %s', bytes(r.optimizer)),
      string.format('  gathered units (peak)       %s', bytes(r.gathered)),
      string.format('  activations                 %s (with activation checkpointing: %s)',
                    bytes(r.activations), bytes(r.activations_checkpointed)),
      string.format('  peak per rank               %s', bytes(r.total)),
   }
   if limit then
      local fits = r.total <= limit
      lines[#lines + 1] = string.format('  %s in %s per rank%s', fits and 'fits' or 'DOES NOT FIT', bytes(limit),
                                        fits and '' or string.format(' (short by %s)', bytes(r.total - limit)))
   end
   return table.concat(lines, '\n')
end

return M
