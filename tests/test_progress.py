"""Outside a terminal, progress is a plain line with done/total, rate and ETA, not a silent bar."""

from __future__ import annotations

import io
import sys

from rlrf.core.progress import LineProgress, progress_bar


def test_a_log_file_gets_a_line_per_interval_and_one_at_the_end():
    out = io.StringIO()
    with LineProgress(every=0.0, stream=out) as progress:
        task = progress.add_task("generate iter 0", total=4, tps=0.0)
        progress.update(task, advance=1, tps=12.5)
        progress.advance(task, 3)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("generate iter 0: 1/4, 25%,") and "12.5 tok/s" in lines[0] and "ETA" in lines[0]
    assert lines[1].startswith("generate iter 0: 4/4, 100%,") and "ETA" not in lines[1]


def test_quiet_lines_only_when_the_interval_passed():
    out = io.StringIO()
    progress = LineProgress(every=3600.0, stream=out)
    task = progress.add_task("score iter 0", total=10)
    progress.advance(task, 5)
    assert out.getvalue() == ""  # within the interval and not finished
    progress.advance(task, 5)
    assert out.getvalue().startswith("score iter 0: 10/10")


def test_pytest_output_is_not_a_terminal_so_stages_log_lines():
    assert isinstance(progress_bar(True), LineProgress)
    assert not isinstance(progress_bar(False), LineProgress)  # --quiet: a disabled rich bar, nothing printed


# --- a trainer's progress: one line per logging step ------------------------------------------------

def test_a_logging_step_is_one_line_with_loss_margin_step_time_and_eta():
    from rlrf.core.train_log import step_line

    logs = {"loss": 0.68123, "grad_norm": 1.5, "learning_rate": 1e-05, "rewards/chosen": 0.1,
            "rewards/rejected": 0.08, "rewards/margins": 0.02134, "logps/chosen": -80.1, "epoch": 0.25}
    assert step_line(10, 40, logs, 1.4237) == \
        "step 10/40 (25%): loss 0.6812, margin +0.0213, lr 1e-05, 1.42 s/step, ETA 43 s"
    assert step_line(40, 40, {"loss": 0.5, "reward": -0.25}, 2.0) == "step 40/40 (100%): loss 0.5000, reward -0.2500, 2.00 s/step"


def test_the_trainer_callback_prints_a_step_line_and_a_closing_line_instead_of_dicts():
    from transformers import TrainerControl, TrainerState

    from rlrf.core.train_log import StepLines

    out = io.StringIO()
    callback, state = StepLines(stream=out), TrainerState(max_steps=4)
    callback.on_train_begin(None, state, TrainerControl())
    state.global_step = 2
    callback.on_log(None, state, TrainerControl(), logs={"loss": 0.7, "rewards/margins": -0.01})
    state.global_step = 4
    callback.on_log(None, state, TrainerControl(), logs={"train_runtime": 12.34, "train_loss": 0.65})
    first, last = out.getvalue().splitlines()
    assert first.startswith("step 2/4 (50%): loss 0.7000, margin -0.0100, ") and " s/step, ETA " in first
    assert last == "training done: 4 steps in 12.3 s, mean loss 0.6500"


# --- run.log: the console, time-stamped, in the run directory ---------------------------------------

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "


def test_run_log_keeps_each_console_line_time_stamped_under_the_command(tmp_path, capsys):
    import re

    from rlrf.core.progress import run_log, stage

    path = tmp_path / "run.log"
    with run_log(path, "rlrf generate -c quickstart"):
        stage("[rlrf4rec] iteration 0: generate")
        print("generate: 3/10\rgenerate: 10/10")  # a bar overwritten in place: only its last state
        sys.stderr.write("\x1b[2K\x1b[1Aa terminal bar redrawn\n")  # a live bar's redraw: left out
        sys.stderr.write("wrote 10 records")  # no newline before the command ends: kept anyway
    lines = path.read_text().splitlines()
    assert all(re.match(STAMP, line) for line in lines)
    assert [re.sub(STAMP, "", line, count=1) for line in lines] == [
        "=== rlrf generate -c quickstart", "[rlrf4rec] iteration 0: generate",  # the marker's time once, the log's
        "generate: 10/10", "wrote 10 records"]
    assert re.match(r"\d\d:\d\d:\d\d \[rlrf4rec\] iteration 0: generate\n", capsys.readouterr().out)  # the console: all, timed
    with run_log(path, "rlrf score"):
        print("scored")
    assert path.read_text().splitlines()[4].endswith("=== rlrf score")  # the next command appends


def test_a_command_that_wrote_nothing_else_leaves_no_run_log(tmp_path):
    from rlrf.core.progress import run_log

    (tmp_path / ".writer.lock").write_text("")
    with run_log(tmp_path / "run.log", "rlrf data", companions=(".writer.lock",)):
        print("error: something the user must fix")
    assert not (tmp_path / "run.log").exists()


def test_a_handler_that_kept_the_tee_past_the_command_writes_to_the_console_only(tmp_path, capsys):
    import logging

    from rlrf.core.progress import run_log

    with run_log(tmp_path / "run.log", "rlrf data"):
        handler = logging.StreamHandler()  # made during the command: holds the tee, as RecBole's logger does
        print("inside")
    handler.stream.write("after\n")
    assert "after" in capsys.readouterr().err
    assert "after" not in (tmp_path / "run.log").read_text()
