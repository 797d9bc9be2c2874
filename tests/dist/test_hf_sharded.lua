-- Hugging Face import under sharding (fsdp.shard strategy 'full'), through
-- tests/dist/hf_probe.lua on 1, 2 and 4 ranks:
--   - the llama fixture gives, on every rank, the very logits of one rank
--     (crc32 of their bytes) and transformers' within 1e-4; the same loss and
--     gradient norm within 1e-5;
--   - so do mixtral, gpt2 (transposed Conv1D weights), opt_postnorm, the
--     sharded and bf16 llama copies, qwen2 (tied, q/k/v biases) and the
--     transformers 5 qwen3 (q/k norms, head_dim * heads != width) and
--     gemma2 (soft-caps, (1 + w) norms) on 2 and 3 ranks;
--   - loading allocates nothing but the rank's own shards: the allocator
--     peak while fsdp.shard reads the weights is exactly the parameter and
--     gradient shards (a rank never builds a whole tensor to cut its slice);
--   - a 12-layer model written here as an HF directory: the parameters a
--     rank holds at the peak of a forward (its shard plus the gathered
--     units: peak - gradient shard - one rank's activations) stay below the
--     full model's f32 bytes, so no rank ever held the full weights.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'
local llama = require 'models.llama'

local GOLDEN = fsdp.root .. '/tests/golden/hf/'

local function probe(n, dir, expected)
   local status, out = D.run(n, 'tests/dist/hf_probe.lua ' .. dir .. (expected and (' ' .. expected) or ''))
   t.check(status == 0, 'probe on %d rank(s) of %s failed:\n%s', n, dir, out)
   local rows = {}
   for text in out:gmatch('HF (%b{})') do
      local m = fsdp.json.decode(text)
      rows[m.rank + 1] = m
   end
   t.check(#rows == n, '%d rank(s) should report, %d did:\n%s', n, #rows, out)
   return rows
end

local function rel(a, b) return math.abs(a - b) / math.max(math.abs(b), 1e-30) end

-- the llama fixture: parity with one rank and with transformers
do
   local dir, ex = GOLDEN .. 'llama', GOLDEN .. 'llama/expected.safetensors'
   local one = probe(1, dir, ex)[1]
   t.check(one.rel <= 1e-4, '1 rank: logits differ from transformers by %.3g', one.rel)
   for _, n in ipairs({2, 4}) do
      for _, r in ipairs(probe(n, dir, ex)) do
         print(string.format('llama fixture, %d ranks, rank %d: logits crc %08x (1 rank: %08x), vs HF %.1e, ' ..
                             'loss %.7f, load peak %s (shards %s + grads %s), full model %s', n, r.rank, r.crc,
                             one.crc, r.rel, r.loss, fsdp.log.bytes(r.load_peak), fsdp.log.bytes(r.shard_bytes),
                             fsdp.log.bytes(r.grad_bytes), fsdp.log.bytes(r.full_bytes)))
         t.check(r.crc == one.crc, '%d ranks, rank %d: logits differ from one rank (crc %x vs %x)', n, r.rank, r.crc, one.crc)
         t.check(r.rel <= 1e-4, '%d ranks, rank %d: logits differ from transformers by %.3g', n, r.rank, r.rel)
         t.check(rel(r.loss, one.loss) <= 1e-5, '%d ranks, rank %d: loss %.7f vs %.7f', n, r.rank, r.loss, one.loss)
         t.check(rel(r.grad_norm, one.grad_norm) <= 1e-5, '%d ranks, rank %d: grad norm %.7f vs %.7f', n, r.rank,
                 r.grad_norm, one.grad_norm)
         -- the shards are 1/N of the model (plus padding to N per unit)
         t.check(r.shard_bytes <= r.full_bytes / n + 4 * n * r.units, '%d ranks, rank %d: shard of %d bytes for %d',
                 n, r.rank, r.shard_bytes, r.full_bytes)
         t.check(r.load_peak <= r.shard_bytes + r.grad_bytes, '%d ranks, rank %d: loading peaked at %d bytes, more ' ..
                 'than its shards (%d): something read a whole tensor', n, r.rank, r.load_peak, r.shard_bytes + r.grad_bytes)
         t.check(r.load_peak - r.grad_bytes < r.full_bytes, '%d ranks, rank %d: parameters at load peak %d >= full %d',
                 n, r.rank, r.load_peak - r.grad_bytes, r.full_bytes)
      end
   end
end

-- the other architectures' slices on 2 and 3 ranks (3: slices that cut
-- tensors mid-row, GPT-2's transposed Conv1D weights included)
for _, name in ipairs({'mixtral', 'gpt2', 'opt_postnorm', 'llama_sharded', 'llama_bf16', 'qwen2', '../hf5/qwen3',
                       '../hf5/gemma2'}) do
   local ename = name:match('^llama') and 'llama' or name
   local dir, ex = GOLDEN .. name, GOLDEN .. ename .. '/expected.safetensors'
   local one = probe(1, dir, ex)[1]
   local worst = one.rel
   for _, n in ipairs({2, 3}) do
      for _, r in ipairs(probe(n, dir, ex)) do
         t.check(r.crc == one.crc, '%s, %d ranks, rank %d: logits differ from one rank', name, n, r.rank)
         t.check(rel(r.loss, one.loss) <= 1e-5, '%s, %d ranks, rank %d: loss %.7f vs %.7f', name, n, r.rank, r.loss,
                 one.loss)
         t.check(r.load_peak <= r.shard_bytes + r.grad_bytes, '%s, %d ranks, rank %d: load peak %d > shards %d',
                 name, n, r.rank, r.load_peak, r.shard_bytes + r.grad_bytes)
         worst = math.max(worst, r.rel)
      end
   end
   t.check(worst <= 1e-4, '%s: logits differ from transformers by %.3g', name, worst)
   print(string.format('%-13s 1, 2, 3 ranks: same logits bits; vs HF %.1e', name, worst))
end

-- a deeper model, written here as an HF directory (our parameter names are
-- transformers'), for the forward-memory bound
do
   local dir = D.tmpdir()
   local cfg = {vocab_size = 64, hidden_size = 128, intermediate_size = 344, num_hidden_layers = 12,
                num_attention_heads = 4, num_key_value_heads = 2, rms_norm_eps = 1e-5, max_position_embeddings = 64,
                tie_word_embeddings = false}
   local model = llama.Llama(cfg):materialize(3)
   model:save(dir .. '/model.safetensors')
   local hf_cfg = {architectures = {'LlamaForCausalLM'}, model_type = 'llama'}
   for k, v in pairs(cfg) do hf_cfg[k] = v end
   local f = assert(io.open(dir .. '/config.json', 'w'))
   f:write(fsdp.json.encode(hf_cfg))
   f:close()
   local one = probe(1, dir)[1]
   local act = one.forward_peak - one.shard_bytes - one.grad_bytes -- one rank's activations and temporaries
   for _, n in ipairs({2, 4}) do
      for _, r in ipairs(probe(n, dir)) do
         local held = r.forward_peak - r.grad_bytes - act
         print(string.format('12-layer model, %d ranks, rank %d: parameters held at the forward peak %s ' ..
                             '(shard %s), full model %s', n, r.rank, fsdp.log.bytes(held),
                             fsdp.log.bytes(r.shard_bytes), fsdp.log.bytes(r.full_bytes)))
         t.check(r.crc == one.crc, '12 layers, %d ranks, rank %d: logits differ from one rank', n, r.rank)
         t.check(rel(r.loss, one.loss) <= 1e-5, '12 layers, %d ranks, rank %d: loss %.7f vs %.7f', n, r.rank, r.loss,
                 one.loss)
         t.check(r.load_peak <= r.shard_bytes + r.grad_bytes, '12 layers, %d ranks, rank %d: load peak %d > shards %d',
                 n, r.rank, r.load_peak, r.shard_bytes + r.grad_bytes)
         t.check(held < r.full_bytes, '12 layers, %d ranks, rank %d: %d bytes of parameters at the forward peak, ' ..
                 'not less than the full model (%d)', n, r.rank, held, r.full_bytes)
      end
   end
   os.execute('rm -rf ' .. dir)
end

return t.done()
