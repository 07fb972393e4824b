"""`generate.repetition_penalty`: transformers' rule on rlrf's sampler, off at 1.0.

The penalty is a lever against summaries that loop until the length cap (docs/results.md, levers for
summaries that finish). It must be the rule transformers' `RepetitionPenaltyLogitsProcessor` and vLLM
apply (prompt tokens count, a positive logit is divided, a negative one multiplied, once per token),
and leave every sample as it was at 1.0. Runs on the random-weight 2-layer Llama of tests/conftest.py.
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from rlrf.core.config import GenerateConfig
from rlrf.generation.backends import NaiveHFBackend, Request, TransformersBackend, seen_tokens
from rlrf.generation.generate import sampling_for
from rlrf.generation.sampling import SamplingParams, penalise_repeats, sample_seed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

TEXTS = ["Toy Story (1995)", "Star Wars (1977); Action, Adventure, Romance, Sci-Fi, War | rated 5",
         "Fargo", "Twelve Monkeys (1995); Drama, Sci-Fi and a much longer line " * 3, "Heat", "Casablanca (1942)"]


@pytest.fixture(scope="module")
def tiny_policy(tiny_model_dir):
    from rlrf.core.config import LLMConfig
    from rlrf.generation.policy import load_policy

    return load_policy(LLMConfig(model=str(tiny_model_dir)))


def _requests(tokenizer, n):
    out = []
    for t, text in enumerate(TEXTS):
        chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
        out.append(Request(tokenizer(chat, add_special_tokens=False)["input_ids"], [sample_seed("penalty", t, k) for k in range(n)]))
    return out


def _run(backend, requests, params):
    return {(s.request, s.tag): (s.token_ids, s.finished) for batch in backend.generate(requests, params) for s in batch}


def test_penalty_is_transformers_rule_on_prompt_and_text_tokens():
    torch.manual_seed(0)
    logits = torch.randn(3, 40) * 3  # positive and negative logits
    history = torch.tensor([[1, 5, 5, 7, 39], [0, 0, 0, 0, 0], [2, 9, 13, 21, 9]])  # repeats count once
    expected = RepetitionPenaltyLogitsProcessor(1.3)(history, logits.clone())
    got = penalise_repeats(logits, seen_tokens(history.tolist(), 40), 1.3)
    assert torch.equal(got, expected)
    # by hand: a positive logit shrinks, a negative one grows more negative, an unseen one stays
    row = history[0].tolist()
    pos, neg = [t for t in row if logits[0, t] > 0], [t for t in row if logits[0, t] < 0]
    assert pos and neg
    assert torch.allclose(got[0, pos], logits[0, pos] / 1.3) and torch.allclose(got[0, neg], logits[0, neg] * 1.3)
    unseen = [t for t in range(40) if t not in row]
    assert torch.equal(got[0, unseen], logits[0, unseen])


def test_ids_the_head_cannot_produce_are_left_out_as_transformers_does():
    seen = seen_tokens([[3, 50, 7]], vocab=10)
    assert seen[0].nonzero().flatten().tolist() == [3, 7]


def test_greedy_with_the_penalty_matches_transformers_generate(tiny_policy):
    """The batched loop (padding, prefill once, rows dropped as they end) against transformers'
    `generate(repetition_penalty=...)`, one prompt at a time through the naive backend; the chat
    prompt's end-of-turn token is the stop token, penalised in both."""
    model, tok = tiny_policy.model, tiny_policy.tokenizer
    requests = _requests(tok, n=2)
    plain = SamplingParams(max_new_tokens=16, temperature=0)
    penalised = SamplingParams(max_new_tokens=16, temperature=0, repetition_penalty=1.5)
    got = _run(TransformersBackend(model, tok, batch_size=3), requests, penalised)
    reference = _run(NaiveHFBackend(model, tok), _requests(tok, n=1), penalised)  # greedy: one sample per prompt
    assert got == {(i, j): reference[(i, 0)] for i, j in got}
    unpenalised = _run(TransformersBackend(model, tok, batch_size=3), requests, plain)
    assert sum(got[key] != unpenalised[key] for key in got) >= len(TEXTS)  # it really changed the texts


def test_a_penalty_of_one_changes_no_sample(tiny_policy):
    model, tok = tiny_policy.model, tiny_policy.tokenizer
    requests = _requests(tok, n=3)
    backend = TransformersBackend(model, tok, batch_size=8)
    sampled = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=20)
    assert sampled.repetition_penalty == 1.0 and sampling_for(GenerateConfig(), "user_preference").repetition_penalty == 1.0
    off = _run(backend, requests, SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=20,
                                                 repetition_penalty=1.0))
    assert off == _run(backend, requests, sampled)
    logits = torch.randn(2, 30)
    assert torch.equal(penalise_repeats(logits, seen_tokens([[1, 2], [3]], 30), 1.0), logits)
    # and a meta file describes the sampling as before the option existed
    assert "repetition_penalty" not in sampled.described()
    assert SamplingParams(repetition_penalty=1.2).described()["repetition_penalty"] == 1.2


def test_penalised_samples_do_not_depend_on_the_batch(tiny_policy):
    """Each row's seen tokens follow it when finished rows leave the batch."""
    model, tok = tiny_policy.model, tiny_policy.tokenizer
    model.generation_config.eos_token_id = list(range(2, 60))  # rows end at different steps
    try:
        params = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.95, repetition_penalty=1.3)
        requests = _requests(tok, n=3)
        reference = _run(TransformersBackend(model, tok, batch_size=64), requests, params)
        assert min(len(ids) for ids, _ in reference.values()) < 20  # some rows ended early
        for batch_size in (1, 5):
            assert _run(TransformersBackend(model, tok, batch_size=batch_size), requests, params) == reference
        unpenalised = _run(TransformersBackend(model, tok, batch_size=64), requests,
                           SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.95))
        assert reference != unpenalised
    finally:
        model.generation_config.eos_token_id = 2


def test_the_config_refuses_a_penalty_that_is_not_positive():
    from pydantic import ValidationError

    assert GenerateConfig(repetition_penalty=1.2).repetition_penalty == 1.2
    with pytest.raises(ValidationError):
        GenerateConfig(repetition_penalty=0)
