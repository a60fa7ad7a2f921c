"""Is batching an ensemble's members worth it on this machine? Times N ResNet-20 forward+backward
passes at one batch, one member after the other and as one vmapped (grouped) network
(`torch.func.stack_module_state` + `torch.vmap`, what "model ensembling" in the PyTorch docs
does). Channels-last, as eio computes on the CPU.

    scripts/python bench/members_vmap.py [--members 3] [--batch-size 128] [--device cpu|cuda]
"""
import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state

from common import ResNet20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    cl = torch.channels_last
    nets = [ResNet20().to(dev, memory_format=cl) for _ in range(a.members)]
    x = torch.rand(a.batch_size, 3, 32, 32, device=dev).contiguous(memory_format=cl)
    y = torch.randint(0, 10, (a.batch_size,), device=dev)

    def one_by_one():
        for n in nets:
            n.zero_grad(set_to_none=True)
            F.cross_entropy(n(x), y).backward()

    params, bufs = stack_module_state(nets)
    base = copy.deepcopy(nets[0]).to("meta")

    def vmapped():
        for p in params.values():
            p.grad = None
        call = lambda p, b, xx: functional_call(base, (p, b), (xx,))
        out = torch.vmap(call, in_dims=(0, 0, None), randomness="different")(params, bufs, x)
        F.cross_entropy(out.reshape(-1, 10), y.repeat(a.members)).backward()

    for f in (one_by_one, vmapped, one_by_one, vmapped):
        for _ in range(2):
            f()
        ts = []
        for _ in range(a.iters):
            sync()
            t = time.perf_counter()
            f()
            sync()
            ts.append(time.perf_counter() - t)
        print(f"{f.__name__:<12} {sorted(ts)[len(ts) // 2] * 1e3:8.1f} ms (median of {a.iters}, "
              f"{a.members} members, batch {a.batch_size}, {dev}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
