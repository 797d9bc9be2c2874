"""Loads fsdp-lua's exports with transformers and compares logits.

Run by `make test-interop` after tests/lua/test_export.lua wrote, into
$FSDP_EXPORT_TEST_DIR, the exported directories (ft_hf: a fine-tuned Llama,
gpt_hf: minGPT as GPT-2) and the logits fsdp-lua computed for them
(*.expected.safetensors). Exits 1 on any mismatch. Never a run-time
dependency of fsdp-lua: this is the outside check that transformers agrees.
"""
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

root = os.environ["FSDP_EXPORT_TEST_DIR"]
failed = 0
for name in ["ft_hf", "gpt_hf"]:
    model = AutoModelForCausalLM.from_pretrained(os.path.join(root, name), attn_implementation="eager")
    model.eval()
    expected = load_file(os.path.join(root, name + ".expected.safetensors"))
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits
    want = expected["logits"]
    rel = ((logits - want).abs().max() / want.abs().max()).item()
    ok = rel <= 1e-4
    failed += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {type(model).__name__} loaded by transformers; "
          f"logits max rel diff vs fsdp-lua {rel:.2e}")
print(f"{2 - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
