"""eio transfer files: adversarial examples made on a surrogate, evaluated by
`eio attack transfer-eval`. One safetensors file per (surrogate, eps):

| tensor | shape, dtype | content |
|---|---|---|
| `images` | `[N,3,32,32]` uint8 | the clean images |
| `labels` | `[N]` int64 | true labels |
| `index` | `[N]` int64 | index of each image in the source split |
| `adv.<attack>.<loss>.<restart>` | `[N,3,32,32]` float32 in [0,1] | one adversarial version |

Metadata `eio.transfer` is JSON: `{"surrogate": str, "eps": float, "seed": int, "images": N,
"versions": [{"key": "adv.<attack>.<loss>.<restart>", "attack": str, "loss": "ce" | "cw" |
"cw:<kappa>" | "dlr", "restart": int, "config": {"kind": "fgsm" | "pgd" | "apgd", ...eio attack
settings, missing ones take eio's defaults...}, "surrogate_fooled": float (optional)}]}`.
`eio attack transfer-eval` counts an image robust at an eps when the target classifies it and
every version of every file at that eps correctly; all files must hold the same images, labels
and index.
"""
import json

import torch

from .files import read_safetensors, write_safetensors


def read_transfer(path):
    """Returns `(images, labels, index, versions, meta)`: images as float in [0,1], versions as
    a dict key -> float tensor, meta the parsed `eio.transfer` JSON."""
    tensors, meta = read_safetensors(path)
    info = json.loads(meta["eio.transfer"])
    images = tensors["images"].float() / 255.0
    versions = {v["key"]: tensors[v["key"]] for v in info["versions"]}
    return images, tensors["labels"], tensors["index"], versions, info


def write_transfer(path, images, labels, index, versions, surrogate, eps, seed=0):
    """Writes a transfer file eio reads.

    `images`: `[N,3,32,32]` float in [0,1] (stored as uint8, rounded) or uint8; `labels`, `index`:
    `[N]` int; `versions`: a list of dicts with `adv` (`[N,3,32,32]` float in [0,1]), `attack`
    (a short name without dots, e.g. "pgd"), `loss` ("ce", "cw", "cw:<kappa>" or "dlr"),
    optionally `restart` (default 0), `config` (eio attack settings, default
    `{"kind": "pgd", "eps": eps}`) and `surrogate_fooled`.
    """
    if images.dtype != torch.uint8:
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    n = images.shape[0]
    if tuple(images.shape) != (n, 3, 32, 32):
        raise ValueError(f"images must be [N,3,32,32], got {tuple(images.shape)}")
    tensors = {"images": images, "labels": torch.as_tensor(labels).long(),
               "index": torch.as_tensor(index).long()}
    meta_versions = []
    for v in versions:
        restart = int(v.get("restart", 0))
        key = f"adv.{v['attack']}.{v['loss']}.{restart}"
        adv = v["adv"].float()
        if tuple(adv.shape) != (n, 3, 32, 32):
            raise ValueError(f"{key}: expected [N,3,32,32], got {tuple(adv.shape)}")
        tensors[key] = adv
        entry = {"key": key, "attack": v["attack"], "loss": v["loss"], "restart": restart,
                 "config": v.get("config", {"kind": "pgd", "eps": eps})}
        if "surrogate_fooled" in v:
            entry["surrogate_fooled"] = float(v["surrogate_fooled"])
        meta_versions.append(entry)
    info = {"surrogate": surrogate, "eps": float(eps), "seed": int(seed), "images": n,
            "versions": meta_versions}
    write_safetensors(path, tensors, {"eio.transfer": json.dumps(info)})
