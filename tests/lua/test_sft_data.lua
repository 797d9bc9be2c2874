-- The SFT loader (fsdp.sft_data) over a generated directory of shards with
-- loss masks and sample starts: packing never cuts or mixes samples, every
-- target is the next learned token of the same sample, an epoch covers every
-- sample once, 1 and 2 ranks see the same global batches, peek_targets
-- equals what the batches then hold, a resumed loader continues
-- identically, the padded mode puts one sample per row, over-long samples
-- are truncated / dropped / refused, and broken side files are errors
-- naming the file.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'
local sft = require 'fsdp.sft_data'
local data = require 'fsdp.data'
local json = fsdp.json
local ffi, C = fsdp.ffi, fsdp.C

local dir = os.tmpname()
os.remove(dir)
fs.mkdirs(dir)

-- samples with recognisable tokens: sample s is [1000 + s, then (s*7 + k) % 500 ...];
-- its mask: 0 for a prompt of (s % 5) + 1 tokens, 1 after it
local rng = ffi.new('fsdp_rng')
C.fsdp_rng_seed(rng, 7)
local function rand(n) return tonumber(C.fsdp_rng_next(rng) % n) end

local samples = {} -- samples[s + 1] = {tokens = {...}, mask = {...}}
local function make_sample(s, len)
   local toks, mask = {1000 + s}, {0}
   local prompt = s % 5 + 1
   for k = 2, len do
      toks[k] = (s * 7 + k) % 500
      mask[k] = k > prompt and 1 or 0
   end
   return {tokens = toks, mask = mask}
end

-- writes samples [a, b] as one shard NAME (tokens, mask, docs)
local function write_shard(d, name, a, b)
   local toks, masks, starts = {}, {}, {}
   for s = a, b do
      starts[#starts + 1] = #toks
      for k, v in ipairs(samples[s + 1].tokens) do
         toks[#toks + 1] = v
         masks[#masks + 1] = string.char(samples[s + 1].mask[k])
      end
   end
   local buf = ffi.new('int32_t[?]', #toks)
   for i, v in ipairs(toks) do buf[i - 1] = v end
   assert(C.fsdp_tokens_write(d .. '/' .. name .. '.bin', buf, #toks, 2, 2000) == 0)
   sft.write_mask(d .. '/' .. name .. '.mask.bin', table.concat(masks))
   sft.write_docs(d .. '/' .. name .. '.docs.bin', starts)
end

local N = 60
for s = 0, N - 1 do samples[s + 1] = make_sample(s, 2 + rand(30)) end
samples[8] = make_sample(7, 45)   -- longer than seq_len + 1 = 33
samples[20] = make_sample(19, 1)  -- a single token: no targets
local function meta(d, extra)
   local m = {format = 'sft', eos_id = 3}
   for k, v in pairs(extra or {}) do m[k] = v end
   local s = json.encode(m)
   local f = assert(io.open(d .. '/meta.json', 'w')); f:write(s); f:close()
end
write_shard(dir, 'train_000000', 0, 24)
write_shard(dir, 'train_000001', 25, 49)
write_shard(dir, 'val_000000', 50, 59)
meta(dir)

local ds = data.open(dir)
t.check(ds.sft and ds.train.n_samples == 50 and ds.val.n_samples == 10, 'open: 50 train and 10 val samples, got %s %s',
        ds.train and ds.train.n_samples, ds.val and ds.val.n_samples)

local SEQ = 32
local function loader(o)
   local opts = {source = ds, batch_size = 2, seq_len = SEQ, seed = 11}
   for k, v in pairs(o or {}) do opts[k] = v end
   return data.loader(opts)
end

-- the sample a row segment belongs to: its first token names it
local function check_row(x, y, doc, pos, r, seen, label)
   local T_ = SEQ
   local at = 0
   local targets = 0
   while at < T_ do
      local id = doc[r * T_ + at]
      local first = x[r * T_ + at]
      local len = 0
      while at + len < T_ and doc[r * T_ + at + len] == id do len = len + 1 end
      local s = first - 1000
      local sample = samples[s + 1]
      if s >= 0 and s < N and pos[r * T_ + at] == 0 then
         -- a sample: its tokens in order, positions 0.., targets = next learned token
         seen[s] = (seen[s] or 0) + 1
         local n = math.min(#sample.tokens, SEQ + 1)
         local ok = len == math.min(n, T_ - at) and at + n <= T_ + 1
         for k = 0, len - 1 do
            local i = r * T_ + at + k
            if x[i] ~= sample.tokens[k + 1] or pos[i] ~= k then ok = false end
            local want = -100
            if k + 1 < n and sample.mask[k + 2] == 1 then want = sample.tokens[k + 2] end
            if y[i] ~= want then ok = false end
            if y[i] ~= -100 then targets = targets + 1 end
         end
         t.check(ok, '%s: row %d: sample %d (len %d at %d) is not laid out whole with its targets', label, r, s, len, at)
      else
         -- padding: pad id, no targets, positions from 0
         local ok = true
         for k = 0, len - 1 do
            local i = r * T_ + at + k
            if x[i] ~= 3 or y[i] ~= -100 or pos[i] ~= k then ok = false end
         end
         t.check(ok and at + len == T_, '%s: row %d: a segment at %d is neither a sample nor trailing padding', label, r, at)
      end
      at = at + len
   end
   return targets
end

local function batch_ptrs(x, y, extra)
   return x:ptr(), y:ptr(), extra.doc_ids:ptr(), extra.positions:ptr()
end

-- one epoch, batch 1: every sample exactly once, rows whole, targets right
do
   local L = loader({batch_size = 1})
   local rows = L:num_sequences()
   t.check(rows < 50 and rows > 50 * 17 / 33 / 2, 'packing puts several samples per row: %d rows', rows)
   t.check(L.stats.fill > 0.85, 'first-fit packing fills rows: %.3f real tokens', L.stats.fill)
   local seq = loader({batch_size = 1, pack_window = 1})
   t.check(seq.stats.fill < L.stats.fill, 'a window of 1 (sequential) packs worse: %.3f', seq.stats.fill)
   t.check(L.stats.truncated == 1 and L.stats.dropped == 0, 'one sample truncated: %d', L.stats.truncated)
   for epoch = 0, 1 do
      local seen = {}
      local first_order = {}
      rows = L:plan(epoch).n -- (the packing differs per epoch)
      local planned = {}
      for r = 1, rows do
         -- the samples the plan puts in this row (a 1-token sample in the
         -- row's last slot is only a target position, never in x)
         local order, a, b = L:row_samples(L.cursor)
         for k = a, b - 1 do planned[order[k]] = (planned[order[k]] or 0) + 1 end
         local peek = L:peek_targets(1)
         local x, y, extra = L:next()
         local xp, yp, dp, pp = batch_ptrs(x, y, extra)
         local seen_row = {}
         local n = check_row(xp, yp, dp, pp, 0, seen_row, 'epoch ' .. epoch)
         for smp, c in pairs(seen_row) do seen[smp] = (seen[smp] or 0) + c end
         for k = a, b - 1 do
            local smp = order[k]
            t.check(seen_row[smp] == 1 or (samples[smp + 1] and #samples[smp + 1].tokens == 1), 'row %d: planned sample %d is not in x', r, smp)
         end
         t.check(n == extra.n_targets and n == peek, 'row %d: n_targets %d, counted %d, peeked %d', r, extra.n_targets, n, peek)
         first_order[r] = xp[0]
      end
      local all = true
      for s = 0, 49 do if planned[s] ~= 1 then all = false; t.check(false, 'epoch %d: sample %d planned %s times', epoch, s, planned[s]) end end
      for s, c in pairs(seen) do if c ~= 1 then all = false; t.check(false, 'epoch %d: sample %d seen %d times', epoch, s, c) end end
      t.check(all, 'epoch %d covers every sample once', epoch)
      t.check(math.abs(L:epoch() - (epoch + 1)) < 1e-9, 'epoch counter %g after epoch %d', L:epoch(), epoch)
   end
end

-- 1 rank with batch 4 == 2 ranks with batch 2, batch for batch; peek is global
do
   local one = loader({batch_size = 4})
   local r0 = loader({batch_size = 2, rank = 0, world = 2})
   local r1 = loader({batch_size = 2, rank = 1, world = 2})
   local same = true
   for step = 1, 25 do -- crosses an epoch boundary
      local g0, m0 = r0:peek_targets(2)
      local g1, m1 = r1:peek_targets(2)
      local ga = one:peek_targets(2)
      if g0 ~= ga or g1 ~= ga then same = false end
      local x, y, e = one:next()
      local x0, y0, e0 = r0:next()
      local x1, y1, e1 = r1:next()
      local n2 = 0
      local x0b, y0b, e0b = r0:next() -- the second micro-batch of the peek
      local x1b, y1b, e1b = r1:next()
      n2 = e0b.n_targets + e1b.n_targets
      local xb, yb, eb = one:next()
      if m0 + m1 ~= ga or e0.n_targets + e1.n_targets + n2 ~= ga or e.n_targets + eb.n_targets ~= ga then same = false end
      for _, pair in ipairs({{x, x0, x1}, {y, y0, y1}, {e.doc_ids, e0.doc_ids, e1.doc_ids}, {e.positions, e0.positions, e1.positions},
                             {xb, x0b, x1b}, {yb, y0b, y1b}}) do
         local a, p, q = pair[1]:ptr(), pair[2]:ptr(), pair[3]:ptr()
         for i = 0, 2 * SEQ - 1 do
            if a[i] ~= p[i] or a[2 * SEQ + i] ~= q[i] then same = false end
         end
      end
   end
   t.check(same, '1 rank x 4 rows and 2 ranks x 2 rows give the same global batches and target counts')
end

-- resume: the state of a loader after 7 batches continues identically
do
   local a = loader()
   for _ = 1, 7 do a:next() end
   local sd = a:state_dict()
   local b = loader({seed = 999}) -- the seed comes from the state
   b:load_state_dict(json.decode(json.encode(sd)))
   local same = true
   for _ = 1, 30 do
      local xa, ya, ea = a:next()
      local xb, yb, eb = b:next()
      for i = 0, 2 * SEQ - 1 do
         if xa:ptr()[i] ~= xb:ptr()[i] or ya:ptr()[i] ~= yb:ptr()[i] or ea.doc_ids:ptr()[i] ~= eb.doc_ids:ptr()[i] then same = false end
      end
   end
   t.check(same, 'a resumed loader gives the same batches')
   -- resuming on another world size: global row cursor
   local c = loader({batch_size = 1, rank = 1, world = 2})
   c:load_state_dict(sd)
   local d = loader()
   d:load_state_dict(sd)
   local xa = d:next()   -- rows cursor, cursor + 1
   local xc = c:next()   -- row cursor + 1
   local eq = true
   for i = 0, SEQ - 1 do if xa:ptr()[SEQ + i] ~= xc:ptr()[i] then eq = false end end
   t.check(eq, 'the cursor resumes at another world size')
   t.raises(function() loader({packing = false}):load_state_dict(sd) end, 'packing', 'a packed cursor in a padded loader')
end

-- padded: one sample per row, in a shuffled order; val split in order
do
   local L = loader({packing = false, batch_size = 5})
   t.check(L:num_sequences() == 50, 'padded: one row per sample, got %d', L:num_sequences())
   local seen = {}
   for _ = 1, 10 do
      local x, y, e = L:next()
      local xp, yp, dp, pp = batch_ptrs(x, y, e)
      for r = 0, 4 do
         local before = 0
         for _, v in pairs(seen) do before = before + v end
         check_row(xp, yp, dp, pp, r, seen, 'padded')
         local after = 0
         for _, v in pairs(seen) do after = after + v end
         t.check(after == before + 1, 'padded row %d holds one sample', r)
      end
   end
   local all = true
   for s = 0, 49 do if seen[s] ~= 1 then all = false end end
   t.check(all, 'padded: an epoch covers every sample once')
   local v = loader({split = 'val', batch_size = 1, packing = false})
   local x = v:next()
   t.check(x:ptr()[0] == 1050, 'val split: unshuffled, first sample 50, got %d', x:ptr()[0] - 1000)
end

-- over-long samples: dropped, or an error naming the file
do
   local L = loader({overlong = 'drop', batch_size = 1})
   t.check(L.stats.dropped == 1 and L.stats.samples == 49, 'drop: 1 dropped, 49 kept (%d, %d)', L.stats.dropped, L.stats.samples)
   t.raises(function() loader({overlong = 'error'}) end, {'train_000000.bin', 'longer than seq_len + 1 = 33'}, 'overlong error')
   t.raises(function() loader({overlong = 'cut'}) end, 'overlong must be', 'bad overlong')
end

-- no val shards: the last val_fraction of the samples
do
   local d2 = dir .. '/noval'
   fs.mkdirs(d2)
   write_shard(d2, 'train_000000', 0, 39)
   meta(d2)
   local ds2 = sft.open(d2)
   local v = sft.loader({source = ds2, split = 'val', batch_size = 1, seq_len = SEQ, val_fraction = 0.25, packing = false})
   local tr = sft.loader({source = ds2, batch_size = 1, seq_len = SEQ, val_fraction = 0.25, packing = false})
   t.check(v.n_samples == 10 and tr.n_samples == 30, 'val_fraction 0.25 of 40 samples: %d val, %d train', v.n_samples, tr.n_samples)
   t.check(v:next():ptr()[0] == 1030, 'the held-out samples are the last ones')
end

-- broken side files
do
   local function broken(name, mutate, pattern)
      local d2 = dir .. '/' .. name
      fs.mkdirs(d2)
      write_shard(d2, 'train_000000', 0, 9)
      meta(d2)
      mutate(d2 .. '/train_000000')
      t.raises(function() loader({source = sft.open(d2)}):next() end, pattern, name)
   end
   local function patch(path, offset, bytes)
      local f = assert(io.open(path, 'r+b'))
      f:seek('set', offset)
      f:write(bytes)
      f:close()
   end
   broken('magic', function(b) patch(b .. '.mask.bin', 0, '\0\0\0\0') end, {'train_000000.mask.bin', 'bad magic'})
   broken('count', function(b) sft.write_mask(b .. '.mask.bin', '\0\1') end, {'train_000000.mask.bin', 'has 2 entries'})
   broken('value', function(b) patch(b .. '.mask.bin', 1024 + 3, '\2') end, {'train_000000.mask.bin', 'entry 3 is 2'})
   broken('short', function(b) local f = io.open(b .. '.docs.bin', 'wb'); f:write('abc'); f:close() end,
          {'train_000000.docs.bin', 'shorter than'})
   broken('order', function(b) sft.write_docs(b .. '.docs.bin', {0, 5, 5}) end, {'train_000000.docs.bin', 'starts must increase'})
   broken('first', function(b) sft.write_docs(b .. '.docs.bin', {2, 5}) end, {'train_000000.docs.bin', 'starts at 2'})
   broken('missing', function(b) os.remove(b .. '.docs.bin') end, {'train_000000.docs.bin', 'cannot open'})
   local d3 = dir .. '/notsft'
   fs.mkdirs(d3)
   meta(d3, {format = 'text'})
   t.raises(function() sft.open(d3) end, {'format text', "not 'sft'"}, 'format')
end

fs.remove_tree(dir)
return t.done()
