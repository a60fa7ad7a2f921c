"""Reference PyTorch pieces shared by bench.py and reference.py: a safetensors reader (no extra
package needed) and a ResNet-20 that runs one path of a released Ensemble-in-One RGN checkpoint."""
import json
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
DTYPES = {"F32": torch.float32, "I64": torch.int64, "F64": torch.float64, "U8": torch.uint8}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = torch.frombuffer(bytearray(data[a:b]), dtype=DTYPES[v["dtype"]]).reshape(v["shape"])
    return out


def official_rgn_forward(sd, x, path):
    """Logits of the released RGN (net.model.*: 19 gated 3x3 conv slots) along `path`."""
    gates = iter(path)

    def slot(name, h, stride):
        g = next(gates)
        p = f"net.model.{name}.candidate_ops.{g}."
        h = F.conv2d(h, sd[p + "0.weight"], stride=stride, padding=1)
        return F.batch_norm(h, sd[p + "1.running_mean"], sd[p + "1.running_var"],
                            sd[p + "1.weight"], sd[p + "1.bias"], False, 0.0, 1e-5)

    h = (x - MEAN.to(x.device)) / STD.to(x.device)
    h = F.relu(slot("conv1", h, 1))
    for stage in range(3):
        for b in range(3):
            pre = f"layer{stage + 1}.{b}"
            stride = 2 if stage > 0 and b == 0 else 1
            out = F.relu(slot(pre + ".conv1", h, stride))
            out = slot(pre + ".conv2", out, 1)
            ds = f"net.model.{pre}.downsample."
            if ds + "0.weight" in sd:
                sc = F.conv2d(h, sd[ds + "0.weight"], stride=stride)
                sc = F.batch_norm(sc, sd[ds + "1.running_mean"], sd[ds + "1.running_var"],
                                  sd[ds + "1.weight"], sd[ds + "1.bias"], False, 0.0, 1e-5)
            else:
                sc = h
            h = F.relu(out + sc)
    h = F.adaptive_avg_pool2d(h, 1).flatten(1)
    return F.linear(h, sd["net.model.fc.weight"], sd["net.model.fc.bias"])


def probe_input(n):
    """A deterministic input batch in [0,1] that needs no data files."""
    i = torch.arange(n * 3 * 32 * 32, dtype=torch.float64)
    return ((i * 7919) % 251 / 250.0).float().view(n, 3, 32, 32)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            layers.append(nn.Sequential(Block(cin, width, stride), Block(width, width, 1), Block(width, width, 1)))
            cin = width
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, 10)
        # Buffers (not in the state dict) so that .to(device) moves them: a CUDA graph capture
        # may not copy from the host.
        self.register_buffer("mean", MEAN.clone(), persistent=False)
        self.register_buffer("std", STD.clone(), persistent=False)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))
