-- fsdp.kv_cache: keys and values kept across decoding steps, as an object
-- the caller owns and passes to the model's forward call. Each attention
-- layer stores the keys and values of the new positions in its own slot and
-- attends over every cached position (ops.attention with opts.cache), so a
-- new token costs one position, not the whole context. The model reads the
-- offset of the first new position from cache.pos (RoPE, learned
-- positions) and advances it by the tokens it consumed.
--
--   local cache = kv_cache.new {max_positions = 512, batch = 2}
--   local logits = model(prompts, cache)   -- positions 0 .. n-1; cache.pos = n
--   logits = model(next_tokens, cache)     -- position n (i32 [2, 1])
--   cache:free()
--
-- Every sequence of the batch is at the same position (prompts of one
-- length). Generation only: attention with a cache has no backward.
local T = require 'fsdp.tensor'

local M = {}

local KVCache = {}
KVCache.__index = KVCache
M.KVCache = KVCache

-- opts: max_positions (required), batch (default 1), device (-1: the host)
function M.new(opts)
   opts = opts or {}
   local max, batch = opts.max_positions, opts.batch or 1
   if type(max) ~= 'number' or max < 1 or max ~= math.floor(max) then
      error('kv_cache: max_positions must be a positive integer, got ' .. tostring(max), 2)
   end
   if type(batch) ~= 'number' or batch < 1 or batch ~= math.floor(batch) then
      error('kv_cache: batch must be a positive integer, got ' .. tostring(batch), 2)
   end
   return setmetatable({max = max, batch = batch, device = opts.device or -1, pos = 0, slots = {}, n = 0}, KVCache)
end

function KVCache:offset() return self.pos end

-- checks that T new positions of a batch of B fit; the model calls it
-- before it computes anything
function KVCache:check(B, T_)
   if self.freed then error('kv_cache: the cache was freed', 0) end
   if B ~= self.batch then
      error(string.format('kv_cache: a batch of %d sequences, but the cache holds %d', B, self.batch), 0)
   end
   if self.pos + T_ > self.max then
      error(string.format('kv_cache: positions %d .. %d exceed the cache of %d', self.pos, self.pos + T_ - 1,
                          self.max), 0)
   end
end

-- after a forward call: T positions more are cached
function KVCache:advance(T_)
   self:check(self.batch, T_)
   self.pos = self.pos + T_
end

-- the key and value caches [batch, max_positions, width] of one layer (the
-- layer object is the key), allocated on first use
function KVCache:slot(layer, width, device)
   local s = self.slots[layer]
   if not s then
      device = device or self.device
      s = {k = T.zeros({self.batch, self.max, width}, 'f32', nil, device),
           v = T.zeros({self.batch, self.max, width}, 'f32', nil, device)}
      self.slots[layer] = s
      self.n = self.n + 1
   elseif s.k.shape[3] ~= width then
      error(string.format('kv_cache: a layer stored rows of %d before and %d now', s.k.shape[3], width), 0)
   end
   return s.k, s.v
end

-- starts again at position 0 (the slots are kept and overwritten)
function KVCache:reset() self.pos = 0 end

function KVCache:free()
   for _, s in pairs(self.slots) do s.k:free(); s.v:free() end
   self.slots, self.n, self.freed = {}, 0, true
end

function KVCache:__tostring()
   return string.format('KVCache(batch %d, position %d of %d, %d layer(s))', self.batch, self.pos, self.max, self.n)
end

function M.is_cache(x) return getmetatable(x) == KVCache end

return M
