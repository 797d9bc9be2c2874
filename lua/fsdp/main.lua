-- fsdp-lua's entry point (run by build/fsdp-lua with the global `arg`).
--   fsdp-lua RECIPE [--option value ...]   run a recipe (recipes/x.lua, a path, or a name)
--   fsdp-lua ckpt info DIR                 print a checkpoint's index
--   fsdp-lua plot RUN_DIR [--out FILE]     draw a run's metrics as an SVG
--   fsdp-lua --help
-- Errors are printed once, with the rank, and give exit status 1.
local args = {}
for i = 1, #arg do args[i] = arg[i] end

local root = FSDP_ROOT
-- the OpenMP wait policy, which libgomp reads when libfsdp loads it
require('fsdp.threads').before_load()

local function exists(path)
   local f = io.open(path, 'r')
   if f then f:close() return true end
   return false
end

local function rank_prefix()
   local r = os.getenv('PMI_RANK') or os.getenv('OMPI_COMM_WORLD_RANK') or os.getenv('SLURM_PROCID')
             or os.getenv('RANK') or '0'
   return 'rank ' .. r
end

local function usage()
   return table.concat({
      'usage: fsdp-lua RECIPE [--option value ...]   run a recipe (e.g. recipes/train_mingpt.lua)',
      '       fsdp-lua RECIPE --help                  list the recipe\'s options',
      '       fsdp-lua ckpt info DIR                  print a checkpoint\'s index',
      '       fsdp-lua prepare --tokenizer DIR --input PATH --output DIR   text/JSON/JSONL/YAML -> token shards',
      '       fsdp-lua export CKPT_DIR OUT_DIR [--dtype bf16]   a checkpoint -> a Hugging Face directory',
      '       fsdp-lua plan RECIPE --world-size N [--memory-per-rank 80GiB] [options]   per-rank memory before launching',
      '       fsdp-lua plot RUN_DIR [--out FILE]      draw RUN_DIR/metrics.jsonl as an SVG (default RUN_DIR/plot.svg)',
      '       fsdp-lua --nproc-per-node N RECIPE ...  run N local ranks (MPICH mpiexec underneath)',
      '       fsdp-lua [--nproc-per-node N] -i [RECIPE] an interactive prompt on rank 0; every rank runs each statement',
      '       mpiexec -n N fsdp-lua RECIPE ... / srun fsdp-lua RECIPE ...',
   }, '\n')
end

local function list_recipes()
   local names = {}
   local p = io.popen('ls "' .. root .. '/lua/recipes" 2>/dev/null')
   if p then
      for line in p:lines() do
         if line:match('%.lua$') then names[#names + 1] = 'recipes/' .. line end
      end
      p:close()
   end
   return names
end

-- recipes/x.lua relative to the working directory, else under lua/
local function resolve(name)
   local candidates = {name, root .. '/lua/' .. name, root .. '/lua/recipes/' .. name,
                       root .. '/lua/recipes/' .. name .. '.lua'}
   for _, c in ipairs(candidates) do
      if c:match('%.lua$') and exists(c) then return c end
   end
   return nil
end

local function report(err)
   local msg = tostring(err)
   io.stderr:write(string.format('fsdp-lua: %s: error: %s\n', rank_prefix(), msg))
   io.stderr:flush()
   -- in a job of several ranks, take the others down instead of leaving
   -- them waiting in a collective
   local ok, dist = pcall(require, 'fsdp.dist')
   if ok and dist.world and dist.world_size > 1 then dist.abort(1) end
   if os.getenv('FSDP_TRACEBACK') and type(err) == 'string' then io.stderr:write(debug.traceback() .. '\n') end
end

local function run(fn)
   local ok, err = xpcall(fn, function(e)
      if os.getenv('FSDP_TRACEBACK') then return tostring(e) .. '\n' .. debug.traceback() end
      return e
   end)
   if not ok then
      report(err)
      return 1
   end
   return type(err) == 'number' and err or 0
end

local cmd = args[1]
if not cmd or cmd == '--help' or cmd == '-h' then
   print(usage())
   return cmd and 0 or 2
end

-- the launcher: fsdp-lua --nproc-per-node N RECIPE ...
if cmd:match('^%-%-n') or cmd:match('^%-%-master') or cmd:match('^%-%-hosts') or cmd:match('^%-%-max%-restarts') then
   return run(function()
      local launch = require 'fsdp.launch'
      local opts, rest = launch.parse(args)
      if not opts then error('unknown flag ' .. cmd .. ' (launcher flags: --nproc-per-node, --nnodes, --hosts)', 0) end
      return launch.exec(opts, rest, root .. '/build/fsdp-lua')
   end)
end

-- the REPL: fsdp-lua -i [RECIPE args]: the recipe runs first and its
-- globals stay in scope at the prompt
if cmd == '-i' then
   return run(function()
      local fsdp = require 'fsdp'
      local dist = require 'fsdp.dist'
      dist.init()
      -- print shows rank 0's output; printall every rank's, prefixed
      local function print0(...) if dist.rank == 0 then print(...) end end
      local function printall(...)
         local parts = {}
         for i = 1, select('#', ...) do parts[i] = tostring((select(i, ...))) end
         io.stdout:write(string.format('[rank %d] %s\n', dist.rank, table.concat(parts, '\t')))
         io.stdout:flush()
      end
      local env = setmetatable({fsdp = fsdp, dist = dist, nn = fsdp.nn, ops = fsdp.ops, print = print0,
                                printall = printall}, {__index = _G})
      if args[2] then
         local path = resolve(args[2])
         if not path then error("no recipe or script '" .. args[2] .. "'", 0) end
         local chunk, err = loadfile(path)
         if not chunk then error(err, 0) end
         arg = {[0] = path, unpack(args, 3)}
         setfenv(chunk, env)
         -- when the recipe's main chunk (or a recipe it runs, like
         -- train_lm.lua) returns, copy its locals into the prompt's
         -- environment (interpreted, so the return hook fires)
         jit.off(chunk)
         jit.off()
         debug.sethook(function()
            local info = debug.getinfo(2, 'fS')
            if info and (info.func == chunk or (info.what == 'main' and info.source:find('/lua/recipes/', 1, true))) then
               for i = 1, 250 do
                  local name, value = debug.getlocal(2, i)
                  if not name then break end
                  if name:sub(1, 1) ~= '(' then env[name] = value end
               end
            end
         end, 'r')
         local ok, err = pcall(chunk, unpack(args, 3))
         debug.sethook()
         jit.on()
         if not ok then error(err, 0) end
      end
      return require('fsdp.repl').run(env)
   end)
end

-- fsdp-lua plan RECIPE --world-size N [--memory-per-rank 80GiB] [recipe options]
if cmd == 'plan' then
   return run(function()
      local rest, world, limit = {}, 1, nil
      local i = 2
      while i <= #args do
         if args[i] == '--world-size' then world = tonumber(args[i + 1]); i = i + 2
         elseif args[i] == '--memory-per-rank' then limit = args[i + 1]; i = i + 2
         else rest[#rest + 1] = args[i]; i = i + 1 end
      end
      if not world or world < 1 then error('plan: --world-size wants a positive integer', 0) end
      local path = rest[1] and resolve(rest[1])
      if not path then error('usage: fsdp-lua plan RECIPE --world-size N [--memory-per-rank 80GiB] [recipe options]', 0) end
      local plan, shard, fsdp = require 'fsdp.plan', require 'fsdp.shard', require 'fsdp'
      local done = {}
      shard.plan_hook = function(model, sopts)
         local o = fsdp.last_options or {}
         local cfg = model.config or {}
         local r = plan.compute(model, {world_size = world, strategy = sopts.strategy, hybrid_group_size = sopts.hybrid_group_size,
                                        batch = math.max(1, (o.batch_size or 1) / world), seq_len = o.seq_len or cfg.block_size or 1,
                                        activation_checkpointing = o.activation_checkpointing,
                                        vocab = cfg.vocab_size, width = cfg.n_embd or cfg.hidden_size})
         print(plan.report(r, limit and plan.parse_bytes(limit)))
         error(done, 0)
      end
      arg = {[0] = path, unpack(rest, 2)}
      local chunk, err = loadfile(path)
      if not chunk then error(err, 0) end
      local ok, e = pcall(chunk, unpack(rest, 2))
      if not ok and e ~= done then error(e, 0) end
      if ok then error('plan: ' .. path .. ' finished without calling fsdp.shard: nothing to plan', 0) end
      return 0
   end)
end

if cmd == 'export' then
   return run(function() return require('fsdp.export').main({unpack(args, 2)}) end)
end

if cmd == 'prepare' then
   return run(function() return require('fsdp.prepare').main({unpack(args, 2)}) end)
end

if cmd == 'ckpt' then
   return run(function()
      local tool = require 'fsdp.ckpt_tool'
      return tool.main({unpack(args, 2)})
   end)
end

if cmd == 'plot' then
   return run(function() return require('fsdp.plot').main({unpack(args, 2)}) end)
end

local path = resolve(cmd)
if not path then
   local msg = string.format("no recipe or script '%s' (looked in ., %s/lua, %s/lua/recipes); available: %s",
                             cmd, root, root, table.concat(list_recipes(), ', '))
   report(msg)
   return 1
end

-- the recipe sees its own arguments in `arg` (arg[0] is its path)
local recipe_args = {[0] = path}
for i = 2, #args do recipe_args[i - 1] = args[i] end
arg = recipe_args

local status = run(function()
   local chunk, err = loadfile(path)
   if not chunk then error(err, 0) end
   return chunk(unpack(recipe_args))
end)
local ok, dist = pcall(require, 'fsdp.dist')
if ok and status == 0 then dist.finalize() end
return status
