#!/usr/bin/env python3
"""A tiny chat model for the supervised fine-tuning tests and the docs'
end-to-end example: tests/golden/sft_chat/.

    /work/venv/bin/python tests/golden/make_sft_fixture.py     (current torch + transformers)

Run by hand, never by the tests. It writes a random LlamaForCausalLM (2
layers, hidden 32, 4 heads / 2 kv heads, float32) whose vocabulary is the
ChatML test tokenizer's (tests/golden/templates/chatml, copied beside it), and
expected.safetensors: one conversation rendered with the chat template, its
labels (-100 on every token that is not an assistant reply: what is learned),
the masked loss transformers computes and every parameter's gradient.
    input_ids I32 [1, T]   targets I32 [1, T] (labels shifted left, -100 last)
    loss F32 [1]           grad.<name> F32
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "templates", "chatml")
OUT = os.path.join(HERE, "sft_chat")

os.makedirs(OUT, exist_ok=True)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(SRC, f), os.path.join(OUT, f))
tok = AutoTokenizer.from_pretrained(OUT)
V = len(tok)

torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, attn_implementation="eager")
model = LlamaForCausalLM(cfg).float().eval()
with torch.no_grad():
    for n, p in model.named_parameters():
        if "norm" in n:
            p.add_(0.1 * torch.randn_like(p))
model.save_pretrained(OUT, safe_serialization=True)

conv = [{"role": "system", "content": "be brief"},
        {"role": "user", "content": "the cat sat on"},
        {"role": "assistant", "content": "the mat and ran far away"},
        {"role": "user", "content": "what was there"},
        {"role": "assistant", "content": "a dog in the town"}]
ids = tok.apply_chat_template(conv, tokenize=True, return_dict=False)
if isinstance(ids, dict):
    ids = ids["input_ids"]
# learned: the tokens of the assistant replies (the prefix-rendering rule)
labels = [-100] * len(ids)
for i, m in enumerate(conv):
    if m["role"] != "assistant":
        continue
    before = tok.apply_chat_template(conv[:i], tokenize=False, add_generation_prompt=True)
    upto = tok.apply_chat_template(conv[:i + 1], tokenize=False)
    a = len(tok(before, add_special_tokens=False)["input_ids"])
    b = len(tok(upto, add_special_tokens=False)["input_ids"])
    for j in range(a, b):
        labels[j] = ids[j]
x = torch.tensor([ids])
y = torch.tensor([labels])
out = model(input_ids=x, labels=y)
out.loss.backward()
targets = torch.full_like(y, -100)
targets[:, :-1] = y[:, 1:]
tensors = {"input_ids": x.to(torch.int32), "targets": targets.to(torch.int32),
           "loss": out.loss.detach().reshape(1).float()}
for n, p in model.named_parameters():
    tensors["grad." + n] = p.grad.detach().float().contiguous()
save_file(tensors, os.path.join(OUT, "expected.safetensors"))
print(f"wrote {OUT}: vocab {V}, {len(ids)} tokens, {sum(l != -100 for l in labels)} learned, loss {out.loss.item():.6f}")
