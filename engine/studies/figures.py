"""The seed entry's figures as PNG files beside a study's Markdown report.

The dashboard draws these interactively; an exported report must hold the same
figures, so `write_figures(out, entries)` renders them with matplotlib (Agg, no
display) into `out/figures/` from the runs' folders, and `figures_markdown`
lists them for the report:

- trajectories: test accuracy against test E rate, one point per epoch, per run;
- per run: ||W||_F per epoch and the epoch-mean ||grad|| / ||W|| per epoch, for
  every trainable weight (log y);
- per run: per-cell E and I rates on the test set (histograms);
- per run: W_in and W_out at init and at the end (histograms, log y).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np

from engine.rundir import RunDir


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, safe in a worker process
    import matplotlib.pyplot as plt

    return plt


def write_figures(out: str | Path, entries: list[dict[str, Any]], runs_root: str | Path | None = None,
                  run_dirs: dict[str, str | Path] | None = None) -> list[tuple[str, str]]:
    """Render the figures of the finished training runs in `entries` (engine.studies.report's
    entries; a run's folder is `run_dirs[label]` if given, else `runs_root / label`, default
    `out/runs / label`); returns (title, path relative to `out`) per figure written."""
    out = Path(out)
    runs_root = Path(runs_root) if runs_root else out / "runs"
    run_dirs = {label: Path(path) for label, path in (run_dirs or {}).items()}
    folder = out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    written: list[tuple[str, str]] = []

    def save(fig, name: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=80)
        plt.close(fig)
        written.append((title, f"figures/{name}"))

    trained = [e for e in entries if e["metrics"]]
    if trained:
        fig, ax = plt.subplots(figsize=(5, 4))
        for e in trained:
            ax.plot([r["rate_e_hz"] for r in e["metrics"]], [r["test_acc"] for r in e["metrics"]], "o-",
                    ms=3, label=e["label"])
        ax.set_xlabel("test E rate (Hz)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7)
        save(fig, "trajectories.png", "Trajectories: accuracy against E rate per epoch")
    for e in trained:
        label, metrics = e["label"], e["metrics"]
        epochs = [r["epoch"] for r in metrics]
        fig, (norm_ax, ratio_ax) = plt.subplots(1, 2, figsize=(8, 3.2))
        for name in metrics[-1].get("w_norm", {}):
            norm_ax.plot(epochs, [r["w_norm"][name] for r in metrics], label=name)
            ratio_ax.plot(epochs, [r["grad_ratio"][name] for r in metrics], label=name)
        norm_ax.set(xlabel="epoch", ylabel="||W||_F", title=f"{label}: weight norms")
        ratio_ax.set(xlabel="epoch", ylabel="||grad|| / ||W||", yscale="log", title="gradient ratio")
        norm_ax.legend(fontsize=7)
        save(fig, f"{label}-norms.png", f"{label}: ||W||_F and grad / W per epoch")
        run = RunDir(run_dirs.get(label, runs_root / label))
        rates_path = run.artifacts / "rates.npz"
        if rates_path.exists():
            rates = np.load(rates_path)
            fig, axes = plt.subplots(1, 2, figsize=(8, 3))
            for ax, key, pop in zip(axes, ("rate_e_hz", "rate_i_hz"), ("E", "I")):
                ax.hist(rates[key], bins=40)
                ax.set(xlabel=f"{pop} cell rate (Hz)", ylabel="cells", title=f"{label}: {pop} rates")
            save(fig, f"{label}-cell-rates.png", f"{label}: per-cell E and I rates (test set)")
        if (run.artifacts / "weights_init.npz").exists() and (run.artifacts / "weights_final.npz").exists():
            init, final = run.load_weights("init"), run.load_weights("final")
            fig, axes = plt.subplots(1, 2, figsize=(8, 3))
            for ax, name in zip(axes, ("W_in", "W_out")):
                ax.hist(init[name].flatten().numpy(), bins=60, alpha=0.6, label="init", log=True)
                ax.hist(final[name].flatten().numpy(), bins=60, alpha=0.6, label="final", log=True)
                ax.set(xlabel=name, ylabel="entries", title=f"{label}: {name}")
                ax.legend(fontsize=7)
            save(fig, f"{label}-weights.png", f"{label}: W_in and W_out at init and at the end")
    return written


def figures_markdown(figures: list[tuple[str, str]], inline_from: str | Path | None = None) -> str:
    """The report's figures section; with `inline_from` (the folder `write_figures` wrote
    into) each PNG is embedded as a data URI, so the Markdown needs no files beside it."""
    if not figures:
        return ""

    def source(path: str) -> str:
        if inline_from is None:
            return path
        return "data:image/png;base64," + base64.b64encode((Path(inline_from) / path).read_bytes()).decode("ascii")

    return "## Figures\n\n" + "\n".join(f"### {title}\n\n![{title}]({source(path)})\n" for title, path in figures)
