#!/usr/bin/env python3
"""LoRA adapters made by PEFT on the tiny transformers 5 models of
tests/golden/hf5 and what transformers + PEFT compute with them, for
tests/lua/test_lora_peft.lua (the parity of `--adapter DIR` loading and of
LoRA fine-tuning with PEFT).

    /work/venv/bin/python tests/golden/make_lora_fixtures.py

(torch, transformers 5, peft and safetensors from PyPI.) Run by hand, never
by the tests. For each case writes tests/golden/lora/<case>/:
    adapter_config.json, adapter_model.safetensors   PeftModel.save_pretrained
        of get_peft_model(base, LoraConfig(...)) with lora_B set to seeded
        NON-zero values (PEFT's own init makes B zero, which would make the
        logits parity trivial)
    expected.safetensors:
        input_ids I32 [B, T], targets I32 [B, T] (next-token targets, -100 ignored)
        logits    F32 [B, T, V]   of the adapted model (no dropout)
        losses    F32 [STEPS]     loss before each of STEPS AdamW steps on
                                  the adapter alone (constant lr, ADAMW below)
        final.<PEFT name>         the adapter tensors after those steps
"""
import json
import os
import shutil
import sys

import peft
import torch
import transformers
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "lora")
B, T = 2, 13
STEPS = 10
ADAMW = dict(lr=5e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

# case -> (base model under hf5/, LoraConfig arguments)
CASES = {
    "llama": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    # rank-stabilised scaling alpha / sqrt(r) and the whole MLP
    "mistral": ("mistral", dict(r=4, lora_alpha=6, use_rslora=True,
                                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"])),
    # the attention projections (with biases) and the first MLP layer
    "opt": ("opt", dict(r=2, lora_alpha=5, target_modules=["q_proj", "v_proj", "fc1"])),
    # Conv1D layers stored [in, out]: PEFT wants fan_in_fan_out
    "gpt2": ("gpt2", dict(r=4, lora_alpha=16, fan_in_fan_out=True, target_modules=["c_attn", "c_fc"])),
}


def make_batch(V, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = ids.clone()
    labels[0, 3:5] = -100
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    return ids, labels, targets


def adapter_state(model):
    """the adapter tensors under the names save_pretrained writes"""
    sd = peft.get_peft_model_state_dict(model)
    return {k: v.detach().float().contiguous().clone() for k, v in sd.items()}


def make_case(name):
    base_name, lora_kw = CASES[name]
    base_dir = os.path.join(HERE, "hf5", base_name)
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager").float()
    base.name_or_path = "tests/golden/hf5/" + base_name
    cfg = peft.LoraConfig(lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **lora_kw)
    torch.manual_seed(7000 + sorted(CASES).index(name))
    model = peft.get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(8000 + sorted(CASES).index(name))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    model.eval()  # no dropout anywhere (LoRA's is 0 too)

    path = os.path.join(OUT, name)
    if os.path.isdir(path):
        shutil.rmtree(path)
    model.save_pretrained(path)
    readme = os.path.join(path, "README.md")
    if os.path.exists(readme):
        os.remove(readme)

    V = base.config.vocab_size
    ids, labels, targets = make_batch(V, 11)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits.float().contiguous()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(trainable, **ADAMW)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        out = model(input_ids=ids, labels=labels, use_cache=False)
        out.loss.backward()
        losses.append(out.loss.item())
        opt.step()
    expected = {"input_ids": ids.to(torch.int32), "targets": targets.to(torch.int32), "logits": logits,
                "losses": torch.tensor(losses, dtype=torch.float32)}
    for k, v in adapter_state(model).items():
        expected["final." + k] = v
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "peft": peft.__version__,
            "adamw": json.dumps(ADAMW), "steps": str(STEPS), "base": base_dir[len(HERE) + 1:]}
    save_file(expected, os.path.join(path, "expected.safetensors"), metadata=meta)

    # the saved adapter loads back to the same logits
    again = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager").float(), path)
    again.eval()
    with torch.no_grad():
        back = again(input_ids=ids, use_cache=False).logits
    assert torch.equal(back, logits), f"{name}: the saved adapter loads to other logits"
    print(f"{name}: {len(adapter_state(again))} adapter tensors, loss {losses[0]:.6f} -> {losses[-1]:.6f}")


def main():
    os.makedirs(OUT, exist_ok=True)
    print(f"peft {peft.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
    for name in sys.argv[1:] or list(CASES):
        make_case(name)


if __name__ == "__main__":
    main()
