"""`rlrf export merged`: the aligned policy as a plain HF model that computes what base + adapter computes."""

from __future__ import annotations

import pytest
import torch

from rlrf.core.config import LLMConfig, load_config
from rlrf.core.errors import UserError
from rlrf.export.merged import export_merged, run_export_merged


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_dir):
    """A LoRA on the tiny policy with non-zero B, so merging it changes the weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("run") / "iter_1" / "adapter"
    model.save_pretrained(folder)
    return folder


def test_the_merged_model_loads_without_peft_and_gives_base_plus_adapter_logits(tmp_path, tiny_model_dir, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_merged(LLMConfig(model=str(tiny_model_dir)), adapter, tmp_path / "merged")
    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not hasattr(merged, "peft_config")
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Star Wars (1977); Action, Sci-Fi | rated 5", return_tensors="pt").input_ids
    assert ids.tolist() == AutoTokenizer.from_pretrained(tiny_model_dir)(
        "Star Wars (1977); Action, Sci-Fi | rated 5", return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        got, want, plain = merged(ids).logits, reference(ids).logits, base(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().max() > 1e-2  # the adapter is in the weights, not lost on the way


def test_a_run_exports_an_aligned_iteration_and_refuses_one_without_an_adapter(tmp_path, tiny_model_dir, adapter):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(adapter.parent.parent), "llm": {"model": str(tiny_model_dir)}}))
    cfg = load_config(path)
    out = run_export_merged(cfg, 1)
    assert out == adapter.parent.parent / "export" / "merged" / "iter_1" and (out / "config.json").is_file()
    with pytest.raises(UserError, match="no complete adapter for iteration 0"):
        run_export_merged(cfg, 0)


def test_an_existing_folder_that_is_not_a_model_is_never_replaced(tmp_path, tiny_model_dir, adapter):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not a model directory"):
        export_merged(LLMConfig(model=str(tiny_model_dir)), adapter, tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
