-- LoRA fine-tuning of a Hugging Face directory of any supported family
-- (Llama, Mistral, Mixtral, OPT, GPT-2): recipes/train_lm.lua with LoRA on
-- (--lora-r 8, --lora-alpha 16, --lora-dropout 0.05; --lora-targets: the
-- family's, q_proj,v_proj or GPT-2's c_attn) and fine-tuning defaults. Every
-- weight but the adapters is frozen. --adapter DIR goes on training a PEFT
-- adapter; the --export-dir is the adapter in PEFT's format (`fsdp-lua
-- export CKPT OUT --merge` writes the model with it merged). SFT data
-- (`fsdp-lua prepare --format sft`) trains on the responses only.
--
--   fsdp-lua --nproc-per-node 4 recipes/finetune_lora.lua --model /models/Llama-2-7b-hf \
--       --data sft/ --lora-r 16 --lora-targets q_proj,k_proj,v_proj,o_proj \
--       --checkpoint-dir ckpt/lora --export-dir out/lora-adapter
return dofile(FSDP_ROOT .. '/lua/recipes/train_lm.lua') {
   name = 'recipes/finetune_lora.lua', lr = 2e-4, min_lr = 2e-5, warmup_steps = 20,
   max_steps = 1000, batch_size = 8, seq_len = 512, weight_decay = 0.0,
   strategy = 'full', eval_every = 200, checkpoint_every = 200,
   run_dir = 'runs/finetune_lora', sample_tokens = 0, preset = '',
   lora_r = 8, lora_alpha = 16, lora_dropout = 0.05,
}
