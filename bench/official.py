"""Times ONE training iteration of the *official* public code, on the CPU (or CUDA), at batch 128:

  * Ensemble-in-One, github.com/cai-y13/Ensemble-in-One: builds the RGN as `train.py`'s `__main__`
    does (`train.parser` defaults, `models.ImagenetRunConfig`, `resnet.resnet(depth=20, aug_num=2)`,
    `train.model_wrapper`, `ensemble_in_one.EnsembleInOneNets`, `rgn_manager.EnsembleInOneRunManager`)
    and runs `EnsembleInOneRunManager.train` for one batch: a random layer in 1..20, p = min(3, 2^layer)
    sampled paths, `distillation.linf_distillation` (eps 0.07, 10 steps of 0.007) on each, every path
    trained on the other paths' distilled batches, one SGD step.
  * DVERGE, github.com/zjysteven/DVERGE: `train/train_dverge.py`'s `get_args` with the flags of
    `scripts/training.sh` (3 ResNet-20 members, distill eps 0.07, alpha 0.007, 10 steps),
    `utils.get_models/get_optimizers/get_schedulers`, and `DVERGE_Trainer.train` for one batch
    (layer drawn at the start of the call, as at each epoch's start there; `distillation.Linf_distillation`
    per member, each member trained on the others' distilled batches, one optimiser per member).

Their code is imported from exported checkouts of the repositories (nothing of it lives here):

    git --git-dir=<fetched mirror> archive HEAD | tar -x -C /tmp/official-eio   (same for DVERGE)
    scripts/python bench/official.py --eio-repo /tmp/official-eio --dverge-repo /tmp/official-dverge \
        [--iters 3] [--threads 2] [--device cpu|cuda] [--json out.json]

Runtime adaptations, no edits to their files (on CUDA only the loader, the accuracy fix and the
stubs apply): `.cuda()` returns self; `RunManager` (which demands
CUDA and wraps the net in DataParallel on cuda:0) is built with CUDA reported present and a
DataParallel that stays on the CPU; their CIFAR `DistillationLoader` is replaced by one random
(source, labels, target, labels) batch, after which the loop is stopped before its end-of-epoch
validation/checkpointing; EIO's `utils.accuracy` is rerun from its own source with `.view(-1)` ->
`.reshape(-1)` (newer torch refuses that view). Packages that are not installed (numpy, tqdm,
advertorch, torchvision, tensorboard) are stubbed only while their modules are imported, with just
what one iteration uses. Both codebases see the same random layer sequence (seed 0).
"""
import argparse
import contextlib
import importlib
import inspect
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
import types
from unittest import mock

import torch
import torch._dynamo  # noqa: F401  (imported lazily by optimisers; must see the real numpy, or none)
import torch.nn as nn

BATCH = 128
ON_CPU = True  # --device cpu: their .cuda() calls become no-ops (set in main)


def stay_on_cpu():
    torch.Tensor.cuda = lambda self, *a, **k: self  # their code calls .cuda() on tensors and models
    nn.Module.cuda = lambda self, *a, **k: self


class Done(Exception):
    """Raised by the one-batch loader after its batch: stops their epoch loop before validation."""


def one_batch_loader(batch):
    class OneBatch:  # stands in for their DistillationLoader(train_loader, train_loader)
        def __init__(self, seed, target):
            pass

        def __len__(self):
            return 1

        def __iter__(self):
            yield batch
            raise Done
    return OneBatch


class NormalizeByChannelMeanStd(nn.Module):  # advertorch.utils' layer (advertorch 0.2.2)
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]


def module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


def tqdm(iterable=None, *a, **k):
    return iterable


tqdm.write = print
STUBS = {  # used only for the packages that fail to import
    "numpy": module("numpy", power=pow),  # rgn_manager: np.power(aug_num, layer)
    "tqdm": module("tqdm", tqdm=tqdm),
    "advertorch": module("advertorch"),
    "advertorch.utils": module("advertorch.utils", NormalizeByChannelMeanStd=NormalizeByChannelMeanStd),
    "torchvision": module("torchvision", datasets=None, transforms=None),
    "torch.utils.tensorboard": module("torch.utils.tensorboard", SummaryWriter=None),
}


def importable(name):
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


@contextlib.contextmanager
def official_code(paths):
    """Their modules importable from `paths`, missing packages stubbed; both are forgotten on exit,
    so the two repositories' same-named modules (utils, models, distillation) do not clash."""
    stubs = {k: v for k, v in STUBS.items() if not importable(k)}
    before = set(sys.modules)
    sys.path[:0] = paths
    sys.modules.update(stubs)
    try:
        yield sorted(stubs)
    finally:
        del sys.path[:len(paths)]
        for k in set(sys.modules) - before:
            f = getattr(sys.modules[k], "__file__", None) or ""
            if k in stubs or any(f.startswith(p) for p in paths):
                del sys.modules[k]


class CPUDataParallel(nn.DataParallel):
    """DataParallel as it is without CUDA (forward = module's), ignoring RunManager's .to('cuda:0')."""

    def __init__(self, module):
        nn.Module.__init__(self)
        self.module, self.device_ids = module, []

    def to(self, *a, **k):
        return self


def recorded(fn, work):
    """`fn` (their distillation) logging each call's layer/eps/alpha/steps into `work`."""
    sig = inspect.signature(fn)

    def wrapper(*a, **k):
        b = sig.bind(*a, **k).arguments
        work["distill"].append((b.get("distill_layer", b.get("layer")), b["eps"], b["alpha"], b["steps"]))
        return fn(*a, **k)
    return wrapper


def with_fix(fn, old, new):
    """Their `fn` recompiled from its own source with `old` replaced by `new`."""
    ns = dict(fn.__globals__)
    exec(inspect.getsource(fn).replace(old, new), ns)
    return ns[fn.__name__]


def count_calls(stems, optimizers, work):
    """Counts forwards through the stem conv(s) (one per forward/get_features) and optimiser steps."""
    def counter(key):
        def hook(*a):
            work[key] += 1
        return hook
    for m in stems:
        m.register_forward_pre_hook(counter("stem_forwards"))
    for o in optimizers:
        o.register_step_post_hook(counter("optimizer_steps"))


def random_batch():
    return (torch.rand(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,)),
            torch.rand(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,)))


def build_eio(work, tmp):
    import models, resnet, rgn_manager, run_manager, train
    from ensemble_in_one import EnsembleInOneNets
    args = train.parser.parse_args([])  # their defaults: p=3 (distill_batch), n=2 (aug_num), ...
    args.optim_param = {"momentum": args.momentum, "nesterov": not args.no_nesterov}
    run_config = models.ImagenetRunConfig(**args.__dict__)
    mean = torch.tensor([0.4914, 0.4822, 0.4465], dtype=torch.float32)
    std = torch.tensor([0.2023, 0.1994, 0.2010], dtype=torch.float32)
    normalizer = train.NormalizeByChannelMeanStd(mean=mean, std=std)
    model = train.model_wrapper(resnet.resnet(depth=20, num_classes=10, aug_num=args.aug_num), normalizer)
    super_net = EnsembleInOneNets(model)
    if ON_CPU:
        with mock.patch.object(torch.cuda, "is_available", lambda: True), \
                mock.patch.object(torch.nn, "DataParallel", CPUDataParallel):
            rgn = rgn_manager.EnsembleInOneRunManager(tmp, super_net, run_config)
        rgn.run_manager.device = torch.device("cpu")
    else:
        rgn = rgn_manager.EnsembleInOneRunManager(tmp, super_net, run_config)
    rgn.run_manager.init_lr = args.init_lr
    run_config.data_provider = types.SimpleNamespace(train=None)  # no CIFAR provider
    run_manager.DistillationLoader = one_batch_loader(random_batch())
    rgn_manager.linf_distillation = recorded(rgn_manager.linf_distillation, work)
    # utils.accuracy's correct[:k].view(-1) fails on a non-contiguous tensor in torch >= 1.5
    rgn_manager.accuracy = with_fix(rgn_manager.accuracy, ".view(-1)", ".reshape(-1)")
    count_calls([model.model.conv1], [rgn.run_manager.optimizer], work)
    return lambda: rgn.train(args)


def build_dverge(work, tmp):
    import train_dverge, utils
    with mock.patch.object(sys, "argv", ["train_dverge.py", "--model-num", "3",  # scripts/training.sh
                                         "--distill-eps", "0.07", "--distill-alpha", "0.007"]):
        args = train_dverge.get_args()
    # main() would start from a baseline checkpoint (--start-from baseline); random init here
    members = utils.get_models(args, train=True, as_ensemble=False, model_file=None)
    optimizers = utils.get_optimizers(args, members)
    schedulers = utils.get_schedulers(args, optimizers)
    trainer = train_dverge.DVERGE_Trainer(members, optimizers, schedulers, None, None, None, tmp, **vars(args))
    utils.DistillationLoader = one_batch_loader(random_batch())
    train_dverge.Linf_distillation = recorded(train_dverge.Linf_distillation, work)
    count_calls([m.model.conv1 for m in members], optimizers, work)
    return lambda: trainer.train(1)


def sync():
    if not ON_CPU:
        torch.cuda.synchronize()


def time_iterations(name, build, paths, iters):
    work = {}
    torch.manual_seed(0)
    random.seed(0)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        with official_code(paths) as stubbed:
            step = build(work, tmp)
        times, per_iter = [], []
        for i in range(1 + iters):  # first one is the warm-up
            work.update(distill=[], stem_forwards=0, optimizer_steps=0)
            sync()
            t = time.perf_counter()
            try:
                step()
            except Done:
                pass
            sync()
            times.append(time.perf_counter() - t)
            per_iter.append(dict(work))
    return {"codebase": name, "median_s": statistics.median(times[1:]), "times_s": times[1:],
            "warmup_s": times[0], "work_per_iteration": per_iter[1:], "stubbed_modules": stubbed}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eio-repo", help="exported checkout of cai-y13/Ensemble-in-One")
    ap.add_argument("--dverge-repo", help="exported checkout of zjysteven/DVERGE")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json")
    a = ap.parse_args()
    global ON_CPU
    ON_CPU = a.device == "cpu"
    if ON_CPU:
        stay_on_cpu()
    torch.set_num_threads(a.threads)
    runs = []
    if a.eio_repo:
        runs.append(("official-eio", build_eio, [os.path.abspath(a.eio_repo)]))
    if a.dverge_repo:
        root = os.path.abspath(a.dverge_repo)
        runs.append(("official-dverge", build_dverge, [root, os.path.join(root, "train")]))
    results = []
    for name, build, paths in runs:
        r = time_iterations(name, build, paths, a.iters)
        results.append(r)
        w = r["work_per_iteration"][-1]
        layers = sorted({d[0] for d in w["distill"]})
        eps, alpha, steps = w["distill"][0][1:]
        what = "p=%d, n=2" % len(w["distill"]) if name == "official-eio" else "%d members" % len(w["distill"])
        print(f"{name} iteration: {r['median_s']:.2f} s (median of {a.iters}; {what}, {steps} distill steps, "
              f"batch {BATCH}, {a.device}, {a.threads} threads)")
        print(f"  last iteration: {len(w['distill'])} distillations at layer {layers} (eps {eps}, "
              f"{steps} steps of {alpha}), {w['stem_forwards']} stem forwards, "
              f"{w['optimizer_steps']} optimiser steps; stubbed: {', '.join(r['stubbed_modules']) or 'none'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"batch": BATCH, "device": a.device, "threads": a.threads, "iters": a.iters,
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
