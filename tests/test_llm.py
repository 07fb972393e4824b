"""Loading the policy: HF folders, the default GGUF conversion path, LoRA adapters and their errors."""

from __future__ import annotations

import os

import pytest
import torch

from rlrf.core.config import LLMConfig
from rlrf.core.errors import UserError
from rlrf.generation.policy import cache_root, load_policy, resolve_model_source

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def _logits(model, tokenizer, text="Toy Story (1995)"):
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1]


def test_load_hf_folder(tiny_model_dir):
    policy = load_policy(LLMConfig(model=str(tiny_model_dir)))
    assert policy.device.type == "cpu" and policy.dtype == torch.float32
    assert not policy.model.training
    assert policy.tokenizer.padding_side == "left" and policy.tokenizer.pad_token_id is not None
    assert next(policy.model.parameters()).dtype == torch.float32


def test_load_dtype_override(tiny_model_dir):
    policy = load_policy(LLMConfig(model=str(tiny_model_dir), dtype="bfloat16"))
    assert next(policy.model.parameters()).dtype == torch.bfloat16


def test_missing_model_path_is_user_error(tmp_path):
    with pytest.raises(UserError, match="llm.model"):
        load_policy(LLMConfig(model=str(tmp_path / "nope" / "model")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_policy(LLMConfig(model=str(tmp_path / "empty")))


def test_hub_ids_fail_fast_and_in_one_line_when_not_cached(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not found"):
        resolve_model_source("./relative/missing")
    # offline (HF_HUB_OFFLINE=1 in these tests), an id that is not in the hub cache is refused at once
    with pytest.raises(UserError, match="not in the local hub cache and HF_HUB_OFFLINE is set"):
        load_policy(LLMConfig(model="no-such-owner-xyz/no-such-model"))
    # online but unreachable (or no such repo): one short request, then one line, not a minute of retries
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(UserError, match="cannot reach no-such-owner-xyz/no-such-model on the hub"):
        resolve_model_source("no-such-owner-xyz/no-such-model")


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("RLRF_CACHE_DIR", raising=False)
    monkeypatch.delenv("RLRF_CACHE", raising=False)
    assert cache_root(None) == cache_root(None)  # ~/.cache/rlrf
    monkeypatch.setenv("RLRF_CACHE", str(tmp_path / "a"))
    assert cache_root(None) == tmp_path / "a"
    monkeypatch.setenv("RLRF_CACHE_DIR", str(tmp_path / "b"))
    assert cache_root(None) == tmp_path / "b"
    assert cache_root(tmp_path / "c") == tmp_path / "c"


def _save_lora(base_dir, out_dir, *, seed=1, target=("q_proj", "v_proj")):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(target)))
    with torch.no_grad():  # lora_B starts at zero (a no-op adapter); make it do something
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(out_dir)
    return peft_model


def test_adapter_loads_merged_and_unmerged(tiny_model_dir, tmp_path):
    peft_model = _save_lora(tiny_model_dir, tmp_path / "lora")
    tokenizer = load_policy(LLMConfig(model=str(tiny_model_dir))).tokenizer
    expected = _logits(peft_model.eval(), tokenizer)
    base = load_policy(LLMConfig(model=str(tiny_model_dir)))
    merged = load_policy(LLMConfig(model=str(tiny_model_dir), adapter=tmp_path / "lora"))
    unmerged = load_policy(LLMConfig(model=str(tiny_model_dir), adapter=tmp_path / "lora"), merge_adapter=False)
    assert not torch.allclose(_logits(base.model, tokenizer), expected, atol=1e-3)  # the adapter matters
    torch.testing.assert_close(_logits(merged.model, tokenizer), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_logits(unmerged.model, tokenizer), expected, atol=1e-5, rtol=1e-5)
    assert merged.adapter == tmp_path / "lora" and "+" in merged.name
    from peft import PeftModel

    assert isinstance(unmerged.model, PeftModel) and not isinstance(merged.model, PeftModel)


def test_adapter_for_another_model_is_user_error(tiny_model_dir, tmp_path, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(other).save_pretrained(tmp_path / "other")
    _save_lora(tmp_path / "other", tmp_path / "wide-lora")
    with pytest.raises(UserError, match="does not match the base model"):
        load_policy(LLMConfig(model=str(tiny_model_dir), adapter=tmp_path / "wide-lora"))


def test_adapter_with_unknown_modules_is_user_error(tiny_model_dir, tmp_path):
    import json

    _save_lora(tiny_model_dir, tmp_path / "lora")
    cfg_path = tmp_path / "lora" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["target_modules"] = ["c_attn"]  # a GPT-2 module name: nothing to attach to in a Llama
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="does not match the base model"):
        load_policy(LLMConfig(model=str(tiny_model_dir), adapter=tmp_path / "lora"))


def test_adapter_dir_without_config_is_user_error(tiny_model_dir, tmp_path):
    (tmp_path / "not-an-adapter").mkdir()
    with pytest.raises(UserError, match="adapter_config.json"):
        load_policy(LLMConfig(model=str(tiny_model_dir), adapter=tmp_path / "not-an-adapter"))


def test_adapters_name_the_bundled_model_by_its_hub_id():
    from rlrf.generation.policy import portable_model_id

    assert portable_model_id(None) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_model_id("/models/mine") == "/models/mine"


def test_a_policy_description_loads_no_weights(tiny_model_dir):
    from rlrf.generation.policy import describe_policy

    policy = describe_policy(LLMConfig(model=str(tiny_model_dir)))
    assert policy.model is None and policy.tokenizer is not None and policy.source == str(tiny_model_dir)
