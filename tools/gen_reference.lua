-- tools/gen_reference.lua: writes docs/reference.md from the code, so the
-- reference cannot drift from what the code accepts.
--
--   build/fsdp-lua tools/gen_reference.lua [OUT]     (default: docs/reference.md)
--
-- What it reads:
--   recipes        every lua/recipes/*.lua is loaded: a recipe table gives
--                  its option table (recipe.specs); a plain script runs with
--                  fsdp.options intercepted, and the option table it declares
--                  (names, defaults, choices, help) is captured there
--   sub-commands   prepare.lua's and export.lua's option tables, the usage
--                  texts of `fsdp-lua --help`, `ckpt` and `plot`, the flags
--                  main.lua's `plan` branch parses, the launcher's flag table
--   Lua API        every `function M.x(...)` / `function Class:m(...)` of
--                  lua/fsdp, lua/optim and lua/models with the comment lines
--                  right above it, each file's header comment, and whatever
--                  else a loaded module exports (aliases, generated ops)
--
-- It is also a module (tests/lua/test_reference.lua):
--   local gen = require 'tools.gen_reference'
--   gen.generate()       -> the markdown text
--   gen.recipes()        -> {{path =, file =, name =, specs =}, ...}
--   gen.RECIPE_MARKER    the sentence a derived recipe's section carries
local fsdp = require 'fsdp'
local fs = require 'fsdp.fs'

local M = {}
local root = fsdp.root

M.RECIPE_MARKER = 'takes every option of `recipes/train_lm.lua`'

-- One-line descriptions of functions whose code carries no comment, by
-- module and heading. The code's own comment wins when there is one; an
-- entry naming a function the module no longer defines is an error.
local SUPPLEMENT = {
   ['fsdp'] = {
      ['fsdp.set_num_threads'] = 'sets the OpenMP and OpenBLAS thread count of this process',
      ['fsdp.get_num_threads'] = 'the thread count kernels use',
      ['fsdp.rng_state'] = 'an RNG (from `fsdp.rng`) as text, for trainer_state.json',
      ['fsdp.rng_restore'] = 'sets an RNG back to a state `fsdp.rng_state` wrote; malformed text is an error',
   },
   ['fsdp.tensor'] = {
      ['fsdp.tensor.empty'] = 'a contiguous tensor with uninitialized values; dtype defaults to f32; `temporary` makes it a temporary of the current step',
      ['fsdp.tensor.zeros'] = 'like `empty`, zero-filled',
      ['fsdp.tensor.full'] = 'a tensor filled with `value`',
      ['fsdp.tensor.shape_str'] = "a shape as text: '[2, 3]'",
      ['fsdp.tensor.wrap'] = 'a Tensor over an owned `fsdp_tensor*` (internal; ops use it)',
      ['fsdp.tensor.n_temporaries'] = 'how many temporaries the current step holds',
      ['Tensor:cdata'] = 'the underlying `fsdp_tensor*`; an error if the tensor was freed',
      ['Tensor:is_freed'] = 'true after `:free()` (or the end of the step, for a temporary)',
      ['Tensor:numel'] = 'the number of elements',
      ['Tensor:dim'] = 'the number of dimensions',
      ['Tensor:size'] = 'the shape table, or the size of dimension d (negative d counts from the end)',
      ['Tensor:nbytes'] = 'bytes of the elements',
      ['Tensor:is_contiguous'] = 'true when the elements are dense in row-major order',
      ['Tensor:free'] = 'gives the storage back to the caching pool now (views keep it alive); safe to call twice',
      ['Tensor:copy'] = 'copies src into this tensor elementwise (same shape; f32, bf16 and f16 convert with round-to-nearest-even); returns self',
      ['Tensor:fill'] = 'sets every element to value; returns self',
      ['Tensor:zero'] = 'fills with 0',
      ['Tensor:clone'] = 'a new contiguous copy, optionally converted to dtype',
      ['Tensor:to'] = 'self when it already has dtype, else a converted clone',
      ['Tensor:get_flat'] = 'element i (0-based, row-major over the logical shape) as a Lua number',
      ['Tensor:set_flat'] = 'sets element i (0-based)',
      ['Tensor:item'] = 'the value of a one-element tensor',
      ['Tensor:__tostring'] = 'shape, dtype and (up to 16) values',
      ['fsdp.tensor.is_tensor'] = 'true for a Tensor',
      ['fsdp.tensor.memory_stats'] = "the host allocator's counters in bytes: {current, peak, reserved, n_allocs, n_misses}",
      ['fsdp.tensor.reset_peak_memory'] = 'peak := current',
      ['fsdp.tensor.empty_cache'] = 'returns the caching pool\'s free blocks to the system',
   },
   ['fsdp.autograd'] = {
      ['fsdp.autograd.is_enabled'] = 'false inside `no_grad` (and inside a checkpointed forward)',
      ['fsdp.autograd.record'] = 'appends a backward closure to the tape; ops call it, and so can a Lua op of your own',
      ['fsdp.autograd.tape_length'] = 'entries on the tape now',
   },
   ['fsdp.checkpoint'] = {
      ['fsdp.checkpoint.step_name'] = "a step directory's name: step_00000030",
      ['fsdp.checkpoint.rank_file'] = "slice r's file name: rank_00000.safetensors",
   },
   ['fsdp.ops'] = {
      ['fsdp.ops.gelu'] = 'GELU, tanh approximation (GPT-2); made by the file\'s `pointwise` helper',
      ['fsdp.ops.relu'] = 'max(x, 0)',
      ['fsdp.ops.silu'] = 'x * sigmoid(x)',
      ['fsdp.ops.embedding'] = 'rows idx (i32, any shape) of table [vocab, dim] -> [..., dim]; ids are checked against the vocabulary',
      ['fsdp.ops.layernorm'] = 'LayerNorm over the last dimension with weight w and optional bias b (eps default 1e-5)',
      ['fsdp.ops.rmsnorm'] = 'RMSNorm over the last dimension with weight w (eps default 1e-6)',
      ['fsdp.ops.add'] = 'a + b, same shapes (no broadcasting)',
      ['fsdp.ops.mul'] = 'a * b elementwise, same shapes (no broadcasting)',
      ['fsdp.ops.scale'] = 'x * s for a Lua number s',
      ['fsdp.ops.mean'] = 'the mean of all elements -> a one-element tensor',
   },
   ['fsdp.nn'] = {
      ['Module.init'] = 'gives a new instance its parameter and child lists (done by `Module.instance`)',
      ['Module.instance'] = 'a new, empty instance of a class made by `nn.class`: the first line of a `new`',
      ['Module:add'] = 'adds child module `child` under `name` (also reachable as `self[name]`); its parameters are named `name.*`; returns the child',
      ['Module:named_parameters'] = '{{name, tensor}, ...} in declaration order; an error before the model is materialized or sharded',
      ['Module:parameters'] = 'the parameter tensors in declaration order',
      ['Module:num_parameters'] = 'the number of parameter elements, from the declared shapes (works before materializing)',
      ['Module:zero_grad'] = 'zeroes the .grad of every parameter (unsharded models; a sharded one uses `Sharded:zero_grad`)',
      ['ModuleList.new'] = 'a container of modules named 0, 1, ... (as in PyTorch), indexed 1..n from Lua; `list.n` is the count',
      ['ModuleList:forward'] = 'an error: call the items',
      ['Linear:forward'] = '`ops.linear(x, weight, bias)`',
      ['Embedding.new'] = 'a [n_vocab, dim] table; opts.std (default 0.02)',
      ['Embedding:forward'] = '`ops.embedding(idx, weight)`',
      ['LayerNorm.new'] = 'weight ones, bias zeros; opts.eps (default 1e-5), opts.bias = false for none',
      ['LayerNorm:forward'] = '`ops.layernorm`',
      ['RMSNorm.new'] = 'weight ones; opts.eps (default 1e-6)',
      ['RMSNorm:forward'] = '`ops.rmsnorm`',
      ['PaddedEmbedding.new'] = 'an Embedding whose row padding_idx gets no gradient from the lookup',
      ['PaddedEmbedding:forward'] = '`ops.embedding_padded`',
   },
   ['fsdp.shard'] = {
      ['FlatParam:bind_grads'] = 'points every parameter\'s .grad at its place in a full gradient buffer',
      ['FlatParam:wait_gather'] = 'finishes a pending prefetch, or gathers now',
      ['Sharded:zero_grad'] = 'zeroes this rank\'s gradient slices (call after every optimizer step)',
      ['Sharded:num_parameters'] = 'parameters of the whole model (not padded)',
   },
   ['fsdp.dist'] = {
      ['Pending:wait'] = 'waits for an asynchronous collective (at most FSDP_COMM_TIMEOUT seconds) and runs its completion',
      ['Group:all_reduce'] = 'in place over the group; op sum (default), avg or max',
      ['Group:broadcast'] = "root's buffer (default rank 0) on every rank, in place",
      ['Group:barrier'] = 'waits for every rank of the group',
      ['Group:bytes_sent'] = 'bytes this rank has sent through collectives of the group',
      ['Group:gather_numbers'] = 'one Lua number from every rank, in rank order',
      ['fsdp.dist.sum_number'] = 'the sum of x over the world, added in rank order (the same bits on every rank)',
      ['fsdp.dist.max_number'] = 'the largest x over the world (a NaN anywhere wins)',
      ['fsdp.dist.broadcast_string'] = "rank 0's string on every rank",
      ['fsdp.dist.all_reduce'] = 'all-reduce of a tensor over the world, in place',
      ['fsdp.dist.abort'] = 'ends the whole job (MPI_Abort) after a fatal error',
      ['fsdp.dist.finalize'] = 'MPI_Finalize, when MPI was started (fsdp-lua does it after a recipe returns)',
   },
   ['fsdp.data'] = {
      ['ByteTokenizer.new'] = 'a tokenizer whose tokens are the bytes of the text (vocabulary 256)',
      ['MultiSource:read'] = 'tokens [start, start+n) across the files, into an int32 pointer',
      ['Loader:sequence_index'] = 'which sequence of the split global sequence number g reads',
      ['Loader:epoch'] = 'passes over the split so far (fractional)',
      ['Loader:state_dict'] = '{cursor, seed, split}: what a checkpoint needs to continue the data order',
      ['Loader:load_state_dict'] = 'restores the cursor and seed saved by `state_dict`',
   },
   ['fsdp.tokenizer'] = {
      ['fsdp.tokenizer.load'] = 'a Tokenizer from a tokenizer.json or a directory holding one (see the module header)',
      ['Tokenizer:token_to_id'] = 'the id of a token string, or nil',
      ['Tokenizer:id_to_token'] = 'the token string of an id, or nil',
      ['Tokenizer:is_special'] = 'true for special / added tokens such as <s>',
      ['Tokenizer:__tostring'] = 'the file and vocabulary size',
   },
   ['fsdp.cli'] = {
      ['fsdp.cli.distance'] = 'the edit distance of two strings (for "did you mean")',
      ['fsdp.cli.closest'] = 'the candidate nearest to name by edit distance, and the distance',
      ['fsdp.cli.help'] = 'the --help text of an option table',
   },
   ['fsdp.run'] = {
      ['fsdp.run.finite'] = 'true unless x is NaN or infinite',
      ['fsdp.run.now'] = 'a monotonic clock in seconds (`fsdp.clock`)',
      ['fsdp.run.timer'] = 'a Timer (phases of a step)',
      ['Timer:start'] = 'starts timing phase `name`',
      ['Timer:stop'] = 'adds the time since `start(name)` to the phase',
      ['Timer:add'] = 'adds seconds to the phase',
      ['Console:finish'] = 'ends the progress bar line',
   },
   ['fsdp.metrics'] = {
      ['Metrics:close'] = 'closes metrics.jsonl and the event file',
   },
   ['fsdp.tensorboard'] = {
      ['fsdp.tensorboard.wall_time'] = 'seconds since the epoch, with fractions',
      ['fsdp.tensorboard.hostname'] = 'this machine\'s name (for event file names)',
      ['Writer:write_event'] = 'appends one serialized Event record and flushes',
      ['Writer:add_scalar'] = 'one scalar as its own Event',
      ['Writer:close'] = 'closes the file',
   },
   ['fsdp.log'] = {
      ['fsdp.log.stamp'] = 'the time of day, HH:MM:SS',
      ['fsdp.log.warn'] = 'printf to stderr on every rank, prefixed with the rank and "warning:"',
      ['fsdp.log.elapsed'] = 'seconds since fsdp.log was loaded',
   },
   ['fsdp.plan'] = {
      ['fsdp.plan.bytes'] = "bytes as text: '1.50 GiB'",
      ['fsdp.plan.parse_bytes'] = "'80GiB', '512MiB', '40GB', '1T' or a number -> bytes",
      ['fsdp.plan.report'] = 'the text `fsdp-lua plan` prints for a `compute` result, with a fits / DOES NOT FIT line when a limit is given',
   },
   ['fsdp.prepare'] = {
      ['fsdp.prepare.list_files'] = 'the files prepare reads under input, sorted, and how many it skipped',
      ['fsdp.prepare.main'] = '`fsdp-lua prepare` with its arguments',
   },
   ['fsdp.export'] = {
      ['fsdp.export.main'] = '`fsdp-lua export` with its arguments',
   },
   ['fsdp.ckpt_tool'] = {
      ['fsdp.ckpt_tool.info'] = 'the text of `fsdp-lua ckpt info DIR`; validates the index and the rank files',
      ['fsdp.ckpt_tool.main'] = '`fsdp-lua ckpt` with its arguments',
   },
   ['fsdp.plot'] = {
      ['fsdp.plot.main'] = '`fsdp-lua plot` with its arguments',
   },
   ['fsdp.launch'] = {
      ['fsdp.launch.exec'] = 'replaces this process with mpiexec running self_exe and the recipe on every rank (or supervises it when --max-restarts is given)',
   },
   ['fsdp.hf'] = {
      ['Source:where'] = 'the index or model.safetensors path, for messages',
      ['Source:close'] = 'unmaps every opened weights file',
   },
   ['fsdp.safetensors'] = {
      ['File:names'] = 'the tensor names in the file',
      ['File:has'] = 'true when the file holds tensor name',
      ['File:metadata'] = 'a __metadata__ value, or nil',
      ['File:close'] = 'unmaps the file',
   },
   ['fsdp.json'] = {
      ['fsdp.json.array'] = 'marks a table to encode as a JSON array even when empty; returns it',
      ['fsdp.json.encode'] = 'a Lua value as JSON text, object keys sorted; indent pretty-prints',
      ['fsdp.json.decode'] = 'JSON text -> Lua value (null is `fsdp.json.null`); an error gives the byte position',
   },
   ['fsdp.fs'] = {
      ['fsdp.fs.quote'] = 'a string quoted for the shell',
      ['fsdp.fs.exists'] = 'true when path exists',
      ['fsdp.fs.is_dir'] = 'true when path is a directory',
      ['fsdp.fs.remove_tree'] = 'rm -rf path (refuses "" and "/")',
      ['fsdp.fs.read'] = 'the whole file as a string, or nil, err',
      ['fsdp.fs.pid'] = 'this process id',
      ['fsdp.fs.basename'] = 'the last path component',
   },
   ['optim.adamw'] = {
      ['AdamW:load_state_dict'] = 'copies exp_avg / exp_avg_sq slices and the step count from a `state_dict`-shaped table',
   },
   ['optim.schedule'] = {
      ['optim.schedule.lr_at'] = 'the learning rate at a 0-based step for cfg {lr, min_lr, warmup, total, decay}',
   },
   ['optim.clip'] = {
      ['optim.clip.clip_factor'] = 'min(1, max_norm / norm): what to multiply the gradients by; 1 when max_norm <= 0 or the norm is not finite',
   },
   ['optim.loss_scaler'] = {
      ['LossScaler.new'] = 'opts: init_scale (default 2^16), growth_interval (2000), min_scale (1)',
      ['LossScaler:state_dict'] = '{scale, good_steps, skipped}',
      ['LossScaler:load_state_dict'] = 'restores `state_dict`',
   },
   ['models.mingpt'] = {
      ['models.mingpt.config'] = 'a full configuration: defaults, then the preset named by cfg.preset, then every field of cfg',
      ['GPT.new'] = 'a GPT-2-shaped model (not materialized) from a configuration table (see `config`)',
      ['GPT:units'] = 'the transformer blocks',
   },
   ['models.llama'] = {
      ['models.llama.check_input'] = 'an error unless idx is an i32 [batch, time] tensor',
      ['DecoderLayer.new'] = 'one pre-norm layer; mlp (default a SwiGLU MLP) is added under mlp_name (default mlp)',
      ['models.llama.rope'] = 'a rotary table provider for cfg (head_dim, rope_theta, rope_scaling) whose `:tables(T)` gives cos, sin',
      ['DecoderLayer:forward'] = 'x + attn(norm(x)), then + mlp(norm(x))',
      ['Llama.new'] = 'a Llama model (not materialized) from a configuration: preset (or size) and config.json field names',
      ['Llama:units'] = 'the decoder layers',
   },
   ['models.mixtral'] = {
      ['Expert.new'] = 'one expert: Linear w1, w3 [C -> F] and w2 [F -> C], no bias',
      ['MoE.new'] = 'the router (gate) and cfg.num_local_experts experts; `sink` collects router logits for the auxiliary loss',
      ['Expert:forward'] = 'w2(silu(w1 x) * w3 x)',
      ['Mixtral:forward'] = "Llama's forward, collecting every layer's router logits for `router_aux_loss`",
   },
   ['models.opt'] = {
      ['models.opt.config'] = 'defaults, then cfg; checked (positive sizes, heads dividing the width, relu)',
      ['Attention.new'] = "multi-head attention with OPT's projections",
      ['Attention:forward'] = 'causal attention of x [B, T, hidden]',
      ['Layer.new'] = 'one decoder layer (pre- or post-norm after cfg.do_layer_norm_before)',
      ['Layer:forward'] = 'see the comment above the class',
      ['OPT.new'] = 'an OPT model (not materialized) from config.json fields',
      ['OPT:units'] = 'the decoder layers',
      ['OPT:loss'] = 'mean cross-entropy of next-token prediction (targets -100 are ignored)',
   },
}

local ENVIRONMENT = {
   {'OMP_NUM_THREADS', 'threads per rank for the OpenMP kernels and OpenBLAS; when unset, train_lm-based recipes use cores / ranks on the node (`--threads` overrides)'},
   {'PMI_RANK, PMI_SIZE, PMI_FD', 'set by MPICH (hydra) and srun --mpi=pmi2: the process joins an MPI job'},
   {'OMPI_COMM_WORLD_SIZE, PMIX_RANK', 'set by Open MPI / PMIx launchers: the process joins an MPI job'},
   {'SLURM_PROCID, SLURM_NTASKS', 'set by srun: with more than one task the process joins an MPI job'},
   {'RANK, WORLD_SIZE', 'under an MPI launcher: checked against what MPI reports. Without one (torchrun): WORLD_SIZE > 1 with MASTER_ADDR and MASTER_PORT joins the tcp backend as rank RANK; without MASTER_ADDR / MASTER_PORT it is an error'},
   {'MASTER_ADDR, MASTER_PORT', 'torchrun\'s rendezvous: without an MPI launcher, rank 0 listens on MASTER_PORT + 1 (torchrun\'s agent holds MASTER_PORT) and the other ranks connect to MASTER_ADDR there'},
   {'FSDP_TCP_PORT', 'the tcp backend\'s port instead of MASTER_PORT + 1'},
   {'LOCAL_RANK, LOCAL_WORLD_SIZE', 'ranks on this node (also read from MPI_LOCALRANKID / MPI_LOCALNRANKS, SLURM_LOCALID / SLURM_NTASKS_PER_NODE, OMPI_COMM_WORLD_LOCAL_*); the default hybrid shard group size'},
   {'FSDP_COMM_TIMEOUT', 'seconds a collective may wait for a peer before it fails with an error naming the rank (default 600)'},
   {'FSDP_COMM_SHM', 'MPI ranks that share one machine move collectives through shared memory (engine/comm_shm.c); 0 leaves it all to MPI'},
   {'FSDP_COMM_SHM_MB', 'the shared-memory ring per rank and communicator, in MiB (default 64); bigger collectives stream through it'},
   {'FSDP_TRACEBACK', 'set to print a Lua traceback with an error'},
   {'FSDP_TTY_COLUMNS', 'set by the launcher when its output is a terminal: rank 0 then draws the progress bar (its stdout is a pipe to mpiexec) at most this wide'},
   {'COLUMNS, TERM', 'the terminal width when it cannot be asked; TERM=dumb turns the progress bar off'},
   {'FSDP_ROOT', 'the checkout / install root (default: the directory above build/fsdp-lua)'},
   {'FSDP_LIB', 'another libfsdp.so to load (default ROOT/build/libfsdp.so)'},
   {'FSDP_CUDA_LIB', 'another CUDA backend library for fsdp.device to load (default ROOT/build/libfsdp_cuda.so)'},
}

---------------------------------------------------------------------------
-- text helpers

local function read(path)
   local s = fs.read(path)
   if not s then error('gen_reference: cannot read ' .. path, 0) end
   return s
end

local function lines_of(text)
   local out = {}
   for line in (text .. '\n'):gmatch('(.-)\n') do out[#out + 1] = line end
   return out
end

local function sorted_keys(t)
   local keys = {}
   for k in pairs(t) do keys[#keys + 1] = k end
   table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
   return keys
end

-- inline markdown: keep `code`, escape what would turn into emphasis or HTML
local function md(s)
   local out, pos = {}, 1
   while pos <= #s do
      local a, b = s:find('`[^`]*`', pos)
      local chunk = a and s:sub(pos, a - 1) or s:sub(pos)
      chunk = chunk:gsub('\\', '\\\\'):gsub('%*', '\\*'):gsub('<([%a/])', '&lt;%1')
                   :gsub('^_', '\\_'):gsub('([^%w\\])_', '%1\\_'):gsub('([^%w\\])_', '%1\\_')
      out[#out + 1] = chunk
      if not a then break end
      out[#out + 1] = s:sub(a, b)
      pos = b + 1
   end
   return table.concat(out)
end

local function cell(s) return md(s):gsub('|', '\\|') end

local function code(s)
   s = tostring(s)
   if s:find('`', 1, true) then return '`` ' .. s .. ' ``' end
   return '`' .. s .. '`'
end

-- comment lines (without their `--`) -> markdown: plain lines form
-- paragraphs, indented ones (tables, examples) preformatted blocks
local function render_comment(lines)
   local out, para, pre = {}, {}, {}
   local function flush_para()
      if #para > 0 then out[#out + 1] = md(table.concat(para, ' ')); out[#out + 1] = '' end
      para = {}
   end
   local function flush_pre()
      if #pre == 0 then return end
      local indent = math.huge
      for _, l in ipairs(pre) do
         if l:match('%S') then indent = math.min(indent, #l:match('^ *')) end
      end
      out[#out + 1] = '```text'
      for _, l in ipairs(pre) do out[#out + 1] = l:sub(indent + 1) end
      out[#out + 1] = '```'
      out[#out + 1] = ''
      pre = {}
   end
   for _, l in ipairs(lines) do
      if not l:match('%S') then flush_para(); flush_pre()
      elseif l:match('^  ') then flush_para(); pre[#pre + 1] = l
      else flush_pre(); para[#para + 1] = l:match('^%s*(.-)%s*$') end
   end
   flush_para(); flush_pre()
   while out[#out] == '' do out[#out] = nil end
   return table.concat(out, '\n')
end

local function strip_comment(line)
   local body = line:match('^%s*%-%-(.*)$')
   if not body then return nil end
   if body:sub(1, 1) == ' ' then body = body:sub(2) end
   return body
end

-- the comment block at the top of a file
local function header_comment(text)
   local out = {}
   for _, line in ipairs(lines_of(text)) do
      local body = strip_comment(line)
      if not body then break end
      out[#out + 1] = body
   end
   return out
end

local function anchor(heading)
   return (heading:lower():gsub('[^%w%- _]', ''):gsub(' ', '-'))
end

---------------------------------------------------------------------------
-- recipes: their option tables, captured by intercepting fsdp.options

local function recipe_files()
   local out = {}
   for _, name in ipairs(fs.list(root .. '/lua/recipes')) do
      if name:match('%.lua$') then out[#out + 1] = name end
   end
   -- train_lm first: the others are mostly it with other defaults
   table.sort(out, function(a, b)
      if a == 'train_lm.lua' or b == 'train_lm.lua' then return a == 'train_lm.lua' and b ~= a end
      return a < b
   end)
   return out
end

local STOP = {}

-- loads one recipe until it calls fsdp.options; returns name, specs
local function capture(path)
   local captured
   local saved_options, saved_arg, saved_defaults = fsdp.options, arg, rawget(_G, 'RECIPE_DEFAULTS')
   -- a default found by looking at the disk (train_lm's corpus) must not
   -- depend on this machine: every candidate "exists" while loading
   local saved_exists = fs.exists
   fs.exists = function() return true end
   fsdp.options = function(name, specs)
      captured = {name = name, specs = specs}
      error(STOP, 0)
   end
   RECIPE_DEFAULTS = nil
   arg = {[0] = path}
   local chunk, err = loadfile(path)
   local ok, e = true, nil
   if chunk then ok, e = pcall(chunk) else ok, e = false, err end
   -- a recipe file that returns its recipe (or the function making it)
   -- declares its options in recipe.specs
   if ok and type(e) == 'function' then ok, e = pcall(e) end
   if ok and type(e) == 'table' and e.specs then captured = {name = e.name, specs = e.specs} end
   fsdp.options, arg, RECIPE_DEFAULTS, fs.exists = saved_options, saved_arg, saved_defaults, saved_exists
   if not captured then
      error(string.format('gen_reference: %s did not call fsdp.options (%s)', path,
                          ok and 'it finished' or tostring(e)), 0)
   end
   return captured.name, captured.specs
end

local recipe_cache
function M.recipes()
   if recipe_cache then return recipe_cache end
   recipe_cache = {}
   for _, file in ipairs(recipe_files()) do
      local path = root .. '/lua/recipes/' .. file
      local name, specs = capture(path)
      recipe_cache[#recipe_cache + 1] = {path = path, file = file, name = name, specs = specs,
                                         header = header_comment(read(path))}
   end
   return recipe_cache
end

local function flag(name) return '--' .. name:gsub('_', '-') end
M.flag = flag

-- a default as the reference shows it; a path found on this machine is
-- shown as such, so the file does not depend on where it was generated
local function show_default(v)
   if type(v) == 'string' then
      if v == '' then return "`''`" end
      if v:sub(1, 1) == '/' then return '*a file found at run time*' end
      return code(v)
   end
   return code(tostring(v))
end

local function describe_spec(s)
   local cli = require 'fsdp.cli'
   local text = md(s[3] or '')
   if s.choices then text = text .. ' (one of ' .. table.concat((function()
      local c = {}
      for i, v in ipairs(s.choices) do c[i] = code(v) end
      return c
   end)(), ', ') .. ')' end
   local kind = cli.kind_of(s)
   if kind == 'integer' or kind == 'number' or kind == 'size' then text = text .. ' (' .. md(cli.accepts(s)) .. ')' end
   if kind == 'path' and s.exists then text = text .. ' (must exist)' end
   local al = cli.alias_names(s)
   if #al > 0 then
      for i, a in ipairs(al) do al[i] = code(a:match('^%S+')) .. (a:match(' (%(.*%))$') and (' ' .. md(a:match(' (%(.*%))$'))) or '') end
      text = text .. '; also ' .. table.concat(al, ', ')
   end
   if type(s[2]) == 'boolean' then text = text .. ' (a switch: `' .. flag(s[1]) .. '` or `--no-' .. s[1]:gsub('_', '-') .. '`)' end
   return text:gsub('|', '\\|')
end

local function options_table(specs)
   local out = {'| option | default | meaning |', '|---|---|---|'}
   for _, s in ipairs(specs) do
      out[#out + 1] = string.format('| `%s` | %s | %s |', flag(s[1]), show_default(s[2]), describe_spec(s))
   end
   return table.concat(out, '\n')
end

local function same_names(a, b)
   if #a ~= #b then return false end
   for i = 1, #a do if a[i][1] ~= b[i][1] then return false end end
   return true
end

---------------------------------------------------------------------------
-- sub-commands

local function capture_print(fn)
   local got = {}
   local saved = print
   print = function(...)
      local parts = {}
      for i = 1, select('#', ...) do parts[i] = tostring((select(i, ...))) end
      got[#got + 1] = table.concat(parts, '\t')
   end
   local ok, err = pcall(fn)
   print = saved
   return table.concat(got, '\n'), ok, err
end

local function usage_text()
   local p = io.popen(fs.quote(root .. '/build/fsdp-lua') .. ' --help 2>&1')
   local s = p:read('*a')
   p:close()
   return (s:gsub('%s+$', ''))
end

-- the launcher's flags with their meanings (lua/fsdp/launch.lua's FLAGS)
local function launcher_table()
   local rows = {'| flag | meaning |', '|---|---|'}
   for _, f in ipairs(require('fsdp.launch').FLAGS) do
      rows[#rows + 1] = string.format('| `%s%s` | %s |', f[1], f[3] and ' V' or '', cell(f[4]))
   end
   return table.concat(rows, '\n')
end

---------------------------------------------------------------------------
-- the Lua API

local FSDP_ORDER = {'init', 'tensor', 'autograd', 'ops', 'nn', 'shard', 'dist', 'data', 'tokenizer', 'checkpoint',
                    'cli', 'run', 'metrics', 'tensorboard', 'log', 'plan', 'prepare', 'export', 'ckpt_tool', 'plot',
                    'repl', 'launch', 'hf', 'safetensors', 'json', 'fs', 'sample', 'ffi'}
local OPTIM_ORDER = {'adamw', 'schedule', 'clip', 'loss_scaler'}
local MODELS_ORDER = {'mingpt', 'llama', 'mistral', 'mixtral', 'opt'}

-- files of a directory in a preferred order, the rest alphabetically
local function ordered(dir, order, skip)
   local present, out, seen = {}, {}, {}
   for _, name in ipairs(fs.list(root .. '/lua/' .. dir)) do
      local base = name:match('^(.*)%.lua$')
      if base and not (skip and skip[base]) then present[base] = true end
   end
   for _, b in ipairs(order) do if present[b] then out[#out + 1] = b; seen[b] = true end end
   for _, b in ipairs(sorted_keys(present)) do if not seen[b] then out[#out + 1] = b end end
   return out
end

local function module_name(dir, base)
   if dir == 'fsdp' and base == 'init' then return 'fsdp' end
   return dir .. '.' .. base
end

-- functions defined at the top level of a file, with the comment lines above
local function scan(text)
   local funcs, buf = {}, {}
   local returned = text:match('\nreturn%s+([%w_]+)%s*$')
   for _, line in ipairs(lines_of(text)) do
      local owner, sep, name, params = line:match('^function%s+([%w_]+)([%.:])([%w_]+)%s*(%b())')
      if owner then
         funcs[#funcs + 1] = {owner = owner, sep = sep, name = name, params = params, doc = buf}
         buf = {}
      elseif line:match('^%s*%-%-%-%-+%s*$') then
         buf = {}
      else
         local body = strip_comment(line)
         if body and line:match('^%-%-') then buf[#buf + 1] = body else buf = {} end
      end
   end
   return funcs, returned
end

local function params_of(f)
   local names = {}
   local info = debug.getinfo(f, 'u')
   for i = 1, info.nparams or 0 do names[i] = debug.getlocal(f, i) or ('arg' .. i) end
   if info.isvararg then names[#names + 1] = '...' end
   return '(' .. table.concat(names, ', ') .. ')'
end

local function value_summary(v)
   local kind = type(v)
   if kind == 'table' then
      local keys, all_strings = sorted_keys(v), true
      for _, k in ipairs(keys) do if type(k) ~= 'string' or k:sub(1, 1) == '_' then all_strings = false end end
      if all_strings and #keys > 0 and #keys <= 16 then
         local shown = {}
         for _, k in ipairs(keys) do if type(v[k]) ~= 'function' then shown[#shown + 1] = k end end
         if #shown == #keys then return 'table: ' .. table.concat(shown, ', ') end
      end
      return 'table'
   end
   return kind
end

local used_modules = {}

local function api_section(dirs)
   local modules = {}
   local documented = {} -- function value -> qualified name
   for _, d in ipairs(dirs) do
      for _, base in ipairs(ordered(d.dir, d.order, d.skip)) do
         local path = root .. '/lua/' .. d.dir .. '/' .. base .. '.lua'
         local text = read(path)
         local funcs, returned = scan(text)
         local name = module_name(d.dir, base)
         local ok, mod = pcall(require, name)
         if not ok or type(mod) ~= 'table' then mod = nil end
         local m = {name = name, file = 'lua/' .. d.dir .. '/' .. base .. '.lua', header = header_comment(text),
                    funcs = funcs, returned = returned, mod = mod}
         for _, f in ipairs(funcs) do
            -- `M.x` reads as the module's name; a file that returns a class
            -- (optim.adamw returns AdamW) keeps the class's name
            f.display = ((f.owner == returned and f.owner == 'M') and name or f.owner) .. f.sep .. f.name
            if mod and f.owner == returned and type(mod[f.name]) == 'function' then documented[mod[f.name]] = f.display end
         end
         modules[#modules + 1] = m
      end
   end
   -- functions a module exports without a `function M.x` line of its own
   -- (`M.now = now`) are named after the first module that exports them
   local exported = {}
   for pass = 1, 2 do -- modules first, then the `fsdp` table that re-exports them
      for _, m in ipairs(modules) do
         if m.mod and (m.name == 'fsdp') == (pass == 2) then
            for _, k in ipairs(sorted_keys(m.mod)) do
               local v = m.mod[k]
               if type(k) == 'string' and type(v) == 'function' and not exported[v] then
                  exported[v] = m.name .. '.' .. k
               end
            end
         end
      end
   end
   local loaded_names = {}
   for k, v in pairs(package.loaded) do if type(v) == 'table' and type(k) == 'string' then loaded_names[v] = k end end

   local out = {}
   for _, m in ipairs(modules) do used_modules[m.name] = true end
   for _, m in ipairs(modules) do
      out[#out + 1] = '### ' .. m.name
      out[#out + 1] = ''
      out[#out + 1] = string.format('`require \'%s\'` (%s)', m.name, m.file)
      out[#out + 1] = ''
      local header = render_comment(m.header)
      if header ~= '' then out[#out + 1] = header; out[#out + 1] = '' end
      local seen = {}
      local supplement = SUPPLEMENT[m.name] or {}
      for _, f in ipairs(m.funcs) do
         if f.owner == m.returned then seen[f.name] = true end
         out[#out + 1] = '#### `' .. f.display .. f.params .. '`'
         out[#out + 1] = ''
         local doc = render_comment(f.doc)
         if doc == '' and supplement[f.display] then doc = md(supplement[f.display]) end
         if doc ~= '' then out[#out + 1] = doc; out[#out + 1] = '' end
      end
      -- what the loaded module exports beyond the functions defined above
      if m.mod then
         local extra_funcs, fields = {}, {}
         for _, k in ipairs(sorted_keys(m.mod)) do
            local v = m.mod[k]
            if type(k) == 'string' and not seen[k] and k:sub(1, 2) ~= '__' then
               if type(v) == 'function' then
                  local alias = documented[v] or exported[v]
                  if alias and alias ~= m.name .. '.' .. k then
                     extra_funcs[#extra_funcs + 1] = string.format('- `%s.%s` is `%s`', m.name, k, alias)
                  else
                     local d = supplement[m.name .. '.' .. k]
                     extra_funcs[#extra_funcs + 1] = string.format('- `%s.%s%s`%s', m.name, k, params_of(v),
                                                                   d and (': ' .. md(d)) or '')
                  end
               elseif type(v) == 'table' and loaded_names[v] and loaded_names[v] ~= m.name then
                  fields[#fields + 1] = string.format('- `%s.%s`: the module `%s`', m.name, k, loaded_names[v])
               else
                  fields[#fields + 1] = string.format('- `%s.%s` (%s)', m.name, k, md(value_summary(v)))
               end
            end
         end
         if #extra_funcs > 0 then
            out[#out + 1] = 'Also exported:'
            out[#out + 1] = ''
            for _, l in ipairs(extra_funcs) do out[#out + 1] = l end
            out[#out + 1] = ''
         end
         if #fields > 0 then
            out[#out + 1] = 'Fields:'
            out[#out + 1] = ''
            for _, l in ipairs(fields) do out[#out + 1] = l end
            out[#out + 1] = ''
         end
      end
      local defined = {}
      for _, f in ipairs(m.funcs) do defined[f.display] = true end
      for k, v in pairs(m.mod or {}) do
         if type(k) == 'string' and type(v) == 'function' then defined[m.name .. '.' .. k] = true end
      end
      for _, k in ipairs(sorted_keys(supplement)) do
         if not defined[k] then
            error(string.format('gen_reference: SUPPLEMENT describes %s, which %s no longer defines', k, m.file), 0)
         end
      end
   end
   return table.concat(out, '\n'), modules
end

---------------------------------------------------------------------------

function M.generate()
   local out = {}
   local function add(...) for _, s in ipairs({...}) do out[#out + 1] = s end end
   local toc = {}

   add('# fsdp-lua reference', '',
       'Generated from the code by `tools/gen_reference.lua`; do not edit it by hand. ' ..
       '`tests/lua/test_reference.lua` fails when this file is out of date: after changing an option, ' ..
       'a command or a documented function, run `build/fsdp-lua tools/gen_reference.lua`.', '',
       'Guides: [README](../README.md), [writing a recipe](recipes.md), [writing a model](models.md), ' ..
       '[coming from PyTorch FSDP](migrating.md), [design](design.md).', '', '@TOC@', '')

   -- command line
   add('## Command line', '')
   toc[#toc + 1] = '- [Command line](#command-line)'
   add('`fsdp-lua --help`:', '', '```text', usage_text(), '```', '')
   add('A recipe option `--name value` sets `name` (dashes become underscores); `--name=value` works too. ' ..
       'A switch (a boolean option) is turned on by `--name` alone or `--name true`, off by `--no-name` or ' ..
       '`--name false`. Every value is checked before the recipe builds anything: its type (an integer, a finite ' ..
       'number, one of the choices, an existing path, a size such as 80GiB), its range, and the conflicts the ' ..
       'recipe declares; a refused value is an error naming the option, the value and what is accepted. Options ' ..
       'have aliases, the spellings PyTorch scripts and the Hugging Face Trainer use (`--learning-rate`, ' ..
       '`--grad-clip`, `--bf16`, `--save-dir`, ...), listed with each option below; two spellings of one option ' ..
       'given different values are refused. An unknown option is an error that names the closest valid one, ' ..
       'and says how a spelling with another meaning maps here (`--warmup-ratio`, `--resume`, ' ..
       '`--per-device-train-batch-size`); `--help` lists them all with the recipe\'s description.', '')

   add('### Launcher flags', '')
   toc[#toc + 1] = '  - [Launcher flags](#launcher-flags)'
   add('Given before the recipe: `fsdp-lua --nproc-per-node N [flags] RECIPE [options]`. The process becomes ' ..
       "MPICH's `mpiexec`, which starts the ranks, prefixes each output line with `[rank r]` (not for `-i`) and " ..
       'ends the job when a rank fails.', '')
   add(launcher_table(), '')

   add('### The REPL: -i', '')
   toc[#toc + 1] = '  - [The REPL: -i](#the-repl--i)'
   add('`fsdp-lua [--nproc-per-node N] -i [SCRIPT [options]]` runs SCRIPT first (with the JIT compiler off; when ' ..
       'it returns, its top-level locals, and those of a recipe it runs such as train_lm.lua, are copied into the ' ..
       "prompt's environment), then reads Lua statements on rank 0; every rank runs each statement. In scope: `fsdp`, " ..
       '`dist`, `nn`, `ops`, `print` (prints on rank 0) and `printall` (every rank, prefixed). An expression ' ..
       "prints its value (tensors as torch prints them, models as a tree); an error is shown with the rank that " ..
       'raised it. `help()` and `help(x)` print reference text. Ctrl-C interrupts a statement on every rank (also ' ..
       'inside a collective) and the communicators are resynchronised; Ctrl-D ends every rank. Line editing, ' ..
       'history and tab completion come from readline when the terminal is there (under the launcher too).', '')

   -- recipes
   add('## Recipes', '')
   toc[#toc + 1] = '- [Recipes](#recipes)'
   local recipes = M.recipes()
   local base_specs, base_defaults
   for _, r in ipairs(recipes) do
      if r.file == 'train_lm.lua' then
         base_specs = r.specs
         base_defaults = {}
         for _, s in ipairs(r.specs) do base_defaults[s[1]] = s[2] end
      end
   end
   for _, r in ipairs(recipes) do
      local title = 'recipes/' .. r.file
      add('### ' .. title, '')
      toc[#toc + 1] = string.format('  - [%s](#%s)', title, anchor(title))
      local header = render_comment(r.header)
      if header ~= '' then add(header, '') end
      if r.file ~= 'train_lm.lua' and base_specs and same_names(r.specs, base_specs) then
         local rows = {'| option | default here | in train_lm.lua |', '|---|---|---|'}
         for _, s in ipairs(r.specs) do
            if s[2] ~= base_defaults[s[1]] then
               rows[#rows + 1] = string.format('| `%s` | %s | %s |', flag(s[1]), show_default(s[2]),
                                               show_default(base_defaults[s[1]]))
            end
         end
         if #rows == 2 then
            add(string.format('`fsdp-lua %s` %s (see above), with the same defaults.', title, M.RECIPE_MARKER), '')
         else
            add(string.format('`fsdp-lua %s` %s (see above) with these defaults changed:', title, M.RECIPE_MARKER), '')
            add(table.concat(rows, '\n'), '')
         end
      else
         add(string.format('`fsdp-lua %s [options]`:', title), '')
         add(options_table(r.specs), '')
      end
   end

   -- sub-commands
   add('## Sub-commands', '')
   toc[#toc + 1] = '- [Sub-commands](#sub-commands)'
   local prepare = require 'fsdp.prepare'
   add('### fsdp-lua prepare', '')
   toc[#toc + 1] = '  - [fsdp-lua prepare](#fsdp-lua-prepare)'
   add(render_comment(header_comment(read(root .. '/lua/fsdp/prepare.lua'))), '')
   add(options_table(prepare.options), '')

   local export = require 'fsdp.export'
   add('### fsdp-lua export', '')
   toc[#toc + 1] = '  - [fsdp-lua export](#fsdp-lua-export)'
   add(render_comment(header_comment(read(root .. '/lua/fsdp/export.lua'))), '')
   add(options_table(export.options), '')

   add('### fsdp-lua ckpt', '')
   toc[#toc + 1] = '  - [fsdp-lua ckpt](#fsdp-lua-ckpt)'
   add(render_comment(header_comment(read(root .. '/lua/fsdp/ckpt_tool.lua'))), '')
   local ok, ckpt_usage = pcall(require('fsdp.ckpt_tool').main, {})
   add('```text', ok and 'usage: (none)' or tostring(ckpt_usage), '```', '')

   add('### fsdp-lua plan', '')
   toc[#toc + 1] = '  - [fsdp-lua plan](#fsdp-lua-plan)'
   add('`fsdp-lua plan RECIPE [--world-size N] [--memory-per-rank SIZE] [recipe options]` asks the recipe for ' ..
       'its options, its model (built, nothing is materialized, so a 70B plan runs on a laptop) and what it gives ' ..
       '`fsdp.shard`, and prints what one rank would hold with the assumptions it made. Options of its own; ' ..
       'every other argument goes to the recipe:', '')
   add(options_table(require('fsdp.plan').options), '')
   add(render_comment(header_comment(read(root .. '/lua/fsdp/plan.lua'))), '')

   add('### fsdp-lua plot', '')
   toc[#toc + 1] = '  - [fsdp-lua plot](#fsdp-lua-plot)'
   add(render_comment(header_comment(read(root .. '/lua/fsdp/plot.lua'))), '')
   add('```text', (capture_print(function() require('fsdp.plot').main({'--help'}) end)), '```', '')

   add('### Environment variables', '')
   toc[#toc + 1] = '  - [Environment variables](#environment-variables)'
   local rows = {'| variable | effect |', '|---|---|'}
   for _, e in ipairs(ENVIRONMENT) do rows[#rows + 1] = string.format('| `%s` | %s |', e[1], cell(e[2])) end
   add(table.concat(rows, '\n'), '')

   -- Lua API
   local sections = {
      {title = 'Lua library: lua/fsdp', dirs = {{dir = 'fsdp', order = FSDP_ORDER, skip = {main = true}}}},
      {title = 'Optimizers and schedules: lua/optim', dirs = {{dir = 'optim', order = OPTIM_ORDER}}},
      {title = 'Models: lua/models', dirs = {{dir = 'models', order = MODELS_ORDER}}},
   }
   for _, sec in ipairs(sections) do
      add('## ' .. sec.title, '')
      toc[#toc + 1] = string.format('- [%s](#%s)', sec.title, anchor(sec.title))
      if sec.dirs[1].dir == 'fsdp' then
         add('`require \'fsdp\'` gives the pieces a recipe needs most (`fsdp.ops`, `fsdp.nn`, `fsdp.data`, ' ..
             '`fsdp.checkpoint`, `fsdp.shard`, ...); the other modules are required by name. Method headings ' ..
             'name the class table of the file (`Tensor:view` is a method of every tensor).', '')
      end
      local text, modules = api_section(sec.dirs)
      for _, m in ipairs(modules) do toc[#toc + 1] = string.format('  - [%s](#%s)', m.name, anchor(m.name)) end
      add(text)
   end

   for _, name in ipairs(sorted_keys(SUPPLEMENT)) do
      if not used_modules[name] then error('gen_reference: SUPPLEMENT names module ' .. name .. ', which does not exist', 0) end
   end
   local doc = table.concat(out, '\n')
   doc = doc:gsub('@TOC@', function() return 'Contents:\n\n' .. table.concat(toc, '\n') end)
   return (doc:gsub('\n\n\n+', '\n\n'):gsub('%s*$', '\n'))
end

-- run as a script: write the file
if ... ~= 'tools.gen_reference' then
   local out = (...) or (root .. '/docs/reference.md')
   local text = M.generate()
   fs.mkdirs(out:match('^(.*)/[^/]*$') or '.')
   local f = assert(io.open(out, 'wb'))
   f:write(text)
   f:close()
   print(string.format('wrote %s (%d lines)', out, select(2, text:gsub('\n', ''))))
   return 0
end
return M
