"""Makes the tiny torch.save fixtures of tests/interop.rs (torch 2.13; run from this folder):

    scripts/python tests/data/make_pth_fixtures.py tests/data

tiny_zip.pt / tiny_legacy.pt: a checkpoint dict in the zip and the legacy (pre-1.6) formats,
{'epoch': 3, 'state_dict': OrderedDict(...), 'optimizer': {...}, 'args': Namespace(lr=0.1)}
with a float matrix, its transpose (non-contiguous), int64, float16, bool and 0-dim tensors and
two slices of one storage. tiny_module.pt: a whole pickled nn.Sequential(Linear(3, 2),
BatchNorm1d(2)) (torch.save(model), not its state dict).
"""
import argparse
import os
import sys
from collections import OrderedDict

import torch
import torch.nn as nn

out = sys.argv[1] if len(sys.argv) > 1 else "."
a = torch.arange(6, dtype=torch.float32).view(2, 3)
shared = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
sd = OrderedDict([
    ("w", a), ("wt", a.t()), ("idx", torch.tensor([1, -2, 3])),
    ("h", torch.tensor([0.5, -1.5], dtype=torch.float16)), ("b", torch.tensor([True, False])),
    ("scalar", torch.tensor(7.0)), ("s0", shared[:2]), ("s1", shared[2:]),
])
ckpt = {"epoch": 3, "state_dict": sd,
        "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}}, "param_groups": []},
        "args": argparse.Namespace(lr=0.1)}
torch.save(ckpt, os.path.join(out, "tiny_zip.pt"))
torch.save(ckpt, os.path.join(out, "tiny_legacy.pt"), _use_new_zipfile_serialization=False)
torch.manual_seed(0)
torch.save(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), os.path.join(out, "tiny_module.pt"))
