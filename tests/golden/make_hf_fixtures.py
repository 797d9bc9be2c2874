#!/usr/bin/env python3
"""Tiny Hugging Face models and what transformers computes with them, for
tests/lua/test_hf_models.lua and tests/dist/test_hf_sharded.lua.

    /usr/bin/python3 tests/golden/make_hf_fixtures.py [case ...]

Run by hand, never by the tests. Needs Debian's python3-torch (torch 1.13)
and `pip install --break-system-packages 'transformers==4.49.0' safetensors`
(4.49 is the newest transformers that imports with torch 1.13; 4.50 wants
torch.distributed.tensor). It has Llama 3 rope scaling.

For each case it builds a random model (2 layers, hidden 64, 4 heads,
vocab 100; float32; eager attention; dropout off), with every norm weight
and bias perturbed so none is trivially 1 or 0, and writes
tests/golden/hf/<case>/:
    config.json, model.safetensors      (save_pretrained)
    expected.safetensors:
        input_ids  I32 [2, 16]
        labels     I32 [2, 16]   HF labels (-100 = ignored), unshifted
        targets    I32 [2, 16]   labels shifted left: targets[:, t] = labels[:, t+1],
                                 the last column -100 (what model:loss takes)
        logits     F32 [2, 16, V]
        loss       F32 [1]       the model's loss (Mixtral: + coef * aux loss)
        aux_loss   F32 [1]       Mixtral only: load_balancing_loss_func
        grad.<name> F32          gradient of every parameter (HF name and layout;
                                 a tied weight appears once; an unused one is 0)
        adamw_losses F32 [5]     the loss before each of 5 AdamW steps on the same
                                 batch: torch.optim.AdamW, lr 1e-3, betas (0.9, 0.95),
                                 eps 1e-8, weight_decay 0.1 on parameters with 2 or
                                 more dimensions and 0 on the rest (optim/adamw.lua's
                                 rule), no clipping
        finetune_tokens, finetune_losses, finetune_drift, gen_ids, gen_ids_nocache
                                 the recipe fine-tune and greedy generation
                                 references of hf_reference.py (see
                                 make_hf5_fixtures.py)
The llama case's weights are rounded to bf16 first, so its two variants
hold the very same values and share its expected.safetensors:
    llama_sharded/  the same model saved with a small max_shard_size
                    (model.safetensors.index.json + shards)
    llama_bf16/     the same model saved in bfloat16
"""
import copy
import json
import os
import shutil

import sys

import torch
import transformers
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_reference as ref  # noqa: E402

# generate() asks whether the model is wrapped by torch's FSDP, and that
# import fails with torch 1.13 on Python 3.11 (a dataclass with a mutable
# default); nothing here is
import transformers.generation.utils as _generation_utils  # noqa: E402
_generation_utils.is_fsdp_managed_module = lambda module: False
# Gemma 2's HybridCache marks its buffers static for torch.compile through
# torch._dynamo, which torch 1.13's Debian build lacks; in eager mode the
# mark changes nothing
if not hasattr(torch, "_dynamo"):
    import types  # noqa: E402
    torch._dynamo = types.SimpleNamespace(mark_static_address=lambda tensor: None)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "hf")
B, T, V = 2, 16, 100
COMMON = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)


def llama_like(**kw):
    cfg = dict(COMMON, intermediate_size=96, max_position_embeddings=64, initializer_range=0.1,
               rms_norm_eps=1e-5, attention_dropout=0.0)
    cfg.update(kw)
    return cfg


CASES = {
    # Llama 2: multi-head, separate head
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
              llama_like(num_key_value_heads=4, tie_word_embeddings=False)),
    # Llama 3.1 / 3.2: GQA, rope_theta 500000, llama3 rope scaling whose
    # original context (8) is shorter than the sequence, tied embeddings
    "llama3": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
               llama_like(num_key_value_heads=2, rope_theta=500000.0, tie_word_embeddings=True,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8})),
    # CodeLlama-like: rope_theta 1e6, linear scaling; biases on; a padding row
    "codellama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                  llama_like(num_key_value_heads=1, rope_theta=1e6, attention_bias=True, mlp_bias=True,
                             rope_scaling={"type": "linear", "factor": 2.0}, pad_token_id=0)),
    # Mistral: GQA and a sliding window shorter than the sequence
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                llama_like(num_key_value_heads=2, sliding_window=5)),
    # Mixtral: 4 experts, top 2, auxiliary loss on
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM,
                llama_like(num_key_value_heads=2, intermediate_size=32, num_local_experts=4,
                           num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.1,
                           sliding_window=None, router_jitter_noise=0.0)),
    # OPT 125m-like: pre-norm, tied
    "opt": (transformers.OPTConfig, transformers.OPTForCausalLM,
            dict(COMMON, ffn_dim=128, max_position_embeddings=32, do_layer_norm_before=True,
                 word_embed_proj_dim=64, dropout=0.0, attention_dropout=0.0, init_std=0.1, pad_token_id=1)),
    # OPT 350m-like: post-norm, narrower embeddings with project_in/out
    "opt_postnorm": (transformers.OPTConfig, transformers.OPTForCausalLM,
                     dict(COMMON, ffn_dim=128, max_position_embeddings=32, do_layer_norm_before=False,
                          word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0, init_std=0.1,
                          pad_token_id=1)),
    # Qwen2: q/k/v biases, GQA 4, tied, a window of 6 < 16 on every layer
    # (use_sliding_window, max_window_layers 0: transformers 4.49 and 5
    # window the same layers)
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              llama_like(num_key_value_heads=1, tie_word_embeddings=True, rope_theta=1e6, use_sliding_window=True,
                         sliding_window=6, max_window_layers=0)),
    # Gemma 2: head_dim 24 with 4 heads over 64, GQA 2, a window of 5 < 16
    # on layer 0, query_pre_attn_scalar 20, attention and final logits
    # soft-capped at 2 and 1.5, tied, a padding row (pad_token_id 0)
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
               llama_like(num_key_value_heads=2, head_dim=24, sliding_window=5, query_pre_attn_scalar=20,
                          attn_logit_softcapping=2.0, final_logit_softcapping=1.5, pad_token_id=0)),
    # GPT-2
    "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel,
             dict(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=32, resid_pdrop=0.0,
                  embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.1)),
}


# cases added after the first ones, seeded after them in this order (so an
# added case changes no other case's seed)
ADDED = ["qwen2", "gemma2"]


def seed_index(name):
    first = sorted(k for k in CASES if k not in ADDED)
    return first.index(name) if name in first else len(first) + ADDED.index(name)


def make_model(name):
    cfg_cls, model_cls, kw = CASES[name]
    torch.manual_seed(1000 + seed_index(name))
    cfg = cfg_cls(**kw)
    cfg._attn_implementation = "eager"
    model = model_cls(cfg).float()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:  # norm weights and biases: away from 1 and 0
                p.add_(0.2 * torch.randn_like(p))
    model.eval()  # no dropout (all rates are 0 anyway)
    return model


def make_batch(model, name):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, V, (B, T), generator=g)
    pad = getattr(model.config, "pad_token_id", None)
    if pad is not None:  # use the padding row: it must get no embedding gradient
        ids[0, 3] = pad
        ids[1, 10] = pad
    labels = ids.clone()
    labels[0, 5:8] = -100
    labels[1, 12] = -100
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    return ids, labels, targets


def forward(model, ids, labels):
    return model(input_ids=ids, labels=labels, use_cache=False, return_dict=True)


def adamw_losses(model, ids, labels, steps=5):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        out = forward(model, ids, labels)
        out.loss.backward()
        losses.append(out.loss.item())
        opt.step()
    return torch.tensor(losses, dtype=torch.float32)


def clean_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def save(model, path, **kw):
    model.save_pretrained(path, safe_serialization=True, **kw)
    gen = os.path.join(path, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)


def make_case(name):
    model = make_model(name)
    if name == "llama":  # bf16-exact weights: the bf16 variant then holds the same values
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
    ids, labels, targets = make_batch(model, name)
    out = forward(model, ids, labels)
    out.loss.backward()
    expected = {
        "input_ids": ids.to(torch.int32),
        "labels": labels.to(torch.int32),
        "targets": targets.to(torch.int32),
        "logits": out.logits.detach().float().contiguous(),
        "loss": out.loss.detach().reshape(1).float(),
    }
    if getattr(out, "aux_loss", None) is not None:
        expected["aux_loss"] = out.aux_loss.detach().reshape(1).float()
    for pname, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        expected["grad." + pname] = g.detach().float().contiguous()
    trained = copy.deepcopy(model)
    trained.zero_grad(set_to_none=True)
    expected["adamw_losses"] = adamw_losses(trained, ids, labels)
    model.zero_grad(set_to_none=True)
    # the recipe fine-tune and greedy generation references (hf_reference.py)
    tokens = ref.finetune_tokens(V, B, T)
    expected["finetune_tokens"] = tokens.to(torch.int32)
    expected["finetune_losses"], expected["finetune_drift"] = ref.finetune(model, tokens, B, T)
    limit = model.config.max_position_embeddings
    expected["gen_ids"], expected["gen_ids_nocache"] = ref.greedy(model, ref.PROMPT, min(8, limit - len(ref.PROMPT)))

    path = os.path.join(OUT, name)
    clean_dir(path)
    save(model, path)
    meta = {"transformers": transformers.__version__, "torch": torch.__version__,
            "finetune": json.dumps(ref.FINETUNE), "B": str(B), "T": str(T)}
    save_file(expected, os.path.join(path, "expected.safetensors"), metadata=meta)
    print(f"{name}: loss {out.loss.item():.6f}, adamw {expected['adamw_losses'].tolist()}")

    if name == "llama":
        sharded = os.path.join(OUT, "llama_sharded")
        clean_dir(sharded)
        save(model, sharded, max_shard_size="100KB")
        half = os.path.join(OUT, "llama_bf16")
        clean_dir(half)
        save(copy.deepcopy(model).to(torch.bfloat16), half)


def main():
    os.makedirs(OUT, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for name in sys.argv[1:] or CASES:
        make_case(name)


if __name__ == "__main__":
    main()
