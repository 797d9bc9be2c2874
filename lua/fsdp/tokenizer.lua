-- fsdp.tokenizer: Hugging Face tokenizer.json files through the C core
-- (engine/tokenizer.c): byte-level BPE (GPT-2, OPT, Llama 3) and
-- SentencePiece-style BPE with byte fallback (Llama 2, Mistral), id for id
-- as the `tokenizers` library. The interface is data.ByteTokenizer's:
--
--   local tok = require('fsdp.tokenizer').load('models/Llama-2-7b-hf')  -- a directory or a tokenizer.json
--   tok.vocab_size                      max id + 1
--   tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id  nil when the files name none
--   tok.add_bos, tok.add_eos            what encode(s, true) puts around the text
--   tok:encode(s [, add_special])       -> i32 tensor (add_special: as tokenizers'
--                                          add_special_tokens=True, <s> first for Llama 2)
--   tok:decode(ids [, skip_special])    -> string (ids: a Lua table or a tensor)
--   tok:token_to_id(s), tok:id_to_token(id)   nil when unknown
--
-- Given a directory, a tokenizer_config.json beside tokenizer.json (as
-- transformers writes it) decides bos / eos / unk / pad when it names them
-- (M.read_config).
-- A file that cannot be read or holds parts the C core does not implement
-- raises an error naming the file and the field.
local bind = require 'fsdp.ffi'
local T = require 'fsdp.tensor'
local fs = require 'fsdp.fs'
local json = require 'fsdp.json'
local ffi, C = bind.ffi, bind.C

local M = {}

local Tokenizer = {}
Tokenizer.__index = Tokenizer
M.Tokenizer = Tokenizer

local count = ffi.new('int64_t[1]')

local function live(self)
   if self._c == nil then error('tokenizer: used after :free()', 3) end
   return self._c
end

local function id_or_nil(id)
   id = tonumber(id)
   if id < 0 then return nil end
   return id
end

-- tokenizer_config.json names a special token as "<s>" or {"content": "<s>", ...}
local function config_token(v)
   if type(v) == 'table' then return v.content end
   if type(v) == 'string' then return v end
   return nil
end

-- The fields of tokenizer_config.json that matter here: bos_token,
-- eos_token, unk_token and pad_token name the special tokens (they win over
-- tokenizer.json's); add_bos_token / add_eos_token say what encode(s, true)
-- adds. transformers 4.x rebuilds the template from those two (Llama's
-- fast tokenizer), transformers 5 and the tokenizers library keep
-- tokenizer.json's: where they disagree, encode follows tokenizer.json and
-- one warning line names the key. A named token missing from the
-- vocabulary is reported the same way.
function M.read_config(self, cfg, path)
   local notes = {}
   for _, kf in ipairs({{'bos_token', 'bos_id'}, {'eos_token', 'eos_id'}, {'unk_token', 'unk_id'},
                        {'pad_token', 'pad_id'}}) do
      local name = config_token(cfg[kf[1]])
      local id = name and self:token_to_id(name)
      if id then self[kf[2]] = id
      elseif name then notes[#notes + 1] = string.format("%s '%s' is not in the vocabulary (ignored)", kf[1], name) end
   end
   for _, kf in ipairs({{'add_bos_token', 'add_bos', 'bos'}, {'add_eos_token', 'add_eos', 'eos'}}) do
      local v = cfg[kf[1]]
      if type(v) == 'boolean' and v ~= self[kf[2]] then
         notes[#notes + 1] = string.format('%s is %s but tokenizer.json %s a %s token (followed, as transformers 5 ' ..
                                           'does; transformers 4.x would %s)', kf[1], tostring(v),
                                           self[kf[2]] and 'adds' or 'does not add', kf[3],
                                           v and 'add it' or 'leave it out')
      end
   end
   self.config_notes = notes
   local log = require 'fsdp.log'
   if #notes > 0 and log.rank == 0 and not log.quiet then
      log.warn('%s: %s', path, table.concat(notes, '; '))
   end
end

function M.load(path)
   if type(path) ~= 'string' then error('tokenizer: load wants a path, got ' .. type(path), 2) end
   local dir, file = nil, path
   if fs.is_dir(path) then
      dir = path:gsub('/+$', '')
      file = dir .. '/tokenizer.json'
   end
   local c = C.fsdp_tokenizer_load(file)
   if c == nil then error('tokenizer: ' .. bind.last_error(), 2) end
   local self = setmetatable({_c = ffi.gc(c, C.fsdp_tokenizer_free), path = file, name = 'hf:' .. file,
                              _cap = 0}, Tokenizer)
   self.vocab_size = tonumber(C.fsdp_tokenizer_vocab_size(c))
   self.bos_id = id_or_nil(C.fsdp_tokenizer_special_id(c, C.FSDP_TOKEN_BOS))
   self.eos_id = id_or_nil(C.fsdp_tokenizer_special_id(c, C.FSDP_TOKEN_EOS))
   self.pad_id = id_or_nil(C.fsdp_tokenizer_special_id(c, C.FSDP_TOKEN_PAD))
   self.unk_id = id_or_nil(C.fsdp_tokenizer_special_id(c, C.FSDP_TOKEN_UNK))
   self.n_before = tonumber(C.fsdp_tokenizer_num_added(c, 0))
   self.n_after = tonumber(C.fsdp_tokenizer_num_added(c, 1))
   self.add_bos, self.add_eos = self.n_before > 0, self.n_after > 0
   local config = dir and dir .. '/tokenizer_config.json'
   if config and fs.exists(config) then
      local cfg = json.read_file(config)   -- unreadable: keep what tokenizer.json says
      if type(cfg) == 'table' then M.read_config(self, cfg, config) end
   end
   return self
end

-- releases the C tokenizer now rather than at garbage collection
function Tokenizer:free()
   if self._c ~= nil then
      C.fsdp_tokenizer_free(ffi.gc(self._c, nil))
      self._c = nil
   end
   self._buf, self._cap = nil, 0
end

-- string -> i32 tensor [n]
function Tokenizer:encode(s, add_special)
   if type(s) ~= 'string' then error('tokenizer: encode wants a string, got ' .. type(s), 2) end
   local c = live(self)
   local special = add_special and 1 or 0
   -- a guess that holds for ordinary text; the C side says when it needs more
   local want = #s + self.n_before + self.n_after + 16
   for _ = 1, 2 do
      if want > self._cap then
         self._buf, self._cap = ffi.new('int32_t[?]', want), want
      end
      local rc = C.fsdp_tokenizer_encode(c, s, #s, special, self._buf, self._cap, count)
      local n = tonumber(count[0])
      if rc == 0 then
         local t = T.empty({n}, 'i32')
         if n > 0 then ffi.copy(t:ptr(), self._buf, n * 4) end
         return t
      end
      if n <= self._cap then error('tokenizer: ' .. bind.last_error(), 2) end
      want = n
   end
   error('tokenizer: ' .. bind.last_error(), 2)
end

-- ids (Lua table of numbers, or a tensor of any integer dtype) -> int32_t*, n
local function id_array(ids)
   if T.is_tensor(ids) then
      local n = ids:numel()
      if ids.dtype == 'i32' and ids:is_contiguous() then return ids:ptr(), n end
      local buf = ffi.new('int32_t[?]', math.max(n, 1))
      for i = 0, n - 1 do buf[i] = ids:get_flat(i) end
      return buf, n
   end
   if type(ids) ~= 'table' then error('tokenizer: decode wants a table of ids or a tensor, got ' .. type(ids), 3) end
   local n = #ids
   local buf = ffi.new('int32_t[?]', math.max(n, 1))
   for i = 1, n do buf[i - 1] = ids[i] end
   return buf, n
end

-- ids -> string; skip_special drops special tokens (<s>, <|endoftext|>, ...)
function Tokenizer:decode(ids, skip_special)
   local c = live(self)
   local p, n = id_array(ids)
   local skip = skip_special and 1 or 0
   local cap = n * 8 + 64
   for _ = 1, 2 do
      local out = ffi.new('char[?]', cap)
      local rc = C.fsdp_tokenizer_decode(c, p, n, skip, out, cap, count)
      local len = tonumber(count[0])
      if rc == 0 then return ffi.string(out, len) end
      if len < cap then error('tokenizer: ' .. bind.last_error(), 2) end
      cap = len + 1
   end
   error('tokenizer: ' .. bind.last_error(), 2)
end

function Tokenizer:token_to_id(s)
   return id_or_nil(C.fsdp_tokenizer_token_to_id(live(self), s))
end

function Tokenizer:id_to_token(id)
   local p = C.fsdp_tokenizer_id_to_token(live(self), id)
   if p == nil then return nil end
   return ffi.string(p)
end

function Tokenizer:is_special(id)
   return C.fsdp_tokenizer_is_special(live(self), id) ~= 0
end

function Tokenizer:__tostring()
   return string.format('Tokenizer(%s, vocab %d)', self.path, self.vocab_size)
end

return M
