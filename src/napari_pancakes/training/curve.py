"""The training curve: loss from a run's ``log.txt`` and validation Set Dice from ``metrics.csv``."""
from __future__ import annotations

from pathlib import Path


def plot_training_curve(run_dir: Path, out_png: Path) -> Path:
    """Training loss (from ``log.txt``) and validation Set Dice per source (``metrics.csv``)."""
    import csv
    import json
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
    holdout: list[str] = []
    if (run_dir / "config.json").is_file():
        holdout = json.loads((run_dir / "config.json").read_text()).get("holdout", [])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1, 1.5]})
    ax1.plot(steps, losses, lw=0.8)
    ax1.set(xlabel="step", ylabel="set loss (1 - soft Dice of matched labels)", title="training loss (20-step means)")
    x = [int(r["step"]) for r in rows]
    sources = [k for k in rows[0] if k not in ("step", "minutes", "select")]
    for key in sources:
        ax2.plot(x, [100 * float(r[key]) for r in rows], lw=0.8, alpha=0.6, ls="--" if key in holdout else "-",
                 label=key + (" (leave-out)" if key in holdout else ""))
    ax2.plot(x, [100 * float(r["select"]) for r in rows], lw=3, color="black", marker="o",
             label="selection: mean of training sources")
    if holdout:
        held = [[100 * float(r[h]) for h in holdout if h in r] for r in rows]
        ax2.plot(x, [sum(v) / len(v) for v in held], lw=3, color="tab:red", marker="s", label="mean of leave-out group")
    ax2.set(xlabel="step", ylabel="Set Dice (M=8, K=20, S=3)",
            title="validation (dashed: leave-out datasets)" if holdout else "validation (no dataset left out)")
    ax2.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    return out_png
