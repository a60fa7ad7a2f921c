"""safetensors files without the `safetensors` package: an 8-byte little-endian header length, a
JSON header (`{name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}`), then the raw
little-endian tensor data."""
import ctypes
import json
import struct

import torch

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}


def read_safetensors(path):
    """Returns `(tensors, metadata)`: a dict of CPU tensors and the `__metadata__` dict."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        n = struct.unpack("<Q", head)[0]
        if n > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None) or {}
    out = {}
    for name, v in header.items():
        a, b = v["data_offsets"]
        dtype = DTYPES[v["dtype"]]
        if b == a:
            out[name] = torch.empty(v["shape"], dtype=dtype)
        else:
            out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=dtype).reshape(v["shape"])
    return out, meta


def _bytes(t):
    t = t.detach().to("cpu").contiguous()
    n = t.numel() * t.element_size()
    return ctypes.string_at(t.data_ptr(), n) if n else b""


def write_safetensors(path, tensors, metadata=None):
    """Writes `tensors` (name -> tensor) and `metadata` (str -> str) to `path`."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in NAMES:
            raise ValueError(f"tensor '{name}' has unsupported dtype {t.dtype}")
        b = _bytes(t)
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
