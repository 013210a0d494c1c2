"""The training curve: loss from a run's ``log.txt`` and validation Set Dice from ``metrics.csv``."""
from __future__ import annotations

from pathlib import Path


def plot_training_curve(run_dir: Path, out_png: Path) -> Path:
    """Training loss (from ``log.txt``) and validation Set Dice per source (``metrics.csv``)."""
    import csv
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    steps, losses = [], []
    log = run_dir / "log.txt"
    if log.is_file():
        for line in log.read_text().splitlines():
            hit = re.match(r"step (\d+) loss ([0-9.]+)", line)
            if hit:
                steps.append(int(hit[1]))
                losses.append(float(hit[2]))
    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(steps, losses, lw=0.8)
    ax1.set(xlabel="step", ylabel="set loss (1 - soft Dice of matched labels)", title="training loss (20-step means)")
    for key in [k for k in rows[0] if k not in ("step", "minutes")]:
        ax2.plot([int(r["step"]) for r in rows], [100 * float(r[key]) for r in rows], marker="o", ms=3,
                 label=key + (" (selection)" if key == "select" else ""), lw=2 if key == "select" else 1)
    ax2.set(xlabel="step", ylabel="Set Dice (M=8, K=20, S=3)", title="validation")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    return out_png
