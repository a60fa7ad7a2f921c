"""PyTorch counterpart of `eio bench`: ms per train step (SGD, batch 128), per input-gradient
(PGD) step and per inference batch for ResNet-20, and images/s of a PGD-50 evaluation, on the
same torch install and thread count as eio.

    scripts/python bench/bench.py [--batch-size 128] [--iters 20] [--device cpu|cuda]
        [--memory-format contiguous|channels-last]
"""
import argparse
import time

import torch
import torch.nn.functional as F

from common import ResNet20


def time_ms(iters, f, sync=lambda: None):
    for _ in range(3):
        f()
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        f()
    sync()
    return (time.perf_counter() - t) * 1e3 / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--memory-format", default="contiguous", choices=["contiguous", "channels-last"])
    a = ap.parse_args()
    fmt = torch.channels_last if a.memory_format == "channels-last" else torch.contiguous_format
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    net = ResNet20().to(dev, memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.rand(a.batch_size, 3, 32, 32, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (a.batch_size,), device=dev)

    def train():
        net.train()
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    def grad():
        net.eval()
        xa = x.detach().requires_grad_(True)
        g, = torch.autograd.grad(F.cross_entropy(net(xa), y), xa)
        g.sign()

    def infer():
        net.eval()
        with torch.no_grad():
            net(x).argmax(-1)

    eps, steps = 0.03, 50

    def pgd50():
        net.eval()
        xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            xa.requires_grad_(True)
            g, = torch.autograd.grad(F.cross_entropy(net(xa), y, reduction="sum"), xa)
            xa = torch.min(torch.max(xa.detach() + eps / 5 * g.sign(), x - eps), x + eps).clamp(0, 1)
        with torch.no_grad():
            net(xa).argmax(-1)

    print(f"pytorch {torch.__version__} bench: batch {a.batch_size}, {a.iters} iterations, "
          f"device {dev}, {torch.get_num_threads()} threads, {a.memory_format}")
    print(f"{'model':<24} {'train ms':>12} {'input-grad ms':>16} {'infer ms':>14} {'PGD-50 img/s':>14}")
    t, g, i = (time_ms(a.iters, f, sync) for f in (train, grad, infer))
    p = a.batch_size / (time_ms(max(1, a.iters // 10), pgd50, sync) / 1e3)
    print(f"{'resnet20':<24} {t:>12.1f} {g:>16.1f} {i:>14.1f} {p:>14.1f}")
    if dev.type == "cuda":
        t, g = cuda_graph_rows(net, opt, x, y, a.iters)
        print(f"{'resnet20 (CUDA graph)':<24} {t:>12.1f} {g:>16.1f} {'':>14} {'':>14}")


def cuda_graph_rows(net, opt, x, y, iters):
    """The train step and the input-gradient step captured whole as CUDA graphs and replayed
    (torch.cuda.graph, the 'whole network capture' recipe of the PyTorch CUDA semantics notes):
    what PyTorch costs once kernel launches are gone."""
    sync = torch.cuda.synchronize
    static_x, static_y = x.clone(), y.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream before capture, as the recipe says
        net.train()
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(static_x), static_y).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    train_graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(train_graph):
        F.cross_entropy(net(static_x), static_y).backward()
        opt.step()
    t = time_ms(iters, train_graph.replay, sync)

    net.eval()
    xa = static_x.detach().clone().requires_grad_(True)
    with torch.cuda.stream(side):
        for _ in range(3):
            g, = torch.autograd.grad(F.cross_entropy(net(xa), static_y), xa)
    torch.cuda.current_stream().wait_stream(side)
    grad_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(grad_graph):
        g, = torch.autograd.grad(F.cross_entropy(net(xa), static_y), xa)
        g.sign()
    return t, time_ms(iters, grad_graph.replay, sync)


if __name__ == "__main__":
    main()
