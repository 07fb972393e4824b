"""report.md of an RLRF4Rec run, drawn from a hand-built run directory: what ran, the change with its
relative size, real summaries before and after, every user's values in a file, each user's change."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from rlrf.core.layout import RunLayout
from rlrf.report import write_report

USERS = ["u1", "u2", "u3", "u4"]


def _evaluation(ndcg: list[float], tokens: list[int], copied: list[float]) -> dict:
    per_user = {"users": USERS, "reward_mean": ndcg, "reward_best": [v + 0.1 for v in ndcg], "ndcg@5": ndcg,
                "map@5": [v / 2 for v in ndcg], "tokens": tokens, "copied": copied}
    means = {k: sum(v) / len(v) for k, v in per_user.items() if k != "users"}
    return {"users": 4, "responses": 8, "metric": "ndcg@5", **means, "empty": 0, "flagged": 0,
            "rewards": ndcg + ndcg, "per_user": per_user}


@pytest.fixture
def run(tmp_path):
    layout = RunLayout(tmp_path / "run")
    layout.root.mkdir()
    layout.config.write_text(yaml.safe_dump({"seed": 3, "llm": {"model": "my/model"}, "loop": {"iterations": 1},
                                             "align": {"method": "dpo", "loss": "dpo", "beta": 0.1},
                                             "reward": {"model": "dlcm", "knowledge": True}}))
    layout.data_summary.write_text(json.dumps({"dataset": "ml-100k", "path": "/data/ml-100k"}))
    layout.reward.mkdir()
    layout.reward_train.write_text(json.dumps({"models": {
        "dlcm_knowledge": [{"seed": 3, "valid_map@5": 0.4273}], "dlcm": [{"seed": 3, "valid_map@5": 0.3048}],
        "prm_knowledge": [{"seed": 4, "valid_map@5": 0.3366}, {"seed": 3, "valid_map@5": 0.1}]}}))
    for label, texts in (("policy_0", ["likes old films", "", "drama\nand   war", "x"]),
                         ("policy_1", ["likes Hitchcock thrillers", "comedies", "war films", "y"])):
        path = layout.evaluation(label).greedy.responses(0)
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps({"user": u, "iter": 0, "k": 0, "text": t, "n_tokens": 3, "prompt_hash": "h",
                                            "finished": True}) + "\n" for u, t in zip(USERS, texts)))
    (layout.iteration(0) / "tensorboard" / "adapter").mkdir(parents=True)
    metrics = {"method": "rlrf4rec",
               "evaluations": {"policy_0": _evaluation([0.2, 0.4, 0.6, 0.8], [10, 10, 10, 10], [0.0, 0.1, 0.0, 0.1]),
                               "policy_1": _evaluation([0.3, 0.5, 0.7, 0.7], [20, 22, 24, 26], [0.5, 0.5, 0.4, 0.6])},
               "iterations": {"0": {"pairs": {"users": 8, "pairs": 6, "skipped_tie": 2}, "adapter": "a", "seconds": 61.5}},
               "environment": {"git_commit": "abc1234", "versions": {"torch": "2.13.0", "trl": "1.16.0", "recbole": None},
                               "numerics": {"dtype": "float32", "torch_threads": 2, "cuda": None,
                                            "cpu_flags": {"avx2": True, "avx512_bf16": False, "amx_bf16": True}}}}
    layout.metrics.write_text(json.dumps(metrics))
    return layout, metrics


def test_the_report_says_how_the_run_was_made(run):
    layout, metrics = run
    report = write_report(layout.root, metrics).read_text()
    for line in ("- dataset: ml-100k (/data/ml-100k)", f"- config: `{layout.config}`", "- policy: my/model; seed 3",
                 "- git commit: abc1234", "- versions: torch 2.13.0, trl 1.16.0\n",
                 "- numerics: dtype float32, torch threads 2, cpu flags avx2 amx_bf16\n",
                 "- reward model (dlcm_knowledge seed 3): validation MAP@5 0.4273",
                 "- the same without knowledge (dlcm seed 3): validation MAP@5 0.3048",
                 "- independent evaluator (prm_knowledge seed 4): validation MAP@5 0.3366",
                 "(generate, score, align; evaluations not counted): 62 s",
                 f"`tensorboard --logdir {layout.root}` (event files in `iter_0/tensorboard/adapter`)"):
        assert line in report, line


def test_each_change_shows_its_size_relative_to_policy_0(run):
    layout, metrics = run
    report = write_report(layout.root, metrics).read_text()
    row = next(line for line in report.splitlines() if line.startswith("| policy_1 | +"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # NDCG@5: mean 0.5 -> 0.55 is +0.05, +10.0 % of policy_0's mean; tokens 10 -> 23 is +130 %
    assert cells[3].startswith("+0.0500 (+10.0%) [")
    assert cells[5].startswith("+13.0 (+130.0%) [")


def test_greedy_summaries_of_three_users_before_and_after(run):
    layout, metrics = run
    report = write_report(layout.root, metrics).read_text()
    section = report[report.index("## Greedy summaries of policy_0 and policy_1"):]
    assert [line for line in section.splitlines() if line.startswith("**user")] == ["**user u1**", "**user u2**",
                                                                                     "**user u3**"]
    assert "- policy_0 (NDCG@5 0.2000): likes old films" in section
    assert "- policy_1 (NDCG@5 0.3000): likes Hitchcock thrillers" in section
    assert "- policy_0 (NDCG@5 0.4000): (empty)" in section
    assert "- policy_0 (NDCG@5 0.6000): drama and war" in section  # whitespace folded onto one line


def test_every_users_values_go_to_a_csv_beside_the_report(run):
    layout, metrics = run
    write_report(layout.root, metrics)
    with layout.per_user_table.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and [(r["policy"], r["user"]) for r in rows[:2]] == [("policy_0", "u1"), ("policy_0", "u2")]
    assert rows[5]["tokens"] == "22" and float(rows[7]["ndcg@5"]) == 0.7 and float(rows[4]["copied"]) == 0.5


def test_the_plots_pair_each_user_and_show_length_and_copying(run):
    layout, metrics = run
    report = write_report(layout.root, metrics).read_text()
    for name in ("improvement", "per_user_change"):
        assert layout.figure(name).stat().st_size > 10_000 and f"({name}.png)" in report
    assert "reward_distribution" not in report
    from rlrf.report.rlrf4rec import MEASURES, differences

    diffs = differences(metrics)["policy_1"]
    assert diffs["tokens"]["mean"] == pytest.approx(13.0) and diffs["copied"]["better"] == 4
    assert {key for key, _ in MEASURES} >= {"tokens", "copied"}


def test_a_run_without_its_files_still_reports(tmp_path, run):
    _, metrics = run
    (tmp_path / "bare").mkdir()
    report = write_report(tmp_path / "bare", metrics).read_text()
    assert "## Run" in report and "validation MAP@5" not in report and "Greedy summaries" not in report


def test_the_change_table_shows_the_shares_that_end_and_repeat_and_the_closing_line_the_result(run):
    from rlrf.report.rlrf4rec import headline

    layout, metrics = run
    for label, ended, repeated in (("policy_0", [1, 1, 0, 0], [0, 0, 0, 0]), ("policy_1", [0, 0, 0, 0], [1, 1, 0, 0])):
        ev = metrics["evaluations"][label]
        ev["per_user"].update(ended=ended, repeated=repeated)
        ev.update(ended=sum(ended) / 4, repeated=sum(repeated) / 4)
    report = write_report(layout.root, metrics).read_text()
    header = next(line for line in report.splitlines() if line.startswith("| policy | mean reward"))
    assert header.endswith("| ends on its own (greedy) | repeats itself (greedy) | degenerate |")
    row = next(line for line in report.splitlines() if line.startswith("| policy_1 | +"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-2].startswith("-0.5000 (-100.0%) [") and cells[-1].startswith("+0.5000 [")
    line = headline(metrics)
    assert line.startswith("result: policy_1 vs policy_0 on 4 test users: mean reward +0.0500 [")  # NDCG 0.5 -> 0.55
    assert "independent" not in line  # this run has no independent evaluator
