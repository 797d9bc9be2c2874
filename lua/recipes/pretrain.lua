-- Pretrain a Llama-style model from scratch at a size preset (350M, 1B, 3B,
-- 7B, 13B, 30B, 70B: grouped-query attention, RoPE, SwiGLU, RMSNorm):
-- recipes/train_lm.lua with pretraining defaults. Check the memory first:
--
--   fsdp-lua plan recipes/pretrain.lua --world-size 8 --memory-per-rank 80GiB --size 7B
--   fsdp-lua --nproc-per-node 8 recipes/pretrain.lua --size 350M --data prepared/ --tokenizer tok/
return dofile(FSDP_ROOT .. '/lua/recipes/train_lm.lua') {
   name = 'recipes/pretrain.lua', size = '350M', lr = 3e-4, min_lr = 3e-5, warmup_steps = 2000,
   max_steps = 100000, batch_size = 32, grad_accum_steps = 1, seq_len = 2048, weight_decay = 0.1,
   param_dtype = 'bf16', strategy = 'full', activation_checkpointing = true, eval_every = 1000,
   checkpoint_every = 1000, keep_last = 3, run_dir = 'runs/pretrain', sample_tokens = 0,
   preset = ''
}
