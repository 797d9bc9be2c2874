-- Train minGPT (the GPT-2 architecture) on a text corpus with byte tokens:
-- the demo (`make demo`). This is recipes/train_lm.lua with minGPT's
-- defaults; every option of train_lm works here (--help lists them).
--
--   fsdp-lua recipes/train_mingpt.lua                       # tiny Shakespeare
--   fsdp-lua recipes/train_mingpt.lua --data my.txt --max-steps 2000 --preset gpt-mini
--   fsdp-lua --nproc-per-node 4 recipes/train_mingpt.lua --strategy grad_op
return dofile(FSDP_ROOT .. '/lua/recipes/train_lm.lua') {
   name = 'recipes/train_mingpt.lua', preset = 'gpt-micro', lr = 1e-3, min_lr = 1e-4,
   warmup_steps = 50, run_dir = 'runs/train_mingpt'
}
