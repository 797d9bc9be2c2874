#!/usr/bin/env python3
"""Tiny Hugging Face models saved by today's transformers (5.x) and what it
computes with them, for tests/lua/test_hf_models.lua and
tests/lua/test_hf_finetune.lua. Beside tests/golden/hf (transformers 4.49,
made by make_hf_fixtures.py), these are in transformers 5's config layout
(rope_parameters, dtype) and have other shapes: odd vocabularies (97, 101),
13 positions, grouped-query ratios 3 and 4, sliding windows shorter than
the sequence, and one Llama per rope_type (linear, dynamic, yarn, llama3,
longrope) whose scaling acts at 13 positions; Qwen2 and Qwen3 tied and
untied, with windows on some layers (layer_types) or none; Gemma 2 with
binding soft-caps and windows.

    /work/venv/bin/python tests/golden/make_hf5_fixtures.py

(/work/venv: `pip install torch transformers safetensors`; `make venv`
makes one under build/.) Run by hand, never by the tests. Writes
tests/golden/hf5/<case>/:
    config.json, model.safetensors   save_pretrained (transformers 5 keeps the
                                     checkpoint names of 4.x, Mixtral's too)
    config_v4.json                   rope cases: the same config in the 4.x
                                     layout (rope_theta, rope_scaling,
                                     torch_dtype); checked here to give
                                     transformers 5 the very same logits
    expected.safetensors:
        input_ids, targets, logits, loss, aux_loss (Mixtral), grad.<name>,
        adamw_losses                 as in make_hf_fixtures.py (B=2, T=13)
        finetune_tokens  I32 [2*13+1 + 13+1]  the recipe's data (train, then val)
        finetune_losses  F64 [15]    torch's float32 loss per step of the
                                     fine-tune in hf_reference.FINETUNE
        finetune_drift   F64 [15]    |float32 - float64| / |float64| per step
        gen_ids          I32 [P+N]   greedy generate() of N tokens after
                                     hf_reference.PROMPT, with the KV cache
        gen_ids_nocache  I32 [P+N]   the same without it
"""
import copy
import json
import os
import shutil
import sys
import tempfile

import torch
import transformers
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_reference as ref  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "hf5")
B, T = 2, 13


def llama(**kw):
    cfg = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
               num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, initializer_range=0.1,
               attention_dropout=0.0, tie_word_embeddings=False)
    cfg.update(kw)
    return cfg


def rope(kind, theta, **kw):
    return dict(rope_type=kind, rope_theta=theta, **kw)


CASES = {
    # Llama: GQA 3 (6 heads, 2 kv heads, head_dim 8), theta 20000, a padding row
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
              llama(rope_parameters=rope("default", 20000.0), pad_token_id=96)),
    # CodeLlama-like linear scaling, biases on, tied embeddings
    "llama_linear": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                     llama(rope_parameters=rope("linear", 100000.0, factor=2.0), attention_bias=True, mlp_bias=True,
                           tie_word_embeddings=True)),
    # dynamic NTK: 13 positions > max_position_embeddings 8 grows the base
    "llama_dynamic": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                      llama(max_position_embeddings=8, rope_parameters=rope("dynamic", 10000.0, factor=2.0))),
    # YaRN: factor 4 over an original context of 16, attention factor from mscale
    "llama_yarn": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                   llama(rope_parameters=rope("yarn", 10000.0, factor=4.0, original_max_position_embeddings=16,
                                              beta_fast=8.0, beta_slow=1.0))),
    # Llama 3.1: original context 8 < 13 positions, theta 500000
    "llama_llama3": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                     llama(rope_parameters=rope("llama3", 500000.0, factor=8.0, low_freq_factor=1.0,
                                                high_freq_factor=4.0, original_max_position_embeddings=8))),
    # LongRoPE (Phi-3 style): the long factors act past 8 positions
    "llama_longrope": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                       llama(max_position_embeddings=32,
                             rope_parameters=rope("longrope", 10000.0, original_max_position_embeddings=8, factor=4.0,
                                                  short_factor=[1.0, 1.25, 1.5, 2.0],
                                                  long_factor=[1.5, 2.5, 4.0, 6.0]))),
    # Mistral: GQA 4 (8 heads, 2 kv heads), window 4 < 13, vocabulary 101
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                llama(vocab_size=101, hidden_size=64, num_attention_heads=8, num_key_value_heads=2, head_dim=8,
                      sliding_window=4, rope_parameters=rope("default", 10000.0))),
    # Mixtral: 3 experts, top 2, GQA 3, window 6, auxiliary loss on
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM,
                llama(intermediate_size=32, num_local_experts=3, num_experts_per_tok=2, output_router_logits=True,
                      router_aux_loss_coef=0.05, router_jitter_noise=0.0, sliding_window=6,
                      rope_parameters=rope("default", 1000000.0))),
    # OPT: 5 heads of 8, pre-norm, tied
    "opt": (transformers.OPTConfig, transformers.OPTForCausalLM,
            dict(vocab_size=97, hidden_size=40, num_hidden_layers=2, num_attention_heads=5, ffn_dim=72,
                 max_position_embeddings=20, do_layer_norm_before=True, word_embed_proj_dim=40, dropout=0.0,
                 attention_dropout=0.0, layerdrop=0.0, init_std=0.1, pad_token_id=1)),
    # GPT-2: 5 heads of 8, an explicit n_inner
    "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel,
             dict(vocab_size=97, n_embd=40, n_layer=2, n_head=5, n_inner=56, n_positions=24, resid_pdrop=0.0,
                  embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.1, bos_token_id=0, eos_token_id=0)),
    # Qwen2: q/k/v biases, GQA 5 (5 heads, 1 kv head), 3 layers of which the
    # last two have a window of 5 < 13 (use_sliding_window, max_window_layers
    # 1: transformers 5 writes layer_types), untied, vocabulary 103
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              llama(vocab_size=103, hidden_size=40, intermediate_size=72, num_hidden_layers=3, num_attention_heads=5,
                    num_key_value_heads=1, use_sliding_window=True, sliding_window=5, max_window_layers=1,
                    rope_parameters=rope("default", 1000000.0))),
    # Qwen2.5-0.5B-like: tied embeddings, no window (sliding_window is written
    # as null), GQA 3, vocabulary 89
    "qwen2_tied": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                   llama(vocab_size=89, tie_word_embeddings=True, use_sliding_window=False,
                         rope_parameters=rope("default", 10000.0))),
    # Qwen3: head_dim 16 with 4 heads over a width of 40 (16 * 4 != 40), GQA 4,
    # q/k RMSNorm, the second of 2 layers windowed (6 < 13), untied, vocab 107
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
              llama(vocab_size=107, hidden_size=40, intermediate_size=56, num_attention_heads=4, num_key_value_heads=1,
                    head_dim=16, use_sliding_window=True, sliding_window=6, max_window_layers=1,
                    rope_parameters=rope("default", 1000000.0))),
    # Qwen3-0.6B-like: tied, attention biases on, head_dim 12 with 6 heads
    # over 48, GQA 3, YaRN past 8 positions, vocabulary 91
    "qwen3_tied": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
                   llama(vocab_size=91, head_dim=12, tie_word_embeddings=True, attention_bias=True, max_position_embeddings=32,
                         rope_parameters=rope("yarn", 10000.0, factor=4.0, original_max_position_embeddings=8))),
    # Gemma 2: 3 layers, windows of 4 < 13 on layers 0 and 2 (layer_types),
    # GQA 3, head_dim 16 with 6 heads over 48, query_pre_attn_scalar 12,
    # attention and final logits soft-capped at 2 and 1.5 (both bind),
    # untied, a padding row, vocabulary 97
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
               llama(num_hidden_layers=3, head_dim=16, sliding_window=4, query_pre_attn_scalar=12,
                     attn_logit_softcapping=2.0, final_logit_softcapping=1.5, pad_token_id=0,
                     rope_parameters=rope("default", 10000.0))),
}
ROPE_CASES = [k for k in CASES if k.startswith("llama_")]
V4_CASES = ROPE_CASES + ["llama", "mistral", "mixtral", "qwen2", "qwen2_tied", "qwen3", "qwen3_tied", "gemma2"]


# cases added after the first ones, seeded after them in this order (so an
# added case changes no other case's seed)
ADDED = ["qwen2", "qwen2_tied", "qwen3", "qwen3_tied", "gemma2"]


def seed_index(name):
    first = sorted(k for k in CASES if k not in ADDED)
    return first.index(name) if name in first else len(first) + ADDED.index(name)


def make_model(name):
    cfg_cls, model_cls, kw = CASES[name]
    torch.manual_seed(2000 + seed_index(name))
    cfg = cfg_cls(**kw)
    impl = dict(attn_implementation="eager")
    if name == "mixtral":  # a loop over the experts (the grouped GEMM has no float64)
        impl["experts_implementation"] = "eager"
    model = model_cls._from_config(cfg, **impl).float()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:  # norm weights and biases: away from 1 and 0
                p.add_(0.2 * torch.randn_like(p))
    model.eval()
    return model


def make_batch(model):
    g = torch.Generator().manual_seed(9)
    V = model.config.vocab_size
    ids = torch.randint(0, V, (B, T), generator=g)
    pad = getattr(model.config, "pad_token_id", None)
    if pad is not None:  # the padding row must get no embedding gradient
        ids[0, 2] = pad
        ids[1, 9] = pad
    labels = ids.clone()
    labels[0, 4:7] = -100
    labels[1, 11] = -100
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    return ids, labels, targets


def forward(model, ids, labels):
    return model(input_ids=ids, labels=labels, use_cache=False, return_dict=True)


def named_grads(model):
    """gradients under the checkpoint's names: transformers 5 fuses Mixtral's
    experts into gate_up_proj [E, 2F, C] (w1 rows, then w3) and down_proj
    [E, C, F] (w2), and names the router mlp.gate; checkpoints keep
    block_sparse_moe.experts.N.w1/w2/w3 and block_sparse_moe.gate"""
    out = {}
    for pname, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        g = g.detach().float()
        if pname.endswith("mlp.experts.gate_up_proj"):
            base = pname[:-len("mlp.experts.gate_up_proj")] + "block_sparse_moe.experts."
            F = g.shape[1] // 2
            for e in range(g.shape[0]):
                out[f"{base}{e}.w1.weight"] = g[e, :F].contiguous()
                out[f"{base}{e}.w3.weight"] = g[e, F:].contiguous()
        elif pname.endswith("mlp.experts.down_proj"):
            base = pname[:-len("mlp.experts.down_proj")] + "block_sparse_moe.experts."
            for e in range(g.shape[0]):
                out[f"{base}{e}.w2.weight"] = g[e].contiguous()
        elif pname.endswith("mlp.gate.weight") and model.config.model_type == "mixtral":
            out[pname.replace("mlp.gate.weight", "block_sparse_moe.gate.weight")] = g.contiguous()
        else:
            out[pname] = g.contiguous()
    return out


def v4_config(path):
    """config.json in transformers 4.x's layout: rope_theta + rope_scaling
    (null for the default rope), torch_dtype; no layer_types where no layer
    is windowed (Qwen: 4.x has no layer_types)"""
    cfg = json.load(open(path))
    rp = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = None if rp["rope_type"] == "default" else rp
    cfg["torch_dtype"] = cfg.pop("dtype")
    if "layer_types" in cfg and cfg.get("sliding_window") is None:
        del cfg["layer_types"]  # as 4.x writes a Qwen config without windows
    return cfg


def check_v4(path, model, ids):
    """transformers 5 reads the 4.x layout to the very same model"""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(path, "model.safetensors"), tmp)
        shutil.copy(os.path.join(path, "config_v4.json"), os.path.join(tmp, "config.json"))
        other = transformers.AutoModelForCausalLM.from_pretrained(tmp, attn_implementation="eager")
        with torch.no_grad():
            a = model(input_ids=ids, use_cache=False).logits
            b = other(input_ids=ids, use_cache=False).logits
        assert torch.equal(a, b), f"{path}: the 4.x layout gives other logits ({(a - b).abs().max()})"


def make_case(name):
    model = make_model(name)
    ids, labels, targets = make_batch(model)
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
    for gname, g in named_grads(model).items():
        expected["grad." + gname] = g
    model.zero_grad(set_to_none=True)
    trained = copy.deepcopy(model)
    expected["adamw_losses"] = adamw_losses(trained, ids, labels)

    V = model.config.vocab_size
    tokens = ref.finetune_tokens(min(V, 97), B, T)
    expected["finetune_tokens"] = tokens.to(torch.int32)
    expected["finetune_losses"], expected["finetune_drift"] = ref.finetune(model, tokens, B, T)
    limit = getattr(model.config, "max_position_embeddings", None) or model.config.n_positions
    n_new = min(8, limit - len(ref.PROMPT))
    expected["gen_ids"], expected["gen_ids_nocache"] = ref.greedy(model, ref.PROMPT, n_new)

    path = os.path.join(OUT, name)
    if os.path.isdir(path):
        shutil.rmtree(path)
    model.save_pretrained(path)
    gen = os.path.join(path, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    if name in V4_CASES:
        with open(os.path.join(path, "config_v4.json"), "w") as f:
            json.dump(v4_config(os.path.join(path, "config.json")), f, indent=2, sort_keys=True)
            f.write("\n")
        check_v4(path, model, ids)
    meta = {"transformers": transformers.__version__, "torch": torch.__version__,
            "finetune": json.dumps(ref.FINETUNE), "B": str(B), "T": str(T)}
    save_file(expected, os.path.join(path, "expected.safetensors"), metadata=meta)
    drift = expected["finetune_drift"].max().item()
    print(f"{name}: loss {out.loss.item():.6f}, finetune {expected['finetune_losses'][0]:.5f} -> "
          f"{expected['finetune_losses'][-1]:.5f} (f32/f64 drift {drift:.1e}), gen {expected['gen_ids'].tolist()}"
          f"{'' if torch.equal(expected['gen_ids'], expected['gen_ids_nocache']) else ' / no cache ' + str(expected['gen_ids_nocache'].tolist())}")


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


def main():
    os.makedirs(OUT, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    names = sys.argv[1:] or list(CASES)
    for name in names:
        make_case(name)


if __name__ == "__main__":
    main()
