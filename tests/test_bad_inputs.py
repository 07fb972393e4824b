"""Hostile inputs to the data layer, the SASRec config and the JSONL records (issue 13): each is one
line naming the file/field (exit 2 from the CLI, nothing written) or handled and reported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlrf.core.config import DataConfig, ListsConfig, RunConfig, SASRecConfig
from rlrf.data.dataset import load_dataset
from rlrf.data.lists import build_lists, candidate_lists
from rlrf.core.errors import UserError
from rlrf.core.io import JsonlLog, read_jsonl

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM = "item_id:token\tmovie_title:token_seq\tclass:token_seq\n"


def write(folder: Path, inter: str, item: str | None = None, name: str = "d") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text(inter, encoding="utf-8")
    if item is not None:
        (folder / f"{name}.item").write_text(item, encoding="utf-8")
    return folder


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlrf.cli", *args], capture_output=True, text=True, timeout=300)


# --- duplicates, blanks, missing titles: handled and reported


def test_duplicate_interactions_keep_the_latest_with_its_rating(tmp_path, capsys):
    rows = ["u1\ta\t1\t10", "u1\tb\t5\t20", "u1\ta\t4\t30", "u1\tc\t2\t25", "u1\ta\t3\t30", "u2\ta\t5\t1",
            "u2\tb\t4\t2", "u2\tb\t4\t2", "u2\tc\t1\t3"]
    folder = write(tmp_path / "d", INTER + "\n".join(rows) + "\n")
    ds = load_dataset(DataConfig(path=folder, min_interactions=1))
    ids = ds.catalog.ids
    # u1: a@10 and a@30 (twice, file order breaks the tie: rating 3 is the latest) -> a once, at 30
    assert [ids[i] for i in ds.users["u1"].items] == ["b", "c", "a"]
    assert ds.users["u1"].ratings == [5.0, 2.0, 3.0]
    assert [ids[i] for i in ds.users["u2"].items] == ["a", "b", "c"]
    assert ds.stats.duplicate_interactions == 3 and ds.stats.interactions == 6
    assert "3 repeated (user, item) row(s) dropped" in ds.stats.warnings[0]
    assert capsys.readouterr().err.count("\n") == 1


def test_duplicated_rows_never_put_an_item_twice_in_a_list(tmp_path):
    """The issue's case: ml-100k users with every row written twice (48 of 60 lists held an item twice)."""
    from rlrf.data.dataset import bundled_ml100k

    lines = (bundled_ml100k() / "ml-100k.inter").read_text().splitlines()
    users = {line.split("\t")[0] for line in lines[1:]}
    keep = set(sorted(users)[:60])
    body = [line for line in lines[1:] if line.split("\t")[0] in keep]
    folder = write(tmp_path / "dup", "\n".join([lines[0], *body, *body[::3]]) + "\n", name="dup")
    ds = load_dataset(DataConfig(path=folder), seed=0)
    assert ds.stats.duplicate_interactions == len(body[::3]) and ds.stats.interactions == len(body)
    lists = build_lists(ds, ListsConfig(), seed=0)
    sasrec_like = {u: list(range(20)) for u in ds.users}
    for lst in [*lists.values(), *candidate_lists(ds, ListsConfig(source="sasrec"), sasrec_like).values()]:
        assert len(set(lst.history)) == len(lst.history)
    for lst in lists.values():
        assert len(set(lst.items)) == len(lst.items) and not set(lst.items) & set(lst.history)


def test_blank_ids_are_skipped_counted_and_reported(tmp_path, capsys):
    rows = ["u1\ta\t1\t1", "\ta\t1\t2", "u1\t\t3\t3", "u1\tb\t2\t4", "u2\ta\t5\t1", "u2\tb\t5\t2"]
    item = ITEM + "a\tAlpha\tDrama\n\tNobody\tDrama\n"
    folder = write(tmp_path / "d", INTER + "\n".join(rows) + "\n", item)
    ds = load_dataset(DataConfig(path=folder, min_interactions=1))
    assert ds.stats.blank_id_rows == 3 and ds.stats.interactions == 4
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("d.inter: 2 row(s) with a blank user_id or item_id skipped (first at line 3)")
    assert err[1].endswith("d.item: 1 row(s) with a blank item_id skipped (first at line 3)")


def test_item_file_without_a_title_field_is_a_warning(tmp_path, capsys):
    folder = write(tmp_path / "d", INTER + "u1\ta\t1\t1\nu1\tb\t1\t2\n", "item_id:token\tclass:token_seq\na\tDrama\n")
    ds = load_dataset(DataConfig(path=folder, min_interactions=1))
    assert ds.catalog.titles[ds.catalog.index("a")] == "unknown item a"
    assert capsys.readouterr().err.strip() == (
        f"warning: {folder / 'd.item'}: no title field (movie_title, title, item_name, name); "
        "items are titled 'unknown item <id>'")
    assert ds.stats.warnings and "no title field" in ds.stats.warnings[0]


def test_repeated_item_ids_first_row_wins_and_is_counted(tmp_path, capsys):
    item = ITEM + "a\tAlpha\tDrama\nb\tBeta\tComedy\na\tAlpha Again\tHorror\n"
    folder = write(tmp_path / "d", INTER + "u1\ta\t1\t1\nu1\tb\t1\t2\n", item)
    ds = load_dataset(DataConfig(path=folder, min_interactions=1))
    assert ds.catalog.titles[ds.catalog.index("a")] == "Alpha" and ds.catalog.genres[ds.catalog.index("a")] == ("Drama",)
    assert ds.stats.duplicate_item_rows == 1
    assert "1 repeated item_id row(s) ignored, the first row of each id kept (first repeat at line 4)" in \
        capsys.readouterr().err


def test_non_number_reports_the_first_bad_line_of_the_file(tmp_path):
    # with the blank lines, NaN is on line 4, the first bad line of the file; "oops" (line 6) sorts
    # first by timestamp, which is the line the old reader named
    rows = ["u1\ta\t1\t5", "u1\tb\tNaN\t9", "u1\tc\toops\t1", "u1\td\tinf\t2"]
    folder = write(tmp_path / "d", INTER + "\n\n".join(rows) + "\n")  # blank lines count as lines
    with pytest.raises(UserError, match=r"d\.inter: line 4: field rating is not a number \('NaN'\)$"):
        load_dataset(DataConfig(path=folder, min_interactions=1))


# --- bad inputs: one line naming the file and line/field


def test_tab_inside_a_title_names_file_and_line(tmp_path):
    folder = write(tmp_path / "d", INTER + "u1\ta\t1\t1\n", ITEM + "a\tAlpha\tDrama\nb\tBeta\tThe Sequel\tDrama\n")
    with pytest.raises(UserError, match=r"d\.item: line 3 has 4 tab-separated fields but the header has 3"):
        load_dataset(DataConfig(path=folder, min_interactions=1))


@pytest.mark.parametrize("row,field", [('"u1\ta\t1\t1', "user_id"), ('u1\t"a"\t1\t1', "item_id")])
def test_ids_starting_with_a_quote_are_refused(tmp_path, row, field):
    folder = write(tmp_path / "d", INTER + "u1\tb\t1\t1\n" + row + "\n")
    with pytest.raises(UserError, match=rf"d\.inter: line 3: field {field} starts with a double quote"):
        load_dataset(DataConfig(path=folder, min_interactions=1))


@pytest.mark.parametrize("which", ["inter", "item"])
def test_atomic_file_that_is_a_directory(tmp_path, which):
    folder = write(tmp_path / "d", INTER + "u1\ta\t1\t1\n")
    if which == "inter":
        (folder / "d.inter").unlink()
    (folder / f"d.{which}").mkdir()
    with pytest.raises(UserError, match=rf"d\.{which}: is a directory, not a RecBole atomic file"):
        load_dataset(DataConfig(path=folder, min_interactions=1))


@pytest.mark.parametrize("values,message", [
    ({"hidden_size": 0}, "hidden_size"),
    ({"n_heads": 3, "hidden_size": 16}, r"n_heads \(3\) must divide hidden_size \(16\)"),
    ({"n_layers": 0}, "n_layers"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"max_seq_length": -1}, "max_seq_length"),
])
def test_sasrec_config_is_validated(values, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        SASRecConfig(**values)


@pytest.mark.parametrize("case", ["quote_id", "tab_title", "heads"])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(tmp_path, case):
    folder = write(tmp_path / "d", INTER + "u1\ta\t1\t1\nu1\tb\t1\t2\n", ITEM + "a\tAlpha\tDrama\n")
    config = f"run_dir: {tmp_path / 'run'}\ndata:\n  path: {folder}\n  min_interactions: 1\n"
    if case == "quote_id":
        (folder / "d.inter").write_text(INTER + 'u1\ta\t1\t1\n"u2\tb\t1\t2\n')
        expected = f"error: {folder / 'd.inter'}: line 3: field user_id starts with a double quote"
    elif case == "tab_title":
        (folder / "d.item").write_text(ITEM + "a\tAl\tpha\tDrama\n")
        expected = f"error: {folder / 'd.item'}: line 2 has 4 tab-separated fields"
    else:
        config += "sasrec:\n  hidden_size: 16\n  n_heads: 3\n"
        expected = f"error: {tmp_path / 'c.yaml'}: key 'sasrec': n_heads (3) must divide hidden_size (16)"
    path = tmp_path / "c.yaml"
    path.write_text(config)
    result = run_cli("data", "-c", str(path))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(expected), result.stderr
    assert not (tmp_path / "run").exists()


# --- JSON Lines: one reader, a torn last line is refused by readers and repaired by its writer


def test_read_jsonl_refuses_a_torn_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"user": "a"}\n{"user": "b", "te')
    with pytest.raises(UserError, match=r"r\.jsonl: line 2 is cut short .* re-run the stage that writes"):
        read_jsonl(path)
    JsonlLog(path, key=lambda r: r["user"])  # its writer repairs it on resume
    assert read_jsonl(path) == [{"user": "a"}]
    path.write_text('{"user": "a"}\n{"user": "b"}')  # complete, only the final newline missing (hand-made)
    assert read_jsonl(path) == [{"user": "a"}, {"user": "b"}]
    path.write_text('{"user": "a"}\n{"user": \n{"user": "c"}\n')
    with pytest.raises(UserError, match=r"r\.jsonl: line 2 is not valid JSON"):
        read_jsonl(path)


def test_score_refuses_torn_responses_and_scores_nothing(tmp_path):
    """The issue's case: `rlrf score` alone scored 15 of 16 responses from a torn responses.jsonl."""
    import json

    from rlrf.reward.score import score_responses

    cfg = RunConfig(run_dir=tmp_path / "run")
    out = tmp_path / "run" / "iter_0"
    out.mkdir(parents=True)
    records = [json.dumps({"user": str(u), "iter": 0, "k": k, "text": "likes films", "n_tokens": 2,
                           "prompt_hash": "h"}) for u in range(8) for k in range(2)]
    (out / "responses.jsonl").write_text("\n".join(records[:-1]) + "\n" + records[-1][:20])

    class Scorer:
        def score(self, users, texts):
            raise AssertionError("nothing may be scored from a torn file")

    with pytest.raises(UserError, match=r"responses\.jsonl: line 16 is cut short"):
        score_responses(cfg, 0, Scorer(), show_progress=False)
    assert not (out / "scores.jsonl").exists()


def test_lists_are_read_by_the_same_reader(tmp_path):
    from rlrf.data.lists import load_lists

    path = tmp_path / "lists.jsonl"
    path.write_text('{"user": "a", "history": [], "history_ratings": [], "items": [1], "labels": [0]}\n{"user"')
    with pytest.raises(UserError, match=r"lists\.jsonl: line 2 is cut short"):
        load_lists(path)
