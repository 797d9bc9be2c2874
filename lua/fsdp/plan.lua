-- fsdp.plan: per-rank memory of a training configuration, before launching.
--
--   fsdp-lua plan RECIPE --world-size N [recipe options] [--memory-per-rank 80GiB]
--
-- asks the recipe for its options, its model (parameter shapes only:
-- nothing is allocated) and what it gives fsdp.shard, lays the model out the
-- way fsdp.shard would, and prints what one rank holds, with the
-- assumptions it made. Figures follow what this engine allocates
-- (P parameters, N ranks in the shard group, T tokens per rank):
--   model state             fp32 slices of parameters, gradients and the two
--                           AdamW moments: 16 P / N bytes (in host memory
--                           with --cpu-offload on a GPU); frozen parameters
--                           (Module:freeze, fsdp.lora) only their slice, in
--                           the gather dtype: 4 or 2 F / N bytes
--   gathered units          full: the current unit's f32 parameters and
--                           gradients, the next unit prefetched (f32, plus
--                           its bf16/f16 receive buffer while the gather is
--                           in flight), two gradient reductions in flight
--                           (in the reduce dtype), the root unit; frozen
--                           parameters are gathered (f32) but take no
--                           gradient buffer and no reduction; grad_op:
--                           every block stays gathered until its backward;
--                           none: nothing (the slices are whole)
--   activations             every op output of a step and its gradient, kept
--                           until the step ends: f32 (tensors are f32 between
--                           ops on both backends; bf16 is the dtype of the
--                           gathers and, on a GPU, of GEMM and attention
--                           inputs), from the shapes each module declares
--                           (activation_elems); with activation checkpointing
--                           each block keeps its input, and one block is live
--                           again during its backward
--   on a GPU                the CUDA context, cuBLASLt workspace and, with
--                           more than one rank, NCCL's buffers; bf16/f16
--                           scratch copies of the largest GEMM's operands
-- plan.guard compares the estimate with the memory of this machine before a
-- recipe allocates (train_lm.lua calls it before fsdp.shard).
local cli = require 'fsdp.cli'

local M = {}

-- bytes per element
local DTYPE_BYTES = {f32 = 4, bf16 = 2, f16 = 2}

-- device overheads assumed on a GPU (see the module comment); NCCL's is its
-- NCCL_BUFFSIZE (4 MiB by default) per channel, both directions, 32 channels
M.CUDA_CONTEXT = 512 * 2 ^ 20
M.CUBLAS_WORKSPACE = 32 * 2 ^ 20
local function nccl_buffers()
   local per = tonumber(os.getenv('NCCL_BUFFSIZE') or '') or 4 * 2 ^ 20
   return 2 * 32 * per
end

-- options of `fsdp-lua plan` itself; every other argument goes to the recipe
M.options = {
   {'world_size', 1, 'the number of ranks to plan for', type = 'integer', min = 1,
    aliases = {'nproc_per_node', 'nproc', 'num_gpus'}},
   {'memory_per_rank', '', 'a budget such as 80GiB, 512MiB or 40GB; the report then says whether the plan fits',
    type = 'size'},
}

---------------------------------------------------------------------------
-- published shapes: every family file's `published` table (config.json
-- fields of released checkpoints, --size llama2-7b)

local function published_tables()
   local out = {}
   for _, f in ipairs(require('models').families()) do
      local mod = f.module and require(f.module)
      for name, cfg in pairs(type(mod) == 'table' and mod.published or {}) do out[name] = cfg end
   end
   return out
end

-- the names of the published shapes, sorted
function M.published_names()
   local names = {}
   for k in pairs(published_tables()) do names[#names + 1] = k end
   -- llama2-7b before llama2-13b: by the name, then the size as a number
   local function key(n)
      local prefix, size = n:match('^(.*)%-([%d%.]+)')
      return prefix or n, tonumber(size) or 0
   end
   table.sort(names, function(a, b)
      local pa, na = key(a)
      local pb, nb = key(b)
      if pa ~= pb then return pa < pb end
      if na ~= nb then return na < nb end
      return a < b
   end)
   return names
end

-- a copy of the config.json table of a published shape (case ignored), or nil
function M.published(name)
   local t = published_tables()
   local cfg = t[name] or t[tostring(name):lower()]
   if not cfg then return nil end
   local out = {}
   for k, v in pairs(cfg) do out[k] = v end
   return out
end

---------------------------------------------------------------------------

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

-- total over a module tree; a Linear making rows of V (the vocabulary) is
-- the LM head, whose logits the loss head's term counts (M.compute)
local function tree_acts(m, N, B, T_, V)
   local n = (V and V > 0 and m.n_out == V) and 0 or module_acts(m, N, B, T_)
   for _, c in ipairs(m._children or {}) do n = n + tree_acts(c.module, N, B, T_, V) end
   return n
end

-- the widest Linear of a module tree (n_in, n_out), for the GEMM scratch
local function widest_linear(m, best)
   best = best or {0, 0}
   if m.n_in and m.n_out and m.n_in * m.n_out > best[1] * best[2] then best = {m.n_in, m.n_out} end
   for _, c in ipairs(m._children or {}) do best = widest_linear(c.module, best) end
   return best
end

local function bytes(n)
   local units = {'B', 'KiB', 'MiB', 'GiB', 'TiB'}
   local i = 1
   while n >= 1024 and i < #units do n = n / 1024; i = i + 1 end
   return string.format(i == 1 and '%d %s' or '%.2f %s', n, units[i])
end
M.bytes = bytes

function M.parse_bytes(s)
   local v, why = cli.parse_size(s)
   if not v then error("plan: cannot read a size from '" .. tostring(s) .. "': " .. why, 0) end
   return v
end

-- model: built, not materialized; cfg: world_size, strategy, hybrid_group_size,
-- batch (per rank), seq_len, activation_checkpointing, vocab (for the logits),
-- width, param_dtype, reduce_dtype (default f32), device ('cpu' or 'cuda'),
-- cpu_offload. Returns the figures in bytes per rank (r.total; r.host and
-- r.device split it by where it lives)
function M.compute(model, cfg)
   local W = cfg.world_size or 1
   local strategy = cfg.strategy or 'full'
   local G = require('fsdp.shard').group_size(strategy, W, cfg.hybrid_group_size)
   local cuda = cfg.device == 'cuda'
   local pdt, rdt = cfg.param_dtype or 'f32', cfg.reduce_dtype or 'f32'
   local pb, rb = DTYPE_BYTES[pdt], DTYPE_BYTES[rdt]
   if not pb then error("plan: param_dtype '" .. tostring(pdt) .. "' is not f32, bf16 or f16", 0) end
   if not rb then error("plan: reduce_dtype '" .. tostring(rdt) .. "' is not f32, bf16 or f16", 0) end
   -- the units as fsdp.shard lays them out: the root first, then the blocks
   local layout = require('fsdp.shard').layout(model, G)
   local units = {}
   for i = 2, #layout do units[#units + 1] = {numel = layout[i].numel, module = layout[i].module} end
   -- each unit as fsdp.shard keeps it: its trainable flat (an f32 master
   -- slice, a gradient slice, two moments; gathered with a gradient buffer
   -- and reduced) and its frozen flat (a slice in the gather dtype, f32
   -- where the unit is never gathered; gathered without a gradient)
   local offload = cuda and cfg.cpu_offload or false
   local fb = (G == 1 and not offload) and 4 or pb
   local function padded(n) return math.ceil(math.max(n, 1) / G) * G end
   local slice, fslice, P, F = 0, 0, 0, 0
   local max_p, max_g, all_p, root_p, root_g = 0, 0, 0, 0, 0
   for i, u in ipairs(layout) do
      local nf = u.frozen.numel
      local pt = padded(u.numel)
      local pf = nf > 0 and math.ceil(nf / G) * G or 0
      slice, fslice = slice + pt / G, fslice + pf / G
      P, F = P + u.numel + nf, F + nf
      -- what a gather of it holds in f32: the trainable flat unless it is empty
      local gp = ((u.numel > 0 or nf == 0) and pt or 0) + pf
      local gg = u.numel > 0 and pt or 0 -- its gradient buffer
      if i == 1 then root_p, root_g = gp, gg
      else
         max_p, max_g, all_p = math.max(max_p, gp), math.max(max_g, gg), all_p + gp
      end
   end
   local r = {world_size = W, shard_group = G, strategy = strategy, parameters = P, trainable_parameters = P - F,
              frozen_parameters = F, param_dtype = pdt, reduce_dtype = rdt, device = cuda and 'cuda' or 'cpu',
              cpu_offload = offload, frozen_dtype = fb == 4 and 'f32' or pdt,
              batch = cfg.batch, seq_len = cfg.seq_len, activation_checkpointing = cfg.activation_checkpointing}
   r.frozen = fb * fslice
   r.params = 4 * slice + r.frozen
   r.grads = 4 * slice
   r.optimizer = 8 * slice
   -- a gather in bf16/f16 holds its receive buffer (and the send slice)
   -- beside the f32 unit it fills until it completes
   local staging = pdt ~= 'f32' and pb * (1 + 1 / G) or 0
   -- a reduction in flight: the full gradient in the reduce dtype and its slice
   local reducing = rb * (1 + 1 / G)
   local max_unit = math.max(max_p, max_g)
   local root_b = 4 * root_p + 4 * root_g -- the root's parameters and gradients stay until its backward
   if G == 1 then r.gathered = 0
   elseif strategy == 'grad_op' or strategy == 'hybrid_grad_op' then
      r.gathered = 4 * all_p + max_g * (4 + 8 / G) + max_p * staging + root_b
   else
      -- params, grads, the prefetched unit (+ staging), two reductions
      r.gathered = max_p * (4 + 4 + staging) + max_g * (4 + 2 * reducing + (rdt ~= 'f32' and rb or 0)) + root_b
   end
   -- activations: the forward outputs backward reads; backward frees each
   -- output and its gradient once the op that made it has run backward, so
   -- it never holds more than the forward left (with checkpointing: the
   -- units' inputs and one unit recomputed)
   local B, T_ = cfg.batch, cfg.seq_len
   local N = B * T_
   local V = cfg.vocab or 0
   local per_block = 0
   for _, u in ipairs(units) do per_block = math.max(per_block, tree_acts(u.module, N, B, T_, V)) end
   local blocks_total = 0
   for _, u in ipairs(units) do blocks_total = blocks_total + tree_acts(u.module, N, B, T_, V) end
   local root_acts = tree_acts(model, N, B, T_, V) - blocks_total
   local act_bytes = cfg.activation_bytes or 4
   local width = cfg.width or 0
   -- the loss head (ops.lm_loss): on the host in chunks of rows (a chunk of
   -- logits, dx, dweight and the losses), on a GPU the whole logits and
   -- their gradient; a model whose loss needs the whole logits on the host
   -- too says so (model.whole_logits: Gemma 2's soft-capped ones)
   if cuda or model.whole_logits then
      r.head = 2 * act_bytes * N * V + 8 * N
   else
      local chunk = math.min(N, math.max(1, math.floor(require('fsdp.ops').LINEAR_CE_CHUNK_BYTES / (4 * math.max(V, 1)))))
      r.head = V > 0 and 4 * (chunk * V + N * width + V * width + 2 * N) or 0
   end
   r.activations = act_bytes * (blocks_total + root_acts) + r.head
   r.activations_checkpointed = act_bytes * (#units * N * width + per_block + root_acts) + r.head
   r.per_block_token = #units > 0 and blocks_total / #units / N or 0     -- elements per layer per token
   -- a GPU: context, workspace, NCCL, and the largest GEMM's operands cast
   -- to the compute dtype (bf16/f16) while it runs
   r.overhead = 0
   if cuda then
      r.cuda_context = M.CUDA_CONTEXT + M.CUBLAS_WORKSPACE
      r.nccl = W > 1 and nccl_buffers() or 0
      local wl = widest_linear(model)
      r.scratch = pdt ~= 'f32' and pb * (N * wl[1] + wl[1] * wl[2] + N * wl[2]) or 0
      r.overhead = r.cuda_context + r.nccl + r.scratch
   end
   local acts = cfg.activation_checkpointing and r.activations_checkpointed or r.activations
   r.state = r.params + r.grads + r.optimizer
   r.total = r.state + r.gathered + acts + r.overhead
   if r.cpu_offload then
      r.host, r.device_bytes = r.state, r.total - r.state
   elseif cuda then
      r.host, r.device_bytes = 0, r.total
   else
      r.host, r.device_bytes = r.total, 0
   end
   r.units = #units
   r.max_unit = max_unit
   return r
end

local function count(n)
   return n >= 1e9 and string.format('%.2fB', n / 1e9) or string.format('%.2fM', n / 1e6)
end

-- the assumptions behind a compute result, as lines of text
function M.assumptions(r)
   local out = {}
   out[#out + 1] = string.format('%d x %d tokens per rank, activation checkpointing %s', r.batch or 0,
                                 r.seq_len or 0, r.activation_checkpointing and 'on' or 'off')
   if r.device == 'cuda' then
      out[#out + 1] = string.format('device cuda: gathers in %s, gradients reduced in %s; tensors f32 between ops%s',
                                    r.param_dtype, r.reduce_dtype, r.param_dtype ~= 'f32' and
                                    (', GEMMs and attention in ' .. r.param_dtype) or '')
      out[#out + 1] = string.format('CUDA context + cuBLASLt workspace %s, NCCL buffers %s%s', bytes(r.cuda_context),
                                    bytes(r.nccl), r.cpu_offload and
                                    '; --cpu-offload: model state in pinned host memory' or '')
   else
      out[#out + 1] = string.format('device cpu: gathers in %s, gradients reduced in %s; f32 compute ' ..
                                    '(bf16/f16 are storage on the CPU)', r.param_dtype, r.reduce_dtype)
   end
   return out
end

function M.report(r, limit)
   local lines = {
      string.format('memory plan: %d rank(s), strategy %s (shard group %d), %s parameters%s',
                    r.world_size, r.strategy, r.shard_group, count(r.parameters),
                    (r.frozen_parameters or 0) > 0 and string.format(' (%s trainable, %s frozen)',
                                                                     count(r.trainable_parameters),
                                                                     count(r.frozen_parameters)) or ''),
   }
   for i, a in ipairs(M.assumptions(r)) do
      lines[#lines + 1] = (i == 1 and '  assuming ' or '           ') .. a
   end
   local function row(label, v) lines[#lines + 1] = string.format('  %-27s %s', label, v) end
   if (r.frozen_parameters or 0) > 0 then
      row('trainable params (fp32)', bytes(r.params - r.frozen))
      row(string.format('frozen params (%s slice)', r.frozen_dtype), bytes(r.frozen))
   else
      row('parameters (fp32 slice)', bytes(r.params))
   end
   row('gradients (fp32 slice)', bytes(r.grads))
   row('optimizer state (AdamW)', bytes(r.optimizer))
   row('gathered units (peak)', bytes(r.gathered))
   row('activations', string.format('%s (with activation checkpointing: %s)', bytes(r.activations),
                                     bytes(r.activations_checkpointed)))
   if r.device == 'cuda' then
      row('CUDA context, NCCL, scratch', bytes(r.overhead))
   end
   row('peak per rank', bytes(r.total))
   if r.cpu_offload then
      row('  of which on the GPU', bytes(r.device_bytes))
      row('  of which in host memory', bytes(r.host))
   end
   if limit then
      local need = r.device == 'cuda' and r.device_bytes or r.total
      local fits = need <= limit
      lines[#lines + 1] = string.format('  %s in %s per rank%s', fits and 'fits' or 'DOES NOT FIT', bytes(limit),
                                        fits and '' or string.format(' (short by %s)', bytes(need - limit)))
   end
   return table.concat(lines, '\n')
end

---------------------------------------------------------------------------
-- a recipe's options -> compute's cfg

-- the plan of a recipe's model for its options `o` on `world` ranks;
-- refuses a batch that does not split over the ranks
function M.for_options(model, o, world, overrides)
   overrides = overrides or {}
   local function pick(k) if overrides[k] ~= nil then return overrides[k] end return o[k] end
   local batch = pick('batch_size') or 1
   if batch % world ~= 0 then
      error(string.format('--batch-size %d does not split over %d ranks: give a multiple of %d', batch, world, world), 0)
   end
   local hg = (pick('hybrid_group_size') or 0) > 0 and pick('hybrid_group_size') or nil
   local strategy = pick('strategy') or 'full'
   if hg and (strategy == 'hybrid_full' or strategy == 'hybrid_grad_op') and world % hg ~= 0 then
      error(string.format('--hybrid-group-size %d does not divide %d ranks', hg, world), 0)
   end
   local dev = tostring(pick('device') or 'cpu')
   local cfg = model.config or {}
   return M.compute(model, {world_size = world, strategy = strategy, hybrid_group_size = hg,
                            batch = batch / world, seq_len = pick('seq_len') or cfg.block_size or 1,
                            activation_checkpointing = pick('activation_checkpointing'),
                            vocab = cfg.vocab_size, width = cfg.n_embd or cfg.hidden_size,
                            param_dtype = pick('param_dtype'), reduce_dtype = pick('reduce_dtype'),
                            device = dev:match('^cuda') and 'cuda' or 'cpu', cpu_offload = pick('cpu_offload')})
end

---------------------------------------------------------------------------
-- the memory guard

-- bytes the kernel says can be allocated without swapping (MemAvailable)
function M.host_available()
   local f = io.open('/proc/meminfo', 'r')
   if not f then return nil end
   local text = f:read('*a')
   f:close()
   local kb = text:match('MemAvailable:%s*(%d+)%s*kB')
   return kb and tonumber(kb) * 1024 or nil
end

-- changes to the options that would make the run fit `fits(r)`, as text
local function remedies(model, o, world, fits)
   local out = {}
   local function try(label, ov)
      local ok, r = pcall(M.for_options, model, o, world, ov)
      if ok and fits(r) then out[#out + 1] = string.format('%s (%s per rank)', label, bytes(r.total)); return true end
      return false
   end
   if not o.activation_checkpointing then try('--activation-checkpointing', {activation_checkpointing = true}) end
   if (o.batch_size or world) > world then
      -- the largest global batch that fits, a multiple of the ranks
      local lo, found = 1, nil
      local hi = math.floor((o.batch_size - 1) / world)
      while lo <= hi do
         local mid = math.floor((lo + hi) / 2)
         local ok, r = pcall(M.for_options, model, o, world, {batch_size = mid * world})
         if ok and fits(r) then found, lo = mid, mid + 1 else hi = mid - 1 end
      end
      if found then try(string.format('--batch-size %d', found * world), {batch_size = found * world}) end
   end
   if o.strategy ~= 'full' and o.strategy ~= 'hybrid_full' then try('--strategy full', {strategy = 'full'}) end
   if tostring(o.device):match('^cuda') and not o.cpu_offload then try('--cpu-offload', {cpu_offload = true}) end
   if #out == 0 then
      -- everything that saves memory at once, and the ranks that then fit
      local ov = {activation_checkpointing = true, batch_size = world, strategy = 'full',
                  cpu_offload = tostring(o.device):match('^cuda') and true or nil}
      local flags = '--activation-checkpointing --batch-size N --strategy full' ..
                    (ov.cpu_offload and ' --cpu-offload' or '')
      if not try((flags:gsub('N', tostring(world))), ov) then
         local n = world
         for _ = 1, 16 do
            n = n * 2
            ov.batch_size = n
            local ok, r = pcall(M.for_options, model, o, n, ov)
            if ok and fits(r) then
               out[#out + 1] = string.format('%d ranks of this size with %s (%s per rank)', n,
                                             (flags:gsub('N', tostring(n))), bytes(r.total))
               break
            end
         end
      end
   end
   return out
end

-- what a rank holds however many ranks share the model: one sequence's
-- activations (checkpointed) and the gathered units
local function floor_per_rank(model, o, world)
   local n = world * 65536
   local ok, r = pcall(M.for_options, model, o, n, {activation_checkpointing = true, batch_size = n, strategy = 'full',
                                                    cpu_offload = tostring(o.device):match('^cuda') and true or nil})
   return ok and r or nil
end

-- Stops a run that cannot fit before it allocates: the plan's per-rank
-- estimate against this host's available memory (shared by its local
-- ranks) and, on a GPU, the device's memory. o: the recipe options
-- (batch_size, seq_len, strategy, param_dtype, reduce_dtype, device,
-- cpu_offload, activation_checkpointing, force); ctx: world,
-- local_world, dev (fsdp.device's). Returns the plan; raises with the
-- numbers and the options that would fit unless o.force.
function M.guard(model, o, ctx)
   local world, local_world = ctx.world or 1, math.max(1, ctx.local_world or 1)
   if (o.strategy == 'hybrid_full' or o.strategy == 'hybrid_grad_op') and (o.hybrid_group_size or 0) == 0 then
      local copy = {}
      for k, v in pairs(o) do copy[k] = v end
      copy.hybrid_group_size = local_world -- the default shard group: the ranks of one node
      o = copy
   end
   local r = M.for_options(model, o, world)
   local host = M.host_available()
   local host_budget = host and host / local_world
   local dev_budget
   local info = ctx.dev and ctx.dev.info
   if info and tonumber(info.total_mem or 0) > 0 then dev_budget = tonumber(info.total_mem) end
   local function fits(x)
      local host_need = x.device == 'cuda' and x.host or x.total
      return (not host_budget or host_need <= host_budget) and (not dev_budget or x.device_bytes <= dev_budget)
   end
   if fits(r) then return r end
   local lines = {}
   local host_need = r.device == 'cuda' and r.host or r.total
   if host_budget and host_need > host_budget then
      lines[#lines + 1] = string.format('this run needs about %s of host memory per rank, but this machine has %s ' ..
                                        'available for its %d rank(s) (%s each)', bytes(host_need), bytes(host),
                                        local_world, bytes(host_budget))
   end
   if dev_budget and r.device_bytes > dev_budget then
      lines[#lines + 1] = string.format('this run needs about %s on each GPU, which has %s', bytes(r.device_bytes),
                                        bytes(dev_budget))
   end
   local acts = r.activation_checkpointing and r.activations_checkpointed or r.activations
   lines[#lines + 1] = string.format('(plan: %s parameters; model state %s, gathered units %s, activations %s%s)',
                                     count(r.parameters), bytes(r.state), bytes(r.gathered), bytes(acts),
                                     r.overhead > 0 and (', CUDA/NCCL ' .. bytes(r.overhead)) or '')
   local fixes = remedies(model, o, world, fits)
   if #fixes > 0 then
      lines[#lines + 1] = 'it would fit with: ' .. table.concat(fixes, '; or ')
   else
      local f = floor_per_rank(model, o, world)
      lines[#lines + 1] = string.format('no change of options makes it fit: even over many ranks each one needs about ' ..
                                        '%s (a gathered block and the checkpointed activations of one sequence of %d ' ..
                                        'tokens); a shorter --seq-len or a smaller model would',
                                        f and bytes(f.device == 'cuda' and f.device_bytes or f.total) or '?', o.seq_len or 0)
   end
   if o.force then
      require('fsdp.log').warn('memory: %s; starting anyway (--force)', table.concat(lines, '\n  '))
      return r
   end
   lines[#lines + 1] = '(fsdp-lua plan shows the whole estimate; --force starts anyway)'
   error('memory: ' .. table.concat(lines, '\n  '), 0)
end

---------------------------------------------------------------------------
-- `fsdp-lua plan`

function M.usage()
   return table.concat({
      'usage: fsdp-lua plan RECIPE [--world-size N] [--memory-per-rank 80GiB] [recipe options]',
      '',
      'Per-rank memory of RECIPE (a recipe built on recipes/train_lm.lua) with the given options, without',
      'allocating the model. Its own options (every other argument goes to the recipe; RECIPE --help',
      'lists those):',
      '',
   }, '\n') .. '\n' .. cli.help('plan', M.options):match('\n\n(options.*)$')
end

-- args: the arguments after `plan`; recipe: {resolve = fn(name) -> path,
-- load = fn(path, args) -> the recipe}
function M.main(args, recipe)
   local own, rest = {}, {}
   local names = {}
   for _, s in ipairs(M.options) do
      names['--' .. s[1]:gsub('_', '-')] = true
      for _, a in ipairs(s.aliases or {}) do names['--' .. a:gsub('_', '-')] = true end
   end
   local i = 1
   while i <= #args do
      local a = args[i]
      local key = a:match('^(%-%-[%w%-_]+)')
      if a == '--help' or a == '-h' then
         if #rest == 0 then print(M.usage()); return 0 end
         rest[#rest + 1] = a
      elseif key and names[key:gsub('_', '-')] then
         own[#own + 1] = a
         if not a:find('=', 1, true) then own[#own + 1] = args[i + 1]; i = i + 1 end
      else
         rest[#rest + 1] = a
      end
      i = i + 1
   end
   local popt = cli.parse('plan', M.options, own)
   local path = rest[1] and rest[1]:sub(1, 1) ~= '-' and recipe.resolve(rest[1])
   if not path then
      error(rest[1] and rest[1]:sub(1, 1) ~= '-' and ("plan: no recipe '" .. rest[1] .. "'\n" .. M.usage())
            or M.usage(), 0)
   end
   local rargs = {[0] = path, unpack(rest, 2)}
   for _, a in ipairs(rargs) do
      if a == '--help' or a == '-h' then print(M.usage()); print('') break end
   end
   arg = rargs
   local refusal = 'plan: ' .. path .. ' does not describe its model (a recipe built on recipes/train_lm.lua ' ..
                   'does: its file returns options, model, shard_options and main)'
   -- a plain script runs as it loads: it must not get as far as training
   local shard = require 'fsdp.shard'
   shard.refusal = refusal
   local ok, r = pcall(recipe.load, path, rargs)
   shard.refusal = nil
   if not ok then error(r, 0) end
   if type(r) ~= 'table' or not (r.options and r.model and r.shard_options) then error(refusal, 0) end
   local o = r.options(rargs)
   -- the vocabulary of a model from scratch: --vocab-size, else the tokenizer's
   local vocab = (o.vocab_size or 0) > 0 and o.vocab_size or (r.tokenizer and r.tokenizer(o).vocab_size) or 0
   local model = r.model(o, vocab)
   -- adapters (LoRA) and the freezing they bring, as the run would add them
   if r.adapters then model = r.adapters(model, o) or model end
   local sopts = r.shard_options(o)
   local plan_o = {}
   for k, v in pairs(o) do plan_o[k] = v end
   plan_o.strategy, plan_o.param_dtype, plan_o.reduce_dtype = sopts.strategy, sopts.param_dtype, sopts.reduce_dtype
   plan_o.hybrid_group_size = sopts.hybrid_group_size or 0
   local res = M.for_options(model, plan_o, popt.world_size)
   local limit = popt.memory_per_rank ~= '' and popt.memory_per_rank or nil
   print(M.report(res, limit))
   return 0
end

return M
