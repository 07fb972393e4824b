"""The `rlrf` command line: one typer command per pipeline stage.

Commands import their stage lazily so `rlrf --help` stays fast, and every stage error that is the
user's (a bad file, a bad key) ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable

import typer

from rlrf.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config: a path or a bundled name (quickstart).")]
RunDirOption = Annotated[Path | None, typer.Option("--run-dir", help="Override the config's run_dir.")]


def user_errors(fn: Callable) -> Callable:
    """Turn UserError into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper


def load_run_config(config: Path, run_dir: Path | None):
    from rlrf.config import load_config

    overrides = {"run_dir": str(run_dir)} if run_dir else None
    return load_config(config, overrides)


# --- stage commands: each block below is owned by its stage; add new ones as separate blocks ---


if __name__ == "__main__":
    app()
