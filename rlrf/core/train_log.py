"""A trl / transformers trainer's progress as one line per logging step.

The trainer's own output is a tqdm bar and, at every logging step, the raw log dict; written to a
file the bar's redraws and the dicts were 42 KB of a 44.6 KB quickstart log, with lines of 1,000
characters. `StepLines` prints instead what a person watching the run needs: the step, the loss, the
preference margin (or the online trainers' reward), the time a step takes and the time left.
"""

from __future__ import annotations

import sys
import time

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

# (log key, label): the first present of each group is shown
_SHOWN = (("loss", "loss"), ("rewards/margins", "margin"), ("reward", "reward"), ("learning_rate", "lr"))


def step_line(step: int, max_steps: int, logs: dict, seconds_per_step: float | None) -> str:
    """`step 10/40 (25%): loss 0.6812, margin +0.0213, lr 1e-05, 1.42 s/step, ETA 43 s`."""
    parts = []
    for key, label in _SHOWN:
        value = logs.get(key)
        if isinstance(value, (int, float)):
            text = f"{value:.3g}" if key == "learning_rate" else f"{value:+.4f}" if label in ("margin", "reward") \
                else f"{value:.4f}"
            parts.append(f"{label} {text}")
    head = f"step {step}/{max_steps} ({100 * step / max_steps:.0f}%)" if max_steps else f"step {step}"
    if seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.2f} s/step")
        if max_steps and step < max_steps:
            parts.append(f"ETA {seconds_per_step * (max_steps - step):.0f} s")
    return f"{head}: " + ", ".join(parts)


class StepLines(TrainerCallback):
    """One line per logging step (see `step_line`), and one when training ends, on `stream`."""

    def __init__(self, stream=None):
        self.stream = stream
        self.started: float | None = None
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.perf_counter(), state.global_step  # a resumed run counts from here

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        stream = self.stream or sys.stderr
        if "train_runtime" in logs:  # the closing summary
            print(f"training done: {state.global_step} steps in {logs['train_runtime']:.1f} s"
                  + (f", mean loss {logs['train_loss']:.4f}" if "train_loss" in logs else ""), file=stream, flush=True)
            return
        steps = state.global_step - self.first_step
        per_step = (time.perf_counter() - self.started) / steps if self.started is not None and steps > 0 else None
        print(step_line(state.global_step, state.max_steps, logs, per_step), file=stream, flush=True)


def follow_in_lines(trainer, show_progress: bool = True) -> None:
    """Replace the trainer's tqdm bar and raw log dicts with `StepLines` (nothing with --quiet)."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if show_progress:
        trainer.add_callback(StepLines())
