"""Loads fsdp-lua's LoRA exports with peft and transformers and compares logits.

Run by `make test-interop` with the venv's torch, transformers 5 and peft
(never a run-time dependency of fsdp-lua). tests/lua/test_lora_peft.lua,
run with FSDP_EXPORT_TEST_DIR set, trains a PEFT adapter of each family
(Llama, Mistral with rslora, OPT, GPT-2's Conv1D) for 10 steps, exports it
with `--adapter` and `--merge`, and writes into $FSDP_EXPORT_TEST_DIR/lora:
manifest.json, <case>.adapter (adapter_config.json +
adapter_model.safetensors), <case>.merged (a Hugging Face model) and
<case>.expected.safetensors (fsdp-lua's logits of the trained model).
  - the adapter, loaded by peft.PeftModel.from_pretrained on the base
    model, must give fsdp-lua's logits within 1e-5 relative
    (max |diff| / max |logit|), with no weight left unloaded;
  - the merged model, loaded by AutoModelForCausalLM.from_pretrained,
    likewise.
Exits 1 on any failure.
"""
import json
import os
import sys
import warnings

import peft
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

TOL = 1e-5


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def main():
    root = os.path.join(os.environ["FSDP_EXPORT_TEST_DIR"], "lora")
    manifest = json.load(open(os.path.join(root, "manifest.json")))
    print(f"peft {peft.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
    failures = 0
    if len(manifest) < 4:
        print(f"FAIL: the manifest lists {len(manifest)} cases, want 4")
        failures += 1
    for e in manifest:
        ex = load_file(e["expected"])
        ids, want = ex["input_ids"].long(), ex["logits"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            base = AutoModelForCausalLM.from_pretrained(e["base"], attn_implementation="eager").float()
            model = peft.PeftModel.from_pretrained(base, e["adapter"])
        model.eval()
        loaded = [str(w.message) for w in caught if "missing" in str(w.message).lower()
                  or "unexpected" in str(w.message).lower()]
        with torch.no_grad():
            got = model(input_ids=ids, use_cache=False).logits.float()
        cfg = json.load(open(os.path.join(e["adapter"], "adapter_config.json")))
        n_lora = sum(1 for n, _ in model.named_parameters() if "lora_" in n)
        a = rel(got, want)
        ok = a <= TOL and not loaded and n_lora > 0
        merged = AutoModelForCausalLM.from_pretrained(e["merged"], attn_implementation="eager").float()
        merged.eval()
        with torch.no_grad():
            mgot = merged(input_ids=ids, use_cache=False).logits.float()
        m = rel(mgot, want)
        ok = ok and m <= TOL
        print(f"{'ok  ' if ok else 'FAIL'} {e['name']:8s} r {cfg['r']} alpha {cfg['lora_alpha']} "
              f"targets {','.join(sorted(cfg['target_modules']))}: PeftModel {a:.1e}, merged {m:.1e}"
              + (f" (warnings: {loaded})" if loaded else ""))
        failures += 0 if ok else 1
    print(f"{len(manifest) - failures} of {len(manifest)} LoRA exports agree with fsdp-lua")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
