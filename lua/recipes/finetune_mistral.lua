-- Fine-tune a Mistral (sliding-window) or Mixtral (mixture of experts)
-- Hugging Face directory: recipes/train_lm.lua with fine-tuning defaults
-- and a longer sequence, as Mistral users run it.
--
--   fsdp-lua --nproc-per-node 8 recipes/finetune_mistral.lua --model /models/Mistral-7B-v0.1 \
--       --data corpus/ --seq-len 4096 --batch-size 16 --grad-accum-steps 4
return dofile(FSDP_ROOT .. '/lua/recipes/train_lm.lua') {
   name = 'recipes/finetune_mistral.lua', lr = 2e-5, min_lr = 2e-6, warmup_steps = 100,
   max_steps = 1000, batch_size = 8, grad_accum_steps = 4, seq_len = 2048, weight_decay = 0.0,
   param_dtype = 'bf16', strategy = 'full', eval_every = 200, checkpoint_every = 200,
   activation_checkpointing = true, run_dir = 'runs/finetune_mistral', sample_tokens = 0,
   preset = ''
}
