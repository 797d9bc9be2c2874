-- fsdp.data: token sources and the batch loader.
--
-- A token source is an in-memory i32 tensor (text tokenized on the fly) or a
-- memory-mapped token file (engine/tokens.c: llm.c-compatible header, uint16
-- or uint32 tokens). The loader cuts the training region into sequences of
-- seq_len + 1 tokens, visits them in a seeded random order per epoch, and
-- gives rank r rows [r*B, (r+1)*B) of every global batch of B*world rows. Its
-- cursor counts global sequences, so it is independent of the world size and
-- a resumed run continues with exactly the batches it would have seen.
local bind = require 'fsdp.ffi'
local T = require 'fsdp.tensor'
local ffi, C, check = bind.ffi, bind.C, bind.check

local M = {}

---------------------------------------------------------------------------
-- byte-level tokenizer: every byte is a token (vocab 256). Lossless on any
-- input; used by the demo so it needs no tokenizer files.

local ByteTokenizer = {vocab_size = 256, name = 'bytes'}
ByteTokenizer.__index = ByteTokenizer
M.ByteTokenizer = ByteTokenizer

function ByteTokenizer.new() return setmetatable({}, ByteTokenizer) end

-- string -> i32 tensor [#s]
function ByteTokenizer:encode(s)
   local t = T.empty({#s}, 'i32')
   local p = t:ptr()
   local bytes = ffi.cast('const uint8_t*', s)
   for i = 0, #s - 1 do p[i] = bytes[i] end
   return t
end

-- list (Lua table) of ids -> string
function ByteTokenizer:decode(ids)
   local chars = {}
   for i, id in ipairs(ids) do chars[i] = string.char(id % 256) end
   return table.concat(chars)
end

---------------------------------------------------------------------------
-- token sources

local Source = {}
Source.__index = Source

local function read_all(path)
   local f, err = io.open(path, 'rb')
   if not f then error('data: cannot open ' .. path .. ': ' .. tostring(err), 0) end
   local s = f:read('*a')
   f:close()
   return s
end

local function is_token_file(path)
   local f = io.open(path, 'rb')
   if not f then return false end
   local head = f:read(4)
   f:close()
   if not head or #head < 4 then return false end
   local b1, b2, b3, b4 = head:byte(1, 4)
   return b1 + b2 * 256 + b3 * 65536 + b4 * 16777216 == 20240520
end

-- several token files read as one sequence (a prepared directory's shards)
local MultiSource = {}
MultiSource.__index = MultiSource

local function open_files(dir, names)
   local self = setmetatable({path = dir, parts = {}, n = 0, vocab_size = 0}, MultiSource)
   for _, name in ipairs(names) do
      local part = M.open(dir .. '/' .. name)
      self.parts[#self.parts + 1] = {source = part, first = self.n}
      self.n = self.n + part.n
      self.vocab_size = math.max(self.vocab_size, part.vocab_size or 0)
   end
   return self
end

function MultiSource:read(out, start, n)
   for _, p in ipairs(self.parts) do
      local lo, hi = p.first, p.first + p.source.n
      local a, b = math.max(start, lo), math.min(start + n, hi)
      if a < b then p.source:read(out + (a - start), a - lo, b - a) end
   end
end

-- opens a token file, a text file (tokenized on the fly), or a directory
-- made by `fsdp-lua prepare` (train_*.bin shards, and val_*.bin as the
-- validation split)
function M.open(path, tokenizer)
   local fs = require 'fsdp.fs'
   -- supervised fine-tuning data (prepare --format sft): fsdp.sft_data
   if fs.is_dir(path) and require('fsdp.sft_data').is_sft_dir(path) then return require('fsdp.sft_data').open(path) end
   if fs.is_dir(path) then
      local train, val = {}, {}
      for _, name in ipairs(fs.list(path)) do
         if name:match('^train_%d+%.bin$') then train[#train + 1] = name end
         if name:match('^val_%d+%.bin$') then val[#val + 1] = name end
      end
      if #train == 0 then
         error('data: ' .. path .. ' is a directory without train_*.bin shards (make them with fsdp-lua prepare)', 0)
      end
      local src = open_files(path, train)
      if #val > 0 then
         src.val = open_files(path, val)
         src.vocab_size = math.max(src.vocab_size, src.val.vocab_size) -- a model must cover both splits
      end
      return src
   end
   local self = setmetatable({path = path}, Source)
   -- a .bin is always a token file: a wrong magic number is an error, never
   -- text; the ids are all checked as it opens (engine/tokens.c)
   if path:match('%.bin$') or is_token_file(path) then
      self.file = ffi.new('fsdp_token_file')
      check(C.fsdp_tokens_open(self.file, path), 'data')
      self.file = ffi.gc(self.file, C.fsdp_tokens_close)
      self.n = tonumber(self.file.n_tokens)
      -- the header's vocab size, or (llm.c files leave it 0) the largest id
      -- + 1, so a model too small for the data is refused before training
      self.vocab_size = math.max(tonumber(self.file.vocab_size), tonumber(self.file.max_token) + 1)
   else
      local text = read_all(path)
      if #text == 0 then error('data: ' .. path .. ' is empty', 0) end
      tokenizer = tokenizer or ByteTokenizer.new()
      self.tokens = tokenizer:encode(text)
      self.n = self.tokens:numel()
      self.vocab_size = tokenizer.vocab_size
   end
   if self.n == 0 then error('data: ' .. path .. ' holds no tokens', 0) end
   return self
end

-- tokens [start, start+n) into an int32 pointer
function Source:read(out, start, n)
   if self.file then
      check(C.fsdp_tokens_read(self.file, out, start, n), 'data ' .. self.path)
   else
      ffi.copy(out, self.tokens:ptr() + start, n * 4)
   end
end

---------------------------------------------------------------------------
-- loader

local Loader = {}
Loader.__index = Loader
M.Loader = Loader

-- opts: source, batch_size (per rank), seq_len, seed, split ('train' | 'val'),
-- val_fraction, shuffle (default: train only), rank, world
function M.loader(opts)
   local src = opts.source
   if type(src) == 'table' and src.sft then return require('fsdp.sft_data').loader(opts) end
   local T_ = opts.seq_len
   local vf = opts.val_fraction or 0.1
   if type(vf) ~= 'number' or not (vf >= 0 and vf < 1) then
      error(string.format('data: val_fraction %s must be in [0, 1)', tostring(vf)), 0)
   end
   if type(T_) ~= 'number' or T_ < 1 or T_ ~= math.floor(T_) then
      error(string.format('data: seq_len %s must be an integer >= 1', tostring(T_)), 0)
   end
   if type(opts.batch_size) ~= 'number' or opts.batch_size < 1 or opts.batch_size ~= math.floor(opts.batch_size) then
      error(string.format('data: batch_size %s (per rank) must be an integer >= 1', tostring(opts.batch_size)), 0)
   end
   local n_train = math.floor(src.n * (1 - vf))
   local lo, hi = 0, n_train
   if opts.split == 'val' then lo, hi = n_train, src.n end
   if src.val then -- a prepared directory has its own validation shards
      if opts.split == 'val' then src = src.val end
      lo, hi, vf = 0, src.n, 0
   end
   local chunks = math.floor((hi - lo - 1) / T_)
   if chunks < 1 then
      error(string.format('data: the %s split of %s has %d tokens, fewer than one sequence of %d+1 (%d tokens in all; val_fraction %g)',
                          opts.split or 'train', src.path, hi - lo, T_, src.n, vf), 0)
   end
   local self = setmetatable({
      source = src, B = opts.batch_size, T = T_, seed = opts.seed or 0, lo = lo, chunks = chunks,
      shuffle = opts.shuffle == nil and (opts.split or 'train') == 'train' or opts.shuffle,
      rank = opts.rank or 0, world = opts.world or 1, cursor = 0, perms = {},
      split = opts.split or 'train', batches = 0, rows = 0,
   }, Loader)
   self.x = T.empty({self.B, T_}, 'i32')
   self.y = T.empty({self.B, T_}, 'i32')
   self.row = ffi.new('int32_t[?]', T_ + 1)
   self.device = opts.device or -1 -- batches are copied to cuda:N when >= 0
   if self.device >= 0 then
      self.dx = T.empty({self.B, T_}, 'i32', nil, self.device)
      self.dy = T.empty({self.B, T_}, 'i32', nil, self.device)
   end
   return self
end

-- sequences per epoch
function Loader:num_sequences() return self.chunks end

-- the seeded order of epoch e (Fisher-Yates)
function Loader:perm(epoch)
   local p = self.perms[epoch]
   if p then return p end
   p = ffi.new('int32_t[?]', self.chunks)
   for i = 0, self.chunks - 1 do p[i] = i end
   local rng = ffi.new('fsdp_rng')
   C.fsdp_rng_seed(rng, self.seed * 1000003 + epoch)
   for i = self.chunks - 1, 1, -1 do
      local j = tonumber(C.fsdp_rng_next(rng) % (i + 1))
      p[i], p[j] = p[j], p[i]
   end
   self.perms = {[epoch] = p} -- keep only the current epoch
   return p
end

function Loader:sequence_index(g)
   local epoch = math.floor(g / self.chunks)
   local within = g % self.chunks
   if not self.shuffle then return within end
   return self:perm(epoch)[within]
end

-- the next batch: x, y are i32 [B, T] tensors owned by the loader (reused)
function Loader:next()
   local B, T_ = self.B, self.T
   local xp, yp, row = self.x:ptr(), self.y:ptr(), self.row
   for r = 0, B - 1 do
      local g = self.cursor + self.rank * B + r
      local chunk = self:sequence_index(g)
      self.source:read(row, self.lo + chunk * T_, T_ + 1)
      ffi.copy(xp + r * T_, row, T_ * 4)
      ffi.copy(yp + r * T_, row + 1, T_ * 4)
   end
   self.cursor = self.cursor + B * self.world
   -- batches served and the most sequences one took: a saved cursor beyond
   -- batches * rows cannot be one this loader reached
   self.batches = self.batches + 1
   self.rows = math.max(self.rows, B * self.world)
   if self.dx then return self.dx:copy(self.x), self.dy:copy(self.y) end
   return self.x, self.y
end

function Loader:epoch() return self.cursor / self.chunks end

function Loader:state_dict()
   return {cursor = self.cursor, seed = self.seed, split = self.split, batches = self.batches, rows = self.rows}
end

local function whole(v, lo) return type(v) == 'number' and v == math.floor(v) and v >= lo and v < 2 ^ 53 end

-- restores a position; a cursor that is not a count of sequences this
-- loader could have reached is an error, not a silent jump
function Loader:load_state_dict(sd)
   if type(sd) ~= 'table' then error('data: the saved loader state is not a table', 0) end
   if not whole(sd.cursor, 0) then
      error(string.format('data: the saved cursor %s is not a count of sequences (an integer >= 0)', tostring(sd.cursor)), 0)
   end
   if sd.seed ~= nil and not whole(sd.seed, -2 ^ 53) then error('data: the saved seed ' .. tostring(sd.seed) .. ' is not an integer', 0) end
   local rows = self.B * self.world
   if sd.batches ~= nil then
      if not whole(sd.batches, 0) or not whole(sd.rows, 1) or sd.cursor > sd.batches * sd.rows then
         error(string.format('data: the saved cursor %s is beyond %s batches of at most %s sequences', tostring(sd.cursor),
                             tostring(sd.batches), tostring(sd.rows)), 0)
      end
      self.batches, self.rows = sd.batches, math.max(sd.rows, rows)
   else -- a checkpoint from before the count was kept
      self.batches, self.rows = math.ceil(sd.cursor / rows), rows
   end
   self.cursor = sd.cursor
   if sd.seed ~= nil then self.seed = sd.seed end
   self.perms = {}
end

return M
