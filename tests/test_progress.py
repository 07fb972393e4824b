"""Outside a terminal, progress is a plain line with done/total, rate and ETA, not a silent bar."""

from __future__ import annotations

import io

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
