"""A run directory belongs to one dataset and config and has one writer at a time; what the OS or the
user refuses (a read-only directory, a file in the way, Ctrl-C, a negative iteration) is one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from rlrf.core.config import load_config, save_config
from rlrf.core.errors import UserError
from rlrf.core.layout import RunLayout
from rlrf.core.rundir import check_same_run, config_differences, writer_lock


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlrf.cli", *args], capture_output=True, text=True, timeout=300)


def _run_dir_of(tmp_path, **overrides):
    cfg = load_config("quickstart", {"run_dir": str(tmp_path / "run"), **overrides})
    cfg.run_dir.mkdir(parents=True)
    save_config(cfg, RunLayout(cfg.run_dir).config)
    return cfg


# --- one dataset and config -----------------------------------------------------------------------

def test_a_config_with_other_data_is_refused_naming_each_key_old_and_new(tmp_path):
    _run_dir_of(tmp_path, **{"data.path": str(tmp_path / "amazon"), "data.max_users": 50})
    other = load_config("quickstart", {"run_dir": str(tmp_path / "run")})
    assert config_differences(other) == [f'data.max_users: 50 -> null', f'data.path: "{tmp_path / "amazon"}" -> null']
    with pytest.raises(UserError, match=r"holds a run made with another config \(data.max_users: 50 -> null; "):
        check_same_run(other)


def test_settings_that_made_nothing_yet_may_change_between_commands(tmp_path):
    cfg = _run_dir_of(tmp_path)
    changed = load_config("quickstart", {"run_dir": str(cfg.run_dir), "loop.iterations": 5, "align.beta": 0.3,
                                         "generate.n": 8, "llm.model": "other", "encoder.model": "hashing:32"})
    assert config_differences(changed) == []  # no iteration or reward model exists yet
    (cfg.run_dir / "iter_0").mkdir()
    (cfg.run_dir / "reward").mkdir()
    assert config_differences(changed) == ['encoder.model: null -> "hashing:32"', 'llm.model: null -> "other"']
    assert config_differences(load_config("quickstart", {"run_dir": str(cfg.run_dir), "seed": 1})) == ["seed: 0 -> 1"]


def test_the_cli_refuses_a_mismatched_run_dir_with_one_line_and_writes_nothing(tmp_path):
    cfg = _run_dir_of(tmp_path, **{"data.max_users": 50})
    before = sorted(p.name for p in cfg.run_dir.iterdir())
    for command in (["data"], ["score"], ["generate", "-i", "1"], ["run"]):
        result = run_cli(*command, "-c", "quickstart", "--run-dir", str(cfg.run_dir))
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"error: {cfg.run_dir} holds a run made with another config (data.max_users: 50 -> null)")
        assert "rlrf data" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == before


# --- one writer -----------------------------------------------------------------------------------

def test_a_second_writer_is_refused_naming_the_holder_and_readers_are_not(tmp_path):
    cfg = _run_dir_of(tmp_path)
    with writer_lock(cfg.run_dir, "rlrf run -c quickstart"):
        result = run_cli("score", "--run-dir", str(cfg.run_dir))
        assert result.returncode == 2
        line = result.stderr.strip()
        assert line.startswith(f"error: {cfg.run_dir}: pid {os.getpid()} (rlrf run -c quickstart, since ")
        assert line.endswith("is writing this run directory; wait for it to finish or use another --run-dir")
        shown = run_cli("config", "show", "--run-dir", str(cfg.run_dir))
        assert shown.returncode == 0, shown.stderr
        report = run_cli("report", "--run-dir", str(cfg.run_dir))  # reads; its own error, not the lock's
        assert report.returncode == 2 and "metrics.json: not found" in report.stderr
        pool = run_cli("pool", str(cfg.run_dir))
        assert pool.returncode == 2 and "no RLRF4Rec metrics" in pool.stderr


def test_the_lock_of_a_killed_writer_is_taken_over(tmp_path):
    root = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom rlrf.core.rundir import writer_lock\n"
        f"with writer_lock({str(root)!r}, 'rlrf generate'):\n    print('held', flush=True)\n    time.sleep(300)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"pid {holder.pid} \(rlrf generate"):
            with writer_lock(root, "rlrf score"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert json.loads(RunLayout(root).writer_lock.read_text())["pid"] == holder.pid  # its file stays behind
    with writer_lock(root, "rlrf score"):
        assert json.loads(RunLayout(root).writer_lock.read_text())["pid"] == os.getpid()


def test_a_lock_is_released_when_its_command_returns(tmp_path):
    with writer_lock(tmp_path / "run", "first"):
        (tmp_path / "run" / "x").write_text("")
    with writer_lock(tmp_path / "run", "second"):
        pass


def test_a_failed_command_leaves_no_empty_run_dir_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with writer_lock(tmp_path / "a" / "run", "rlrf data"):
            raise RuntimeError("failed before writing")
    assert not (tmp_path / "a").exists()


# --- what the OS refuses, Ctrl-C, iterations ---------------------------------------------------------

def test_a_run_dir_under_a_file_is_one_line_naming_the_path(tmp_path):
    (tmp_path / "file").write_text("")
    result = run_cli("data", "-c", "quickstart", "--run-dir", str(tmp_path / "file" / "run"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: cannot write {tmp_path / 'file' / 'run'}: Not a directory"


@pytest.fixture
def immutable_dir(tmp_path):
    folder = tmp_path / "immutable"
    folder.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_run_dir_is_one_line_naming_the_path(immutable_dir):
    result = run_cli("data", "-c", "quickstart", "--run-dir", str(immutable_dir))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: cannot write {immutable_dir / '.writer.lock'}: Operation not permitted"


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    # a shell's background job (`cmd &`) starts with SIGINT ignored, and Python then keeps it ignored:
    # the command gets Ctrl-C as from a terminal only with the default disposition restored
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "rlrf.cli", "data", "-c", "quickstart", "--run-dir", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not RunLayout(run).writer_lock.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert stderr.strip() == "interrupted: rerun the same command to continue where it stopped"


@pytest.mark.parametrize("command", [["generate"], ["score"], ["align"], ["export"]])
def test_a_negative_iteration_is_refused(tmp_path, command):
    result = run_cli(*command, "-c", "quickstart", "--run-dir", str(tmp_path / "run"), "-i", "-1")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --iteration -1: iterations count from 0"
    assert not (tmp_path / "run").exists()
