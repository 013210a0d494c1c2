#!/usr/bin/env bash
# Re-run every benchmark and evaluation behind the numbers in docs/ and the model card, one after
# another (they share the CPU; run nothing else meanwhile). Results go to benchmarks/results/.
#   bash benchmarks/run_all.sh [DATA_DIR]        (default: $NAPARI_PANCAKES_DATA)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-${NAPARI_PANCAKES_DATA:?give the dataset folder or set NAPARI_PANCAKES_DATA}}"
R=benchmarks/results
mkdir -p "$R"
export QT_QPA_PLATFORM=offscreen
python benchmarks/bench_inference.py --out "$R/inference.json" | tee "$R/inference.txt"
python benchmarks/bench_inference.py --large --repeats 4 --out "$R/inference-large.json"
python -m napari_pancakes.evaluate --data-root "$DATA" --n-sets 8 --sweep --methods pancakes,kmeans,slic,random_init --out "$R/eval"
python benchmarks/tune_refine.py --data "$DATA" --variants classical:0.05 classical:0.005 classical:0.0005 --tag classical
python benchmarks/tune_refine.py --data "$DATA" --variants network hybrid:0.02 hybrid:0.1 hybrid:0.5 hybrid:2 --tag hybrid
python benchmarks/bench_refine.py --data "$DATA" --out "$R"
OMP_NUM_THREADS=1 python benchmarks/bench_refine.py --large --out "$R"
python benchmarks/bench_training.py --steps 20 --features 32 --out "$R/training.json"
python benchmarks/bench_apply.py --sizes 200,2000 --out "$R/apply.json" | tee "$R/apply.txt"
NAPARI_PANCAKES_DATA="$DATA" python benchmarks/bench_propagate.py --sets 8 --out "$R/propagate.json" | tee "$R/propagate.txt"
napari-pancakes analyze src/napari_pancakes/sample_data/dsb2018_nuclei_fluorescence.tif --table docs/study_outcomes.csv \
    --outcome burden --m 8 --k 20 --device cpu --out "$R/study_sample" --overwrite
python benchmarks/bench_predictor.py --out "$R/predictor.json"
XVFB=""; [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null && XVFB="xvfb-run -a -s '-screen 0 1600x1000x24'"
eval "$XVFB" python benchmarks/bench_widget_responsiveness.py --out "$R/widget_responsiveness.json"
eval "$XVFB" python benchmarks/bench_cancel.py --out "$R/cancel.json"
