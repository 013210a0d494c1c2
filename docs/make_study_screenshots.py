"""Screenshots of the study dock for docs/study.md, from the real widgets on the bundled sample.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_study_screenshots.py [--out docs/img]

Steps (all choices derived from the data, as in ``docs/make_screenshots.py``, whose helpers this
reuses): open the nuclei sample (6 images); the first five are the set, the sixth a new image.
Run the explorer (M = 8, K = 20), choose the protocol whose best label matches the bright
(Otsu) pixels best, name that label "nucleus"; dock the study widget, save the protocol,
apply it to the new image; write a synthetic outcome table and rank the labels against it;
propagate a correction of the nucleus label painted on image 1. Writes ``study-*.png`` and
``docs/study_outcomes.csv``; numbers shown in docs/study.md are printed here too.

The outcome table is synthetic: ``burden`` = the image's fraction of bright pixels (Otsu) plus
Gaussian noise (sd 0.02, seed 0), and ``arm`` alternates A/B; it exists to show the mechanics.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import (  # noqa: E402
    WINDOW_SIZE, bright_mask, clear_notifications, pick_protocol, settle, shoot, wait_until,
)


def main(argv=None) -> int:
    import time

    from qtpy.QtWidgets import QApplication

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "img"))
    parser.add_argument("--table", default=str(Path(__file__).resolve().parent / "study_outcomes.csv"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari

    from napari_pancakes import load_model
    from napari_pancakes.napari.controller import ProtocolController
    from napari_pancakes.napari.sample_data import nuclei_stack
    from napari_pancakes.napari.study_widget import StudyWidget

    model = load_model(device="cpu")
    stack = nuclei_stack()
    viewer = napari.Viewer()
    viewer.window._qt_window.resize(*WINDOW_SIZE)
    five = viewer.add_image(stack[:5], name="nuclei (5)")
    viewer.add_image(stack[5], name="new image", visible=False)
    explorer = ProtocolController(viewer, model=model)
    layers = explorer.run(five, m=8, k=20)
    bright = bright_mask(stack[:5])
    index, label, iou = pick_protocol(layers, bright)
    chosen = explorer.choose(layers[index])
    explorer.rename(label, "nucleus", layer=chosen)
    print(f"chosen: protocol {index + 1}, label {label} (IoU with bright pixels {iou:.2f})")

    widget = StudyWidget(viewer, model=model)
    widget.confirm = lambda message: True
    viewer.window.add_dock_widget(widget, name="Study", area="right")
    widget.source_combo.setCurrentText(chosen.name)
    with tempfile.TemporaryDirectory() as tmp:
        assert widget.save_protocol(str(Path(tmp) / "nuclei.protocol.json")), widget.last_message
        print(widget.last_message)
        print(Path(tmp, "nuclei.protocol.json").read_text()[:400])
    clear_notifications(viewer)
    shoot(viewer, out / "study-save.png")

    # apply to the new image
    widget.target_combo.setCurrentText("new image")
    assert widget.apply(), widget.last_message
    wait_until(lambda: not widget.busy, 600, "the apply worker")
    assert "applied" in widget.last_message, widget.last_message
    print(widget.last_message)
    for ly in viewer.layers:
        ly.visible = ly.name in ("new image", viewer.layers[-1].name)
    viewer.dims.set_point(0, 0)
    viewer.reset_view()
    clear_notifications(viewer)
    shoot(viewer, out / "study-apply.png")

    # correct once: paint the nucleus label over the bright pixels of image 1, propagate
    for ly in viewer.layers:
        ly.visible = ly.name in ("nuclei (5)", chosen.name)
    data = chosen.data
    paint = bright[0]
    data[0][(data[0] == label) & ~paint] = 0  # erased where it was wrong
    data[0][paint] = label
    chosen.data = data
    chosen.selected_label = label
    viewer.layers.selection.active = chosen
    viewer.dims.set_point(0, 0)
    assert widget.propagate(), widget.last_message
    while widget.busy:  # the propagation runs in a worker
        QApplication.processEvents()
        time.sleep(0.02)
    print(widget.last_message)
    viewer.dims.set_point(0, 2)
    chosen.opacity = 0.35
    clear_notifications(viewer)
    shoot(viewer, out / "study-propagate.png")
    chosen.opacity = 0.7
    widget.undo()

    # synthetic outcome table and the ranking
    rng = np.random.default_rng(0)
    burden = bright.reshape(5, -1).mean(1) + rng.normal(0, 0.02, 5)
    with open(args.table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "burden", "arm"])
        for i, b in enumerate(burden):
            w.writerow([i, f"{b:.4f}", "AB"[i % 2]])
    assert widget.open_table(args.table), widget.last_message
    widget.image_combo.setCurrentText("nuclei (5)")
    widget.outcome_combo.setCurrentText("burden")
    assert widget.analyze(), widget.last_message
    print(widget.last_message)
    for r in widget.controller.ranking.rows[:5]:
        print({key: r[key] for key in ("rank", "protocol", "label", "name", "test", "effect", "p", "q")})
    for ly in viewer.layers:
        if ly.name == "nuclei (5)":
            ly.visible = True
        if ly is chosen:
            ly.visible = False  # the ranked protocol layer, its label highlighted, is what the row shows
    clear_notifications(viewer)
    settle(1.0)
    shoot(viewer, out / "study-analysis.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
