"""What a plain PyTorch / transformers user computes with a small causal LM:
the pieces of tests/golden/make_hf_fixtures.py (transformers 4.49, torch 1.13)
and tests/golden/make_hf5_fixtures.py (transformers 5, current torch) that
are the same in both. Imported by those scripts only; never run by the tests.

    finetune(model, tokens, B, T)   the per-step losses of a 15-step AdamW fine-tune
                                    as recipes/train_lm.lua runs it (see FINETUNE)
    greedy(model, prompt, n_new)    transformers' greedy generate(), with and
                                    without its KV cache
"""
import copy
import math

import torch

# the fine-tune tests/lua/test_hf_finetune.lua runs with the recipes; the
# recipe options are written next to each value
FINETUNE = dict(
    steps=15,            # --max-steps
    lr=1e-3,             # --lr
    min_lr=1e-4,         # --min-lr
    warmup=3,            # --warmup-steps (linear warmup, then cosine decay to min_lr at max_steps)
    weight_decay=0.1,    # --weight-decay (on parameters of 2 or more dimensions)
    betas=(0.9, 0.95),   # --beta1 --beta2
    eps=1e-8,            # AdamW's default
    max_grad_norm=1.0,   # --max-grad-norm (global norm clipping)
)
PROMPT = [72, 69, 76, 76, 79]  # "HELLO" as byte tokens (recipes/generate.lua --tokenizer bytes)


def lr_at(step, cfg=FINETUNE):
    """lua/optim/schedule.lua's cosine schedule, step 0-based"""
    lr, min_lr, warmup, total = cfg["lr"], cfg["min_lr"], cfg["warmup"], cfg["steps"]
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def finetune_tokens(vocab, B, T, seed=11):
    """B*T+1 training tokens (exactly B sequences: every step sees the same
    batch, whatever order the data loader shuffles its rows into) then T+1
    validation tokens"""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B * T + 1 + T + 1,), generator=g)


def batch(tokens, B, T):
    x = torch.stack([tokens[b * T:b * T + T] for b in range(B)])
    y = torch.stack([tokens[b * T + 1:b * T + T + 1] for b in range(B)])
    return x, y


def step_loss(model, x, y):
    out = model(input_ids=x, use_cache=False, return_dict=True)
    logits = out.logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    aux = getattr(out, "aux_loss", None)
    if aux is not None:  # Mixtral with output_router_logits: the loss transformers trains on
        loss = loss + model.config.router_aux_loss_coef * aux
    return loss


def train_losses(model, tokens, B, T, cfg=FINETUNE):
    x, y = batch(tokens, B, T)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg["lr"], betas=cfg["betas"], eps=cfg["eps"])
    losses = []
    for step in range(cfg["steps"]):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad()
        loss = step_loss(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"])
        opt.step()
        losses.append(loss.item())
    return losses


def finetune(model, tokens, B, T, cfg=FINETUNE):
    """the float32 losses of every step, and per step how far float32 drifts
    from the same loop in float64 (relative): the tolerance a float32
    engine can be held to"""
    f32 = train_losses(copy.deepcopy(model).float(), tokens, B, T, cfg)
    f64 = train_losses(copy.deepcopy(model).double(), tokens, B, T, cfg)
    drift = [abs(a - b) / abs(b) for a, b in zip(f32, f64)]
    return torch.tensor(f32, dtype=torch.float64), torch.tensor(drift, dtype=torch.float64)


def greedy(model, prompt, n_new):
    """transformers' greedy generate() of n_new tokens after prompt, with its
    KV cache and without (they differ where the RoPE frequencies depend on
    the length, as longrope's: the cache keeps keys rotated the old way);
    no token stops it"""
    model = copy.deepcopy(model)
    if getattr(model.config, "output_router_logits", False):
        # no auxiliary loss while generating (4.49's breaks on the cached steps)
        model.config.output_router_logits = False
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    ids = torch.tensor([prompt])
    outs = []
    for use_cache in (True, False):
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, min_new_tokens=n_new,
                                 do_sample=False, use_cache=use_cache, num_beams=1)
        outs.append(torch.tensor(out[0].tolist(), dtype=torch.int32))
    return outs[0], outs[1]
