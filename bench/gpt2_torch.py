"""The PyTorch eager peer of bench/gpt2_cpu.lua (issue 2).

    /usr/bin/python3 bench/gpt2_torch.py --batch-size 4 --seq-len 64 [--threads 2]

The GPT-2 124M shape (vocab 50257, 12 layers, 12 heads, width 768,
block_size 1024), written out here in plain torch.nn: learned positions,
pre-LayerNorm blocks, fused c_attn, causal softmax attention, tanh GELU,
the lm_head tied to wte. fp32, torch.optim.AdamW with its defaults for the
implementation (no fused/foreach arguments), weight decay on matrices only.
Each step is the same as the Lua bench's: seeded random tokens, forward,
cross-entropy, backward, global-norm clipping at 1.0, AdamW, zero_grad.
Warmup steps, then timed steps; tokens/s = B * T * steps / their wall time.

FLOPs per token are counted as in bench/gpt2_cpu.lua (6 N without the
position table + 12 L C T). Runs on Debian's python3-torch (/usr/bin/python3).
The last line is for bench/run.sh: RESULT torch B=4 T=64 tok_s=... gflops=...
"""
import argparse
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        mask = torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))
        self.register_buffer("mask", mask.view(1, 1, block_size, block_size), persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        hd = C // self.n_head
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)
        k = k.view(B, T, self.n_head, hd).transpose(1, 2)
        v = v.view(B, T, self.n_head, hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = Attention(n_embd, n_head, block_size)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList([Block(n_embd, n_head, block_size) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        # GPT-2's init: normal(0.02), residual projections scaled down
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        B, T = idx.shape
        pos = torch.arange(T, dtype=torch.long)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight)  # tied head
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--label", default="torch")
    args = ap.parse_args()

    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    B, T = args.batch_size, args.seq_len
    V, L, NH, C, BS = 50257, 12, 12, 768, 1024

    model = GPT(V, BS, L, NH, C)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
    n_params = sum(p.numel() for p in model.parameters())
    # the same count as bench/gpt2_cpu.lua: 6 N per token without the
    # position table, plus 12 L C T for the attention products
    flops_per_token = 6 * (n_params - model.wpe.weight.numel()) + 12 * L * C * T
    gen = torch.Generator().manual_seed(args.seed)

    def step():
        x = torch.randint(0, V, (B, T), generator=gen)
        y = torch.randint(0, V, (B, T), generator=gen)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return loss.item()

    env = " ".join(f"{k}={os.environ[k]}" for k in ("LD_PRELOAD", "MALLOC_CONF", "OMP_WAIT_POLICY")
                   if os.environ.get(k))
    print(f"{args.label}: torch {torch.__version__}, {n_params / 1e6:.2f}M parameters, "
          f"threads {torch.get_num_threads()} (default {default_threads}), B={B} T={T}"
          + (f", {env}" if env else ""), flush=True)
    for i in range(args.warmup):
        t0 = time.perf_counter()
        loss = step()
        print(f"  warmup {i + 1}: loss {loss:.4f}, {(time.perf_counter() - t0) * 1e3:.0f} ms", flush=True)
    total, best = 0.0, float("inf")
    for i in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        dt = time.perf_counter() - t0
        total, best = total + dt, min(best, dt)
        print(f"  step {i + 1}: loss {loss:.4f}, {dt * 1e3:.0f} ms", flush=True)
    tok_s = B * T * args.steps / total
    gflops = tok_s * flops_per_token / 1e9
    print(f"{args.label} B={B} T={T}: {tok_s:.1f} tokens/s, {gflops:.1f} GFLOP/s, "
          f"mean step {total / args.steps * 1e3:.0f} ms, best {best * 1e3:.0f} ms")
    print(f"RESULT {args.label} B={B} T={T} tok_s={tok_s:.2f} gflops={gflops:.2f} "
          f"step_ms={total / args.steps * 1e3:.1f} best_ms={best * 1e3:.1f}")


if __name__ == "__main__":
    main()
