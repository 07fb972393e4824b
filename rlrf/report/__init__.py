"""Reports people read: report.md and plots from a run's metrics.json (the top layer, beside the CLI)."""

from __future__ import annotations

from pathlib import Path


def write_report(run_dir: Path | str, metrics: dict) -> Path:
    """report.md and its plots for whichever method wrote `metrics`."""
    if metrics.get("method") == "sprec":
        from rlrf.report.sprec import write_sprec_report

        return write_sprec_report(run_dir, metrics)
    from rlrf.report.rlrf4rec import write_rlrf4rec_report

    return write_rlrf4rec_report(run_dir, metrics)
