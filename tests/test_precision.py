"""`llm.dtype`: bf16 where the CPU has native bf16, fp32 elsewhere; bf16 decoding agrees with fp32.

The capability probe (`rlrf.core.precision.cpu_supports_bf16`) is monkeypatched, never the model, so
these tests pass the same way on CPUs with and without AVX-512 BF16.
"""

from __future__ import annotations

import pytest
import torch

from rlrf.alignment.adapters import train_in_mixed_bf16, training_dtype
from rlrf.core import precision
from rlrf.generation.backends import Request, SamplingParams, TransformersBackend
from rlrf.core.config import LLMConfig
from rlrf.generation.policy import load_policy

TEXTS = ["Toy Story (1995)", "GoldenEye (1995) Four Rooms (1995)", "Heat", "Babe (1995) Alien (1979) Fargo (1996) Heat",
         "Twelve Monkeys (1995)", "Casablanca (1942) Vertigo (1958)"]


@pytest.fixture
def bf16_cpu(monkeypatch):
    """`auto` decides by the probe alone (the suite's RLRF_CPU_BF16=0 lifted)."""
    monkeypatch.setenv("RLRF_CPU_BF16", "1")

    def set_probe(value: bool):
        monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: value)

    return set_probe


def test_auto_is_bf16_only_where_the_cpu_has_it(bf16_cpu):
    cpu = torch.device("cpu")
    bf16_cpu(True)
    assert precision.resolve_dtype("auto", cpu) == torch.bfloat16
    assert precision.resolve_dtype("float32", cpu) == torch.float32  # forcing fp32 wins
    bf16_cpu(False)
    assert precision.resolve_dtype("auto", cpu) == torch.float32
    assert precision.resolve_dtype("bfloat16", cpu) == torch.bfloat16  # forcing bf16 wins
    with pytest.raises(ValueError):
        precision.resolve_dtype("float8", cpu)


def test_environment_switch_turns_auto_bf16_off(bf16_cpu, monkeypatch):
    bf16_cpu(True)
    monkeypatch.setenv("RLRF_CPU_BF16", "0")
    assert precision.resolve_dtype("auto", torch.device("cpu")) == torch.float32


def test_probe_answers_a_bool():
    assert isinstance(precision.cpu_supports_bf16(), bool)


def test_load_policy_falls_back_to_fp32_without_bf16(bf16_cpu, tiny_model_dir):
    bf16_cpu(False)
    policy = load_policy(LLMConfig(model=str(tiny_model_dir)))
    assert policy.dtype == torch.float32 and next(policy.model.parameters()).dtype == torch.float32
    bf16_cpu(True)
    policy = load_policy(LLMConfig(model=str(tiny_model_dir)))
    assert policy.dtype == torch.bfloat16 and next(policy.model.parameters()).dtype == torch.bfloat16


def test_training_precision_follows_the_weights(tiny_model_dir):
    fp32 = load_policy(LLMConfig(model=str(tiny_model_dir), dtype="float32")).model
    bf16 = load_policy(LLMConfig(model=str(tiny_model_dir), dtype="bfloat16")).model
    assert precision.training_precision(fp32) == {"bf16": False, "fp16": False}
    assert precision.training_precision(bf16) == {"bf16": True, "fp16": False}


def _greedy(policy, n_new=16):
    tok = policy.tokenizer
    chats = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
             for t in TEXTS]
    reqs = [Request(tok(c, add_special_tokens=False)["input_ids"], [0]) for c in chats]
    backend = TransformersBackend(policy.model, tok, batch_size=4)
    params = SamplingParams(max_new_tokens=n_new, temperature=0)
    out = {s.request: s.token_ids for batch in backend.generate(reqs, params) for s in batch}
    return reqs, [out[i] for i in range(len(reqs))]


def test_bf16_greedy_tokens_agree_with_fp32(tiny_model_dir):
    """Tolerance: bf16 keeps 8 bits of mantissa, so where two logits are within ~1 % the argmax may
    flip and the continuations part. We require (a) teacher-forced next-token agreement >= 90 % on
    the fp32 greedy continuations (measured: 92/96 = 96 % on this tiny model, 2 of 6 continuations
    identical to the end; issue 16 measured 98 % for SmolLM2-135M on real prompts), and (b) the first generated token equal for every prompt."""
    fp32 = load_policy(LLMConfig(model=str(tiny_model_dir), dtype="float32"))
    bf16 = load_policy(LLMConfig(model=str(tiny_model_dir), dtype="bfloat16"))
    reqs, ref = _greedy(fp32)
    _, got = _greedy(bf16)
    assert all(a[:1] == b[:1] for a, b in zip(ref, got))
    agree = total = 0
    with torch.no_grad():
        for req, cont in zip(reqs, ref):
            ids = torch.tensor([req.prompt_ids + cont])
            n = len(cont)
            if n == 0:
                continue
            pred = bf16.model(input_ids=ids).logits[0, -n - 1 : -1].argmax(-1)
            agree += int((pred == torch.tensor(cont)).sum())
            total += n
    assert total > 0 and agree / total >= 0.9


def test_bf16_decoding_is_deterministic(tiny_model_dir):
    bf16 = load_policy(LLMConfig(model=str(tiny_model_dir), dtype="bfloat16"))
    tok = bf16.tokenizer
    reqs = [Request(tok(t)["input_ids"], [11, 12, 13]) for t in TEXTS]
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=20)

    def run(batch_size):
        backend = TransformersBackend(bf16.model, tok, batch_size=batch_size)
        return {(s.request, s.tag): s.token_ids for b in backend.generate(reqs, params) for s in b}

    assert run(8) == run(8)


def test_auto_trains_fp32_and_bfloat16_opts_in_to_mixed_bf16(bf16_cpu):
    """The fast path loads fp32; mixed bf16 does not track fp32 closely enough for `auto`
    (rlrf.core.precision.mixed_bf16_training), so only an explicit bfloat16 trains in it."""
    for native in (True, False):
        bf16_cpu(native)
        assert training_dtype(LLMConfig(device="cpu")) == "float32"
        assert not train_in_mixed_bf16(LLMConfig(device="cpu"))
        assert train_in_mixed_bf16(LLMConfig(device="cpu", dtype="bfloat16"))
        assert training_dtype(LLMConfig(device="cpu", dtype="bfloat16")) == "float32"  # stored bf16 by the trainer
        assert not train_in_mixed_bf16(LLMConfig(device="cpu", dtype="float32"))


def test_without_the_fast_path_training_stays_fp32_on_cpu_under_auto(bf16_cpu, monkeypatch):
    """bf16 weights + autocast did not track fp32 (rlrf.alignment.adapters.training_dtype)."""
    monkeypatch.setenv("RLRF_FAST_TRAIN", "0")
    bf16_cpu(True)
    assert training_dtype(LLMConfig(device="cpu")) == "float32"
    assert training_dtype(LLMConfig(device="cpu", dtype="bfloat16")) == "bfloat16"  # opt-in
    assert training_dtype(LLMConfig(device="cpu", dtype="float32")) == "float32"
    assert not train_in_mixed_bf16(LLMConfig(device="cpu"))
