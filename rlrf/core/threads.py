"""The one place that sets how many CPU threads torch uses.

`threads` in the config is read once per process, by whichever stage starts first; every stage calls
`use_threads(cfg)` so that a stage run on its own (a test, `rlrf score`) gets the same setting as
inside `rlrf run`. With another process on the cores, fewer threads are steadier.
"""

from __future__ import annotations


def use_threads(cfg) -> None:
    """torch.set_num_threads(cfg.threads) when the config names a number (None = torch's default)."""
    threads = getattr(cfg, "threads", None)
    if threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
