#!/usr/bin/env bash
# TRS and the baseline ensemble of results/baselines with their BatchNorm running statistics
# re-estimated by `eio recalibrate` (2026-11-28, this 2-core machine, one thread per job).
# Models: /work/runs/reproduce-cpu/runs/{trs,baseline}/model.safetensors of the baselines run.
# eio at git d1a4d71 (the recalibrated files the evaluations used were written by a build of the
# same code just before a refactor of its batching; d1a4d71 writes them bit for bit at
# --threads 1, checked with cmp; the white-box code is that of every other row).
set -euo pipefail
R=/work/runs/reproduce-cpu/runs
D=../shared/data/cifar10-jpeg
wb() { eio attack whitebox --data $D --first-per-class 100 --eps 0.01,0.02,0.03 --steps 50 --restarts 5 --seed 1 --threads 1 --device cpu "$@"; }

# Default: training images cropped and flipped as in training (seed 0), all 50,000, batches of 128.
eio recalibrate --threads 1 --model $R/trs/model.safetensors --output trs-recal.safetensors
eio recalibrate --threads 1 --model $R/baseline/model.safetensors --output baseline-recal.safetensors
wb --model trs-recal.safetensors --json trs.json
wb --model trs-recal.safetensors --member 0 --json trs-member0.json
wb --model baseline-recal.safetensors --json baseline.json
wb --model baseline-recal.safetensors --member 0 --json baseline-member0.json

# Unaugmented images (--no-augment; the first version of the command, whose default this was;
# its recalibration at the default two threads).
eio recalibrate --no-augment --model $R/trs/model.safetensors --output trs-recal-plain.safetensors
wb --model trs-recal-plain.safetensors --json trs-no-augment.json
wb --model trs-recal-plain.safetensors --member 0 --json trs-no-augment-member0.json

# Clean accuracy of each member, of DVERGE, GAL and ADP recalibrated the same way (their
# runs/<method>/model.safetensors), and of the unaugmented baseline/DVERGE recalibrations:
#   eio eval --model F [--member K] --test-per-class 100
