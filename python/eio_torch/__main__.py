"""Command line: `python -m eio_torch convert IN OUT [--mean a,b,c --std a,b,c] [--unsafe]`,
`python -m eio_torch logits MODEL [--route 0,1,..|random] [--n N]` (JSON logits on the probe
input), `python -m eio_torch info MODEL`."""
import argparse
import json
import sys

import torch


def _triple(s):
    v = [float(x) for x in s.split(",")]
    if len(v) != 3:
        raise argparse.ArgumentTypeError("expected three numbers a,b,c")
    return v


def main(argv=None):
    p = argparse.ArgumentParser(prog="eio_torch", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="torch.save / TorchScript checkpoint -> safetensors")
    c.add_argument("input")
    c.add_argument("output")
    c.add_argument("--mean", type=_triple, help="input normalisation the model expects")
    c.add_argument("--std", type=_triple)
    c.add_argument("--unsafe", action="store_true",
                   help="allow arbitrary pickles (runs code from the file)")
    lg = sub.add_parser("logits", help="JSON logits of an eio model file on the probe input")
    lg.add_argument("model")
    lg.add_argument("--route", default=None, help="0,1,... or random (RGNs)")
    lg.add_argument("--n", type=int, default=2)
    i = sub.add_parser("info", help="the model spec of an eio model file")
    i.add_argument("model")
    a = p.parse_args(argv)

    from . import convert, load, probe_input
    if a.cmd == "convert":
        keys = convert(a.input, a.output, a.mean, a.std, a.unsafe)
        print(f"wrote {a.output}: {len(keys)} tensors")
    elif a.cmd == "logits":
        net = load(a.model)
        route = None
        if a.route == "random":
            route = "random"
        elif a.route:
            route = [int(g) for g in a.route.split(",")]
        with torch.no_grad():
            out = net(probe_input(a.n), route)
        json.dump(out.tolist(), sys.stdout)
        print()
    elif a.cmd == "info":
        net = load(a.model)
        print(json.dumps({"spec": net.spec, "gates": net.gates}))


if __name__ == "__main__":
    main()
