-- The code in docs/recipes.md and docs/models.md runs and does what the
-- text says. Every ```lua block is a file whose first line names it
-- (`-- step1.lua: ...`), except blocks marked ```lua -- fragment, which are
-- pieces of a file and are not run, and blocks marked ```lua -- excerpt
-- (lua/models/qwen2.lua), which must appear in that file of the checkout
-- word for word (so the page cannot drift from the code it shows). The named files are written side by
-- side into a temporary directory, with corpus.txt beside them, and run
-- there on one rank with the commands the pages show; tests/dist/
-- test_docs_dist.lua runs the recipe-style ones on two ranks.
--
-- Also a module for the 2-rank test: require 'tests.lua.test_docs' gives
-- blocks(), workspace(), run(), losses() and the case tables.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'

local M = {}
M.DOCS = {'docs/recipes.md', 'docs/models.md'}
M.bin = fsdp.root .. '/build/fsdp-lua'

-- the ```lua blocks of a markdown file: {name, code, fragment, where}
function M.blocks(path)
   local text = assert(fs.read(fsdp.root .. '/' .. path), 'cannot read ' .. path)
   local out, cur, n = {}, nil, 0
   for line in (text .. '\n'):gmatch('(.-)\n') do
      n = n + 1
      if cur then
         if line:match('^```%s*$') then
            cur.code = table.concat(cur.lines, '\n') .. '\n'
            cur.name = cur.lines[1] and cur.lines[1]:match('^%-%- ([%w_%-]+%.lua):')
            out[#out + 1] = cur
            cur = nil
         else
            cur.lines[#cur.lines + 1] = line
         end
      else
         local info = line:match('^```lua(.*)$')
         if info then
            cur = {lines = {}, fragment = info:find('fragment', 1, true) ~= nil, where = path .. ':' .. n,
                   excerpt_of = info:match('^%s*%-%- excerpt %(([^)]+)%)')}
         end
      end
   end
   t.check(cur == nil, '%s: a ```lua block is not closed', path)
   return out
end

-- every named block of the pages, by name (a name used twice is an error);
-- excerpts are checked against their file here
function M.files()
   local files, n_fragments = {}, 0
   M.n_excerpts = 0
   for _, doc in ipairs(M.DOCS) do
      for _, b in ipairs(M.blocks(doc)) do
         if b.excerpt_of then
            M.n_excerpts = M.n_excerpts + 1
            local src = fs.read(fsdp.root .. '/' .. b.excerpt_of)
            t.check(src ~= nil, '%s: an excerpt of %s, which is not in the checkout', b.where, b.excerpt_of)
            t.check(src and src:find(b.code, 1, true), '%s: this excerpt is not word for word in %s', b.where,
                    b.excerpt_of)
         elseif b.fragment then
            n_fragments = n_fragments + 1
         elseif not b.name then
            t.check(false, '%s: a ```lua block neither starts with `-- name.lua:` nor is marked `-- fragment`', b.where)
         else
            t.check(files[b.name] == nil, '%s: %s is also the name of the block at %s', b.where, b.name,
                    files[b.name] and files[b.name].where)
            files[b.name] = b
         end
      end
   end
   return files, n_fragments
end

local function corpus()
   for _, p in ipairs({fsdp.root .. '/data/tinyshakespeare.txt', '/usr/share/games/fortunes/cookie'}) do
      if fs.exists(p) then return p end
   end
   error('no corpus: neither data/tinyshakespeare.txt nor the fortunes package (make deps)', 0)
end

-- a temporary directory holding every named block and corpus.txt
function M.workspace(files)
   local dir = os.tmpname()
   os.remove(dir)
   fs.mkdirs(dir)
   for name, b in pairs(files) do
      local f = assert(io.open(dir .. '/' .. name, 'wb'))
      f:write(b.code)
      f:close()
   end
   os.execute('cp ' .. fs.quote(corpus()) .. ' ' .. fs.quote(dir .. '/corpus.txt'))
   return dir
end

-- runs `fsdp-lua ARGS` in dir (on n ranks when n > 1); status, output
function M.run(dir, args, n)
   local launcher = (n and n > 1) and (' --nproc-per-node ' .. n .. ' ') or ' '
   return t.sh('cd ' .. fs.quote(dir) .. ' && OMP_NUM_THREADS=1 timeout 120 ' .. fs.quote(M.bin) .. launcher .. args)
end

-- runs and checks the exit status; returns the output
function M.ok(dir, args, n)
   local status, out = M.run(dir, args, n)
   t.check(status == 0, '`fsdp-lua %s%s` exited %s:\n%s', (n and n > 1) and ('--nproc-per-node ' .. n .. ' ') or '',
           args, tostring(status), out)
   return out
end

-- {step -> loss} from lines `step N  loss X` (rank 0's when prefixed)
function M.printed_losses(out)
   local l = {}
   for line in out:gmatch('[^\n]+') do
      local s, v = line:match('step%s+(%d+)%s+loss%s+([%d.]+)')
      if s and not line:match('^%[rank [1-9]') then l[tonumber(s)] = tonumber(v) end
   end
   return l
end

-- {step -> loss} from a metrics.jsonl
function M.logged_losses(path)
   local l = {}
   local text = fs.read(path)
   if not text then return l end
   for line in text:gmatch('[^\n]+') do
      local m = fsdp.json.decode(line)
      if m.loss then l[m.step] = m.loss end
   end
   return l
end

local function has(out, s) return out:find(s, 1, true) ~= nil end

local function decreasing(l, first, last, by, what)
   t.check(l[first] and l[last] and l[last] < l[first] - by, '%s: the loss should fall by more than %g from step %d (%s) to %d (%s)',
           what, by, first, tostring(l[first]), last, tostring(l[last]))
end
M.decreasing = decreasing

-- what each page says its blocks do, on one rank
M.cases = {
   ['step1.lua'] = function(dir)
      local out = M.ok(dir, 'step1.lua --data corpus.txt --seq-len 64 --lr=1e-3 --no-resume')
      for _, s in ipairs({'data             corpus.txt', 'seq_len          64', 'lr               0.001',
                          'strategy         full', 'resume           false'}) do
         t.check(has(out, s), 'step1.lua should print %q:\n%s', s, out)
      end
      out = M.ok(dir, 'step1.lua --help')
      t.check(has(out, '--label-smoothing') and has(out, '[0.1]'), 'step1.lua --help lists the options:\n%s', out)
      local st, err = M.run(dir, 'step1.lua --sequence-len 64')
      t.check(st == 1 and has(err, 'unknown option --sequence-len; did you mean --seq-len?'), 'a typo:\n%s', err)
      st, err = M.run(dir, 'step1.lua --strategy zero3')
      t.check(st == 1 and has(err, "must be one of full, grad_op, none, got 'zero3'"), 'a bad choice:\n%s', err)
   end,
   ['step2.lua'] = function(dir)
      local out = M.ok(dir, 'step2.lua --data corpus.txt')
      t.check(has(out, 'rank 0 of 1:') and has(out, 'x is 4x16') and has(out, 'y is x shifted by one token: true'),
              'step2.lua:\n%s', out)
   end,
   ['schedule.lua'] = function(dir)
      local out = M.ok(dir, 'schedule.lua')
      for _, s in ipairs({'   0   2.00e-04   2.00e-04', '  50   1.00e-03   5.87e-04', '  90   5.00e-04   1.24e-04',
                          '  99   5.00e-05   1.00e-04'}) do
         t.check(has(out, s), 'schedule.lua should print %q:\n%s', s, out)
      end
   end,
   ['loss.lua'] = function(dir)
      local out = M.ok(dir, 'loss.lua')
      t.check(has(out, 'loss 3.442643, by the definition 3.442643'), 'loss.lua:\n%s', out)
   end,
   ['train.lua'] = function(dir)
      local l = M.printed_losses(M.ok(dir, 'train.lua --data corpus.txt'))
      decreasing(l, 1, 30, 1.0, 'train.lua')
   end,
   ['my_recipe.lua'] = function(dir)
      local out = M.ok(dir, 'my_recipe.lua --data corpus.txt')
      t.check(has(out, 'saved ckpt/step_00000010') and has(out, 'saved ckpt/step_00000020'), 'checkpoints at 10 and 20:\n%s', out)
      for _, f in ipairs({'ckpt/latest', 'ckpt/step_00000020/index.json', 'ckpt/step_00000020/rank_00000.safetensors',
                          'ckpt/step_00000020/trainer_state.json', 'run/metrics.jsonl'}) do
         t.check(fs.exists(dir .. '/' .. f), 'my_recipe.lua should write %s', f)
      end
      t.check((fs.read(dir .. '/ckpt/latest') or ''):match('^step_00000020'), 'ckpt/latest names step 20')
      t.check(#fs.list(dir .. '/run/tb') == 1, 'one TensorBoard event file in run/tb')
      local straight = M.logged_losses(dir .. '/run/metrics.jsonl')
      decreasing(straight, 1, 20, 1.0, 'my_recipe.lua')
      -- stop after 10, run again: the same losses, bit for bit
      M.ok(dir, 'my_recipe.lua --data corpus.txt --checkpoint-dir ckpt2 --run-dir run2 --stop-after 10')
      out = M.ok(dir, 'my_recipe.lua --data corpus.txt --checkpoint-dir ckpt2 --run-dir run2')
      t.check(has(out, 'resumed from ckpt2/step_00000010 (step 10, saved by 1 rank(s))'), 'resume message:\n%s', out)
      local resumed = M.logged_losses(dir .. '/run2/metrics.jsonl')
      for s = 1, 20 do
         t.check(resumed[s] == straight[s], 'step %d: %s resumed vs %s straight', s, tostring(resumed[s]), tostring(straight[s]))
      end
      -- activation checkpointing: the same losses
      M.ok(dir, 'my_recipe.lua --data corpus.txt --activation-checkpointing --checkpoint-dir ckpt_ac --run-dir run_ac')
      local ac = M.logged_losses(dir .. '/run_ac/metrics.jsonl')
      t.check(ac[20] and math.abs(ac[20] - straight[20]) <= 1e-6 * straight[20], 'activation checkpointing: %s vs %s',
              tostring(ac[20]), tostring(straight[20]))
      -- the tools the page shows
      out = M.ok(dir, 'plot run')
      t.check(has(out, 'wrote run/plot.svg') and fs.exists(dir .. '/run/plot.svg'), 'plot:\n%s', out)
      out = M.ok(dir, 'ckpt info ckpt')
      t.check(has(out, 'checkpoint ckpt/step_00000020') and has(out, 'step 20') and has(out, 'model mingpt'), 'ckpt info:\n%s', out)
      out = M.ok(dir, 'plan recipes/train_mingpt.lua --world-size 8 --memory-per-rank 16GiB --preset gpt-nano ' ..
                      '--batch-size 8 --seq-len 32')
      t.check(has(out, 'memory plan: 8 rank(s), strategy full (shard group 8), 0.10M parameters') and
              has(out, 'fits in 16.00 GiB per rank'), 'plan:\n%s', out)
      local st, err = M.run(dir, 'plan my_recipe.lua --world-size 8 --data corpus.txt')
      t.check(st == 1 and has(err, 'does not describe its model'), 'a plain script is not planned:\n%s', err)
   end,
   ['tinylm.lua'] = function(dir)
      M.ok(dir, 'tinylm.lua') -- a module: loading it defines the classes
   end,
   ['try_tinylm.lua'] = function(dir)
      local out = M.ok(dir, 'try_tinylm.lua')
      for _, s in ipairs({'37536 parameters, 2 units', 'blocks.0.ffn.w_down          32x64', 'logits\t2x4x256',
                          'head gradient norm\ttrue', 'in TinyLM.tok_emb (Embedding): embedding:', 'idx[2] = 300'}) do
         t.check(has(out, s), 'try_tinylm.lua should print %q:\n%s', s, out)
      end
      local loss = tonumber(out:match('loss ([%d.]+)'))
      t.check(loss and math.abs(loss - math.log(256)) < 0.1, 'an untrained model is near ln 256: %s', tostring(loss))
   end,
   ['train_tinylm.lua'] = function(dir)
      local out = M.ok(dir, 'train_tinylm.lua --data corpus.txt')
      t.check(has(out, '3 units; this rank holds 37536 of 37536 parameters'), 'train_tinylm.lua:\n%s', out)
      t.check(has(out, 'wrote tinylm.safetensors (22 tensors)') and fs.exists(dir .. '/tinylm.safetensors'), 'weights written')
      local l = M.printed_losses(out)
      decreasing(l, 1, 30, 1.0, 'train_tinylm.lua')
      local l2 = M.printed_losses(M.ok(dir, 'train_tinylm.lua --data corpus.txt --no-activation-checkpointing'))
      t.check(l2[30] == l[30], 'the same loss without activation checkpointing: %s vs %s', tostring(l2[30]), tostring(l[30]))
      -- what the page says reads the weights back
      local f = assert(io.open(dir .. '/reload.lua', 'w'))
      f:write("local tinylm = require 'tinylm'\n",
              "tinylm.TinyLM {vocab_size = 256, block_size = 16, dim = 32, n_head = 4, hidden = 64, n_layer = 2}",
              ":materialize():load('tinylm.safetensors')\nprint('reloaded')\n")
      f:close()
      t.check(has(M.ok(dir, 'reload.lua'), 'reloaded'), 'tinylm.safetensors loads into an unsharded TinyLM')
   end,
   ['chat_sft.lua'] = function(dir)
      local out = M.ok(dir, 'chat_sft.lua')
      local before = tonumber(out:match('%-%-model%s+loss ([%d.]+)'))
      local after = tonumber(out:match('%-%-checkpoint%s+loss ([%d.]+)'))
      t.check(before and after and after < before - 1.0,
              'chat_sft.lua: the masked validation loss should fall by more than 1 nat:\n%s', out)
      t.check(fs.exists(dir .. '/chat/train_000000.mask.bin'), 'chat_sft.lua prepares a loss mask')
   end,
   ['chat_lora.lua'] = function(dir)
      local out = M.ok(dir, 'chat_lora.lua')
      local base = tonumber(out:match('base%s+loss ([%d.]+)'))
      local adapter = tonumber(out:match('adapter%s+loss ([%d.]+)'))
      local merged = tonumber(out:match('merged%s+loss ([%d.]+)'))
      t.check(base and adapter and merged and adapter < base - 0.2 and math.abs(merged - adapter) <= 1e-4,
              'chat_lora.lua: the adapter lowers the masked loss by more than 0.2 and the merged model equals it:\n%s', out)
      t.check(has(out, 'LoRA: r 8, alpha 32, dropout 0 on 8 layers'), 'chat_lora.lua: the LoRA line:\n%s', out)
      for _, f in ipairs({'lora_adapter/adapter_config.json', 'lora_adapter/adapter_model.safetensors',
                          'lora_merged/config.json', 'lora_merged/model.safetensors'}) do
         t.check(fs.exists(dir .. '/' .. f), 'chat_lora.lua should write %s', f)
      end
   end,
   ['sqrelu.lua'] = function(dir)
      local out = M.ok(dir, 'sqrelu.lua')
      t.check(has(out, 'sqrelu.lua: 7 checks passed'), 'sqrelu.lua:\n%s', out)
   end,
}

-- the "a new op in C" walk-through of docs/models.md, as written: its
-- kernels (the ```c block of sqrelu_cpu.c) compiled into a library of their
-- own and declared from its header block, and its two fragments for
-- lua/fsdp/ops.lua (the op, then the pointwise one-liner) each put into a
-- copy of ops.lua; both ops agree and pass finite differences
function M.c_op(dir)
   local text = assert(fs.read(fsdp.root .. '/docs/models.md'))
   local c_blocks = {}
   for code in text:gmatch('```c\n(.-)```') do c_blocks[#c_blocks + 1] = code end
   local kernel, header
   for _, c in ipairs(c_blocks) do
      if c:match('^/%* sqrelu_cpu%.c') then kernel = c elseif c:find('int fsdp_sqrelu_forward_cpu', 1, true) then header = c end
   end
   t.check(kernel and header, 'docs/models.md: the sqrelu kernel and header blocks')
   if not (kernel and header) then return end
   local f = assert(io.open(dir .. '/sqrelu_cpu.c', 'w'))
   f:write(kernel)
   f:close()
   local root = fsdp.root
   local st, out = t.sh(string.format('cd %s && gcc -O2 -fPIC -fopenmp -shared -I%s/engine/include -I%s/engine ' ..
                                      '-I%s/kernels sqrelu_cpu.c -o libsqrelu.so -L%s/build -Wl,-rpath,%s/build -lfsdp 2>&1',
                                      fs.quote(dir), root, root, root, root, root))
   t.check(st == 0, 'the sqrelu kernels of docs/models.md do not compile:\n%s', out)
   if st ~= 0 then return end
   local ffi = require 'ffi'
   ffi.cdef((header:gsub('/%*.-%*/', '')))
   local lib = ffi.load(dir .. '/libsqrelu.so')
   local kernels = require 'fsdp.kernels'
   kernels.cpu.sqrelu_forward, kernels.cpu.sqrelu_backward = lib.fsdp_sqrelu_forward_cpu, lib.fsdp_sqrelu_backward_cpu
   local frags = {}
   for info, code in text:gmatch('```lua %-%- fragment %(inside lua/fsdp/ops%.lua%)\n(.-)```') do
      frags[#frags + 1] = info
   end
   t.check(#frags == 2, 'docs/models.md: two fragments for ops.lua, found %d', #frags)
   local ops_src = assert(fs.read(root .. '/lua/fsdp/ops.lua'))
   local G = require 'tests.lua.gradcheck'
   local x = G.randn({4, 8})
   local results = {}
   for i, frag in ipairs(frags) do
      local src = ops_src:gsub('\nreturn M%s*$', function() return '\n' .. frag .. '\nreturn M\n' end)
      local chunk, err = loadstring(src, '=ops.lua with fragment ' .. i)
      t.check(chunk ~= nil, 'fragment %d does not load in ops.lua: %s', i, tostring(err))
      if chunk then
         local ops2 = chunk()
         t.check(type(ops2.sqrelu) == 'function', 'fragment %d defines no ops.sqrelu', i)
         if ops2.sqrelu then
            G.check('docs sqrelu (fragment ' .. i .. ')', function() return ops2.sqrelu(x) end, {{'x', x}})
            results[i] = fsdp.no_grad(function() return ops2.sqrelu(x):totable() end)
            fsdp.autograd.reset()
         end
      end
   end
   if results[1] and results[2] then
      local same = #results[1] == #x:totable()
      for j = 1, #results[1] do same = same and results[1][j] == results[2][j] end
      t.check(same, 'the two sqrelu fragments give different values')
   end
end

-- blocks the 2-rank test runs (tests/dist/test_docs_dist.lua)
M.DIST = {'step2.lua', 'train.lua', 'my_recipe.lua', 'train_tinylm.lua'}

if ... == 'tests.lua.test_docs' then return M end

local files, n_fragments = M.files()
local names = {}
for name in pairs(files) do names[#names + 1] = name end
table.sort(names)
for _, name in ipairs(names) do
   t.check(M.cases[name] ~= nil, '%s (%s) has no case in tests/lua/test_docs.lua: say what it should do',
           name, files[name].where)
end
for name in pairs(M.cases) do
   t.check(files[name] ~= nil, 'tests/lua/test_docs.lua has a case for %s, which the docs no longer have', name)
end
t.check(n_fragments <= 4, '%d fragments: keep the pages runnable', n_fragments)

local dir = M.workspace(files)
local clock = require('fsdp.run').now
for _, name in ipairs(names) do
   if M.cases[name] then
      local t0 = clock()
      M.cases[name](dir)
      print(string.format('%-18s ran (%.1fs)', name, clock() - t0))
   end
end
M.c_op(dir)
t.check(M.n_excerpts >= 3, 'docs/models.md shows lua/models/qwen2.lua in %d excerpts', M.n_excerpts)
print(string.format('%d files, %d fragments and %d excerpts in %s', #names, n_fragments, M.n_excerpts,
                    table.concat(M.DOCS, ', ')))
fs.remove_tree(dir)
return t.done()
