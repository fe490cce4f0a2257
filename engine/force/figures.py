"""FORCE grid figures as PNG (matplotlib, Agg): what the dashboard's grid page draws
interactively, for a report.

    python -m engine.force.figures OUT.png RUN_DIR [RUN_DIR ...] [--labels slow fast]

One row per grid run (its folder holds the `grid` experiment's result.json): log10 test
error of the LIF network, of the rate twin (one colour scale for all error panels, so
cells compare across twins and runs), the success region of each (test error below
measures.SUCCESS_CUTOFF, outlined in the error panels), and the decoder correlation
r(phi_lif, phi_rate) per point. G across, Q up, each cell labelled with its value.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from engine.force.measures import SUCCESS_CUTOFF
from engine.force.results import RESULT


def grid_arrays(result: dict) -> dict[str, np.ndarray]:
    """(len(q_values), len(g_values)) arrays of log10 error per twin, success per twin and
    decoder r; NaN where a point is missing or diverged."""
    qs, gs = result["q_values"], result["g_values"]
    shape = (len(qs), len(gs))
    out = {key: np.full(shape, np.nan) for key in ("lif", "rate", "decoder_r")}
    success = {key: np.zeros(shape, bool) for key in ("lif", "rate")}
    for point in result.get("points", []):
        i, j = qs.index(point["q"]), gs.index(point["g"])
        for network in ("lif", "rate"):
            cell = point.get(network) or {}
            if cell.get("log10_error") is not None:
                out[network][i, j] = cell["log10_error"]
            success[network][i, j] = bool(cell.get("success"))
        r = (point.get("decoder_fit") or {}).get("r")
        out["decoder_r"][i, j] = np.nan if r is None else r
    out["lif_success"], out["rate_success"] = success["lif"], success["rate"]
    return out


def write_grid_figure(out: str | Path, results: list[dict], labels: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt

    arrays = [grid_arrays(r) for r in results]
    errors = np.concatenate([np.ravel(a[n]) for a in arrays for n in ("lif", "rate")])
    errors = errors[np.isfinite(errors)]
    low, high = (float(errors.min()), float(errors.max())) if len(errors) else (-6.0, -3.0)
    fig, axes = plt.subplots(len(results), 3, figsize=(13, 3.8 * len(results)), squeeze=False)
    for row, (result, a, label) in enumerate(zip(results, arrays, labels)):
        qs, gs = result["q_values"], result["g_values"]
        n = result["params"]["config"]["n"]
        alpha = result["params"]["config"]["alpha"]
        panels = [("lif", "LIF: log10 test error", "viridis", (low, high)),
                  ("rate", "rate twin: log10 test error", "viridis", (low, high)),
                  ("decoder_r", "decoder r (phi_lif, phi_rate)", "RdBu_r", (-1, 1))]
        for col, (key, title, cmap, (vmin, vmax)) in enumerate(panels):
            ax = axes[row, col]
            image = ax.imshow(a[key], origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
            fig.colorbar(image, ax=ax, fraction=0.046)
            for i in range(len(qs)):
                for j in range(len(gs)):
                    value = a[key][i, j]
                    text = "div" if math.isnan(value) and key != "decoder_r" else f"{value:.1f}" \
                        if key != "decoder_r" else ("-" if math.isnan(value) else f"{value:.2f}")
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color="black" if key == "decoder_r" else "white")
            if key in ("lif", "rate"):  # the success region (test error < cutoff) outlined
                for i, j in zip(*np.nonzero(a[f"{key}_success"])):
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
            ax.set_xticks(range(len(gs)), [f"{g:g}" for g in gs])
            ax.set_yticks(range(len(qs)), [f"{q:g}" for q in qs])
            ax.set_xlabel("G")
            ax.set_ylabel("Q")
            ax.set_title(f"{label} (alpha {alpha:g}, N {n}): {title}", fontsize=9)
    fig.suptitle(f"FORCE sine Q x G grid; red outline: test error < {SUCCESS_CUTOFF:g}", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.force.figures", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="PNG file to write")
    ap.add_argument("runs", nargs="+", help="folders of finished `grid` runs (each with result.json)")
    ap.add_argument("--labels", nargs="+", help="one label per run (default: the folder names)")
    args = ap.parse_args(argv)
    labels = args.labels or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        ap.error("--labels needs one label per run")
    results = [json.loads((Path(r) / RESULT).read_text()) for r in args.runs]
    for run, result in zip(args.runs, results):
        if result.get("experiment") != "grid":
            ap.error(f"{run} is not a grid run")
    print(write_grid_figure(args.out, results, labels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
