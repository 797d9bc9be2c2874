#!/usr/bin/env python3
"""Reference safetensors fixture for tests/c/test_safetensors.c.

    python3 tests/golden/make_safetensors_fixture.py
        writes tests/golden/safetensors/reference.safetensors with the real
        `safetensors` library (torch-free API) and reference.json beside it:
        the expected names in file order, dtypes, shapes, crc32 of the bytes
        and the values as lists.

    python3 tests/golden/make_safetensors_fixture.py --check FILE
        checks a file written by `build/tests/test_safetensors --write FILE`
        with the reference reader.

Needs `pip install safetensors numpy`; used only to make and check fixtures.
"""
import json
import os
import struct
import sys
import zlib

import numpy as np
import safetensors
from safetensors import TensorSpec

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "safetensors")

# dtype string in the file -> (numpy dtype, name TensorSpec accepts)
DTYPES = {
    "F32": (np.float32, "float32"),
    "F16": (np.float16, "float16"),
    "F64": (np.float64, "float64"),
    "I64": (np.int64, "int64"),
    "I32": (np.int32, "int32"),
    "U16": (np.uint16, "uint16"),
    "U8": (np.uint8, "uint8"),
}


def bf16_bits(values):
    """bf16 as uint16 bits; the values must be exact in bf16 (no rounding)."""
    f = np.asarray(values, dtype=np.float32)
    bits = f.view(np.uint32)
    assert np.all(bits & 0xFFFF == 0), "value not exact in bf16"
    return (bits >> 16).astype(np.uint16)


def fixture_tensors():
    """name -> (dtype string, shape, values as float/int lists, raw array)"""
    out = {}

    def add(name, dtype, shape, values):
        if dtype == "BF16":
            raw = bf16_bits(values).reshape(shape)
            vals = [float(v) for v in np.asarray(values, dtype=np.float32).ravel()]
        else:
            raw = np.asarray(values, dtype=DTYPES[dtype][0]).reshape(shape)
            vals = raw.ravel().tolist()
        out[name] = (dtype, list(shape), vals, raw.copy(order="C"))  # keeps 0-d as 0-d

    add("model.embed.weight", "F32", (3, 4), (np.arange(12) * 0.25 - 1.5).tolist())
    add("model.norm.weight", "F16", (5,), [0.5, -1.25, 3.0, 65504.0, 0.0009765625])
    add("model.head.weight", "BF16", (2, 2), [1.0, -2.5, 0.15625, 2.0**100])
    add("positions", "I64", (2, 3), [0, 1, -7, 2**40, -(2**62), 123456789])
    add("mask", "U8", (7,), [0, 1, 255, 3, 128, 7, 9])
    add("step", "F32", (), [3.5])
    add("empty", "F32", (0, 4), [])
    add("double", "F64", (2,), [1.0 / 3.0, -2.0])
    return out


def spec(dtype, raw):
    name = "bfloat16" if dtype == "BF16" else DTYPES[dtype][1]
    return TensorSpec(dtype=name, shape=list(raw.shape), data_ptr=raw.ctypes.data, data_len=raw.nbytes)


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return n, json.loads(f.read(n))


def make():
    os.makedirs(OUT_DIR, exist_ok=True)
    tensors = fixture_tensors()
    metadata = {"format": "pt", "producer": "make_safetensors_fixture.py"}
    path = os.path.join(OUT_DIR, "reference.safetensors")
    specs = {name: spec(t[0], t[3]) for name, t in tensors.items()}
    safetensors.serialize_file(specs, path, metadata=metadata)

    # the reference library orders tensors itself; record the file's order
    _, header = read_header(path)
    names = [k for k in header if k != "__metadata__"]
    loaded = safetensors.deserialize(open(path, "rb").read())
    data = {name: bytes(t["data"]) for name, t in loaded}
    entries = []
    for name in names:
        dtype, shape, vals, raw = tensors[name]
        assert data[name] == raw.tobytes(), name
        entries.append({"name": name, "dtype": dtype, "shape": shape,
                        "crc32": zlib.crc32(data[name]), "values": vals})
    os.chmod(path, 0o644)
    with open(os.path.join(OUT_DIR, "reference.json"), "w") as f:
        f.write('{"file": "reference.safetensors",\n "metadata": %s,\n "tensors": [\n  ' % json.dumps(metadata))
        f.write(",\n  ".join(json.dumps(e) for e in entries))
        f.write("\n ]\n}\n")
    print("wrote", path, "with", len(entries), "tensors")


def check(path):
    """the file test_safetensors --write makes: one [2, 3] tensor per dtype
    holding i - 2 (i for unsigned types), a scalar, an empty tensor, metadata"""
    n, header = read_header(path)
    assert (8 + n) % 8 == 0, "data buffer not 8-byte aligned"
    loaded = dict(safetensors.deserialize(open(path, "rb").read()))  # the strict reference parser
    want = {}
    for dtype in ["F32", "BF16", "F16", "I32", "I64", "U16", "U8"]:
        vals = [i if dtype.startswith("U") else i - 2 for i in range(6)]
        raw = bf16_bits(vals) if dtype == "BF16" else np.asarray(vals, dtype=DTYPES[dtype][0])
        want["t_" + dtype.lower()] = (dtype, [2, 3], raw.tobytes())
    want["scalar"] = ("F32", [], np.float32(3.5).tobytes())
    want["empty"] = ("I32", [0], b"")
    assert sorted(loaded) == sorted(want), (sorted(loaded), sorted(want))
    for name, (dtype, shape, raw) in want.items():
        t = loaded[name]
        assert t["dtype"] == dtype, (name, t["dtype"])
        assert list(t["shape"]) == shape, (name, t["shape"])
        assert bytes(t["data"]) == raw, name
    # and through the numpy front end, for the dtypes numpy has
    from safetensors import safe_open
    with safe_open(path, framework="numpy") as f:
        assert f.metadata() == {"writer": "fsdp-lua", "purpose": "cross-check"}, f.metadata()
        for name, (dtype, shape, raw) in want.items():
            if dtype != "BF16":
                a = f.get_tensor(name)
                assert list(a.shape) == shape and a.tobytes() == raw, name
    print("ok:", path, "reads with safetensors", safetensors.__version__, "-", len(want), "tensors, header",
          json.dumps(header)[:200], "...")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
    elif len(sys.argv) == 1:
        make()
    else:
        sys.exit(__doc__)
