"""`rlrf data` end to end, and its failures: one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from rlrf.data.lists import load_lists


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlrf.cli", *args], capture_output=True, text=True, timeout=900)


def test_data_end_to_end_on_quickstart(tmp_path):
    config = yaml.safe_load(open("configs/quickstart.yaml"))
    config["run_dir"] = str(tmp_path / "run")
    config["data"]["max_users"] = 120
    config["sasrec"].update(enabled=True, epochs=1, show_progress=False)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config))

    result = run_cli("data", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "SASRec valid HR@10" in result.stdout
    run = tmp_path / "run"
    summary = json.loads((run / "data.json").read_text())
    assert summary["stats"]["users"] == 120
    assert 0.0 <= summary["sasrec"]["valid_hr@10"] <= 1.0
    lists = load_lists(run / "lists.jsonl")
    assert len(lists) == 120 and all(len(lst.items) == 40 for lst in lists.values())
    candidates = [json.loads(line) for line in (run / "candidates.jsonl").read_text().splitlines()]
    assert len(candidates) == 120 and all(len(c["items"]) == 20 for c in candidates)
    assert (run / "config.yaml").exists() and (run / "sasrec" / "sasrec.safetensors").exists()
    assert sorted(p.name for p in (run / "sasrec").iterdir()) == ["sasrec.json", "sasrec.safetensors"]

    # Future lists never read SASRec: without it, the same lists and no candidates
    config["run_dir"], config["sasrec"]["enabled"] = str(tmp_path / "no_sasrec"), False
    path.write_text(yaml.safe_dump(config))
    result = run_cli("data", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "not trained (sasrec.enabled: false)" in result.stdout
    bare = tmp_path / "no_sasrec"
    assert (bare / "lists.jsonl").read_bytes() == (run / "lists.jsonl").read_bytes()
    assert json.loads((bare / "data.json").read_text())["sasrec"] is None
    assert not (bare / "candidates.jsonl").exists() and not (bare / "sasrec").exists()


def test_sasrec_lists_without_sasrec_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"run_dir: {tmp_path / 'run'}\ndata:\n  lists: {{source: sasrec}}\nsasrec:\n  enabled: false\n")
    result = run_cli("data", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {path}: data.lists.source 'sasrec' "
                                     "reads SASRec's candidates, but sasrec.enabled is false")
    assert not (tmp_path / "run").exists()


def test_yaml_typo_is_one_line_exit_2_nothing_written(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(f"run_dir: {tmp_path / 'run'}\nsasrec:\n  epoch: 3\n")
    result = run_cli("data", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {path}: unknown key 'sasrec.epoch'"
    assert not (tmp_path / "run").exists()


def test_missing_dataset_is_one_line_exit_2_nothing_written(tmp_path):
    path = tmp_path / "missing.yaml"
    path.write_text(f"run_dir: {tmp_path / 'run'}\ndata:\n  path: {tmp_path / 'nowhere'}\n")
    result = run_cli("data", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nowhere'}: dataset folder not found"
    assert not (tmp_path / "run").exists()


def test_kar_lists_on_data_without_ratings_are_refused(tmp_path):
    data = tmp_path / "amz"
    data.mkdir()
    (data / "amz.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
        f"A{u}\tB{i}\t{i}\n" for u in range(4) for i in range(u, u + 5)))
    path = tmp_path / "c.yaml"
    path.write_text(f"run_dir: {tmp_path / 'run'}\ndata:\n  path: {data}\n  min_interactions: 2\n"
                    "  lists: {source: kar, length: 4}\nsasrec:\n  enabled: true\n")
    result = run_cli("data", "-c", str(path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"error: {data / 'amz.inter'}: data.lists.source 'kar' labels list items by "
                                     "their rating, but the interactions have no rating field; use data.lists.source: future")
    assert not (tmp_path / "run").exists()  # refused before SASRec trains or anything is written
