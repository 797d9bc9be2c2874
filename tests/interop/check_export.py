"""Loads fsdp-lua's exports with transformers and compares logits.

Run by `make test-interop` with each transformers it has: 4.49 (Debian's
/usr/bin/python3, torch 1.13) and the current 5.x (a venv). It reads, from
$FSDP_EXPORT_TEST_DIR:
  - ft_hf, gpt_hf: a fine-tuned Llama pretrained from scratch and minGPT as
    GPT-2, written by tests/lua/test_export.lua, with the logits fsdp-lua
    computed for them (*.expected.safetensors);
  - fixtures/manifest.json: every fixture of tests/golden/hf and hf5
    exported in the layout it came in and in transformers' 4.x and 5.x
    layouts (tests/interop/export_fixtures.lua), with fsdp-lua's logits.
Each export must load without a warning about its config (transformers'
logger and Python warnings are captured) and give fsdp-lua's logits within
1e-5 relative (max |diff| / max |logit|). transformers 4.49 does not read
the 5.x layout (rope_parameters) at all, and computes some rope types
otherwise than 5.x (expected_449 below; 4.49 also warns about yarn's
original_max_position_embeddings, a key it does not know), and windows
every layer of a Qwen2 by sliding_window where transformers 5 follows
layer_types: those exports are loaded, their difference reported and
required to be there, not counted as agreement. 4.49 has no Qwen3: those
exports are listed as such and not counted.
Exits 1 on any failure. Never a run-time dependency of fsdp-lua.
"""
import json
import logging
import os
import sys
import warnings

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

MAJOR = int(transformers.__version__.split(".")[0])
TOL = 1e-5

# what transformers 4.49 runs when a config.json has no rope_theta
THETA_449 = {"LlamaForCausalLM": 10000.0, "MistralForCausalLM": 10000.0, "MixtralForCausalLM": 1e6,
             "Qwen2ForCausalLM": 10000.0, "Gemma2ForCausalLM": 10000.0}


def expected_449(entry):
    """why transformers 4.49 computes other logits for an export than 5.x
    (and fsdp-lua) does, or None"""
    rope, layout = entry.get("rope_type"), entry["layout"]
    if rope is None:
        return None
    if layout == "5" and (rope != "default" or entry.get("rope_theta") != THETA_449[entry["arch"]]):
        return "4.49 does not read rope_parameters (the 5.x layout): it runs plain RoPE with its default theta"
    if rope == "yarn":
        return "4.49's yarn takes max_position_embeddings for original_max_position_embeddings"
    if rope == "longrope":
        return "4.49's longrope reads original_max_position_embeddings at the top level and never uses the long factors"
    windows = entry.get("windows") or []
    if entry["arch"] == "Qwen2ForCausalLM" and len(set(windows)) > 1:
        return "4.49's eager attention windows every layer by sliding_window (it has no layer_types)"
    return None


class Captured(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load(path):
    handler = Captured()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    logger.removeHandler(handler)
    messages = handler.messages + [str(w.message) for w in caught
                                   if not issubclass(w.category, (ResourceWarning, DeprecationWarning))]
    model.eval()
    return model, messages


def fixture_warnings(messages, entry):
    """warnings about the fixture itself, not about what fsdp-lua wrote:
    the 4.49 GPT-2 fixture's bos/eos ids (GPT-2's 50256) lie outside its
    vocabulary of 100"""
    keep = []
    for m in messages:
        if entry.get("fixture") == "hf/gpt2" and ("bos_token_id" in m or "eos_token_id" in m):
            continue
        if "Sliding Window Attention is enabled but not implemented for `eager`" in m:
            continue  # 4.49 says so of every Qwen2 with a window, and windows (its mask does)
        keep.append(m)
    return keep


def logits_rel(model, expected):
    with torch.no_grad():
        logits = model(expected["input_ids"], use_cache=False).logits
    want = expected["logits"]
    return ((logits.double() - want.double()).abs().max() / want.double().abs().max()).item()


def main():
    root = os.environ["FSDP_EXPORT_TEST_DIR"]
    entries = [{"name": n, "dir": os.path.join(root, n), "expected": os.path.join(root, n + ".expected.safetensors"),
                "fixture": n, "layout": "any"} for n in ("ft_hf", "gpt_hf")]
    manifest = os.path.join(root, "fixtures", "manifest.json")
    entries += json.load(open(manifest))
    passed = failed = differ = 0
    print(f"transformers {transformers.__version__}, torch {torch.__version__}: {len(entries)} exports")
    absent = 0
    for e in entries:
        if e.get("arch") and not hasattr(transformers, e["arch"]):
            absent += 1  # transformers 4.49 has no Qwen3
            print(f"--   {e['name']}: transformers {transformers.__version__} has no {e['arch']} (not counted)")
            continue
        try:
            model, messages = load(e["dir"])
        except Exception as exc:  # noqa: BLE001 - reported as a failure
            failed += 1
            print(f"FAIL {e['name']}: transformers cannot load it: {type(exc).__name__}: {exc}")
            continue
        messages = fixture_warnings(messages, e)
        rel = logits_rel(model, load_file(e["expected"]))
        why = expected_449(e) if MAJOR < 5 and e["layout"] != "any" else None
        if why:
            ok = rel > TOL
            differ += ok
            failed += not ok
            print(f"ok   {e['name']}: {type(model).__name__} loaded; logits differ by {rel:.2e} as expected "
                  f"({why}){'; it warned: ' + str(messages) if messages else ''}" if ok else
                  f"FAIL {e['name']}: expected 4.49 to differ ({why}) but the logits agree ({rel:.2e})")
        elif messages:
            failed += 1
            print(f"FAIL {e['name']}: warnings while loading: {messages}")
        elif rel <= TOL:
            passed += 1
            print(f"ok   {e['name']}: {type(model).__name__} (layout {e['layout']}) loaded, logits max rel diff "
                  f"vs fsdp-lua {rel:.2e}")
        else:
            failed += 1
            print(f"FAIL {e['name']}: logits differ from fsdp-lua's by {rel:.2e} relative (layout {e['layout']})")
    print(f"transformers {transformers.__version__}: {passed} passed (same logits), {differ} differ as expected, "
          f"{absent} of architectures it does not have, {failed} failed")
    if MAJOR >= 5 and absent:
        failed += 1
        print(f"FAIL transformers {transformers.__version__} should have every architecture exported")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
