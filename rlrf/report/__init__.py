"""Reports people read: report.md and plots from a run's metrics.json (the top layer, beside the CLI)."""

from __future__ import annotations

from pathlib import Path


def write_report(run_dir: Path | str, metrics: dict) -> Path:
    """report.md and its plots for whichever method wrote `metrics`; returns report.md's path."""
    from rlrf.core.io import atomic_write_text
    from rlrf.core.layout import RunLayout

    layout = RunLayout(run_dir)
    if metrics.get("method") == "sprec":
        from rlrf.report import sprec

        sprec.plot(metrics, layout)
        text = sprec.markdown(metrics)
    else:
        from rlrf.report import rlrf4rec

        rlrf4rec.plot(metrics, layout)
        rlrf4rec.write_per_user_table(metrics, layout)
        text = rlrf4rec.markdown(metrics, layout)
    atomic_write_text(layout.report, text)
    return layout.report


def save_figure(fig, layout, name: str) -> None:
    """`<run_dir>/<name>.png`, and the figure closed (a long run draws many)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(layout.figure(name), dpi=120)
    plt.close(fig)
