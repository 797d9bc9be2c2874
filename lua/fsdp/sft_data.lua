-- fsdp.sft_data: supervised fine-tuning data (what `fsdp-lua prepare
-- --format sft` writes) and its loader.
--
-- A prepared SFT directory holds, per shard, three llm.c-style files:
--
--   train_000000.bin        the tokens (engine/tokens.c: 256 int32 header, uint16/uint32)
--   train_000000.mask.bin   one u8 per token: 1 = a learned token (completion /
--                           assistant), 0 = context (prompt, system, user, template)
--   train_000000.docs.bin   the start offset (int64) of every sample in the shard;
--                           a sample ends where the next starts, the last at the
--                           end of the shard; no sample straddles two shards
--   val_000000.*            the same for the validation split
--   meta.json               "format": "sft" and the counts
--
-- Both side files have a 1024-byte header of 256 int32 (little-endian):
--   [0] magic (MASK_MAGIC or DOCS_MAGIC)  [1] version 1
--   [2] entry count, low 31 bits   [3] the bits above those   the rest zero
-- then the entries (u8 for the mask, int64 for the starts).
--
-- The loader packs whole samples greedily, in a seeded order per epoch,
-- into rows of seq_len + 1 tokens (a sample never straddles two rows; the
-- rest of a row is padding): each sample goes to the oldest of the last 64
-- rows it still fits in (first fit), else opens a new row. Or it puts one
-- sample per row padded to the length (packing = false). Per batch it yields
--
--   x          i32 [B, T]  the tokens of the row (padding: pad_id)
--   y          i32 [B, T]  y[t] = x[t+1] where token t+1 is a learned token of
--                          the same sample as token t, else -100
--   extra = {doc_ids   = i32 [B, T]  0, 1, 2 ... per sample in the row, padding its own id
--            positions = i32 [B, T]  0, 1, 2 ... restarting at every sample (and padding)
--            n_targets = number of y ~= -100 in this rank's batch}
--
-- Rank r of W gets rows [r*B, (r+1)*B) of every global batch of B*W rows;
-- the cursor counts global rows, so a run resumes at any world size with
-- the batches it would have seen.
local bind = require 'fsdp.ffi'
local T = require 'fsdp.tensor'
local fs = require 'fsdp.fs'
local ffi, C, check = bind.ffi, bind.C, bind.check

local M = {}

M.MASK_MAGIC = 20240601
M.DOCS_MAGIC = 20240602
M.IGNORE = -100
local HEADER_INTS, HEADER_BYTES = 256, 1024

---------------------------------------------------------------------------
-- side files

local function header(magic, n)
   local h = ffi.new('int32_t[256]')
   h[0], h[1] = magic, 1
   h[2] = n % 2147483648
   h[3] = math.floor(n / 2147483648)
   return ffi.string(h, HEADER_BYTES)
end

local function write_atomic(path, s)
   check(C.fsdp_file_write_atomic(path, s, #s), 'sft_data')
end

-- mask: a Lua string of n bytes (each 0 or 1), or a pointer to n uint8
function M.write_mask(path, mask, n)
   local body = type(mask) == 'string' and mask or ffi.string(mask, n)
   write_atomic(path, header(M.MASK_MAGIC, #body) .. body)
end

-- starts: a pointer to n int64 (or a Lua table of numbers)
function M.write_docs(path, starts, n)
   local buf = starts
   if type(starts) == 'table' then
      n = #starts
      buf = ffi.new('int64_t[?]', math.max(n, 1))
      for i = 1, n do buf[i - 1] = starts[i] end
   end
   write_atomic(path, header(M.DOCS_MAGIC, n) .. ffi.string(buf, n * 8))
end

-- reads and checks a side file's header; returns the entry count
local function read_header(path, magic, entry_bytes, what)
   local f, err = io.open(path, 'rb')
   if not f then error('sft_data: cannot open ' .. path .. ': ' .. tostring(err), 0) end
   local head = f:read(HEADER_BYTES)
   local size = f:seek('end')
   f:close()
   if not head or #head < HEADER_BYTES then
      error(string.format('sft_data: %s: %d bytes, shorter than the %d-byte header of a %s file', path, size,
                          HEADER_BYTES, what), 0)
   end
   local h = ffi.cast('const int32_t*', head)
   if h[0] ~= magic then
      error(string.format('sft_data: %s: bad magic %d (expected %d): not a %s file', path, h[0], magic, what), 0)
   end
   if h[1] ~= 1 then error(string.format('sft_data: %s: unknown version %d (expected 1)', path, h[1]), 0) end
   if h[2] < 0 or h[3] < 0 or h[3] >= 2 ^ 30 then
      error(string.format('sft_data: %s: bad entry count fields %d %d', path, h[2], h[3]), 0)
   end
   local n = h[2] + h[3] * 2147483648
   if size ~= HEADER_BYTES + n * entry_bytes then
      error(string.format('sft_data: %s: the header says %d entries of %d byte(s) (%d bytes with the header) but the file has %d bytes',
                          path, n, entry_bytes, HEADER_BYTES + n * entry_bytes, size), 0)
   end
   return n
end

---------------------------------------------------------------------------
-- a split: shards of tokens + masks + sample starts, as one list of samples

local Split = {}
Split.__index = Split

local function open_split(dir, names)
   local data = require 'fsdp.data'
   local self = setmetatable({dir = dir, shards = {}, n_samples = 0, n_tokens = 0, vocab_size = 0}, Split)
   local counts = {}
   for i, name in ipairs(names) do
      local base = dir .. '/' .. name
      local tokens = data.open(base .. '.bin')
      local nmask = read_header(base .. '.mask.bin', M.MASK_MAGIC, 1, 'loss-mask')
      if nmask ~= tokens.n then
         error(string.format('sft_data: %s.mask.bin has %d entries but %s.bin has %d tokens', base, nmask, base,
                             tokens.n), 0)
      end
      local ndocs = read_header(base .. '.docs.bin', M.DOCS_MAGIC, 8, 'sample-boundary')
      if ndocs == 0 then error('sft_data: ' .. base .. '.docs.bin holds no samples', 0) end
      local mask = T.mmap(base .. '.mask.bin', HEADER_BYTES, 'u8', {nmask})
      local docs = T.mmap(base .. '.docs.bin', HEADER_BYTES, 'i64', {ndocs})
      self.shards[i] = {path = base, tokens = tokens, mask = mask, mask_ptr = ffi.cast('const uint8_t*', mask:ptr()),
                        docs = docs, n_docs = ndocs}
      counts[i] = ndocs
      self.n_samples = self.n_samples + ndocs
      self.n_tokens = self.n_tokens + tokens.n
      self.vocab_size = math.max(self.vocab_size, tokens.vocab_size or 0)
   end
   -- per sample: shard, start within the shard, length
   local n = self.n_samples
   self.shard_of = ffi.new('int32_t[?]', n)
   self.start = ffi.new('int64_t[?]', n)
   self.len = ffi.new('int32_t[?]', n)
   local k = 0
   for i, sh in ipairs(self.shards) do
      local d = ffi.cast('const int64_t*', sh.docs:ptr())
      local ntok = sh.tokens.n
      if d[0] ~= 0 then
         error(string.format('sft_data: %s.docs.bin: the first sample starts at %d, not 0', sh.path, tonumber(d[0])), 0)
      end
      for j = 0, sh.n_docs - 1 do
         local s = d[j]
         local e = j + 1 < sh.n_docs and d[j + 1] or ntok
         if e <= s or e > ntok then
            error(string.format('sft_data: %s.docs.bin: sample %d spans tokens %d..%d of %d (starts must increase and stay inside the shard)',
                                sh.path, j, tonumber(s), tonumber(e), ntok), 0)
         end
         if e - s > 2 ^ 31 - 1 then error(string.format('sft_data: %s: sample %d is longer than 2^31 tokens', sh.path, j), 0) end
         self.shard_of[k], self.start[k], self.len[k] = i, s, e - s
         k = k + 1
      end
   end
   return self
end

-- tokens [off, off+n) of sample i into an int32 pointer, its mask into a uint8 pointer
function Split:read(i, off, n, tok_out, mask_out)
   local sh = self.shards[self.shard_of[i]]
   local s = self.start[i] + off
   sh.tokens:read(tok_out, s, n)
   if mask_out ~= nil then ffi.copy(mask_out, sh.mask_ptr + s, n) end
end

-- learned tokens at positions 1..n-1 of sample i (the targets it gives when
-- cut to n tokens); checks every entry is 0 or 1
function Split:count_targets(i, n)
   local sh = self.shards[self.shard_of[i]]
   local p = sh.mask_ptr + self.start[i]
   local c = 0
   for t = 0, n - 1 do
      local m = p[t]
      if m > 1 then
         error(string.format('sft_data: %s.mask.bin: entry %d is %d (masks hold 0 or 1)', sh.path,
                             tonumber(self.start[i]) + t, m), 0)
      end
      if t > 0 then c = c + m end
   end
   return c
end

-- opens a prepared SFT directory: {path, train = Split, val = Split or nil, meta, sft = true}
function M.open(dir)
   local json = require 'fsdp.json'
   dir = dir:gsub('/+$', '')
   local meta_path = dir .. '/meta.json'
   if not fs.exists(meta_path) then error('sft_data: ' .. dir .. ' has no meta.json (make it with fsdp-lua prepare --format sft)', 0) end
   local ok, meta = pcall(json.read_file, meta_path)
   if not ok or type(meta) ~= 'table' then error('sft_data: ' .. meta_path .. ': ' .. tostring(meta), 0) end
   if meta.format ~= 'sft' then
      error(string.format("sft_data: %s says format %s, not 'sft'", meta_path, tostring(meta.format)), 0)
   end
   local names = {train = {}, val = {}}
   for _, name in ipairs(fs.list(dir)) do
      local split, base = name:match('^((%a+)_%d+)%.bin$')
      if split and names[base] then table.insert(names[base], split) end
   end
   if #names.train == 0 then error('sft_data: ' .. dir .. ' has no train_*.bin shards', 0) end
   local self = {path = dir, meta = meta, sft = true}
   self.train = open_split(dir, names.train)
   if #names.val > 0 then self.val = open_split(dir, names.val) end
   self.vocab_size = self.train.vocab_size
   self.n = self.train.n_tokens
   return self
end

-- true when dir holds a meta.json saying format sft
function M.is_sft_dir(dir)
   local f = io.open(dir .. '/meta.json', 'rb')
   if not f then return false end
   local s = f:read('*a')
   f:close()
   return s:match('"format"%s*:%s*"sft"') ~= nil
end

---------------------------------------------------------------------------
-- the loader

local Loader = {}
Loader.__index = Loader
M.Loader = Loader

local OVERLONG = {truncate = true, drop = true, error = true}

-- opts: source (M.open's result), batch_size (per rank), seq_len, seed,
-- split ('train' | 'val'), val_fraction (only when the directory has no
-- val shards: the last share of the samples), shuffle (default: train
-- only), rank, world, device, packing (default true), overlong
-- ('truncate' (default) | 'drop' | 'error': samples longer than
-- seq_len + 1), pad_id (default: the meta's pad or eos id, else 0),
-- pack_window (rows kept open for packing, default 64; 1 = plain sequential)
function M.loader(opts)
   local ds = opts.source
   if type(ds) ~= 'table' or not ds.sft then error('sft_data.loader: source must be sft_data.open(dir)', 2) end
   local split_name = opts.split or 'train'
   if split_name ~= 'train' and split_name ~= 'val' then
      error("sft_data.loader: split must be 'train' or 'val', got " .. tostring(split_name), 2)
   end
   local B, T_ = opts.batch_size, opts.seq_len
   if type(B) ~= 'number' or B < 1 or type(T_) ~= 'number' or T_ < 1 then
      error('sft_data.loader: batch_size and seq_len must be positive numbers', 2)
   end
   local overlong = opts.overlong or 'truncate'
   if not OVERLONG[overlong] then
      error("sft_data.loader: overlong must be 'truncate', 'drop' or 'error', got " .. tostring(overlong), 2)
   end
   -- the samples of the split
   local split, lo, hi = ds.train, 0, ds.train.n_samples
   local vf = opts.val_fraction or 0.1
   if ds.val then
      if split_name == 'val' then split = ds.val; hi = split.n_samples end
   else
      local n_val = math.floor(split.n_samples * vf)
      if split_name == 'val' then lo = split.n_samples - n_val else hi = split.n_samples - n_val end
   end
   local L = T_ + 1
   local ids = ffi.new('int32_t[?]', math.max(hi - lo, 1))
   local n, truncated, dropped, longest = 0, 0, 0, 0
   for i = lo, hi - 1 do
      local len = split.len[i]
      longest = math.max(longest, len)
      if len > L then
         if overlong == 'error' then
            local sh = split.shards[split.shard_of[i]]
            error(string.format('sft_data: sample %d of %s (%d tokens) is longer than seq_len + 1 = %d (overlong = error)',
                                i, sh.path .. '.bin', len, L), 0)
         elseif overlong == 'drop' then dropped = dropped + 1
         else truncated = truncated + 1 end
      end
      if len <= L or overlong == 'truncate' then ids[n] = i; n = n + 1 end
   end
   if n == 0 then
      error(string.format('sft_data: the %s split of %s has no sample that fits %d tokens (%d sample(s), %d dropped; val_fraction %g)',
                          split_name, ds.path, L, hi - lo, dropped, ds.val and 0 or vf), 0)
   end
   local meta = ds.meta or {}
   local pad = opts.pad_id or (type(meta.pad_id) == 'number' and meta.pad_id)
               or (type(meta.eos_id) == 'number' and meta.eos_id) or 0
   local self = setmetatable({
      source = ds, split_data = split, split = split_name, samples = ids, n_samples = n,
      B = B, T = T_, seed = opts.seed or 0, rank = opts.rank or 0, world = opts.world or 1,
      shuffle = opts.shuffle == nil and split_name == 'train' or opts.shuffle,
      packing = opts.packing ~= false, pack_window = opts.pack_window or 64, pad_id = pad, cursor = 0, plans = {},
      stats = {samples = n, truncated = truncated, dropped = dropped, longest = longest},
   }, Loader)
   self.targets = ffi.new('int32_t[?]', split.n_samples) -- per sample, -1 until counted
   ffi.fill(self.targets, split.n_samples * 4, 0xff)
   self.x = T.empty({B, T_}, 'i32')
   self.y = T.empty({B, T_}, 'i32')
   self.doc_ids = T.empty({B, T_}, 'i32')
   self.positions = T.empty({B, T_}, 'i32')
   self.row_tok = ffi.new('int32_t[?]', L)
   self.row_mask = ffi.new('uint8_t[?]', L)
   self.row_doc = ffi.new('int32_t[?]', L)
   self.row_pos = ffi.new('int32_t[?]', L)
   self.device = opts.device or -1
   if self.device >= 0 then
      self.dx = T.empty({B, T_}, 'i32', nil, self.device)
      self.dy = T.empty({B, T_}, 'i32', nil, self.device)
      self.ddoc = T.empty({B, T_}, 'i32', nil, self.device)
      self.dpos = T.empty({B, T_}, 'i32', nil, self.device)
      self.dpos.checked_positions = true -- made here, counting up within each sample (ops.attention)
   end
   -- packing efficiency of the first epoch: real tokens / row tokens
   local plan = self:plan(0)
   local tokens = 0
   for k = 0, n - 1 do tokens = tokens + self:length(ids[k]) end
   self.stats.rows = plan.n
   self.stats.fill = tokens / (plan.n * L)
   return self
end

-- the tokens of sample i this loader uses (cut to seq_len + 1)
function Loader:length(i)
   return math.min(self.split_data.len[i], self.T + 1)
end

-- epoch e's plan: the order of the samples and, packing, where each row
-- starts in it ({order, first, n}; row j holds order[first[j] .. first[j+1]-1])
function Loader:plan(e)
   local p = self.plans[e]
   if p then return p end
   local n = self.n_samples
   local order = ffi.new('int32_t[?]', n)
   ffi.copy(order, self.samples, n * 4)
   if self.shuffle then
      local rng = ffi.new('fsdp_rng')
      C.fsdp_rng_seed(rng, self.seed * 1000003 + e)
      for i = n - 1, 1, -1 do
         local j = tonumber(C.fsdp_rng_next(rng) % (i + 1))
         order[i], order[j] = order[j], order[i]
      end
   end
   p = {order = order, n = n}
   if self.packing then
      -- first fit over the last `window` rows still open: a sample goes to the
      -- oldest open row it fits in, else starts a new row (the oldest open
      -- row is closed when more than `window` are open)
      local cap, window = self.T + 1, self.pack_window
      local row_of = ffi.new('int32_t[?]', math.max(n, 1))
      local used, count = {}, {}
      local open = {}
      local rows = 0
      for k = 0, n - 1 do
         local len = self:length(order[k])
         local r
         for q = 1, #open do
            if used[open[q]] + len <= cap then r = open[q]; break end
         end
         if not r then
            r = rows
            rows = rows + 1
            used[r], count[r] = 0, 0
            open[#open + 1] = r
            if #open > window then table.remove(open, 1) end
         end
         used[r] = used[r] + len
         count[r] = count[r] + 1
         row_of[k] = r
         if used[r] == cap then
            for q = 1, #open do if open[q] == r then table.remove(open, q); break end end
         end
      end
      -- lay the samples out row by row (in their shuffled order within a row)
      local first = ffi.new('int32_t[?]', rows + 1)
      first[0] = 0
      for r = 0, rows - 1 do first[r + 1] = first[r] + count[r] end
      local fill = ffi.new('int32_t[?]', rows + 1)
      ffi.copy(fill, first, (rows + 1) * 4)
      local arranged = ffi.new('int32_t[?]', math.max(n, 1))
      for k = 0, n - 1 do
         local r = row_of[k]
         arranged[fill[r]] = order[k]
         fill[r] = fill[r] + 1
      end
      p.order, p.first, p.n = arranged, first, rows
   end
   -- keep the two newest epochs (a peek may look into the next one)
   local keep = {[e] = p}
   if self.plans[e - 1] then keep[e - 1] = self.plans[e - 1] end
   self.plans = keep
   return p
end

-- global row g -> its plan and row index within the epoch
function Loader:locate(g)
   local e, base = self.epoch_at or 0, self.epoch_base or 0
   if g < base then e, base = 0, 0 end
   while true do
      local p = self:plan(e)
      if g < base + p.n then
         self.epoch_at, self.epoch_base = e, base
         return p, g - base
      end
      base = base + p.n
      e = e + 1
   end
end

-- the samples of global row g: order, first index, one past the last
function Loader:row_samples(g)
   local p, j = self:locate(g)
   if self.packing then return p.order, p.first[j], p.first[j + 1] end
   return p.order, j, j + 1
end

-- targets sample i gives (counted once; checks its mask entries)
function Loader:sample_targets(i)
   local c = self.targets[i]
   if c < 0 then
      c = self.split_data:count_targets(i, self:length(i))
      self.targets[i] = c
   end
   return c
end

function Loader:row_targets(g)
   local order, a, b = self:row_samples(g)
   local c = 0
   for k = a, b - 1 do c = c + self:sample_targets(order[k]) end
   return c
end

-- builds global row g into the row buffers (seq_len + 1 tokens)
function Loader:fill_row(g)
   local L = self.T + 1
   local tok, mask, doc, pos = self.row_tok, self.row_mask, self.row_doc, self.row_pos
   local order, a, b = self:row_samples(g)
   local at, id = 0, 0
   for k = a, b - 1 do
      local i = order[k]
      local len = self:length(i)
      self:sample_targets(i) -- checks the mask entries once
      self.split_data:read(i, 0, len, tok + at, mask + at)
      for t = 0, len - 1 do doc[at + t] = id; pos[at + t] = t end
      at, id = at + len, id + 1
   end
   for t = at, L - 1 do -- padding: its own document
      tok[t], mask[t], doc[t], pos[t] = self.pad_id, 0, id, t - at
   end
end

-- the next batch: x, y, extra (tensors owned by the loader, reused)
function Loader:next()
   local B, T_ = self.B, self.T
   local xp, yp, dp, pp = self.x:ptr(), self.y:ptr(), self.doc_ids:ptr(), self.positions:ptr()
   local tok, mask, doc, pos = self.row_tok, self.row_mask, self.row_doc, self.row_pos
   local n_targets, IGN = 0, M.IGNORE
   for r = 0, B - 1 do
      self:fill_row(self.cursor + self.rank * B + r)
      local o = r * T_
      for t = 0, T_ - 1 do
         xp[o + t], dp[o + t], pp[o + t] = tok[t], doc[t], pos[t]
         if mask[t + 1] == 1 and doc[t + 1] == doc[t] then
            yp[o + t] = tok[t + 1]
            n_targets = n_targets + 1
         else
            yp[o + t] = IGN
         end
      end
   end
   self.cursor = self.cursor + B * self.world
   local extra = {n_targets = n_targets}
   if self.dx then
      extra.doc_ids, extra.positions = self.ddoc:copy(self.doc_ids), self.dpos:copy(self.positions)
      return self.dx:copy(self.x), self.dy:copy(self.y), extra
   end
   extra.doc_ids, extra.positions = self.doc_ids, self.positions
   return self.x, self.y, extra
end

-- targets of the next k batches without moving the cursor: the count over
-- the whole global batches (every rank's rows; no communication needed),
-- and this rank's share
function Loader:peek_targets(k)
   k = k or 1
   local B, W = self.B, self.world
   local global, mine = 0, 0
   for s = 0, k - 1 do
      local base = self.cursor + s * B * W
      for r = 0, B * W - 1 do
         local c = self:row_targets(base + r)
         global = global + c
         if r >= self.rank * B and r < (self.rank + 1) * B then mine = mine + c end
      end
   end
   return global, mine
end

-- rows in the first epoch (one per sample when not packing)
function Loader:num_sequences() return self:plan(0).n end

-- epochs done, fractional
function Loader:epoch()
   local p, j = self:locate(self.cursor)
   return (self.epoch_at or 0) + j / p.n
end

function Loader:state_dict()
   return {cursor = self.cursor, seed = self.seed, split = self.split, packing = self.packing}
end

function Loader:load_state_dict(sd)
   if sd.packing ~= nil and sd.packing ~= self.packing then
      error(string.format('sft_data: the saved cursor is for packing = %s, this loader has packing = %s',
                          tostring(sd.packing), tostring(self.packing)), 2)
   end
   if type(sd.cursor) ~= 'number' or sd.cursor < 0 then
      error('sft_data: load_state_dict wants a state with a cursor >= 0, got ' .. tostring(sd.cursor), 2)
   end
   self.cursor = sd.cursor
   self.seed = sd.seed or self.seed
   self.plans, self.epoch_at, self.epoch_base = {}, nil, nil
end

-- one line for the console
function Loader:describe()
   local s = self.stats
   return string.format('%s: %d samples in %d rows of %d tokens (%s, %.1f%% real tokens), %d truncated, %d dropped',
                        self.split, s.samples, s.rows, self.T + 1, self.packing and 'packed' or 'padded',
                        100 * s.fill, s.truncated, s.dropped)
end

return M
