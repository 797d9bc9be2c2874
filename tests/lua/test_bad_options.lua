-- Every option is checked before a model is built (issue 15.1, 16.5): one
-- table of command lines, each run under a timeout, with the exit status it
-- must give and a text its output must hold. A bad value is refused naming
-- the option, the value and what is accepted; conflicting spellings are
-- refused rather than one silently winning; the spellings PyTorch, torchrun
-- and Hugging Face users type are accepted where they mean the same thing
-- and otherwise answered with the right suggestion; every sub-command's
-- --help exits 0. None of the refused command lines trains.
--
-- A second table parses options in this process and checks what they
-- resolve to (aliases, value spellings), and the memory guard stops a 70B
-- model on this machine at once.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'

local bin = fsdp.root .. '/build/fsdp-lua'
local tmp = os.tmpname()
os.remove(tmp)
fs.mkdirs(tmp)
local function write(path, text)
   local f = assert(io.open(path, 'w'))
   f:write(text)
   f:close()
end
-- a config-only model directory (what the planner and option checks need)
local cfgdir = tmp .. '/llama_cfg'
fs.mkdirs(cfgdir)
write(cfgdir .. '/config.json', '{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, ' ..
      '"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256}')
local corpus = tmp .. '/corpus.txt'
write(corpus, string.rep('to be or not to be, that is the question. ', 200))

-- a script that says how big its job is
write(tmp .. '/ranks.lua', "local dist = require 'fsdp.dist'\ndist.init()\nif dist.rank == 0 then print('world ' .. " ..
      "dist.world_size .. ' MASTER_PORT ' .. tostring(os.getenv('MASTER_PORT'))) end\nreturn 0\n")
local R = 'recipes/train_mingpt.lua --preset gpt-nano '
local NOFILE = tmp .. '/does/not/exist'

-- {arguments, expected exit status, texts the output must hold (plain)}
local CASES = {
   -- numbers: non-finite, negative, fractional, zero, not numbers
   {R .. '--lr nan', 1, {'option --lr wants a finite number >= 0, got nan'}},
   {R .. '--lr inf', 1, {'option --lr wants a finite number >= 0, got inf'}},
   {R .. '--lr=-inf', 1, {'option --lr', 'got -inf'}},
   {R .. '--lr 1e999', 1, {'option --lr', 'got 1e999'}},
   {R .. '--lr -1', 1, {'option --lr wants a finite number >= 0, got -1'}},
   {R .. '--lr fast', 1, {'option --lr wants a number', "got 'fast'"}},
   {R .. '--lr', 1, {'option --lr needs a value'}},
   {R .. '--lr --max-steps 3', 1, {'option --lr needs a value (a finite number >= 0)'}},
   {R .. '--weight-decay -5', 1, {'option --weight-decay wants a finite number >= 0, got -5'}},
   {R .. '--grad-accum-steps 0', 1, {'option --grad-accum-steps wants an integer >= 1, got 0'}},
   {R .. '--grad-accum-steps -1', 1, {'option --grad-accum-steps wants an integer >= 1, got -1'}},
   {R .. '--grad-accum-steps 2.5', 1, {'option --grad-accum-steps wants an integer >= 1, got 2.5'}},
   {R .. '--max-steps -3', 1, {'option --max-steps wants an integer >= 1, got -3'}},
   {R .. '--max-steps 1.5', 1, {'option --max-steps wants an integer >= 1, got 1.5'}},
   {R .. '--max-steps 0', 1, {'option --max-steps wants an integer >= 1, got 0'}},
   {R .. '--n-layer -1', 1, {'option --n-layer wants an integer >= 0, got -1'}},
   {R .. '--n-head -2', 1, {'option --n-head wants an integer >= 0, got -2'}},
   {R .. '--n-embd 1.5', 1, {'option --n-embd wants an integer >= 0, got 1.5'}},
   {R .. '--threads -2', 1, {'option --threads wants an integer >= 0, got -2'}},
   {R .. '--threads 1.5', 1, {'option --threads wants an integer >= 0, got 1.5'}},
   {R .. '--temperature -1', 1, {'option --temperature wants a finite number >= 0, got -1'}},
   {R .. '--temperature nan', 1, {'option --temperature', 'got nan'}},
   {R .. '--batch-size 1.5', 1, {'option --batch-size wants an integer >= 1, got 1.5'}},
   {R .. '--batch-size 0', 1, {'option --batch-size wants an integer >= 1, got 0'}},
   {R .. '--batch-size -4', 1, {'option --batch-size wants an integer >= 1, got -4'}},
   {R .. '--batch-size many', 1, {'--batch-size wants a number', 'many'}},
   {R .. '--seq-len 0', 1, {'option --seq-len wants an integer >= 1, got 0'}},
   {R .. '--beta1 1', 1, {'option --beta1 wants a finite number in [0, 1), got 1'}},
   {R .. '--beta2 -0.1', 1, {'option --beta2 wants a finite number in [0, 1), got -0.1'}},
   {R .. '--max-grad-norm -1', 1, {'option --max-grad-norm wants a finite number >= 0, got -1'}},
   {R .. '--grad-clip nan', 1, {'option --grad-clip wants a finite number >= 0, got nan'}},
   {R .. '--val-fraction 0', 1, {'option --val-fraction wants a finite number in (0, 1), got 0'}},
   {R .. '--val-fraction 1', 1, {'option --val-fraction wants a finite number in (0, 1), got 1'}},
   {R .. '--val-fraction 2', 1, {'option --val-fraction', 'got 2'}},
   {R .. '--eval-every -1', 1, {'option --eval-every wants an integer >= 0, got -1'}},
   {R .. '--eval-batches 0', 1, {'option --eval-batches wants an integer >= 1, got 0'}},
   {R .. '--log-every 0', 1, {'option --log-every wants an integer >= 1, got 0'}},
   {R .. '--checkpoint-every -1', 1, {'option --checkpoint-every wants an integer >= 0, got -1'}},
   {R .. '--keep-last -1', 1, {'option --keep-last wants an integer >= 0, got -1'}},
   {R .. '--stop-after 1.5', 1, {'option --stop-after wants an integer >= 0, got 1.5'}},
   {R .. '--sample-tokens -1', 1, {'option --sample-tokens wants an integer >= 0, got -1'}},
   {R .. '--top-k -1', 1, {'option --top-k wants an integer >= 0, got -1'}},
   {R .. '--seed -1', 1, {'option --seed wants an integer >= 0, got -1'}},
   {R .. '--seed 1.5', 1, {'option --seed wants an integer >= 0, got 1.5'}},
   {R .. '--hybrid-group-size -1', 1, {'option --hybrid-group-size wants an integer >= 0, got -1'}},
   {R .. '--vocab-size -1', 1, {'option --vocab-size wants an integer >= 0, got -1'}},
   {R .. '--peak-flops -1', 1, {'option --peak-flops wants a finite number >= 0, got -1'}},
   {R .. '--warmup-steps 0.5', 1, {'option --warmup-steps wants an integer >= 0, got 0.5'}},
   {R .. '--warmup 0.1', 1, {'option --warmup wants an integer >= 0, got 0.1'}},
   -- choices, paths, devices
   {R .. '--decay sideways', 1, {'--decay must be one of cosine, linear, constant', 'sideways'}},
   {R .. '--strategy zero3', 1, {'--strategy must be one of full, grad_op, none, hybrid_full, hybrid_grad_op'}},
   {R .. '--param-dtype int8', 1, {'--param-dtype must be one of f32, bf16, f16', 'int8'}},
   {R .. '--reduce-dtype f64', 1, {'--reduce-dtype must be one of f32, bf16, f16'}},
   {R .. '--on-nan ignore', 1, {'--on-nan must be one of skip, stop'}},
   {R .. '--size 5B', 1, {'--size must be one of', 'llama2-7b', "got '5B'"}},
   {R .. '--preset gpt5', 1, {'--preset must be one of', 'gpt-nano'}},
   {R .. '--device gpu', 1, {'--device gpu', 'wants cpu, cuda, cuda:N or auto'}},
   {R .. '--data ' .. NOFILE, 1, {'option --data: cannot open', NOFILE}},
   {R .. '--model ' .. NOFILE, 1, {'option --model: cannot open', NOFILE}},
   {R .. '--model ' .. corpus, 1, {'option --model: cannot open', 'it is not a directory'}},
   {R .. '--tokenizer ' .. NOFILE, 1, {'option --tokenizer', 'no such file or directory'}},
   {R .. '--activation-checkpointing maybe', 1, {"unexpected argument 'maybe'"}},
   {R .. '--tf32=perhaps', 1, {'option --tf32 wants true or false', 'perhaps'}},
   {R .. '--no-tf32=1', 1, {'--no-tf32 takes no value'}},
   {R .. 'extra', 1, {"unexpected argument 'extra'"}},
   -- conflicts: two spellings of one option, declared conflicts, rules
   {R .. '--mixed-precision --param-dtype f16', 1, {'--mixed-precision and --param-dtype f16 disagree'}},
   {R .. '--param-dtype f16 --bf16', 1, {'--param-dtype f16 and --bf16 disagree'}},
   {R .. '--fp16 --bf16', 1, {'--fp16 and --bf16 disagree'}},
   {R .. '--max-lr 0.5 --lr 0.001', 1, {'--max-lr 0.5 and --lr 0.001 disagree (both set --lr)'}},
   {R .. '--learning-rate 0.1 --lr 0.2', 1, {'--learning-rate 0.1 and --lr 0.2 disagree'}},
   {R .. '--hf-model ' .. cfgdir .. ' --model ' .. tmp, 1, {'disagree (both set --model)'}},
   {R .. '--model ' .. cfgdir .. ' --size 7B', 1, {'--model and --size cannot be given together'}},
   {R .. '--model ' .. cfgdir .. ' --from-scratch', 1, {'--model and --from-scratch cannot be given together'}},
   {R .. '--min-lr 0.1', 1, {'--min-lr 0.1 is above --lr 0.001'}},
   {R .. '--lr 1e-5', 1, {'--min-lr 0.0001 (the default) is above --lr 1e-05'}},
   {R .. '--export-dir ' .. tmp .. '/x', 1, {'--export-dir needs --checkpoint-dir'}},
   -- spellings from other tools: suggestions where the meaning differs
   {R .. '--warmup-ratio 0.1', 1, {'unknown option --warmup-ratio; did you mean --warmup-steps?',
                                   'ratio r of --max-steps N is --warmup-steps r*N'}},
   {R .. '--resume', 1, {'unknown option --resume; did you mean --checkpoint-dir?', 'resuming needs no flag'}},
   {R .. '--resume-from-checkpoint ck', 1, {'did you mean --checkpoint-dir?', 'resuming needs no flag'}},
   {R .. '--output-dir out', 1, {'unknown option --output-dir; did you mean --checkpoint-dir?', '--export-dir'}},
   {R .. '--per-device-train-batch-size 4', 1, {'did you mean --batch-size?', 'global batch over all ranks'}},
   {R .. '--num-train-epochs 3', 1, {'did you mean --max-steps?', 'no epochs'}},
   {R .. '--max-step 10', 1, {'unknown option --max-step', 'did you mean --max-steps?'}},
   {R .. '--lerning-rate 0.1', 1, {'unknown option --lerning-rate; did you mean --lr?'}},
   {R .. '--clip-grad 1', 1, {'unknown option --clip-grad; did you mean --max-grad-norm?'}},
   {R .. '--checkpoint-path c', 1, {'did you mean --checkpoint-dir?'}},
   {R .. '--precision bf16', 1, {'did you mean --param-dtype?'}},
   {R .. '--no-such-thing 3', 1, {'unknown option --no-such-thing (--help lists the options)'}},
   -- the memory guard: a 70B model on this machine stops at once
   {'recipes/pretrain.lua --size 70B', 1, {'memory: this run needs about', 'available', '--force', 'plan:'}},
   {'recipes/pretrain.lua --size llama2-7b --activation-checkpointing false', 1,
    {'memory:', 'it would fit with:', 'ranks'}},
   -- eval.lua and generate.lua
   {'recipes/generate.lua --temperature -1', 1, {'option --temperature wants a finite number >= 0, got -1'}},
   {'recipes/generate.lua --top-p 0', 1, {'option --top-p wants a finite number in (0, 1], got 0'}},
   {'recipes/generate.lua --top-p 1.5', 1, {'option --top-p', 'got 1.5'}},
   {'recipes/generate.lua --max-new-tokens -1', 1, {'option --max-new-tokens wants an integer >= 0, got -1'}},
   {'recipes/generate.lua --context 0', 1, {'option --context wants an integer >= 1, got 0'}},
   {'recipes/generate.lua --top-k 2.5', 1, {'option --top-k wants an integer >= 0, got 2.5'}},
   {'recipes/generate.lua --model ' .. cfgdir .. ' --checkpoint ' .. tmp, 1,
    {'--model and --checkpoint cannot be given together'}},
   {'recipes/generate.lua --num-tokens 5', 1, {'did you mean --max-new-tokens?'}},
   {'recipes/eval.lua --batch-size 0', 1, {'option --batch-size wants an integer >= 1, got 0'}},
   {'recipes/eval.lua --batches -1', 1, {'option --batches wants an integer >= 1, got -1'}},
   {'recipes/eval.lua --seq-len 0', 1, {'option --seq-len wants an integer >= 1, got 0'}},
   {'recipes/eval.lua --split test', 1, {'--split must be one of val, train'}},
   {'recipes/eval.lua --val-fraction -1', 1, {'option --val-fraction', 'got -1'}},
   {'recipes/eval.lua --checkpoint ' .. NOFILE, 1, {'option --checkpoint: cannot open', NOFILE}},
   -- LoRA (recipes/finetune_lora.lua, and every train_lm recipe)
   {'recipes/finetune_lora.lua --lora-r -1', 1, {'option --lora-r wants an integer >= 0, got -1'}},
   {'recipes/finetune_lora.lua --lora-r 2.5', 1, {'option --lora-r wants an integer >= 0, got 2.5'}},
   {'recipes/finetune_lora.lua --lora-alpha 0', 1, {'option --lora-alpha wants a finite number > 0, got 0'}},
   {'recipes/finetune_lora.lua --lora-alpha nan', 1, {'option --lora-alpha', 'got nan'}},
   {'recipes/finetune_lora.lua --lora-dropout 1', 1, {'option --lora-dropout wants a finite number in [0, 1), got 1'}},
   {'recipes/finetune_lora.lua --lora-dropout -0.1', 1, {'option --lora-dropout', 'got -0.1'}},
   {R .. '--lora-alpha 4 --lora-targets c_attn', 1, {'--lora-alpha, --lora-targets without --lora-r'}},
   {'recipes/finetune_lora.lua --adapter ' .. NOFILE, 1, {'option --adapter: cannot open', NOFILE}},
   {'recipes/finetune_lora.lua --adapter ' .. tmp, 1, {'--adapter DIR needs --model DIR'}},
   {'recipes/finetune_lora.lua --model ' .. cfgdir .. ' --adapter ' .. tmp .. ' --lora-r 4 --lora-alpha 8', 1,
    {'--adapter takes r, alpha, dropout and targets from its adapter_config.json: drop --lora-alpha, --lora-r'}},
   {'recipes/finetune_lora.lua --model ' .. cfgdir .. ' --adapter ' .. tmp .. ' --data ' .. corpus, 1,
    {tmp .. ': no adapter_config.json'}},
   {'recipes/finetune_lora.lua --model ' .. cfgdir .. ' --lora-targets q_proj,qkv --data ' .. corpus, 1,
    {"--lora-targets q_proj,qkv: lora: no linear layer of Llama is named 'qkv'", 'k_proj, lm_head, o_proj'}},
   {'recipes/finetune_lora.lua --model ' .. cfgdir .. ' --lora-r 100 --data ' .. corpus, 1,
    {'--lora-r 100', 'r 100 is larger than model.layers.0.self_attn.q_proj (64 -> 64)'}},
   {'recipes/eval.lua --checkpoint ' .. tmp .. ' --adapter ' .. tmp .. ' --data ' .. corpus, 1,
    {'--adapter DIR needs --model DIR'}},
   {'recipes/generate.lua --model ' .. cfgdir .. ' --adapter ' .. NOFILE, 1, {'option --adapter: cannot open'}},
   {'export a b --adapter --merge', 1, {'--adapter and --merge cannot be given together'}},
   -- sub-commands
   {'prepare --val-fraction 2', 1, {'option --val-fraction wants a finite number in [0, 1), got 2'}},
   {'prepare --val-fraction -1', 1, {'option --val-fraction', 'got -1'}},
   {'prepare --shard-tokens 0', 1, {'option --shard-tokens wants an integer >= 1, got 0'}},
   {'prepare --workers -1', 1, {'option --workers wants an integer >= 0, got -1'}},
   {'prepare --start-index -1', 1, {'option --start-index wants an integer >= 0, got -1'}},
   {'prepare --start-index 5 --end-index 3', 1, {'--end-index 3 must be above --start-index 5'}},
   {'prepare --input ' .. NOFILE, 1, {'option --input: cannot open', NOFILE}},
   {'export a b --dtype int8', 1, {'--dtype must be one of f32, bf16, f16'}},
   {'export a b --max-shard-size 0', 1, {'option --max-shard-size', "got '0'"}},
   {'export a b --max-shard-size lots', 1, {'option --max-shard-size wants a size', 'lots'}},
   {'plan recipes/train_mingpt.lua --world-size 0', 1, {'option --world-size wants an integer >= 1, got 0'}},
   {'plan recipes/train_mingpt.lua --world-size 1.5', 1, {'option --world-size wants an integer >= 1, got 1.5'}},
   {'plan recipes/train_mingpt.lua --memory-per-rank lots', 1, {'option --memory-per-rank wants a size', 'lots'}},
   {'plan recipes/train_mingpt.lua --world-size 8 --batch-size 7', 1, {'--batch-size 7 does not split over 8 ranks'}},
   {'plan recipes/train_mingpt.lua --lr nan', 1, {'option --lr wants a finite number >= 0, got nan'}},
   {'plan', 1, {'usage: fsdp-lua plan RECIPE'}},
   {'plot ' .. tmp .. ' --bogus', 1, {'plot: unknown option --bogus'}},
   {'ckpt frobnicate', 1, {'usage: fsdp-lua ckpt'}},
   -- the launcher: torchrun's values and spellings, all its flags listed
   {'--nproc-per-node 0 recipes/train_mingpt.lua', 1, {'--nproc-per-node wants a positive integer, gpu, auto or cpu'}},
   {'--nproc_per_node=x recipes/train_mingpt.lua', 1, {"--nproc-per-node wants a positive integer", "got 'x'"}},
   {'--nnodes=1:4 recipes/train_mingpt.lua', 1, {'--nnodes 1:4 is an elastic range'}},
   {'--nnodes 2 --standalone recipes/train_mingpt.lua', 1, {'--standalone is one machine'}},
   {'--max-restarts -1 recipes/train_mingpt.lua', 1, {'--max-restarts wants an integer >= 0'}},
   {'--nproc-per-nodes 2 recipes/train_mingpt.lua', 1, {'unknown flag --nproc-per-nodes', 'did you mean --nproc-per-node?',
    '--nproc-per-node, --nnodes, --node-rank, --master-addr, --master-port, --rdzv-endpoint, --rdzv-backend, ' ..
    '--rdzv-id, --standalone, --hosts, --max-restarts, --no-python'}},
   {'--nproc-per-node 2', 1, {'no recipe given after the launcher flags'}},
   {'--nproc-per-node=gpu recipes/train_mingpt.lua', 1, {'--nproc-per-node gpu: no GPU is usable here'}},
   {'--nnodes=2 --node_rank=5 --master_addr=127.0.0.1 recipes/train_mingpt.lua', 1, {'needs --node-rank 0..1'}},
   {'--standalone --nproc_per_node=auto --rdzv-backend=c10d --rdzv-id=job1 --no-python ' .. tmp .. '/ranks.lua', 0,
    {'world ' .. (tonumber(io.popen('env -u OMP_NUM_THREADS nproc'):read('*l')) or 1)}},
   {'--nproc-per-node=2 --rdzv_endpoint=127.0.0.1:29611 ' .. tmp .. '/ranks.lua', 0, {'world 2', 'MASTER_PORT 29611'}},
   -- --help exits 0 everywhere, with one usage
   {'--help', 0, {'usage: fsdp-lua RECIPE'}},
   {'--nproc_per_node 2 --help', 0, {'launcher flags', '--standalone', '--rdzv-endpoint'}},
   {R .. '--help', 0, {'Train minGPT', 'one of: cosine, linear, constant', 'also --max-lr, --learning-rate'}},
   {'recipes/pretrain.lua --help', 0, {'Pretrain a Llama-style model', 'llama2-7b', 'mixtral-8x7b'}},
   {'recipes/eval.lua --help', 0, {'Validation loss and perplexity', 'one of: val, train'}},
   {'recipes/generate.lua --help', 0, {'Sample text from a model', '--top-p'}},
   {'ckpt --help', 0, {'usage: fsdp-lua ckpt'}},
   {'ckpt info --help', 0, {'usage: fsdp-lua ckpt'}},
   {'plan --help', 0, {'usage: fsdp-lua plan RECIPE', '--world-size', '--memory-per-rank'}},
   {'plan recipes/train_mingpt.lua --help', 0, {'usage: fsdp-lua plan RECIPE', '--batch-size'}},
   {'export --help', 0, {'usage: fsdp-lua export CKPT_DIR OUT_DIR', '--max-shard-size'}},
   {'prepare --help', 0, {'usage: fsdp-lua prepare', '--shard-tokens'}},
   {'plot --help', 0, {'usage: fsdp-lua plot'}},
   -- accepted: the plan shows what the options resolved to
   {'plan ' .. R .. '--mixed-precision --param-dtype bf16', 0, {'gathers in bf16'}},
   {'plan ' .. R .. '--bf16', 0, {'gathers in bf16'}},
   {'plan ' .. R .. '--max-lr 0.5 --lr 0.5', 0, {'memory plan'}},
   {'plan ' .. R .. '--gradient-checkpointing', 0, {'activation checkpointing on'}},
   {'plan ' .. R .. '--batch-size 16 --block-size 32 --world-size 2', 0, {'8 x 32 tokens per rank'}},
   {'plan recipes/train_mingpt.lua --model ' .. cfgdir .. ' --world-size 2', 0, {'2 rank(s)', '0.11M parameters'}},
   {'plan recipes/pretrain.lua --size llama2-7b --world-size 8', 0, {'6.74B parameters'}},
}

local tests, slowest = 0, 0
for _, c in ipairs(CASES) do
   local t0 = fsdp.clock()
   local status, out = t.sh('cd ' .. fs.quote(tmp) .. ' && OMP_NUM_THREADS=1 timeout 60 ' .. bin .. ' ' .. c[1])
   slowest = math.max(slowest, fsdp.clock() - t0)
   tests = tests + 1
   if t.check(status == c[2], '`fsdp-lua %s`: exit status %d, want %d:\n%s', c[1], status, c[2], out) then
      for _, p in ipairs(c[3]) do
         t.check(out:find(p, 1, true), '`fsdp-lua %s`: output lacks %q:\n%s', c[1], p, out)
      end
   end
   if c[2] ~= 0 then
      -- a refusal comes before any training and is one error line (plus
      -- the indented lines of the memory guard), never a traceback
      t.check(not out:find('step ', 1, true) and not out:find('traceback', 1, true),
              '`fsdp-lua %s` went further than the options:\n%s', c[1], out)
   end
end
-- `export --help` prints one usage
local _, out = t.sh(bin .. ' export --help')
t.check(select(2, out:gsub('usage:', '')) == 1, 'export --help prints %d usage lines:\n%s', select(2, out:gsub('usage:', '')), out)

---------------------------------------------------------------------------
-- in this process: what the spellings resolve to

local recipe = dofile(fsdp.root .. '/lua/recipes/train_mingpt.lua')
local RESOLVE = {
   {'--learning-rate 0.01', {lr = 0.01}},
   {'--learning_rate=0.01', {lr = 0.01}},
   {'--max-lr 0.02', {lr = 0.02}},
   {'--warmup 10', {warmup_steps = 10}},
   {'--warmup-iters 7', {warmup_steps = 7}},
   {'--max-grad-norm 0.5', {max_grad_norm = 0.5}},
   {'--grad-clip 0.5', {max_grad_norm = 0.5}},
   {'--gradient-clipping 2', {max_grad_norm = 2}},
   {'--bf16', {param_dtype = 'bf16'}},
   {'--bf16 True', {param_dtype = 'bf16'}},
   {'--bf16 False', {param_dtype = 'f32'}},
   {'--fp16', {param_dtype = 'f16'}},
   {'--mixed-precision', {param_dtype = 'bf16'}},
   {'--param-dtype bfloat16', {param_dtype = 'bf16'}},
   {'--param-dtype BF16', {param_dtype = 'bf16'}},
   {'--save-dir ck', {checkpoint_dir = 'ck'}},
   {'--save-steps 50 --save-total-limit 2', {checkpoint_every = 50, keep_last = 2}},
   {'--gradient-accumulation-steps 4', {grad_accum_steps = 4}},
   {'--logging-steps 5 --eval-steps 20', {log_every = 5, eval_every = 20}},
   {'--lr-scheduler-type linear', {decay = 'linear'}},
   {'--lr-scheduler-type constant_with_warmup', {decay = 'constant'}},
   {'--strategy FULL_SHARD', {strategy = 'full'}},
   {'--sharding-strategy SHARD_GRAD_OP', {strategy = 'grad_op'}},
   {'--adam-beta1 0.8 --adam-beta2 0.99', {beta1 = 0.8, beta2 = 0.99}},
   {'--model-size 7b', {size = '7B'}},
   {'--size LLAMA2-7B', {size = 'llama2-7b'}},
   {'--hf-model ' .. cfgdir, {model = cfgdir}},
   {'--model-name-or-path ' .. cfgdir, {model = cfgdir}},
   {'--gradient-checkpointing', {activation_checkpointing = true}},
   {'--no-activation-checkpointing', {activation_checkpointing = false}},
   {'--block-size 128 --batch-size 4', {seq_len = 128, batch_size = 4}},
   {'--max-lr 0.5 --lr 0.5', {lr = 0.5}},
   {'--lr 0.1 --lr 0.2', {lr = 0.2}}, -- one spelling twice: the last wins, as argparse does
   {'--threads 3 --seed 0', {threads = 3, seed = 0}},
}
local function split(s)
   local out = {}
   for w in s:gmatch('%S+') do out[#out + 1] = w end
   return out
end
for _, c in ipairs(RESOLVE) do
   local ok, opt = pcall(recipe.options, split(c[1]))
   if t.check(ok, '%s: refused: %s', c[1], tostring(opt)) then
      for k, v in pairs(c[2]) do
         t.check(opt[k] == v, '%s: %s is %s, want %s', c[1], k, tostring(opt[k]), tostring(v))
      end
   end
end

-- a user's own option table ({name, default, help}, as docs/recipes.md
-- teaches) gets the same checks by the default's type, and suggestions
local cli = fsdp.cli
local user = {{'data', '', 'a text file'}, {'lr', 3e-3, 'peak learning rate'}, {'resume', true, 'continue'},
              {'steps', 10, 'steps'}, {'mode', 'a', 'mode', choices = {'a', 'b'}}}
t.raises(function() cli.parse('mine.lua', user, {'--lr', 'nan'}) end, {'option --lr wants a finite number, got nan'})
t.raises(function() cli.parse('mine.lua', user, {'--mode', 'c'}) end, {'--mode must be one of a, b'})
t.raises(function() cli.parse('mine.lua', user, {'--learning-rate', '1'}) end, {'did you mean --lr?'})
t.raises(function() cli.parse('mine.lua', user, {'--max-steps', '1'}) end, {'did you mean --steps?'})
local o = cli.parse('mine.lua', user, {'--no-resume', '--steps=3', '--lr', '1e-3'})
t.check(o.resume == false and o.steps == 3 and o.lr == 1e-3, 'a user table parses')
t.raises(function() cli.check_defaults('mine.lua', {{'n', -1, 'n', type = 'integer', min = 0}}) end,
         {'the default of --n (-1) is refused'})

-- the memory guard with a machine of our choosing: host memory shared by
-- the ranks of a node, a GPU's memory, the options that would fit, --force
local plan = require 'fsdp.plan'
local mingpt = require 'models.mingpt'
local gpt = mingpt.GPT {vocab_size = 256, block_size = 64, n_layer = 6, n_head = 4, n_embd = 128}
local base = {batch_size = 64, seq_len = 64, strategy = 'grad_op', param_dtype = 'f32', reduce_dtype = 'f32',
              device = 'cpu', activation_checkpointing = false}
local function with(over)
   local o = {}
   for k, v in pairs(base) do o[k] = v end
   for k, v in pairs(over or {}) do o[k] = v end
   return o
end
local need = plan.for_options(gpt, base, 2).total
local saved_available = plan.host_available
plan.host_available = function() return need * 4 end -- room for 4 ranks of this plan
t.check(pcall(plan.guard, gpt, base, {world = 2, local_world = 2}), 'a plan that fits is let through')
plan.host_available = function() return need * 1.5 end -- 2 ranks on the node share it: 0.75 of a plan each
local msg = t.raises(function() plan.guard(gpt, base, {world = 2, local_world = 2}) end,
                     {'memory: this run needs about', 'available for its 2 rank(s)', 'it would fit with:',
                      '--activation-checkpointing', '--force'})
t.check(msg and msg:find('--batch-size', 1, true), 'the guard suggests a smaller batch:\n%s', tostring(msg))
t.check(pcall(plan.guard, gpt, with {force = true}, {world = 2, local_world = 2}), '--force lets it start')
plan.host_available = function() return 1e12 end
local gpu = {info = {total_mem = 0.5 * need}}
t.raises(function() plan.guard(gpt, with {device = 'cuda'}, {world = 2, local_world = 2, dev = gpu}) end,
         {'on each GPU, which has'})
gpu.info.total_mem = 64 * 2 ^ 30
t.check(pcall(plan.guard, gpt, with {device = 'cuda'}, {world = 2, local_world = 2, dev = gpu}),
        'a plan that fits the GPU is let through')
plan.host_available = saved_available
t.check((plan.host_available() or 0) > 0, 'MemAvailable is read from /proc/meminfo')

-- sizes
for _, c in ipairs({{'80GiB', 80 * 2 ^ 30}, {'512MiB', 512 * 2 ^ 20}, {'40GB', 40e9}, {'1T', 2 ^ 40}, {'1.5g', 1.5 * 2 ^ 30},
                    {'100', 100}}) do
   t.check(cli.parse_size(c[1]) == c[2], 'parse_size(%s) = %s', c[1], tostring(cli.parse_size(c[1])))
end
t.check(cli.parse_size('80 parsecs') == nil and cli.parse_size('-1G') == nil, 'bad sizes are refused')

-- a script's own modules are found from any working directory (docs/models.md's require 'tinylm')
fs.mkdirs(tmp .. '/sub')
write(tmp .. '/sub/mymod.lua', 'return {answer = 42}')
write(tmp .. '/sub/use.lua', "print('answer ' .. require('mymod').answer)")
local st_mod, out_mod = t.sh('cd / && ' .. bin .. ' ' .. tmp .. '/sub/use.lua')
t.check(st_mod == 0 and out_mod:find('answer 42', 1, true), 'require of a module beside the script:\n%s', out_mod)

print(string.format('%d command lines (slowest %.1f s), %d resolutions checked', tests, slowest, #RESOLVE))
fs.remove_tree(tmp)
return t.done()
