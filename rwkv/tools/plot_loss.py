"""Write a loss-curve PNG from a run directory: `python -m rwkv.tools.plot_loss RUN_DIR [-o loss.png]`.

Reads every CSVLogger `metrics.csv` under RUN_DIR (resumed runs add versions; later versions win for a
step they repeat) and plots train/loss and val/loss against the optimizer step.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def read_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    curves: dict[str, dict[int, float]] = {"train/loss": {}, "val/loss": {}}
    files = sorted(run_dir.rglob("metrics.csv"), key=lambda p: (p.stat().st_mtime, str(p)))
    for path in files:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                for key, curve in curves.items():
                    if row.get(key) not in (None, "") and row.get("step") not in (None, ""):
                        curve[int(row["step"])] = float(row[key])
    return curves


def plot(run_dir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    curves = read_curves(run_dir)
    if not curves["train/loss"]:
        raise FileNotFoundError(f"{run_dir}: no metrics.csv with train/loss found (CSVLogger writes them)")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for key, style in (("train/loss", "-"), ("val/loss", "o-")):
        if curves[key]:
            steps = sorted(curves[key])
            ax.plot(steps, [curves[key][s] for s in steps], style, label=key, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(str(run_dir))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rwkv.tools.plot_loss", description=__doc__)
    p.add_argument("run_dir", type=Path, help="the run's directory (trainer.default_root_dir)")
    p.add_argument("-o", "--out", type=Path, default=None, help="PNG path (default: RUN_DIR/loss.png)")
    args = p.parse_args(argv)
    try:
        out = plot(args.run_dir, args.out or args.run_dir / "loss.png")
    except FileNotFoundError as e:
        print(f"plot_loss: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
