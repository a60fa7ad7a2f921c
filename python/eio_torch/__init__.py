"""PyTorch side of eio: load eio model files as `nn.Module`s (ResNet-20, the RGN with a route,
ensembles), read and write eio transfer files, convert PyTorch checkpoints for eio.

    import eio_torch
    net = eio_torch.load("model.safetensors")          # eval mode
    logits = net(x)                                     # x: [N,3,32,32] in [0,1]
    rgn = eio_torch.load("rgn.safetensors")
    logits = rgn(x, route=[0, 1] * 10 + [0])            # or route="random"
"""
from .convert import convert, state_dict_of
from .files import read_safetensors, write_safetensors
from .models import Ensemble, ResNet20, build, load
from .transfer import read_transfer, write_transfer

__all__ = [
    "Ensemble", "ResNet20", "build", "convert", "load", "read_safetensors", "read_transfer",
    "state_dict_of", "write_safetensors", "write_transfer", "probe_input",
]


def probe_input(n):
    """The deterministic input eio's tests use (`tests/util.rs::probe_input`), in [0,1]."""
    import torch
    i = torch.arange(n * 3 * 32 * 32, dtype=torch.float64)
    return ((i * 7919) % 251 / 250.0).float().view(n, 3, 32, 32)
