"""Seconds per TRS training step in PyTorch eager: the loss of the published TRS_Trainer
(AI-secure/Transferability-Reduced-Smooth-Ensemble, train/Empirical/trainer.py), as
tests/interop.py restates it and checks eio's step against it, on three ResNet-20s at fp32,
batch 128, then Adam (lr 1e-3, wd 1e-4, eps 1e-7). The counterpart of the `trs` row of
`eio bench --methods`; TRS is the costliest baseline of issue 8 on the CPU, so this says whether
eio's step or the method is what costs. Prints each step's seconds (the first warms up).

    scripts/python bench/trs_step.py [--iters 3] [--threads 1] [--layout contiguous]
"""
import argparse
import os
import sys
import time

import torch

from common import ResNet20

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from interop import trs_loss  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--layout", choices=["contiguous", "channels-last"], default="contiguous")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if a.layout == "channels-last" else torch.contiguous_format
    models = [ResNet20().train().to(memory_format=fmt) for _ in range(3)]
    params = [p for m in models for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4, eps=1e-7)
    x = torch.rand(a.batch_size, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (a.batch_size,))
    times = []
    for _ in range(a.iters):
        t = time.perf_counter()
        start = torch.rand(a.batch_size // 2, 3, 32, 32)
        # eps 0.1 (init eps, the first epoch's vicinity radius); the code accumulates the
        # vicinity PGD's gradients.
        loss, _ = trs_loss(models, x.clone(), y, 0.1, True, start=start)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    print(f"pytorch {torch.__version__} TRS step, batch {a.batch_size}, {a.threads} thread(s), "
          f"{a.layout}: " + ", ".join(f"{t:.2f}" for t in times) + " s")


if __name__ == "__main__":
    main()
