-- Fine-tune an OPT Hugging Face directory (125m ... 66b): full sharding,
-- activation checkpointing and clipping at 1.0, as the OPT-1.3B FSDP
-- example runs it. That example gathers in fp16: --param-dtype f16 does
-- so here too, with the dynamic loss scaler (f32 is the default).
--
--   fsdp-lua --nproc-per-node 2 recipes/finetune_opt.lua --model /models/opt-1.3b --data abstracts.jsonl.d/
return dofile(FSDP_ROOT .. '/lua/recipes/train_lm.lua') {
   name = 'recipes/finetune_opt.lua', lr = 2e-5, min_lr = 2e-6, warmup_steps = 50,
   max_steps = 1000, batch_size = 8, grad_accum_steps = 2, seq_len = 1024, weight_decay = 0.0,
   param_dtype = 'f32', strategy = 'full', activation_checkpointing = true, max_grad_norm = 1.0,
   eval_every = 200, checkpoint_every = 200, run_dir = 'runs/finetune_opt', sample_tokens = 0,
   preset = ''
}
