-- The recipe-style files of docs/recipes.md and docs/models.md on two ranks
-- (fsdp-lua --nproc-per-node 2), as the pages show them: they run, print the
-- losses of the one-rank run (the same global batch, split over two ranks),
-- and a checkpoint saved by two ranks resumes on one, continuing the
-- uninterrupted run. The files come out of the pages the way
-- tests/lua/test_docs.lua takes them.
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'
local D = require 'tests.lua.test_docs'

local files = D.files()
local dir = D.workspace(files)
local function has(out, s) return out:find(s, 1, true) ~= nil end

local function close(a, b) return a and b and math.abs(a - b) <= 1e-5 * math.abs(b) end

local cases = {
   ['step2.lua'] = function()
      local out = D.ok(dir, 'step2.lua --data corpus.txt', 2)
      for r = 0, 1 do
         t.check(has(out, string.format('rank %d of 2:', r)) and has(out, string.format('rank %d: x is 2x16', r)),
                 'step2.lua on 2 ranks: rank %d:\n%s', r, out)
      end
      t.check(not has(out, 'shifted by one token: false'), 'y is x shifted on both ranks:\n%s', out)
   end,
   ['train.lua'] = function()
      local one = D.printed_losses(D.ok(dir, 'train.lua --data corpus.txt'))
      local two = D.printed_losses(D.ok(dir, 'train.lua --data corpus.txt', 2))
      D.decreasing(two, 1, 30, 1.0, 'train.lua on 2 ranks')
      for _, s in ipairs({1, 10, 20, 30}) do
         t.check(two[s] and one[s] and math.abs(two[s] - one[s]) <= 2e-4, 'train.lua step %d: %s on 2 ranks, %s on 1',
                 s, tostring(two[s]), tostring(one[s]))
      end
   end,
   ['my_recipe.lua'] = function()
      D.ok(dir, 'my_recipe.lua --data corpus.txt --checkpoint-dir c1 --run-dir r1')
      local out = D.ok(dir, 'my_recipe.lua --data corpus.txt --checkpoint-dir c2 --run-dir r2', 2)
      t.check(has(out, 'saved c2/step_00000020') and fs.exists(dir .. '/c2/step_00000020/rank_00001.safetensors'),
              'two ranks write two rank files:\n%s', out)
      local one, two = D.logged_losses(dir .. '/r1/metrics.jsonl'), D.logged_losses(dir .. '/r2/metrics.jsonl')
      for s = 1, 20 do
         t.check(close(two[s], one[s]), 'my_recipe.lua step %d: %s on 2 ranks, %s on 1', s, tostring(two[s]), tostring(one[s]))
      end
      -- saved by two ranks after 10 steps, resumed on one
      D.ok(dir, 'my_recipe.lua --data corpus.txt --checkpoint-dir ckpt3 --run-dir run3 --stop-after 10', 2)
      out = D.ok(dir, 'my_recipe.lua --data corpus.txt --checkpoint-dir ckpt3 --run-dir run3')
      t.check(has(out, 'resumed from ckpt3/step_00000010 (step 10, saved by 2 rank(s))'), 'resharded resume:\n%s', out)
      local resumed = D.logged_losses(dir .. '/run3/metrics.jsonl')
      for s = 11, 20 do
         t.check(close(resumed[s], one[s]), 'step %d after resuming on 1 rank: %s vs %s', s, tostring(resumed[s]),
                 tostring(one[s]))
      end
      out = D.ok(dir, 'ckpt info ckpt3/step_00000010')
      t.check(has(out, 'saved by 2 rank(s) as 2 slice(s), strategy full'), 'ckpt info:\n%s', out)
   end,
   ['train_tinylm.lua'] = function()
      local out = D.ok(dir, 'train_tinylm.lua --data corpus.txt', 2)
      t.check(has(out, '3 units; this rank holds 18768 of 37536 parameters'), 'train_tinylm.lua on 2 ranks:\n%s', out)
      t.check(has(out, 'wrote tinylm.safetensors (22 tensors)'), 'rank 0 writes the gathered weights:\n%s', out)
      local two = D.printed_losses(out)
      local one = D.printed_losses(D.ok(dir, 'train_tinylm.lua --data corpus.txt'))
      D.decreasing(two, 1, 30, 1.0, 'train_tinylm.lua on 2 ranks')
      t.check(two[30] and one[30] and math.abs(two[30] - one[30]) <= 2e-4, 'step 30: %s on 2 ranks, %s on 1',
              tostring(two[30]), tostring(one[30]))
   end,
}

for _, name in ipairs(D.DIST) do
   t.check(files[name] ~= nil, '%s is not in the docs any more', name)
   if files[name] then cases[name]() ; print(name .. ' ran on 2 ranks') end
end
fs.remove_tree(dir)
return t.done()
