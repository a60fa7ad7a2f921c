"""Prints PyTorch logits of the released EIO RGN checkpoint on a deterministic input, for two
paths: the golden values of tests/foundation.rs (`official_import_matches_pytorch`).

    scripts/python bench/reference.py ../shared/models/eio-official-rgn.safetensors
"""
import sys

import torch

from common import official_rgn_forward, probe_input, read_safetensors

sd = read_safetensors(sys.argv[1])
x = probe_input(2)
for path in ([0] * 19, [i % 2 for i in range(19)]):
    with torch.no_grad():
        logits = official_rgn_forward(sd, x, path)
    print(",".join(map(str, path)))
    for row in logits.tolist():
        print("[" + ", ".join(f"{v:.6f}" for v in row) + "],")
