"""The issue-6/7 commands are wired: bad arguments end as one line on stderr with exit code 2."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlrf.cli", *args], capture_output=True, text=True, timeout=300)


def test_export_refuses_two_policies_at_once(tmp_path):
    result = run_cli("export", "--run-dir", str(tmp_path / "run"), "--base", "--iteration", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --base and --iteration name two different policies; give one"
    assert not (tmp_path / "run").exists()


def test_recbole_experiment_needs_an_export(tmp_path):
    result = run_cli("experiment", "recbole", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "run `rlrf export` first" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_sprec_names_a_bad_config_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sprec:\n  topk: everything\n")
    result = run_cli("sprec", "-c", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {bad}: key 'sprec.topk'")


def test_sprec_needs_a_method_and_positive_cut_offs(tmp_path):
    for body, key in [("sprec: {methods: []}", "sprec.methods"), ("sprec: {ks: [0, 5]}", "sprec")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(body + "\n")
        result = run_cli("sprec", "-c", str(bad), "--run-dir", str(tmp_path / "run"))
        assert result.returncode == 2 and result.stderr.startswith(f"error: {bad}: key '{key}'")
        assert not (tmp_path / "run").exists()
