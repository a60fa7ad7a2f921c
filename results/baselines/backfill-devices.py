"""One-off repair, 2026-11-27: runs of /work/runs/reproduce-cpu begun before eio recorded where
each epoch ran (git dfeba15) get those devices, so that the cost table's time per epoch is never
a CPU/GPU mix. The files as they were are kept beside them with the suffix .before-devices (moved to
/work/runs/before-devices/ afterwards, out of what scripts/gpu-session packs).

Finished runs (history.json), from their train.log: a run starts on the device its first line
names ("on Cpu"); a "resuming gpu/..." line (a lent GPU's copy of the folder, scripts/gpu-session)
moves it to cuda, a "resuming /work/..." line back to the CPU; an epoch lists every device it ran
on since the previous epoch ended. Thread counts were not logged then: CPU epochs say "cpu".

    python3 results/baselines/backfill-devices.py /work/runs/reproduce-cpu baseline rgn-warmup eio eio-finetune

Runs begun on a lent GPU and to be continued here (`--gpu-begun`; their train.log has no resume
line: every epoch so far ran on the GPU): the run state in checkpoint.safetensors (metadata
"eio.run") gets "cuda" for its finished epochs and for the epoch in progress, to which eio adds
the CPU when it resumes.

    python3 results/baselines/backfill-devices.py /work/runs/reproduce-cpu --gpu-begun adp adv gal trs dverge-advt
"""
import json, os, re, shutil, struct, sys


def from_log(d):
    hist_path = os.path.join(d, "history.json")
    hist = json.load(open(hist_path))
    if any(e.get("devices") for e in hist):
        sys.exit(f"{hist_path}: already has devices")
    device, since, epochs = None, [], {}
    for line in open(os.path.join(d, "train.log")):
        if line.startswith("eio ") and " on " in line:
            device = "cuda" if line.rstrip().endswith("Cuda(0)") else "cpu"
            since = [device]
        elif line.startswith("resuming "):
            device = "cuda" if line.split()[1].startswith("gpu/") else "cpu"
            if device not in since:
                since.append(device)
        elif m := re.match(r"epoch (\d+)/\d+ lr", line):
            epochs[int(m.group(1))] = since
            since = [device]
    for e in hist:
        e["devices"] = epochs[e["epoch"]]
    shutil.copy(hist_path, hist_path + ".before-devices")
    tmp = hist_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(hist, f, indent=2)
    os.replace(tmp, hist_path)
    print(d, [",".join(e["devices"]) for e in hist])


def gpu_begun(d):
    log = open(os.path.join(d, "train.log")).read()
    if "resuming " in log or not log.startswith("eio ") or "on Cuda(0)" not in log.splitlines()[0]:
        sys.exit(f"{d}: not a run begun on the GPU and never resumed")
    path = os.path.join(d, "checkpoint.safetensors")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    state = json.loads(header["__metadata__"]["eio.run"])
    if state.get("partial_devices") or any(e.get("devices") for e in state["history"]):
        sys.exit(f"{path}: already has devices")
    for e in state["history"]:
        e["devices"] = ["cuda"]
    if state["step"] > 0:
        state["partial_devices"] = ["cuda"]
    header["__metadata__"]["eio.run"] = json.dumps(state)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    shutil.copy(path, path + ".before-devices")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
    os.replace(tmp, path)
    print(path, f"{len(state['history'])} epochs and step {state['step']} of the next: cuda")


root, args = sys.argv[1], sys.argv[2:]
if args and args[0] == "--gpu-begun":
    for run in args[1:]:
        gpu_begun(os.path.join(root, "runs", run))
else:
    for run in args:
        from_log(os.path.join(root, "runs", run))
