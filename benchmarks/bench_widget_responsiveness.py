"""How long does the napari event loop stall while the explorer segments a 512 x 512 stack?

A QTimer ticks every 10 ms on the GUI thread; the gaps between ticks while a run is in flight
are the stalls a user would feel (a frozen viewer shows up as a gap of seconds). Three runs on
one viewer, as a user makes them: a first run, a re-run with another seed (the network output
is cached: only the labelling runs again, and the old layers are replaced) and a run with
other M and K. For each: the run time, the time in the worker (model and labelling) against
the time adding and removing layers (GUI thread, one layer per event-loop turn), and the
median / 99th percentile / maximum gap. Writes a JSON file (``--out``).

Usage (Linux without a display: prefix with ``xvfb-run -a``):
    python benchmarks/bench_widget_responsiveness.py --images 8 --size 512 --m 8 --k 20
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--m", type=int, default=8)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--random-model", action="store_true", help="random-init model instead of the bundled weights")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "widget_responsiveness.json"))
    args = parser.parse_args()

    import napari
    import qtpy
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_pancakes.io_weights import DEFAULT_WEIGHTS, load_model
    from napari_pancakes.model import Pancakes
    from napari_pancakes.napari.explorer import ExplorerWidget
    from napari_pancakes.napari.sample_data import synthetic_blobs

    bundled = DEFAULT_WEIGHTS.is_file() and not args.random_model
    model = load_model(device="cpu") if bundled else Pancakes().eval()
    viewer = napari.Viewer(show=True)
    widget = ExplorerWidget(viewer, model=model)
    viewer.window.add_dock_widget(widget)
    widget.confirm = lambda message: True
    viewer.add_image(synthetic_blobs(args.images, args.size, n_blobs=30), name="stack")
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()

    marks = {}
    original_returned = widget._on_returned

    def on_returned(result):  # the worker is done: the rest is adding/removing layers
        marks["returned"] = time.perf_counter()
        original_returned(result)


    def one_run(m: int, k: int, seed: int) -> dict:
        widget.m_spin.setValue(m)
        widget.k_spin.setValue(k)
        widget.seed_spin.setValue(seed)
        ticks: list[float] = []
        timer = QTimer()
        timer.setInterval(10)
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        timer.start()
        marks.clear()
        t0 = time.perf_counter()
        assert widget.start_run(), widget.last_message
        widget.worker.returned.disconnect(widget._on_returned)
        widget.worker.returned.connect(on_returned)
        while widget.busy:
            app.processEvents()
            time.sleep(0.001)
        t1 = time.perf_counter()
        for _ in range(50):  # let the GUI settle and record the final ticks
            app.processEvents()
            time.sleep(0.002)
        timer.stop()
        gaps = np.diff([t for t in ticks if t >= t0]) * 1000
        return {
            "m": m, "k": k, "seed": seed,
            "run_s": round(t1 - t0, 3),
            "worker_s": round(marks["returned"] - t0, 3),
            "layers_s": round(t1 - marks["returned"], 3),
            "gap_median_ms": round(float(np.median(gaps)), 1),
            "gap_p99_ms": round(float(np.percentile(gaps, 99)), 1),
            "gap_max_ms": round(float(gaps.max()), 1),
            "message": widget.last_message,
        }

    runs = [one_run(args.m, args.k, 0), one_run(args.m, args.k, 1), one_run(max(1, args.m // 2), args.k // 2, 1)]
    result = {
        "set": [args.images, args.size, args.size], "model": "bundled" if bundled else "random init",
        "qt": f"{qtpy.API_NAME} {qtpy.QT_VERSION}", "napari": napari.__version__,
        "runs": runs,
        "load_average_1min_at_end": round(__import__("os").getloadavg()[0], 2),
        "cores": __import__("os").cpu_count(),
        "note": "first: network + labelling + adding layers; second: new seed (cached network output, "
                "old layers replaced); third: other M and K. Shared 2-core machine.",
    }
    for r in runs:
        print(f"M={r['m']} K={r['k']} seed={r['seed']}: run {r['run_s']:.2f} s (worker {r['worker_s']:.2f} s, "
              f"layers {r['layers_s']:.2f} s); gaps median {r['gap_median_ms']:.0f} ms, p99 {r['gap_p99_ms']:.0f} ms, "
              f"max {r['gap_max_ms']:.0f} ms")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    viewer.close()


if __name__ == "__main__":
    main()
