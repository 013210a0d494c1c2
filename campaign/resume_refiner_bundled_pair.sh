#!/usr/bin/env bash
# Resume the stage-1 pair of benchmarks/results/refiner-choice-session15/RULE-bundled-long.md together,
# one thread each: the treatment (--bundled-prob 0.2) and its control, from their checkpoints in
# campaign/refiner-bundled-long{,-control}/ (100-minute budgets in total across resumes).
#   NAPARI_PANCAKES_DATA=/path/to/shared/data bash campaign/resume_refiner_bundled_pair.sh
set -euo pipefail
cd "$(dirname "$0")/.."
COMMON=(--init campaign/refiner-augment-box/best.safetensors --seed 13 --steps 8 --lr 3e-4 --minutes 100
        --threads 1 --cache runs/cache --superpixel-prob 0.3 --small-prob 0.3 --small-radii 1 5
        --poor-start-prob 0.3 --augment-prob 0.5 --box-prob 0.4)
OMP_NUM_THREADS=1 python -m napari_pancakes.training.refiner --out campaign/refiner-bundled-long "${COMMON[@]}" \
  --bundled-prob 0.2 > "${TMPDIR:-/tmp}/refiner-bundled-long.out" 2>&1 &
OMP_NUM_THREADS=1 python -m napari_pancakes.training.refiner --out campaign/refiner-bundled-long-control "${COMMON[@]}" \
  > "${TMPDIR:-/tmp}/refiner-bundled-long-control.out" 2>&1 &
wait
