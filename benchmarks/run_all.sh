#!/usr/bin/env bash
# Re-run every benchmark and evaluation behind the numbers in docs/ and the model card, one after
# another (they share the CPU; run nothing else meanwhile). Results go to benchmarks/results/.
#   bash benchmarks/run_all.sh [DATA_DIR]        (default: ../shared/data beside the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
R=benchmarks/results
mkdir -p "$R"
export QT_QPA_PLATFORM=offscreen
python benchmarks/bench_inference.py --out "$R/inference.json" | tee "$R/inference.txt"
python -m napari_pancakes.training evaluate --out "$R/model_card_eval" --n-sets 10
python -m napari_pancakes.evaluate "$DATA" --sizes 1,3,5 --sets 10 --sweep --out "$R/eval"
python benchmarks/bench_refine.py --out "$R"
python benchmarks/bench_training.py --steps 20 --features 32 --out "$R/training.json"
XVFB=""; [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null && XVFB="xvfb-run -a"
$XVFB python benchmarks/bench_widget_responsiveness.py | tee "$R/widget_responsiveness.txt"
