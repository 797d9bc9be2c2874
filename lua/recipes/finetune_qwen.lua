-- Fine-tune a Qwen2, Qwen2.5 or Qwen3 Hugging Face directory:
-- recipes/train_lm.lua with fine-tuning defaults (Qwen's low peak
-- learning rate, bf16 gathers, activation checkpointing, a 2048-token
-- sequence).
--
--   fsdp-lua --nproc-per-node 8 recipes/finetune_qwen.lua --model /models/Qwen2.5-7B \
--       --data corpus/ --max-steps 1000 --checkpoint-dir ckpt/qwen --export-dir out/qwen-ft
return dofile(FSDP_ROOT .. '/lua/recipes/train_lm.lua') {
   name = 'recipes/finetune_qwen.lua', lr = 1e-5, min_lr = 1e-6, warmup_steps = 100,
   max_steps = 1000, batch_size = 8, grad_accum_steps = 4, seq_len = 2048, weight_decay = 0.0,
   param_dtype = 'bf16', strategy = 'full', eval_every = 200, checkpoint_every = 200,
   activation_checkpointing = true, run_dir = 'runs/finetune_qwen', sample_tokens = 0,
   preset = ''
}
