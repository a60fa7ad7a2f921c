"""Where a double-backprop training step spends its time on the CPU, in each memory layout.

One GAL-style step of three ResNet-20s (bench/common.py): each member's cross-entropy and its
input gradient with create_graph, the gradients' pairwise cosine similarities, backward through
all of it to the weights. Prints seconds per step (mean of 3 after one warm-up) and, with
--profile, the PyTorch profiler's top operators. Used for results/bench.md ("Double backprop on
the CPU").

    scripts/python bench/double_backprop.py --layout channels-last --profile
"""
import argparse
import time

import torch
import torch.nn.functional as F

from common import ResNet20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", choices=["contiguous", "channels-last"], default="channels-last")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    models = [ResNet20() for _ in range(3)]
    x = torch.rand(a.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (a.batch_size,))
    if a.layout == "channels-last":
        models = [m.to(memory_format=torch.channels_last) for m in models]
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        xr = x.detach().requires_grad_(True)
        grads, loss = [], 0
        for m in models:
            ce = F.cross_entropy(m(xr), y)
            (g,) = torch.autograd.grad(ce, xr, create_graph=True)
            grads.append(g.flatten(1))
            loss = loss + ce
        pairs = [(i, j) for i in range(3) for j in range(i + 1, 3)]
        cos = torch.stack([F.cosine_similarity(grads[i], grads[j], dim=-1) for i, j in pairs], -1)
        loss = loss + 0.5 * torch.log(cos.exp().sum(-1) + 1e-20).mean()
        for m in models:
            m.zero_grad()
        loss.backward()

    step()
    t = time.time()
    for _ in range(3):
        step()
    print(f"{a.layout}: {(time.time() - t) / 3:.3f} s per step "
          f"(batch {a.batch_size}, {a.threads} thread(s), torch {torch.__version__})")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as p:
            step()
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
