"""Configs: typed, and a typo is an error that names the key and the file."""

from __future__ import annotations

import pytest

from rlrf.core.config import RunConfig, load_config
from rlrf.core.errors import UserError


def test_bundled_quickstart_loads_by_name_and_by_path():
    by_name = load_config("quickstart")
    assert isinstance(by_name, RunConfig)
    assert (by_name.data.lists.source, by_name.data.lists.length) == ("future", 40)
    assert load_config("configs/quickstart.yaml") == by_name


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("data:\n  min_interaction: 3\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: unknown key 'data.min_interaction'"


def test_wrong_type_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sasrec:\n  epochs: many\n")
    with pytest.raises(UserError, match=rf"{path}: key 'sasrec.epochs': .*integer"):
        load_config(path)


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  path: [unclosed\n")
    with pytest.raises(UserError, match=rf"{path}: line \d+ invalid YAML"):
        load_config(path)


def test_split_must_sum_to_one(tmp_path):
    path = tmp_path / "split.yaml"
    path.write_text("data:\n  split: {train: 0.9, valid: 0.2, test: 0.1}\n")
    with pytest.raises(UserError, match="data.split"):
        load_config(path)


def test_missing_config_file():
    with pytest.raises(UserError, match="config file not found"):
        load_config("no-such-config.yaml")


@pytest.mark.parametrize("name", ["quickstart", "ml100k"])
def test_every_bundled_config_is_valid(name):
    cfg = load_config(name)
    assert cfg.loop.iterations >= 1 and cfg.score.metric in {"margin", "ndcg@5", "map@5"}


def test_unknown_reward_metric_is_refused_at_load(tmp_path):
    path = tmp_path / "metric.yaml"
    path.write_text("score:\n  metric: ndcg@10\n")
    with pytest.raises(UserError, match=rf"{path}: key 'score.metric'"):
        load_config(path)
