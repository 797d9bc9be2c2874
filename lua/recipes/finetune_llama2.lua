-- Fine-tune a Llama 2 (or Llama 1/3, CodeLlama) Hugging Face directory.
-- recipes/train_lm.lua with fine-tuning defaults: a low peak learning rate
-- with a short warmup, bf16 gathers, clipping at 1.0, checkpoints and a
-- Hugging Face export at the end.
--
--   fsdp-lua --nproc-per-node 8 recipes/finetune_llama2.lua --model /models/Llama-2-7b-hf \
--       --data corpus/ --max-steps 1000 --checkpoint-dir ckpt/llama2 --export-dir out/llama2-ft
return dofile(FSDP_ROOT .. '/lua/recipes/train_lm.lua') {
   name = 'recipes/finetune_llama2.lua', lr = 2e-5, min_lr = 2e-6, warmup_steps = 100,
   max_steps = 1000, batch_size = 8, grad_accum_steps = 2, seq_len = 1024, weight_decay = 0.0,
   param_dtype = 'bf16', strategy = 'full', eval_every = 200, checkpoint_every = 200,
   run_dir = 'runs/finetune_llama2', sample_tokens = 0, preset = ''
}
