#!/usr/bin/env bash
# The Pancakes weights to ship: the campaign's recipe on ALL 18 datasets (no leave-out group).
#   NAPARI_PANCAKES_DATA=/path/to/shared/data bash campaign/resume_pancakes_all.sh [MINUTES] [extra flags]
# Issue 14 allows the shipped weights to learn from the leave-out group once the recipe is
# settled: the leave-out run (campaign/pancakes, resume_pancakes.sh) measures the recipe on
# datasets it never saw; its leave-out validation was flat for its last two hours (model card).
# This run starts from that run's in-run best (step 8,296, chosen on training sources) with a
# fresh optimiser (200 warm-up steps) and the same settings, and holds out no dataset: every
# 10th subject of every source is validation, and the checkpoint is chosen on those images.
# Later calls resume from campaign/pancakes-all/last.safetensors(.json).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-120}"; shift || true
OMP_NUM_THREADS=1 python -m napari_pancakes.training train --out campaign/pancakes-all --resume \
  --init campaign/pancakes/best.safetensors --holdout "" --seed 1 --minutes "$MINUTES" \
  --threads 1 --cache-dir runs/cache --val-sets 8 --val-every-min 10 --ckpt-every-min 10 --lr 6e-5 \
  --m-range 4,12 --k-range 4,32 --log-every 20 --low-res-steps 0 --pseudo-ratio 0.1 --synthetic-ratio 0.35 --low-res-share 0.5 "$@"
