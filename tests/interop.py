"""Test support for tests/interop.rs: independent PyTorch definitions of the ResNet-20 layouts
eio reads, saved with torch.save, and their logits on the probe input (tests/util.rs); and one
training step of each method as its published code takes it, on an eio model file.

    scripts/python tests/interop.py akamaster DIR   # option-A ResNet-20, akamaster checkpoint
    scripts/python tests/interop.py dverge DIR      # DVERGE-layout ensemble with normalizers
    scripts/python tests/interop.py step MODEL --method trs|gal|adp|dverge|adv|eio [options]

Each prints one JSON object on stdout.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


def probe_input(n):
    i = torch.arange(n * 3 * 32 * 32, dtype=torch.float64)
    return ((i * 7919) % 251 / 250.0).float().view(n, 3, 32, 32)


def randomise_bn(model, gen):
    """Non-trivial BatchNorm statistics and affine parameters, so eval-mode BN is exercised."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            m.weight.data.copy_(1 + 0.1 * torch.randn(n, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=gen))


# --- The two ResNet-20 layouts: akamaster/pytorch_resnet_cifar10 (resnet.py, option-A
# shortcuts, normalisation outside the model) and DVERGE (models/resnet.py: projection
# shortcuts, normalizer buffers). They differ only in the shortcut and the normalizer. ----------

class LambdaLayer(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


def option_a(cin, planes, stride):
    """akamaster's parameter-free shortcut: subsample and zero-pad the channels."""
    return LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)))


def projection(cin, planes, stride):
    """DVERGE's 1x1 convolution and BatchNorm shortcut."""
    return nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))


class Normalizer(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x):
        return (x - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)


class Block(nn.Module):
    def __init__(self, cin, planes, stride, shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = shortcut(cin, planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, shortcut, normalizer=None):
        super().__init__()
        if normalizer is not None:
            self.normalizer = normalizer  # registered first, as in DVERGE's state dicts
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin, layers = 16, []
        for planes, stride in [(16, 1), (32, 2), (64, 2)]:
            blocks = []
            for s in [stride, 1, 1]:
                blocks.append(Block(cin, planes, s, shortcut))
                cin = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        if hasattr(self, "normalizer"):
            x = self.normalizer(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def ResNetA():
    return ResNet20(option_a)


def ResNetB(mean, std):
    return ResNet20(projection, Normalizer(mean, std))


def akamaster(out_dir):
    """An option-A ResNet-20 saved as akamaster's trainer does (`module.` prefix from
    DataParallel, under 'state_dict'), in the zip and the legacy torch.save formats; the model
    expects ImageNet normalisation applied outside it, as akamaster's data loader does."""
    torch.manual_seed(20)
    gen = torch.Generator().manual_seed(21)
    net = ResNetA()
    randomise_bn(net, gen)
    net.eval()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    sd = {"module." + k: v for k, v in net.state_dict().items()}
    ckpt = {"epoch": 3, "state_dict": sd, "best_prec1": 91.25}
    zip_path = os.path.join(out_dir, "akamaster.th")
    legacy_path = os.path.join(out_dir, "akamaster_legacy.th")
    torch.save(ckpt, zip_path)
    torch.save(ckpt, legacy_path, _use_new_zipfile_serialization=False)
    x = probe_input(2)
    with torch.no_grad():
        logits = net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    return {"zip": zip_path, "legacy": legacy_path, "mean": mean, "std": std,
            "logits": logits.tolist()}


def dverge(out_dir):
    """A DVERGE-layout ensemble of two ResNet-20s with normalizer buffers (mean/std 0.5) saved as
    {'model_0': sd, 'model_1': sd}; the same single model inside a training checkpoint with an
    optimiser state and an argparse.Namespace; and an ensemble whose members disagree."""
    import argparse as ap
    torch.manual_seed(30)
    gen = torch.Generator().manual_seed(31)
    half = [0.5, 0.5, 0.5]
    nets = [ResNetB(half, half) for _ in range(2)]
    for n in nets:
        randomise_bn(n, gen)
        n.eval()
    # Storage layouts torch.save keeps: a non-contiguous (transposed) weight and two parameters
    # that are slices of one storage.
    nets[0].linear.weight.data = nets[0].linear.weight.data.t().contiguous().t()
    shared = torch.cat([nets[1].bn1.weight.data, nets[1].bn1.bias.data])
    nets[1].bn1.weight.data, nets[1].bn1.bias.data = shared[:16], shared[16:]
    ens_path = os.path.join(out_dir, "dverge_ensemble.pt")
    torch.save({f"model_{i}": n.state_dict() for i, n in enumerate(nets)}, ens_path)
    x = probe_input(2)
    with torch.no_grad():
        logp = torch.stack([n(x).log_softmax(-1) for n in nets])
        ens = torch.logsumexp(logp, 0) - torch.log(torch.tensor(2.0))
    opt = torch.optim.SGD(nets[0].parameters(), lr=0.1, momentum=0.9)
    nets[0](probe_input(2)).sum().backward()
    opt.step()  # momentum buffers in the optimiser state; the weights changed
    nets[0].zero_grad()
    ckpt_path = os.path.join(out_dir, "dverge_checkpoint.pth.tar")
    torch.save({"epoch": 7, "net": nets[0].state_dict(), "optimizer": opt.state_dict(),
                "args": ap.Namespace(lr=0.1, arch="ResNet20")}, ckpt_path)
    odd = ResNetB([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])
    mixed_path = os.path.join(out_dir, "dverge_mixed.pt")
    torch.save({"model_0": nets[1].state_dict(), "model_1": odd.state_dict()}, mixed_path)
    with torch.no_grad():
        single = nets[0](x)
    return {"ensemble": ens_path, "checkpoint": ckpt_path, "mixed": mixed_path,
            "ensemble_logits": ens.tolist(), "checkpoint_logits": single.tolist()}


# --- One training step of TRS, GAL and ADP as their published code takes it, in float64, on an
# eio model file and the probe batch: TRS from AI-secure/Transferability-Reduced-Smooth-Ensemble
# (train/Empirical/trainer.py: PGD and TRS_Trainer, at its default `--plus-adv` settings), GAL
# and ADP from zjysteven/DVERGE (train/train_gal.py, train/train_adp.py). Written from a reading
# of that code: what matters here is what it does, including TRS's PGD input gradient that is
# never zeroed between steps, TRS's extra train-mode forward for its accuracy and GAL's second
# forward for its cross-entropy (all of which move the BatchNorm running statistics). --------

N_STEP = 4


def step_batch():
    x = probe_input(N_STEP).double()
    y = torch.tensor([(3 * i) % 10 for i in range(N_STEP)])
    return x, y


def step_noise(n, scale, offset):
    """The fixed stand-in for a step's random draw (tests/interop.rs builds the same)."""
    i = torch.arange(n * 3 * 32 * 32, dtype=torch.float64)
    return ((i * 104729) % 997 / 997.0 + offset).view(n, 3, 32, 32) * scale


def magnitude(g):
    return (g ** 2).sum(1).mean() * 2


def trs_loss(models, x, y, eps, accumulate, start=None, steps=6, coeff=2.0, lamda=2.0, scale=5.0):
    """TRS_Trainer's loss for one batch; `start`: the vicinity's uniform draw in [0, 1) (default
    the fixed stand-in). Also timed by bench/trs_step.py."""
    x.requires_grad_(True)
    ce, grads = 0, []
    for m in models:
        loss = F.cross_entropy(m(x), y)
        ce = ce + loss
        grads.append(torch.autograd.grad(loss, x, create_graph=True)[0].flatten(1))
    pairs = [(a, b) for a in range(3) for b in range(a + 1, 3)]
    cos = sum(F.cosine_similarity(grads[a], grads[b]).abs().mean() for a, b in pairs) / 3

    # The vicinity PGD on the second half of the batch, from a uniform start.
    h = x.shape[0] // 2
    far, yfar = x[h:].detach(), y[h:]
    start = step_noise(h, 1.0, 0.0) if start is None else start
    adv = torch.clamp(far + (start * 2 - 1) * eps, 0, 1).requires_grad_(True)
    for _ in range(steps):
        if not accumulate:
            adv.grad = None
        m_sum = 0
        for m in models:
            g = torch.autograd.grad(F.cross_entropy(m(adv), yfar), adv, create_graph=True)[0]
            m_sum = m_sum + magnitude(g.flatten(1))
        (m_sum / 3).backward()
        with torch.no_grad():
            moved = adv.data + eps / 3 * adv.grad.sign()
            adv.data = torch.clamp(torch.min(torch.max(moved, far - eps), far + eps), 0, 1)
    for m in models:
        m.zero_grad(set_to_none=True)   # the code's optimizer.zero_grad() before its backward
    xv = torch.cat([x[:h].detach(), adv.detach()]).requires_grad_(True)
    smooth = 0
    for m in models:
        g = torch.autograd.grad(F.cross_entropy(m(xv), y), xv, create_graph=True)[0]
        smooth = smooth + magnitude(g.flatten(1))
    smooth = smooth / 3
    with torch.no_grad():
        for m in models:
            m(x.detach())               # the code's accuracy forward (train mode)
    return ce + scale * (coeff * cos + lamda * smooth), {"ce": ce, "cos": cos, "smooth": smooth}


def adv_start():
    """The +AdvT terms' PGD start (tests/interop.rs passes the same)."""
    return step_noise(N_STEP, 1.0, 0.0).roll(1, 0)


def gal_loss(models, x, y, adv, lam=0.5):
    """train_gal.py's batch; with `--plus-adv`, PGD 8/255 against the ensemble first."""
    x = (x + step_noise(N_STEP, 0.09, -0.5) * (torch.arange(N_STEP) < N_STEP // 2)
         .double().view(-1, 1, 1, 1)).requires_grad_(True)
    if adv:
        xa = linf_pgd(ensemble_logits(models), x.detach(), y, 8 / 255, 2 / 255, 10, adv_start())
    ce, grads, adv_loss = 0, [], 0
    for m in models:
        loss = F.cross_entropy(m(x), y)
        grads.append(torch.autograd.grad(loss, x, create_graph=True)[0].flatten(1))
        ce = ce + F.cross_entropy(m(x.clone().detach()), y)
        if adv:
            adv_loss = adv_loss + F.cross_entropy(m(xa), y)
    cos = torch.stack([F.cosine_similarity(grads[a], grads[b], dim=-1)
                       for a in range(3) for b in range(a + 1, 3)], dim=-1)
    coh = torch.log(cos.exp().sum(dim=-1) + 1e-20).mean()
    terms = {"ce": ce, "coherence": coh}
    if adv:
        terms["adv"] = adv_loss
    return ce / 3 + lam * coh + adv_loss / 3, terms


def adp_loss(models, x, y, adv, alpha=2.0, beta=0.5, det_offset=1e-6):
    """train_adp.py's batch; with `--plus-adv`, PGD 8/255 against the ensemble first."""
    if adv:
        xa = linf_pgd(ensemble_logits(models), x, y, 8 / 255, 2 / 255, 10, adv_start())
    onehot = F.one_hot(y, 10).double()
    ce, probs, rest, adv_loss = 0, 0, [], 0
    for m in models:
        out = m(x)
        ce = ce + F.cross_entropy(out, y)
        p = F.softmax(out, dim=-1)
        rest.append(torch.masked_select(p, onehot == 0).reshape(-1, 9))
        probs = probs + p
        if adv:
            adv_loss = adv_loss + F.cross_entropy(m(xa), y)
    probs = probs / 3
    entropy = torch.sum(-probs * torch.log(probs + 1e-20), dim=-1).mean()
    r = torch.stack(rest, dim=1)
    r = r / torch.norm(r, p=2, dim=-1, keepdim=True)
    log_det = torch.logdet(r @ r.permute(0, 2, 1) + det_offset * torch.eye(3).unsqueeze(0)).mean()
    terms = {"ce": ce, "entropy": entropy, "log_det": log_det}
    if adv:
        terms["adv"] = adv_loss
    return ce - alpha * entropy - beta * log_det + adv_loss, terms


def features(m, x, layer, route=None, before_relu=True):
    """Features at `layer` (1..20) along `route`, numbered as `get_features` of the DVERGE and
    EIO codes (models/resnet.py, resnet.py): 1 the stem's BatchNorm (before its ReLU whatever
    `before_relu` says), then two per block (after its first BatchNorm, after the shortcut's
    sum), 20 the logits; of an eio_torch ResNet20."""
    from eio_torch.models import _run

    route = route or [0] * m.gates
    act = (lambda t: t) if before_relu else m.act
    h = _run(m.conv1, m.bn1, m.g0, (x - m.mean) / m.std, route)
    if layer == 1:
        return h
    h, k = m.act(h), 2
    for stage in (m.layer1, m.layer2, m.layer3):
        for b in stage:
            out = _run(b.conv1, b.bn1, b.g1, h, route)
            if layer == k:
                return act(out)
            out = _run(b.conv2, b.bn2, b.g2, m.act(out), route)
            sc = _run(b.shortcut[0], b.shortcut[1], b.gs, h, route) if hasattr(b, "shortcut") else h
            if layer == k + 1:
                return act(out + sc)
            h, k = m.act(out + sc), k + 2
    return m.linear(F.adaptive_avg_pool2d(h, 1).flatten(1))


def linf_pgd(f, x, y, eps, alpha, steps, u):
    """DVERGE's `Linf_PGD` (distillation.py) with its uniform start given as U[0,1) `u`."""
    adv = torch.clamp(x + (u * 2 - 1) * eps, 0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        g = torch.autograd.grad(F.cross_entropy(f(adv), y), adv)[0]
        with torch.no_grad():
            adv = torch.clamp(torch.min(torch.max(adv + alpha * g.sign(), x - eps), x + eps), 0, 1)
    return adv.detach()


def ensemble_logits(models):
    """DVERGE's `Ensemble` (models/ensemble.py): the log of the averaged softmax."""
    if len(models) == 1:
        return models[0]
    return lambda x: torch.log(torch.clamp(sum(F.softmax(m(x), -1) for m in models) / len(models),
                                           min=1e-40))


def distill(m, xs, xt, layer, eps=0.07, alpha=0.007, steps=10):
    """DVERGE's `Linf_distillation`: no random start, momentum 1 on the L1-normalised
    gradient, features before the ReLU, the target's features recomputed at every step."""
    x, g = xs.clone(), torch.zeros_like(xs)
    for _ in range(steps):
        x.requires_grad_(True)
        out = features(m, x, layer)
        target = features(m, xt, layer).detach()
        grad = torch.autograd.grad(F.mse_loss(out, target), x)[0]
        with torch.no_grad():
            g = g + grad / grad.flatten(1).norm(1, dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
            x = torch.clamp(torch.min(torch.max(x - alpha * g.sign(), xs - eps), xs + eps), 0, 1)
    return x.detach()


def dverge_step(models, x, y, layer, adv):
    """DVERGE_Trainer.train's batch (train/train_dverge.py): distil (and, with `--plus-adv`,
    attack) every member, then member i trains on the others' distilled batches (coefficient
    1), plus its own adversarial batch. Back-propagates each member's loss; returns the mean
    cross-entropy per (member, distilled batch) pair, as eio reports it."""
    xt = step_noise(N_STEP, 1.0, 0.0)
    distilled, adversarial = [], []
    for i, m in enumerate(models):
        distilled.append(distill(m, x, xt, layer))
        if adv:
            u = step_noise(N_STEP, 1.0, 0.0).roll(i + 1, 0)
            adversarial.append(linf_pgd(m, x, y, 8 / 255, 2 / 255, 10, u))
    total = 0
    for i, m in enumerate(models):
        loss = sum(F.cross_entropy(m(d), y) for j, d in enumerate(distilled) if j != i)
        total = total + loss.detach()
        if adv:
            loss = loss + F.cross_entropy(m(adversarial[i]), y)
        loss.backward()
    n = len(models)
    return total / (n * (n - 1)), {}


def adv_step(models, x, y):
    """Adversarial_Trainer.train's batch (train/train_adv.py): PGD 8/255 against the ensemble,
    each member trained on it; returns the members' mean cross-entropy."""
    xa = linf_pgd(ensemble_logits(models), x, y, 8 / 255, 2 / 255, 10, step_noise(N_STEP, 1.0, 0.0))
    total = 0
    for m in models:
        loss = F.cross_entropy(m(xa), y)
        loss.backward()
        total = total + loss.detach()
    return total / len(models), {}


def eio_step(net, x, y, layer, routes, starts):
    """The batch of `EnsembleInOneRunManager.train` (cai-y13/Ensemble-in-One, rgn_manager.py)
    on the given paths: `linf_distillation` on each path (eval mode, uniform start from
    `starts["distill{i}"]`, 10 sign steps of 0.007 within 0.07, features after the ReLU), with
    `--adv_train` `gen_adv_iFGSM` on each path (train mode, 8/255, 2/255, 10 steps, start
    `starts["adv{i}"]`), then path i trains on the others' distilled batches (plus its own
    adversarial one), its loss divided by the number of paths. Returns the mean cross-entropy
    per (path, distilled batch) pair, as eio reports it."""
    xt = step_noise(N_STEP, 1.0, 0.0)
    eps, alpha = 0.07, 0.007
    distilled = []
    for i, r in enumerate(routes):
        net.eval()
        xd = torch.clamp(x + (starts[f"distill{i}"] * 2 - 1) * eps, 0, 1)
        for _ in range(10):
            xd.requires_grad_(True)
            out = features(net, xd, layer, r, before_relu=False)
            target = features(net, xt, layer, r, before_relu=False).detach()
            grad = torch.autograd.grad(F.mse_loss(out, target), xd)[0]
            with torch.no_grad():
                xd = torch.clamp(torch.min(torch.max(xd - alpha * grad.sign(), x - eps), x + eps),
                                 0, 1)
        net.train()
        distilled.append(xd.detach())
    adversarial = [linf_pgd(lambda z, r=r: net(z, r), x, y, 8 / 255, 2 / 255, 10, starts[f"adv{i}"])
                   for i, r in enumerate(routes) if f"adv{i}" in starts]
    p, total = len(routes), 0
    for i, r in enumerate(routes):
        loss = sum(F.cross_entropy(net(d, r), y) for j, d in enumerate(distilled) if j != i)
        total = total + loss.detach()
        if adversarial:
            loss = loss + F.cross_entropy(net(adversarial[i], r), y)
        (loss / p).backward()
    return total / (p * (p - 1)), {}


def method_step(method, model_path, eps, accumulate, layer, adv, routes=None, starts=None):
    import eio_torch

    net = eio_torch.load(model_path).double().train()
    models = net.members if hasattr(net, "members") else [net]
    x, y = step_batch()
    if method == "eio":
        from eio_torch.files import read_safetensors

        routes = [[int(g) for g in r.split(",")] for r in routes.split(";")]
        loss, terms = eio_step(net, x, y, layer, routes, read_safetensors(starts)[0])
    elif method == "dverge":
        loss, terms = dverge_step(models, x, y, layer, adv)
    elif method == "adv":
        loss, terms = adv_step(models, x, y)
    else:
        loss, terms = {"trs": lambda: trs_loss(models, x, y, eps, accumulate),
                       "gal": lambda: gal_loss(models, x, y, adv),
                       "adp": lambda: adp_loss(models, x, y, adv)}[method]()
        loss.backward()
    out = {"terms": {k: v.item() for k, v in terms.items()}}
    out["loss"] = loss.item()
    out["grads"] = {k: v.grad.flatten()[:16].tolist() for k, v in net.named_parameters()
                    if v.grad is not None}  # (an RGN's copies off every path have none)
    out["stats"] = {k: v.flatten()[:16].tolist() for k, v in net.named_buffers() if "running" in k}
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["akamaster", "dverge", "step"])
    p.add_argument("path", help="akamaster, dverge: the output folder; step: the model file")
    p.add_argument("--method", choices=["trs", "gal", "adp", "dverge", "adv", "eio"],
                   help="step: the method whose published loop takes the step")
    p.add_argument("--eps", type=float, default=0.125, help="TRS: the vicinity radius")
    p.add_argument("--no-accumulate", action="store_true", help="TRS: textbook vicinity PGD")
    p.add_argument("--layer", type=int, default=9, help="DVERGE, EIO: the distillation layer")
    p.add_argument("--adv", action="store_true", help="DVERGE, GAL, ADP: with the adversarial term")
    p.add_argument("--routes", help="EIO: the paths, gates comma-separated, paths by ';'")
    p.add_argument("--starts", help="EIO: safetensors file of the random starts")
    a = p.parse_args()
    if a.what == "step":
        json.dump(method_step(a.method, a.path, a.eps, not a.no_accumulate, a.layer, a.adv,
                              a.routes, a.starts), sys.stdout)
        return
    json.dump({"akamaster": akamaster, "dverge": dverge}[a.what](a.path), sys.stdout)


if __name__ == "__main__":
    main()
