#!/usr/bin/env bash
# Refiner training on a lent GPU machine (the `device` tool), both stages side by side.
#   here:   python -m napari_pancakes.training pack --res 256 devpack/train-256.npz  (--overwrite to redo)
#   there:  MINUTES=6.3 bash campaign/gpu_refiner.sh $OUT    (then here: tar -xf FILES_AT/gpu-runs.tar)
#   resume: G1=campaign/refiner-gpu-superpixel G2=campaign/refiner-gpu-all MINUTES=10.5 bash campaign/gpu_refiner.sh DEST
# The machine cannot reach ../shared and receives at most 64 MiB, so the datasets travel as one
# write_pack file (JPEG images, exact labels; ~35 MB) in devpack/ (git-ignored, named in carry).
# Stage 1 (g1: leave-out group not read) continues the superpixel recipe from its best file, so
# benchmarks/bench_refine.py can measure it on the leave-out group; stage 2 (g2: all datasets)
# continues the shipped refiner and is the candidate to ship, chosen on training-source
# validation back here (training.refiner --evaluate). Each run: batch 64, 7 worker processes
# (ExamplePool) for the simulated user, bfloat16 autocast; the 16 cores are the bottleneck.
# INIT1/INIT2 choose the starting files, EXTRA adds trainer flags (e.g. EXTRA='--invert-prob 0.3').
# A folder (G1/G2) holding checkpoint.json resumes; MINUTES is the total over all calls (the
# cosine learning rate runs over it, so a resume continues at the low end unless MINUTES grows).
# Size: the tracked tree travels too (64 MiB with the pack). Move the checkpoints the call does
# not need (campaign/pancakes*/last|best_state, the CPU runs' checkpoint.safetensors) out of the
# tree for the call and back afterwards; git status shows them as deleted meanwhile.
set -uo pipefail
DEST="${1:?folder for the results}"
PACK="${PACK:-devpack/train-256.npz}"
export PYTHONPATH=src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
nvidia-smi -L || true
RUN="python3 -m napari_pancakes.training.refiner --pack $PACK --device ${DEVICE:-cuda} --workers ${WORKERS:-7}
  --batch 64 --steps 8 --lr 6e-4 --superpixel-prob 0.3 --minutes ${MINUTES:-6.3} --eval-every 2 --threads 4 --seed 3 ${EXTRA:-}"
G1="${G1:-runs/gpu-g1}"; G2="${G2:-runs/gpu-g2}"
$RUN --out "$G1" --init "${INIT1:-campaign/refiner-superpixel/best.safetensors}" > runs/gpu-g1.txt 2>&1 &
$RUN --out "$G2" --leave-out "" --init "${INIT2:-src/napari_pancakes/weights/refiner_default.safetensors}" > runs/gpu-g2.txt 2>&1 &
wait
# One file back: the device returns at most 8 files from a call (in session 11 two run folders
# written straight into DEST lost the stage-2 optimiser checkpoint). Unpack here with tar -xf.
STAGE=runs/gpu-stage; rm -rf "$STAGE"
for g in g1 g2; do
  mkdir -p "$STAGE/$g"
  tail -5 runs/gpu-$g.txt
  [ $g = g1 ] && dir="$G1" || dir="$G2"
  cp "$dir"/best.safetensors "$dir"/checkpoint.safetensors "$dir"/checkpoint.json "$dir"/log.txt "$STAGE/$g/"
  cp runs/gpu-$g.txt "$STAGE/$g/stdout.txt"
done
mkdir -p "$DEST" && tar -cf "$DEST/gpu-runs.tar" -C "$STAGE" g1 g2
