-- fsdp-lua's entry point (run by build/fsdp-lua with the global `arg`).
--   fsdp-lua RECIPE [--option value ...]   run a recipe (recipes/x.lua, a path, or a name)
--   fsdp-lua ckpt info|verify DIR          what resuming from DIR would do, and what it holds
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

-- Before a job of several ranks is torn down, the message must have left
-- this process: under mpiexec our stdout and stderr are pipes that hydra's
-- proxy reads and forwards, and MPI_Abort kills every rank at once, so a
-- message still in a pipe (ours, or that of a rank failing at the same
-- moment) was lost. So: wait until the reader has taken every byte we wrote
-- (FIONREAD on the pipe is 0; at most 2 s), then give the other ranks a
-- grace period (FSDP_ABORT_GRACE seconds, 0.5) to do the same.
local function drain_and_wait()
   local ffi = require 'ffi'
   pcall(ffi.cdef, 'int ioctl(int fd, unsigned long request, ...); int usleep(unsigned int usec);')
   local pending = ffi.new('int[1]')
   for _, fd in ipairs({2, 1}) do
      for _ = 1, 200 do
         if ffi.C.ioctl(fd, 0x541B, pending) ~= 0 or pending[0] <= 0 then break end -- FIONREAD; fails on a tty or file
         ffi.C.usleep(10000)
      end
   end
   local grace = tonumber(os.getenv('FSDP_ABORT_GRACE') or '') or 0.5
   if grace > 0 then ffi.C.usleep(math.floor(math.min(grace, 60) * 1e6)) end
end

local function usage()
   return table.concat({
      'usage: fsdp-lua RECIPE [--option value ...]   run a recipe (e.g. recipes/train_mingpt.lua)',
      '       fsdp-lua RECIPE --help                  list the recipe\'s options',
      '       fsdp-lua ckpt info|verify DIR           what resuming from DIR would do (verified), and what it holds',
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

-- runs a recipe file: a plain script runs top to bottom and returns its
-- exit status; a recipe built on recipes/train_lm.lua returns the recipe (a
-- table with main, options, model, shard_options) or the function that
-- makes it from defaults (then called with none)
-- a script's own modules (require 'tinylm' for tinylm.lua beside it) are
-- found from any working directory, as Python puts a script's directory
-- on sys.path: after the library's paths, so they cannot shadow it
local function add_script_dir(path)
   local dir = path:match('^(.*)/[^/]*$') or '.'
   local entry = dir .. '/?.lua;'
   if not package.path:find(entry, 1, true) then
      local lib = root .. '/lua/?.lua;' .. root .. '/lua/?/init.lua;'
      local at = package.path:find(lib, 1, true)
      if at then
         local cut = at + #lib - 1
         package.path = package.path:sub(1, cut) .. entry .. package.path:sub(cut + 1)
      else
         package.path = entry .. package.path
      end
   end
end

local function load_recipe(path, recipe_args, env)
   add_script_dir(path)
   local chunk, err = loadfile(path)
   if not chunk then error(err, 0) end
   if env then setfenv(chunk, env) end
   local r = chunk(unpack(recipe_args))
   if type(r) == 'function' then r = r() end
   return r
end

local function report(err)
   local msg = tostring(err)
   -- a progress bar on the screen is cleared first, so the error starts its own line
   local has_log, log = pcall(require, 'fsdp.log')
   if has_log and log.before_line then pcall(log.before_line) end
   if os.getenv('FSDP_TRACEBACK') and type(err) == 'string' then msg = msg .. '\n' .. debug.traceback() end
   io.stdout:flush()
   io.stderr:write(string.format('fsdp-lua: %s: error: %s\n', rank_prefix(), msg))
   io.stderr:flush()
   -- in a job of several ranks, take the others down instead of leaving
   -- them waiting in a collective, once every message is out
   local ok, dist = pcall(require, 'fsdp.dist')
   if ok and dist.world and dist.world_size > 1 then
      drain_and_wait()
      dist.abort(1)
   end
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

-- the launcher: fsdp-lua --nproc-per-node N RECIPE ... (torchrun's flags too)
if require('fsdp.launch').handles(cmd) then
   return run(function()
      local launch = require 'fsdp.launch'
      local opts, rest = launch.parse(args)
      if not opts then print(rest); return 0 end -- --help
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
         add_script_dir(path)
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
         local ok, err = pcall(function()
            local r = chunk(unpack(args, 3))
            if type(r) == 'function' then r = r() end
            if type(r) == 'table' and r.main then
               -- a recipe table: its run leaves what the prompt needs in
               -- r.session (opt, model, sharded, optimizer, train, evaluate, save, ...)
               env.recipe = r
               r.main(arg)
               for k, v in pairs(r.session or {}) do env[k] = v end
            end
         end)
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
      return require('fsdp.plan').main({unpack(args, 2)}, {resolve = resolve, load = load_recipe})
   end)
end

-- sub-commands: --help (or -h) anywhere in their arguments prints their
-- usage, with the module's header comment, and exits 0
local sub = {unpack(args, 2)}
local function wants_help()
   for _, a in ipairs(sub) do if a == '--help' or a == '-h' then return true end end
   return false
end
local function sub_help(module, usage, specs)
   local cli = require 'fsdp.cli'
   local desc = cli.description(root .. '/lua/fsdp/' .. module .. '.lua')
   if specs then print(cli.help(usage, specs, desc)) else print(usage .. (desc and ('\n\n' .. desc) or '')) end
   return 0
end

if cmd == 'export' then
   return run(function()
      local export = require 'fsdp.export'
      if wants_help() then return sub_help('export', 'export CKPT_DIR OUT_DIR', export.options) end
      return export.main(sub)
   end)
end

if cmd == 'prepare' then
   return run(function()
      local prepare = require 'fsdp.prepare'
      if sub[1] ~= '--worker' and wants_help() then return sub_help('prepare', 'prepare', prepare.options) end
      return prepare.main(sub)
   end)
end

if cmd == 'ckpt' then
   return run(function()
      local tool = require 'fsdp.ckpt_tool'
      if wants_help() then
         local usage = tool.usage and tool.usage() or select(2, pcall(tool.main, {}))
         return sub_help('ckpt_tool', tostring(usage))
      end
      return tool.main(sub)
   end)
end

if cmd == 'plot' then
   return run(function() return require('fsdp.plot').main(sub) end)
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
   local r = load_recipe(path, recipe_args)
   if type(r) == 'table' and r.main then return r.main(recipe_args) end
   return r
end)
local ok, dist = pcall(require, 'fsdp.dist')
if ok and status == 0 then dist.finalize() end
return status
