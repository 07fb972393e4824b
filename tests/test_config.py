"""Configs: typed, and a typo is an error that names the key and the file."""

from __future__ import annotations

import pytest

from rlrf.core.config import RunConfig, load_config
from rlrf.core.errors import UserError
from rlrf.core.resources import bundled_configs


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


@pytest.mark.parametrize("name", [path.stem for path in bundled_configs()])
def test_every_bundled_config_is_valid(name):
    cfg = load_config(name)
    assert cfg.loop.iterations >= 1 and cfg.score.metric in {"margin", "ndcg@5", "map@5"}


def _leaves(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        out.update(_leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def test_sprec_cpu_is_the_sprec_protocol_at_the_size_its_header_estimates():
    """configs/sprec_cpu.yaml is configs/sprec.yaml made smaller (its header's arithmetic: ~35-44 min per seed),
    with SPRec's SFT stopping rule on and the valid users kept for it: every other setting is the same."""
    cpu, full = (_leaves(load_config(name).model_dump(mode="json")) for name in ("sprec_cpu", "sprec"))
    changed = {key: cpu.get(key) for key in cpu.keys() | full.keys() if cpu.get(key) != full.get(key)}
    assert changed == {
        "run_dir": "runs/sprec_cpu",
        "loop.iterations": 2,
        "sprec.users_per_iteration": 64,
        "sprec.sft_max_examples": 512,
        "sprec.sft_until_better": True,
        "sprec.sft_max_epochs": 2,
        "sprec.sft_valid_users": None,  # every valid user selects the SFT epoch ...
        "sprec.eval_splits": ["test"],  # ... and none of them is reported
        "sprec.seeds": [0, 1, 2],
    }


def test_unknown_reward_metric_is_refused_at_load(tmp_path):
    path = tmp_path / "metric.yaml"
    path.write_text("score:\n  metric: ndcg@10\n")
    with pytest.raises(UserError, match=rf"{path}: key 'score.metric'"):
        load_config(path)


def test_every_key_of_every_section_says_what_it_means():
    from pydantic import BaseModel

    def undocumented(model: type[BaseModel], prefix: str = "") -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not (field.description or "").strip():
                missing.append(prefix + name)
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                missing += undocumented(field.annotation, f"{prefix}{name}.")
        return missing

    assert undocumented(RunConfig) == []


def test_explain_lists_each_key_with_its_value_and_meaning():
    from rlrf.core.config import explain

    rows = {key: (value, meaning) for key, value, meaning in explain(load_config("quickstart", {"lora.use_dora": True}))}
    assert rows["align.beta"][0] == 0.1 and "KL" in rows["align.beta"][1]
    assert rows["data.lists.source"][0] == "future"
    assert rows["align.trainer_args.learning_rate"][1].startswith("DPOConfig: ")  # trl's own help
    assert rows["lora.use_dora"] == (True, rows["lora.use_dora"][1]) and "DoRA" in rows["lora.use_dora"][1]
    assert all(meaning for _, meaning in rows.values())


def test_no_section_class_shadows_a_library_config_name():
    import rlrf.core.config as config

    sections = {name for name, obj in vars(config).items() if isinstance(obj, type) and issubclass(obj, config.Section)}
    assert not sections & {"SFTConfig", "LoraConfig", "DPOConfig", "GRPOConfig", "RLOOConfig", "Config"}


def test_numbers_parse_as_numbers_in_files_too(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("align:\n  trainer_args: {learning_rate: 1e-4, max_steps: 3}\n")
    cfg = load_config(path)
    assert cfg.align.trainer_args["learning_rate"] == 1e-4 and cfg.align.trainer_args["max_steps"] == 3


@pytest.mark.parametrize("section,key,library", [
    ("align", "learning_rat", "trl's DPOConfig; did you mean 'learning_rate'?"),
    ("sft", "packing_strategi", "trl's SFTConfig; did you mean 'packing_strategy'?"),
    ("online", "num_generation", "trl's GRPOConfig / RLOOConfig; did you mean 'num_generations'?"),
])
def test_a_trainer_args_typo_is_refused_at_load_naming_the_library_class(tmp_path, section, key, library):
    path = tmp_path / "typo.yaml"
    path.write_text(f"{section}:\n  trainer_args: {{{key}: 1}}\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: unknown key '{section}.trainer_args.{key}' (not a field of {library})"


def test_a_lora_typo_is_refused_and_a_real_peft_field_passes(tmp_path):
    with pytest.raises(UserError) as err:
        load_config("quickstart", {"lora.rr": 4})
    assert str(err.value) == "override lora.rr=4: unknown key 'lora.rr' (not a field of peft's LoraConfig)"
    assert load_config("quickstart", {"lora.use_dora": True}).lora.model_extra == {"use_dora": True}


def test_a_bad_override_is_blamed_on_the_override_not_the_file():
    with pytest.raises(UserError) as err:
        load_config("quickstart", {"align.trainer_args.learning_rat": 1e-4})
    assert str(err.value).startswith("override align.trainer_args.learning_rat=0.0001: unknown key 'align.trainer_args.learning_rat'")
    with pytest.raises(UserError, match=r"^override loop.iterations=0: key 'loop.iterations'"):
        load_config("quickstart", {"loop.iterations": 0})
    with pytest.raises(UserError, match=r"^override seed.x=1: 'seed' is not a section$"):
        load_config("quickstart", {"seed.x": 1})


def test_rlrfs_trainer_defaults_are_fields_of_the_trl_classes_they_go_to():
    from rlrf.core.config import AlignConfig, OnlineConfig, SupervisedConfig, dataclass_fields

    for section in (AlignConfig, OnlineConfig, SupervisedConfig):
        for path in section.TRAINER_CLASSES:
            assert set(section.DEFAULTS) <= dataclass_fields(path), path


def test_online_trainer_args_are_checked_against_the_method_in_use():
    assert load_config("quickstart", {"align.method": "grpo", "online.trainer_args.loss_type": "dapo"})
    with pytest.raises(UserError) as err:
        load_config("quickstart", {"align.method": "rloo", "online.trainer_args.loss_type": "dapo"})
    assert str(err.value) == ("override online.trainer_args.loss_type=dapo: unknown key 'online.trainer_args.loss_type' "
                              "(not a field of trl's RLOOConfig, which align.method rloo uses)")


def test_a_saved_config_reads_back_to_the_same_values(tmp_path):
    from rlrf.core.config import save_config

    cfg = load_config("quickstart", {"generate.domain": "1e5", "align.trainer_args.learning_rate": 1e-5})
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and again.generate.domain == "1e5" and again.align.trainer_args["learning_rate"] == 1e-5


def test_an_unset_domain_follows_the_data_so_other_catalogues_never_get_movie_prompts(tmp_path):
    from rlrf.core.config import RunConfig

    assert RunConfig().generate.domain == "movies"  # the bundled ml-100k
    assert RunConfig(data={"path": tmp_path / "ml-1m"}).generate.domain == "movies"
    assert RunConfig(data={"path": tmp_path / "amazon-beauty"}).generate.domain == "items"
    assert RunConfig(data={"path": tmp_path / "amazon-beauty"}, generate={"domain": "products"}).generate.domain == "products"
