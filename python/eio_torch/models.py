"""ResNet-20, its Random Gated Network (RGN) and ensembles, with the parameter names of eio model
files, so `load_state_dict(strict=True)` takes an eio file as it is.

Names: `conv1`, `bn1`, `layer{1,2,3}.{0,1,2}.{conv1,bn1,conv2,bn2}`, `layer{2,3}.0.shortcut.{0,1}`
(projection shortcuts), `linear`. A gated conv+BN slot of an RGN holds its copies under
`<name>.<i>` (`layer1.0.conv1.1.weight`); with shared convolutions only the BatchNorms are copied.
Ensemble members live under `member{i}.`. Inputs are NCHW in [0,1]; the normalisation of the
file's spec is the first operation; outputs are logits (for an ensemble, the log of the
averaged softmax, as in eio).
"""
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .files import read_safetensors

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2023, 0.1994, 0.2010]
SLOTS = 21
SHORTCUT_SLOTS = (9, 16)


def gated_slots(arch):
    """Which of the 21 conv+BN slots (stem; per block conv1, conv2, then the shortcut where it
    exists) carry gates, as in eio's `ArchConfig::augmented_slots`."""
    copies, augment = arch.get("copies", 1), str(arch.get("augment", "none"))
    if copies < 2 or augment == "none":
        return [False] * SLOTS
    if augment in ("all", "21"):
        return [True] * SLOTS
    if augment in ("conv3x3", "19"):
        return [i not in SHORTCUT_SLOTS for i in range(SLOTS)]
    if augment.startswith("top"):
        k = int(augment[3:])
        return [i < k for i in range(SLOTS)]
    raise ValueError(f"unknown augment '{augment}'")


class _Slot:
    """Builds conv+BN slots in eio's order and hands out gate indices."""

    def __init__(self, arch):
        self.gated = gated_slots(arch)
        self.copies = arch.get("copies", 1)
        self.share = arch.get("share_conv", False)
        self.slot = 0
        self.gates = 0

    def make(self, cin, cout, k, stride):
        gated = self.gated[self.slot]
        self.slot += 1
        n_conv = 1 if not gated or self.share else self.copies
        n_bn = self.copies if gated else 1
        gate = None
        if gated:
            gate, self.gates = self.gates, self.gates + 1

        def conv():
            return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)

        c = conv() if n_conv == 1 else nn.ModuleList([conv() for _ in range(n_conv)])
        b = nn.BatchNorm2d(cout) if n_bn == 1 else nn.ModuleList(
            [nn.BatchNorm2d(cout) for _ in range(n_bn)])
        return c, b, gate


def _run(conv, bn, gate, x, route):
    g = 0 if gate is None else int(route[gate])
    c = conv if isinstance(conv, nn.Conv2d) else conv[g]
    b = bn if isinstance(bn, nn.BatchNorm2d) else bn[g]
    return b(c(x))


class Block(nn.Module):
    def __init__(self, cin, cout, stride, slots, shortcut, act):
        super().__init__()
        self.act = act
        self.conv1, self.bn1, self.g1 = slots.make(cin, cout, 3, stride)
        self.conv2, self.bn2, self.g2 = slots.make(cout, cout, 3, 1)
        self.pad = 0
        self.gs = None
        reshape = stride != 1 or cin != cout
        if reshape and shortcut == "projection":
            c, b, self.gs = slots.make(cin, cout, 1, stride)
            self.shortcut = nn.ModuleList([c, b])
        elif reshape:
            self.pad = (cout - cin) // 2  # option A: subsample, zero-pad channels

    def forward(self, x, route):
        out = self.act(_run(self.conv1, self.bn1, self.g1, x, route))
        out = _run(self.conv2, self.bn2, self.g2, out, route)
        if hasattr(self, "shortcut"):
            sc = _run(self.shortcut[0], self.shortcut[1], self.gs, x, route)
        elif self.pad:
            sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        else:
            sc = x
        return self.act(out + sc)


class ResNet20(nn.Module):
    """ResNet-20 for CIFAR, plain or with Random Gated Blocks, from an eio `arch` dict
    (`copies`, `augment`, `share_conv`, `relu_slope`, `shortcut`, `mean`, `std`; missing keys take
    eio's defaults). `forward(x, route)`: `route` is one gate per gated block (`self.gates` of
    them), `"random"` for a fresh uniform route per call, or None for `self.route` (all zeros
    unless set)."""

    def __init__(self, arch=None, num_classes=10):
        super().__init__()
        arch = dict(arch or {})
        self.arch = arch
        self.copies = arch.get("copies", 1)
        slope = arch.get("relu_slope", 0.0)
        self.act = (lambda x: F.leaky_relu(x, slope)) if slope else F.relu
        shortcut = arch.get("shortcut", "projection")
        if shortcut not in ("projection", "identity"):
            raise ValueError(f"unknown shortcut '{shortcut}'")
        self.register_buffer("mean", torch.tensor(arch.get("mean", CIFAR_MEAN)).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(arch.get("std", CIFAR_STD)).view(1, 3, 1, 1),
                             persistent=False)
        slots = _Slot(arch)
        self.conv1, self.bn1, self.g0 = slots.make(3, 16, 3, 1)
        cin = 16
        for stage, width in enumerate([16, 32, 64]):
            blocks = []
            for i in range(3):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(Block(cin, width, stride, slots, shortcut, self.act))
                cin = width
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)
        self.gates = slots.gates
        self.route = [0] * self.gates

    def random_route(self, generator=None):
        """A uniformly random route (one gate per gated block)."""
        return torch.randint(self.copies, (self.gates,), generator=generator).tolist()

    def forward(self, x, route=None):
        if route is None:
            route = self.route
        elif isinstance(route, str) and route == "random":
            route = self.random_route()
        if len(route) != self.gates:
            raise ValueError(f"route has {len(route)} gates, the network has {self.gates}")
        h = (x - self.mean) / self.std
        h = self.act(_run(self.conv1, self.bn1, self.g0, h, route))
        for layer in (self.layer1, self.layer2, self.layer3):
            for block in layer:
                h = block(h, route)
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.linear(h)


class Ensemble(nn.Module):
    """Members under `member{i}`; logits are the log of the averaged softmax. A route applies to
    every member, as in eio."""

    def __init__(self, members):
        super().__init__()
        self.n = len(members)
        for i, m in enumerate(members):
            self.add_module(f"member{i}", m)

    @property
    def members(self):
        return [getattr(self, f"member{i}") for i in range(self.n)]

    @property
    def gates(self):
        return self.members[0].gates

    def forward(self, x, route=None):
        if isinstance(route, str) and route == "random":
            route = self.members[0].random_route()
        logp = torch.stack([m(x, route).log_softmax(-1) for m in self.members])
        return torch.logsumexp(logp, 0) - math.log(self.n)


def build(spec):
    """An untrained network (or ensemble) for an eio model spec (`{"arch": ..., "members": n}`)."""
    arch, n = spec["arch"], spec.get("members", 1)
    if n == 1:
        return ResNet20(arch)
    return Ensemble([ResNet20(arch) for _ in range(n)])


def load(path, map_location="cpu"):
    """Loads an eio model file (or training checkpoint) in eval mode, with a strict
    `load_state_dict`. Files without eio metadata (foreign state dicts): run `eio import` first."""
    tensors, meta = read_safetensors(path)
    if "eio.model" not in meta:
        raise ValueError(
            f"{path}: no 'eio.model' metadata; convert it with `eio import --input {path} "
            f"--output model.safetensors`")
    spec = json.loads(meta["eio.model"])
    net = build(spec)
    state = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
    net.load_state_dict(state, strict=True)
    net.spec = spec
    return net.to(map_location).eval()
