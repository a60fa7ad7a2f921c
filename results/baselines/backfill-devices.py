"""One-off repair, 2026-11-27: the runs of /work/runs/reproduce-cpu that finished before eio
recorded where each epoch ran (git dfeba15) get `devices` in their history.json, read from their
train.log: a run starts on the device its first line names ("on Cpu"); a "resuming gpu/..." line
(a lent GPU's copy of the folder, scripts/gpu-session) moves it to cuda, a "resuming /work/..."
line back to the CPU; an epoch lists every device it ran on since the previous epoch ended.
Thread counts were not logged then, so CPU epochs say "cpu". The file as it was is kept as
history.json.before-devices.

    python3 results/baselines/backfill-devices.py /work/runs/reproduce-cpu baseline rgn-warmup eio eio-finetune
"""
import json, os, re, shutil, sys

root, runs = sys.argv[1], sys.argv[2:]
for run in runs:
    d = os.path.join(root, "runs", run)
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
    print(run, [",".join(e["devices"]) for e in hist])
