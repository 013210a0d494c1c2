"""How long after Cancel does the explorer stop? (The docs quote this; the test only bounds it.)

For each case a run starts in the real dock widget, Cancel is pressed (right away, or once the
labelling phase of the largest grid M=32, K=64 has begun) and the time until the widget is idle
again is measured; the viewer must be left as it was. Writes a JSON file (``--out``).

Usage (Linux without a display: prefix with ``xvfb-run -a``):
    python benchmarks/bench_cancel.py --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

CASES = [  # (images, size, M, K, cancel when the progress format contains this; None: at once)
    (5, 64, 2, 3, None),
    (3, 256, 32, 64, "labelling"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cancel.json"))
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_pancakes.io_weights import DEFAULT_WEIGHTS, load_model
    from napari_pancakes.model import Pancakes
    from napari_pancakes.napari.explorer import ExplorerWidget
    from napari_pancakes.napari.sample_data import synthetic_blobs

    model = load_model(device="cpu") if DEFAULT_WEIGHTS.is_file() else Pancakes().eval()
    viewer = napari.Viewer(show=True)
    widget = ExplorerWidget(viewer, model=model)
    viewer.window.add_dock_widget(widget)
    app = QApplication.instance()

    def wait(condition, timeout=120.0):
        t0 = time.perf_counter()
        while not condition():
            app.processEvents()
            time.sleep(0.001)
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError("the widget did not get there in time")

    results = []
    for n, size, m, k, phase in CASES:
        viewer.layers.clear()
        viewer.add_image(synthetic_blobs(n_images=n, size=size), name="blobs")
        widget.m_spin.setValue(m)
        widget.k_spin.setValue(k)
        latencies = []
        for _ in range(args.repeats):
            widget.controller._encoded.clear()  # every repeat from scratch, as a first run
            assert widget.start_run(), widget.last_message
            if phase:
                wait(lambda: phase in widget.progress.format())
            t0 = time.perf_counter()
            widget.cancel_run()
            wait(lambda: not widget.busy)
            latencies.append(time.perf_counter() - t0)
            assert len(viewer.layers) == 1, "a cancelled run changed the viewer"
        results.append({"images": n, "size": size, "m": m, "k": k, "cancel_during": phase or "start",
                        "latency_s": [round(x, 4) for x in latencies],
                        "median_s": round(float(np.median(latencies)), 4), "max_s": round(max(latencies), 4)})
        print(results[-1])
    import torch

    out = {"cases": results, "repeats": args.repeats, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "load_average_1min_at_end": round(os.getloadavg()[0], 2),
           "model": "bundled" if DEFAULT_WEIGHTS.is_file() else "random-init",
           "note": "time from Cancel to an idle widget; the viewer is checked unchanged after each"}
    Path(args.out).write_text(json.dumps(out, indent=1))
    viewer.close()


if __name__ == "__main__":
    main()
