#!/usr/bin/env bash
# The refiner weights to ship: the refiner campaign's recipe on ALL 18 datasets (no leave-out group).
#   NAPARI_PANCAKES_DATA=/path/to/shared/data bash campaign/resume_refiner_all.sh HH:MM [extra flags]
# Like Pancakes' stage 2 (resume_pancakes_all.sh): the leave-out run (runs/refiner-campaign)
# measures the recipe on datasets it never saw (benchmarks/bench_refine.py); its training-source
# validation has been flat since iteration ~10,000 (REFINER_CARD.md). This run starts from that
# run's shipped file (iteration 10,761) with a fresh optimiser (50 warm-up iterations), 8 rounds
# per example, and holds out no dataset: every 10th subject of every source is validation, and
# best.safetensors is chosen on those images. Later calls resume from campaign/refiner-all/.
# OUT and INIT override the folder and the starting file, e.g. the superpixel recipe:
#   OUT=campaign/refiner-all-superpixel INIT=campaign/refiner-superpixel/best.safetensors \
#     bash campaign/resume_refiner_all.sh HH:MM --superpixel-prob 0.3
set -euo pipefail
cd "$(dirname "$0")/.."
UNTIL="${1:?stop time HH:MM UTC}"; shift || true
OUT="${OUT:-campaign/refiner-all}"
INIT="${INIT:-src/napari_pancakes/weights/refiner_default.safetensors}"
OMP_NUM_THREADS=1 python -m napari_pancakes.training.refiner --out "$OUT" --leave-out "" \
  --init "$INIT" --seed 1 --steps 8 --lr 3e-4 \
  --minutes 300 --until "$UNTIL" --threads 1 --cache runs/cache "$@"
