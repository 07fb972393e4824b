"""Reports people read: report.md and plots from a run's metrics.json (the top layer, beside the CLI)."""

from __future__ import annotations

from pathlib import Path


def write_report(run_dir: Path | str, metrics: dict) -> Path:
    """report.md and its plots for whichever method wrote `metrics`; returns report.md's path."""
    from rlrf.core.io import atomic_write_text
    from rlrf.core.layout import RunLayout

    if metrics.get("method") == "sprec":
        from rlrf.report import sprec as method
    else:
        from rlrf.report import rlrf4rec as method
    layout = RunLayout(run_dir)
    method.plot(metrics, layout)
    atomic_write_text(layout.report, method.markdown(metrics))
    return layout.report


def save_figure(fig, layout, name: str) -> None:
    """`<run_dir>/<name>.png`, and the figure closed (a long run draws many)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(layout.figure(name), dpi=120)
    plt.close(fig)
