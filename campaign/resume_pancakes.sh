#!/usr/bin/env bash
# Resume the Pancakes training campaign from campaign/pancakes/last.safetensors(.json).
#   NAPARI_PANCAKES_DATA=/path/to/shared/data bash campaign/resume_pancakes.sh [MINUTES] [extra flags, e.g. --device cuda]
# One CPU thread, so that the refiner campaign can use the other core of a 2-core machine.
# From step 2253 on: lr 1.5e-4 (5e-4 before; validation was flat), fewer pseudo-protocol and
# synthetic sets (0.1 and 0.35; before 0.2 and 0.5) to give annotated anatomy more steps.
# From step ~4,400 (session 2): lr 6e-5, since validation rose only 0.5000 -> 0.5036 in the
# last 500 steps at 1.5e-4 (campaign/pancakes/metrics.csv).
# From step 5,626: half of the steps at 64 px (--low-res-share 0.5): in a 20-minute equal-budget
# ablation from that step it reached 0.5241 against 0.5177 for 128 px only
# (benchmarks/results/ablations/low-res-share-{A,B}.*); the B run is the campaign's continuation.
# From session 3 the validation split keeps subjects whole (datasets.py: split_validation), so a
# resume trains on slightly different images than before. The shipped weights come from
# resume_pancakes_all.sh (all 18 datasets), started from this run's step 8,296.
# --minutes is the budget of this session's part of the run; the step count carries on.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-120}"; shift || true
OMP_NUM_THREADS=1 python -m napari_pancakes.training train --out campaign/pancakes --resume --minutes "$MINUTES" \
  --threads 1 --cache-dir runs/cache --val-sets 8 --val-every-min 10 --ckpt-every-min 10 --lr 6e-5 \
  --m-range 4,12 --k-range 4,32 --log-every 20 --low-res-steps 600 --pseudo-ratio 0.1 --synthetic-ratio 0.35 --low-res-share 0.5 "$@"
