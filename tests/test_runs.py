"""The append-only JSONL log every stage resumes from: each key exactly once, whoever writes it."""

from __future__ import annotations

from rlrf.core.io import JsonlLog, read_jsonl


def by_user(record: dict) -> str:
    return record["user"]


def test_a_key_is_written_once_even_across_reopen(tmp_path):
    path = tmp_path / "log.jsonl"
    assert JsonlLog(path, by_user).append([{"user": "a"}, {"user": "b"}, {"user": "a"}]) == 2
    again = JsonlLog(path, by_user)
    assert "a" in again and "c" not in again
    assert again.append([{"user": "b"}, {"user": "c"}]) == 1
    assert [r["user"] for r in read_jsonl(path)] == ["a", "b", "c"]


def test_a_torn_last_line_from_a_kill_is_dropped_then_rewritten(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"user": "a"}\n{"user": "b", "te')
    log = JsonlLog(path, by_user)
    assert "b" not in log
    assert log.append([{"user": "b"}]) == 1
    assert [r["user"] for r in read_jsonl(path)] == ["a", "b"]


def test_dropped_keys_leave_the_file_and_can_be_written_again(tmp_path):
    path = tmp_path / "scores.jsonl"
    log = JsonlLog(path, by_user)
    log.append([{"user": "a", "v": 1}, {"user": "b", "v": 1}, {"user": "c", "v": 1}])
    log.drop({"b", "z"})
    assert "b" not in log and [r["user"] for r in read_jsonl(path)] == ["a", "c"]
    assert log.append([{"user": "b", "v": 2}]) == 1
    assert [(r["user"], r["v"]) for r in read_jsonl(path)] == [("a", 1), ("c", 1), ("b", 2)]


def test_two_writers_sharing_one_file_never_duplicate_a_key(tmp_path):
    path = tmp_path / "store.jsonl"
    first, second = JsonlLog(path, by_user), JsonlLog(path, by_user)  # e.g. export and experiment at once
    assert first.append([{"user": "a", "by": 1}]) == 1
    assert second.append([{"user": "a", "by": 2}, {"user": "b", "by": 2}]) == 1
    assert first.append([{"user": "b", "by": 1}, {"user": "c", "by": 1}]) == 1
    assert [(r["user"], r["by"]) for r in read_jsonl(path)] == [("a", 1), ("b", 2), ("c", 1)]


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    import pytest

    from rlrf.core.io import atomic_directory

    final = tmp_path / "adapter"
    with atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (final / "a.txt").read_text() == "one"  # the old folder stays; the failed one is gone
    with atomic_directory(final) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"] and sorted(p.name for p in final.iterdir()) == ["b.txt"]
