"""How long does the napari event loop stall while the explorer's worker segments a 512 x 512 stack?

A QTimer ticks every 10 ms on the GUI thread; the gaps between ticks while the run is in
flight are the stalls a user would feel (a frozen viewer shows up as a gap of seconds).
Reports the run time, the median / 99th percentile / maximum gap, and the stall while the
protocol layers are added at the end (on the GUI thread by design).

Usage (Linux without a display: prefix with ``xvfb-run -a``):
    python benchmarks/bench_widget_responsiveness.py --images 8 --size 512 --m 8 --k 20
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--m", type=int, default=8)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--random-model", action="store_true", help="random-init model instead of the bundled weights")
    args = parser.parse_args()

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_pancakes.io_weights import DEFAULT_WEIGHTS, load_model
    from napari_pancakes.model import Pancakes
    from napari_pancakes.napari.explorer import ExplorerWidget
    from napari_pancakes.napari.sample_data import synthetic_blobs

    model = load_model(device="cpu") if DEFAULT_WEIGHTS.is_file() and not args.random_model else Pancakes().eval()
    viewer = napari.Viewer(show=False)
    widget = ExplorerWidget(viewer, model=model)
    viewer.window.add_dock_widget(widget)
    widget.confirm = lambda message: True
    viewer.add_image(synthetic_blobs(args.images, args.size, n_blobs=30), name="stack")
    widget.m_spin.setValue(args.m)
    widget.k_spin.setValue(args.k)
    app = QApplication.instance()

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    t0 = time.perf_counter()
    assert widget.start_run(), widget.last_message
    while widget.busy:
        app.processEvents()
        time.sleep(0.001)
    t1 = time.perf_counter()
    for _ in range(50):  # let the GUI settle and record the final ticks
        app.processEvents()
        time.sleep(0.002)
    timer.stop()

    gaps = np.diff([t for t in ticks if t >= t0]) * 1000
    print(f"set: {args.images} x {args.size} x {args.size}, M={args.m}, K={args.k}, "
          f"model: {'random init' if isinstance(model, Pancakes) and args.random_model or not DEFAULT_WEIGHTS.is_file() else 'bundled'}")
    print(f"run time (worker start -> layers added): {t1 - t0:.2f} s; {len(viewer.layers) - 1} layers added")
    print(f"event-loop gaps over {len(gaps)} ticks: median {np.median(gaps):.0f} ms, "
          f"p99 {np.percentile(gaps, 99):.0f} ms, max {gaps.max():.0f} ms")
    viewer.close()


if __name__ == "__main__":
    main()
