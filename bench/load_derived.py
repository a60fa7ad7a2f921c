"""Loads an eio plain ResNet-20 file into a PyTorch ResNet-20 with a strict `load_state_dict`
and prints its eval-mode logits on `probe_input(n)` as JSON (used by the interoperability test).

    scripts/python bench/load_derived.py MODEL.safetensors [n]
"""
import json
import sys

import torch

from common import ResNet20, probe_input, read_safetensors

net = ResNet20()
net.load_state_dict(read_safetensors(sys.argv[1]), strict=True)
net.eval()
with torch.no_grad():
    print(json.dumps(net(probe_input(int(sys.argv[2]) if len(sys.argv) > 2 else 2)).tolist()))
