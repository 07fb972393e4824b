"""The command line: a config and typed overrides on every command; bad input is one line on stderr, exit 2."""

from __future__ import annotations

import subprocess
import sys

import yaml


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlrf.cli", *args], capture_output=True, text=True, timeout=300)


def test_export_refuses_two_policies_at_once(tmp_path):
    result = run_cli("export", "--run-dir", str(tmp_path / "run"), "--base", "--iteration", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --base and --iteration name two different policies; give one"
    assert not (tmp_path / "run").exists()


def test_recbole_experiment_needs_an_export(tmp_path):
    result = run_cli("experiment", "recbole", "-c", "quickstart", "--run-dir", str(tmp_path / "run"))
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


def test_every_command_needs_a_config_unless_the_run_dir_has_one(tmp_path):
    result = run_cli("score", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: -c/--config is required (a path or a bundled name; `rlrf config list` shows them)"
    assert not (tmp_path / "run").exists()


def test_config_show_applies_typed_overrides():
    result = run_cli("config", "show", "-c", "quickstart", "align.beta=0.37", "loop.iterations=3")
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["align"]["beta"] == 0.37 and shown["loop"]["iterations"] == 3
    assert shown["align"]["trainer_args"]["learning_rate"] == 2.0e-4  # the rest of the mapping is kept


def test_overrides_are_checked_by_the_config_schema(tmp_path):
    for override, key in [("generate.max_users=-1", "generate.max_users"), ("generate.batch_size=0", "generate.batch_size"),
                          ("loop.iteration=2", "loop.iteration")]:
        result = run_cli("generate", "-c", "quickstart", "--run-dir", str(tmp_path / "run"), override)
        assert result.returncode == 2, override
        assert result.stderr.startswith("error: ") and f"'{key}'" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_run_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    result = run_cli("score", "-c", "quickstart", "--run-dir", str(tmp_path / "file"))
    assert result.returncode == 2 and result.stderr.strip() == f"error: --run-dir {tmp_path / 'file'}: not a directory"


def test_config_list_and_version():
    listed = run_cli("config", "list")
    assert listed.returncode == 0 and {line.split()[0] for line in listed.stdout.splitlines()} >= {"quickstart", "sprec"}
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("rlrf ")


def test_a_number_in_an_override_is_a_number():
    result = run_cli("config", "show", "-c", "quickstart", "align.trainer_args.learning_rate=1e-4")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["align"]["trainer_args"]["learning_rate"] == 1e-4


def test_config_show_catches_a_trainer_args_typo_in_an_override(tmp_path):
    result = run_cli("config", "show", "-c", "quickstart", "align.trainer_args.learning_rat=1e-4")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: override align.trainer_args.learning_rat=0.0001: unknown key "
                                     "'align.trainer_args.learning_rat' (not a field of trl's DPOConfig; did you mean 'learning_rate'?)")


def test_config_show_explain_prints_each_key_with_its_meaning():
    result = run_cli("config", "show", "-c", "quickstart", "--explain")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    at = lines.index("align.beta: 0.1")
    assert "KL anchor" in lines[at + 1] and lines[at + 1].startswith("    ")
