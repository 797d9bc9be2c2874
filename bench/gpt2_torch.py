"""The PyTorch peer of bench/gpt2_cpu.lua (issues 2 and 17).

    python3 bench/gpt2_torch.py --batch-size 4 --seq-len 64 [--threads 2]
    python3 bench/gpt2_torch.py --model llama --batch-size 4 --seq-len 256
    python3 bench/gpt2_torch.py --compile ...                 (torch 2: torch.compile)
    torchrun --nproc-per-node 2 bench/gpt2_torch.py --dist fsdp2 --threads 1 ...

Models:
  gpt2   GPT-2 124M (vocab 50257, 12 layers, 12 heads, width 768,
         block_size 1024), written out here in plain torch.nn: learned
         positions, pre-LayerNorm blocks, fused c_attn, causal attention
         (F.scaled_dot_product_attention where torch has it, else softmax
         attention written out), tanh GELU, the lm_head tied to wte.
  llama  the Llama-style ~100M of bench/gpt2_cpu.lua --model llama (8 layers,
         width 768, 12 heads with 4 kv heads, SwiGLU 2048, vocab 32000,
         untied head, RMSNorm, RoPE) as transformers' LlamaForCausalLM
         (its default attention implementation), the loss computed from its
         logits with F.cross_entropy as the Lua bench does.
fp32 everywhere; torch.optim.AdamW (fused where torch has it for the CPU,
else its default implementation) with weight decay 0.1 on matrices only.
Each step is the same as the Lua bench's: seeded random tokens, forward,
cross-entropy, backward, global-norm clipping at 1.0, AdamW, zero_grad.

--dist ddp|fsdp2 under torchrun: gloo, each rank --batch-size / world
sequences; DDP wraps the model, FSDP2 is fully_shard on every block and the
root. Rank 0 prints.

Warmup steps, then timed steps; tokens/s = tokens of all ranks per step /
step wall time. The last line is for bench/run.sh:
  RESULT <label> B=.. T=.. tok_s=.. gflops=.. step_ms=.. best_ms=.. steps_ms=a,b,c rss_mib=..
(rss_mib: the process's peak resident set, the largest over the ranks).
"""
import argparse
import math
import os
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")


class Attention(nn.Module):
    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        if not HAVE_SDPA:
            mask = torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))
            self.register_buffer("mask", mask.view(1, 1, block_size, block_size), persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        hd = C // self.n_head
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)
        k = k.view(B, T, self.n_head, hd).transpose(1, 2)
        v = v.view(B, T, self.n_head, hd).transpose(1, 2)
        if HAVE_SDPA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
            att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


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

    def blocks(self):
        return list(self.h)

    def forward(self, idx, targets):
        B, T = idx.shape
        pos = torch.arange(T, dtype=torch.long)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight)  # tied head
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class Llama(nn.Module):
    """transformers' LlamaForCausalLM with the loss taken from its logits"""

    def __init__(self, cfg):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM
        self.lm = LlamaForCausalLM(LlamaConfig(**cfg))

    def blocks(self):
        return list(self.lm.model.layers)

    def forward(self, idx, targets):
        logits = self.lm(input_ids=idx).logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


# the Llama-style ~100M shape of issue 17 (bench/gpt2_cpu.lua --model llama)
LLAMA = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
             num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
             rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
             attention_bias=False, mlp_bias=False)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2", choices=["gpt2", "llama"])
    ap.add_argument("--batch-size", type=int, default=4, help="sequences per step over all ranks")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--label", default="torch")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (torch 2)")
    ap.add_argument("--dist", default="none", choices=["none", "ddp", "fsdp2"],
                    help="under torchrun: DDP or FSDP2 over gloo")
    args = ap.parse_args()

    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rank, world = 0, 1
    if args.dist != "none":
        import torch.distributed as dist
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} does not split over {world} ranks")
    B, T = args.batch_size // world, args.seq_len

    if args.model == "gpt2":
        V, L, NH, C, BS = 50257, 12, 12, 768, 1024
        model = GPT(V, BS, L, NH, C)
        n_pos = model.wpe.weight.numel()
    else:
        V, L, C = LLAMA["vocab_size"], LLAMA["num_hidden_layers"], LLAMA["hidden_size"]
        model = Llama(LLAMA)
        n_pos = 0
    n_params = sum(p.numel() for p in model.parameters())
    # the count of bench/gpt2_cpu.lua: 6 N per token without the position
    # table, plus 12 L C T for the attention products
    flops_per_token = 6 * (n_params - n_pos) + 12 * L * C * T

    if args.dist == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model)
        inner = model.module
    elif args.dist == "fsdp2":
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:
            from torch.distributed._composable.fsdp import fully_shard
        for blk in model.blocks():
            fully_shard(blk)
        fully_shard(model)
        inner = model
    else:
        inner = model
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    kw = {}
    fused = False
    if args.dist != "fsdp2":  # fused AdamW takes plain tensors, not FSDP2's DTensors
        try:
            torch.optim.AdamW([torch.zeros(1, requires_grad=True)], fused=True)
            kw["fused"], fused = True, True
        except (RuntimeError, TypeError):
            pass
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8, **kw)
    fwd = torch.compile(model) if args.compile else model
    gen = torch.Generator().manual_seed(args.seed + rank)

    def step():
        x = torch.randint(0, V, (B, T), generator=gen)
        y = torch.randint(0, V, (B, T), generator=gen)
        loss = fwd(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return loss.item()

    say = print if rank == 0 else (lambda *a, **k: None)
    env = " ".join(f"{k}={os.environ[k]}" for k in ("LD_PRELOAD", "MALLOC_CONF", "OMP_WAIT_POLICY")
                   if os.environ.get(k))
    say(f"{args.label}: torch {torch.__version__}, {args.model} {n_params / 1e6:.2f}M parameters, "
        f"threads {torch.get_num_threads()} (default {default_threads}), {world} rank(s), B={B * world} T={T}, "
        f"{'compiled' if args.compile else 'eager'}, sdpa {HAVE_SDPA}, fused AdamW {fused}, dist {args.dist}"
        + (f", {env}" if env else ""), flush=True)
    for i in range(args.warmup):
        t0 = time.perf_counter()
        loss = step()
        say(f"  warmup {i + 1}: loss {loss:.4f}, {(time.perf_counter() - t0) * 1e3:.0f} ms", flush=True)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        if args.dist != "none":
            torch.distributed.barrier()
        dt = time.perf_counter() - t0
        times.append(dt)
        say(f"  step {i + 1}: loss {loss:.4f}, {dt * 1e3:.0f} ms", flush=True)
    rss = peak_rss_mib()
    if args.dist != "none":
        r = torch.tensor([rss])
        torch.distributed.all_reduce(r, op=torch.distributed.ReduceOp.MAX)
        rss = float(r.item())
    total = sum(times)
    tok_s = B * world * T * args.steps / total
    gflops = tok_s * flops_per_token / 1e9
    say(f"{args.label} B={B * world} T={T}: {tok_s:.1f} tokens/s, {gflops:.1f} GFLOP/s, "
        f"mean step {total / args.steps * 1e3:.0f} ms, best {min(times) * 1e3:.0f} ms, peak RSS {rss:.0f} MiB")
    say(f"RESULT {args.label} B={B * world} T={T} tok_s={tok_s:.2f} gflops={gflops:.2f} "
        f"step_ms={total / args.steps * 1e3:.1f} best_ms={min(times) * 1e3:.1f} "
        f"steps_ms={','.join(f'{t * 1e3:.1f}' for t in times)} rss_mib={rss:.0f}", flush=True)
    if args.dist != "none":
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
