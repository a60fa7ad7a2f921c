"""Converts a PyTorch checkpoint (anything `torch.load` reads: a state dict, a checkpoint dict
holding one, a pickled `nn.Module`, a TorchScript archive) into a safetensors state dict that
`eio import` / `eio eval` read. Optionally records the input normalisation the model expects as
`normalizer.mean` / `normalizer.std`, which eio honours."""
import torch
import torch.nn as nn

from .files import write_safetensors

WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "module", "network", "state")


def _flatten(obj, prefix, out):
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if not prefix and ("optim" in str(k) or "sched" in str(k)):
                continue
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)


def state_dict_of(obj):
    """The weights inside a loaded checkpoint, flattened to `name -> tensor` (same rules as eio's
    reader: a dict with tensors is the state dict, else the first usual wrapper key, else every
    nested dict, optimiser and scheduler entries skipped)."""
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for w in WRAPPERS:
            if isinstance(obj.get(w), (dict, nn.Module)):
                return state_dict_of(obj[w])
    out = {}
    _flatten(obj, "", out)
    return out


def load_any(path, unsafe=False):
    """`torch.load` with weights only, or any pickle when `unsafe` (runs code from the file:
    only for files you trust); TorchScript archives through `torch.jit.load`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report what torch said
        try:
            return torch.jit.load(path, map_location="cpu")
        except Exception:  # noqa: BLE001
            pass
        if not unsafe:
            raise SystemExit(
                f"error: {path}: torch.load(weights_only=True) failed ({str(e).splitlines()[0]}); "
                "if you trust the file, rerun with --unsafe") from None
        return torch.load(path, map_location="cpu", weights_only=False)


def convert(src, dst, mean=None, std=None, unsafe=False):
    """Writes the state dict of checkpoint `src` to safetensors file `dst`; returns its keys."""
    sd = {k: v.detach().cpu().contiguous() for k, v in state_dict_of(load_any(src, unsafe)).items()}
    if not sd:
        raise SystemExit(f"error: {src}: no tensors found")
    if (mean is None) != (std is None):
        raise SystemExit("error: give both --mean and --std")
    if mean is not None:
        sd["normalizer.mean"] = torch.tensor(mean, dtype=torch.float32)
        sd["normalizer.std"] = torch.tensor(std, dtype=torch.float32)
    write_safetensors(dst, sd, {"eio.converted_from": str(src)})
    return sorted(sd)
