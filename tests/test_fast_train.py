"""The fast training path (rlrf/alignment/fast.py) on the tiny random-weight Llama: same numbers as
the full path, the reference equal to the policy at the initial adapter, no dependence on padding."""

from __future__ import annotations

import math
import os

import pytest
import torch

from rlrf.alignment.collator import PreferenceCollator
from rlrf.generation.policy import load_policy
from rlrf.core.config import LLMConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

TEXTS = [
    "Enjoys Sci-Fi and Thriller movies like Star Wars (1977).",
    "Likes Comedy and Romance, Drama from the nineties.",
    "Prefers Action Adventure movies with War themes.",
    "Watches Animation and Children's movies, Musical too.",
]


def _prompt(tokenizer, user) -> str:
    messages = [{"role": "user", "content": f"Describe this user: {user} rated Toy Story (1995)"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _trainer(tmp_path, model_dir, tokenizer, *, negatives=1, fast_path=True, mixed_bf16=False, loss="dpo"):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig

    from rlrf.alignment.dpo import _tokenize_negatives
    from rlrf.alignment.trainer import PreferenceTrainer

    policy = load_policy(LLMConfig(model=str(model_dir)), merge_adapter=False)
    records = []
    for u in range(3):  # prompts and completions of different lengths: padding in the batched layouts
        prompt = _prompt(tokenizer, f"{u} Star Wars (1977)" * u)
        negs = [TEXTS[(u + j) % len(TEXTS)] for j in range(1, negatives + 1)]
        records.append({"prompt": prompt, "chosen": TEXTS[u], "rejected": negs[0], "negatives": negs, "margin": 0.2})
    columns = ["prompt", "chosen", "rejected", "margin"]
    if negatives > 1:
        records, columns = _tokenize_negatives(records, tokenizer), columns + ["negatives_full_ids"]
    data = Dataset.from_list([{k: r[k] for k in columns} for r in records])
    args = DPOConfig(output_dir=str(tmp_path / "w"), max_length=256, report_to=[], use_cpu=True, bf16=False,
                     gradient_checkpointing=False, remove_unused_columns=False, save_strategy="no", beta=0.1)
    collator = PreferenceCollator(pad_token_id=tokenizer.pad_token_id, negatives=negatives, max_length=256)
    trainer = PreferenceTrainer(
        model=policy.model, args=args, train_dataset=data, processing_class=policy.tokenizer, data_collator=collator,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), loss_name=loss, negatives=negatives,
        sft_weight=0.0, rosepo_eps_max=0.4, rosepo_tau=0.1, fast_path=fast_path, mixed_bf16=mixed_bf16)
    batch = collator([trainer.train_dataset[i] for i in range(3)])
    return trainer, batch


def _train_lora(trainer, std=0.3):
    with torch.no_grad():  # make the LoRA do something
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std, generator=torch.Generator().manual_seed(hash(name) % 2**31))


def _logps_and_grads(trainer, fn, batch):
    trainer.model.zero_grad()
    logps, lengths = fn(trainer.model, batch)
    (logps * torch.linspace(0.5, 1.5, len(logps))).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.requires_grad])
    return logps.detach(), lengths, grads


@pytest.mark.parametrize("mixed", [False, True])
def test_at_the_initial_adapter_the_reference_is_the_policy_and_the_loss_is_log_2(tmp_path, tiny_model_dir,
                                                                                  tiny_tokenizer, mixed):
    trainer, batch = _trainer(tmp_path, tiny_model_dir, tiny_tokenizer, mixed_bf16=mixed)
    assert trainer.fast_path and trainer.mixed_bf16 == mixed
    with torch.no_grad():
        policy, _ = trainer._sequence_logps(trainer.model, batch)
    reference = trainer.reference_logps(batch)  # adapter disabled, same function, same precision
    assert torch.equal(reference, policy.view(2, -1).T)  # bitwise, in fp32 and in mixed bf16
    loss = trainer.compute_loss(trainer.model, batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-4)
    # the precomputed reference (another batch order) is the same numbers: no dependence on the batch
    trainer.precompute_reference(batch_size=2)
    assert torch.equal(torch.tensor(trainer.train_dataset["ref_logps"]), reference)


@pytest.mark.parametrize("negatives", [1, 3])
def test_logits_only_at_completions_give_the_full_path_loss_and_gradients(tmp_path, tiny_model_dir, tiny_tokenizer,
                                                                         negatives):
    trainer, batch = _trainer(tmp_path, tiny_model_dir, tiny_tokenizer, negatives=negatives,
                              loss="sdpo" if negatives > 1 else "dpo")
    _train_lora(trainer)
    full, full_len, full_grads = _logps_and_grads(trainer, trainer._full_sequence_logps, batch)
    fast, fast_len, fast_grads = _logps_and_grads(trainer, trainer._per_example_logps, batch)
    assert full.shape == (3 * (1 + negatives),) and fast_len.tolist() == full_len.tolist()
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_grads, full_grads, rtol=1e-5, atol=1e-5)


def test_padding_free_examples_give_the_padded_batch_loss(tmp_path, tiny_model_dir, tiny_tokenizer):
    """Each example alone (no pads) = the padded shared-prompt batch, and = the example in any batch."""
    trainer, batch = _trainer(tmp_path, tiny_model_dir, tiny_tokenizer)
    _train_lora(trainer)
    padded, _ = trainer._shared_prompt_logps(trainer.model, batch)
    assert (batch["prompt_attention_mask"] == 0).any() and (batch["completion_attention_mask"] == 0).any()
    free, _ = trainer._per_example_logps(trainer.model, batch)
    torch.testing.assert_close(free, padded, rtol=1e-5, atol=1e-5)
    alone = trainer.data_collator([trainer.train_dataset[2]])
    one, _ = trainer._per_example_logps(trainer.model, alone)
    assert torch.equal(one, free.view(2, 3)[:, 2])  # the same bits alone as beside longer examples
    ref = torch.zeros(3, 2)
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref[:, 0], ref[:, 1]
    with torch.no_grad():
        fast_loss = trainer.compute_loss(trainer.model, batch)
        trainer.fast_path = False  # the padded path
        padded_loss = trainer.compute_loss(trainer.model, batch)
    assert fast_loss.item() == pytest.approx(padded_loss.item(), abs=1e-5)


def test_mixed_bf16_keeps_the_residual_stream_and_head_in_fp32_and_tracks_fp32(tmp_path, tiny_model_dir,
                                                                                 tiny_tokenizer):
    exact, batch = _trainer(tmp_path / "a", tiny_model_dir, tiny_tokenizer)
    mixed, _ = _trainer(tmp_path / "b", tiny_model_dir, tiny_tokenizer, mixed_bf16=True)
    _train_lora(exact)
    _train_lora(mixed)
    lm = mixed._causal_lm(mixed.model)
    assert lm.get_input_embeddings().weight.dtype == torch.float32
    assert lm.get_output_embeddings().weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in mixed.model.parameters() if p.requires_grad)
    assert lm.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16
    with torch.no_grad():
        a, _ = exact._sequence_logps(exact.model, batch)
        b, _ = mixed._sequence_logps(mixed.model, batch)
    assert a.dtype == b.dtype == torch.float32
    per_token = (a - b).abs() / batch["completion_attention_mask"].sum(1)
    assert per_token.max() < 0.05  # bf16 matmuls: ~1e-2 nats per token on this random model


def _sft_trainer(tmp_path, model_dir, tokenizer, records, cls, *, batch_size):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig

    policy = load_policy(LLMConfig(model=str(model_dir)), merge_adapter=False)
    args = SFTConfig(output_dir=str(tmp_path / cls.__module__), report_to=[], use_cpu=True, bf16=False,
                     gradient_checkpointing=False, save_strategy="no", completion_only_loss=True,
                     per_device_train_batch_size=batch_size)
    trainer = cls(model=policy.model, args=args, processing_class=policy.tokenizer,
                  peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
                  train_dataset=Dataset.from_list(records))
    torch.manual_seed(0)
    _train_lora(trainer)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    return trainer


def _sft_records(tokenizer, n):
    """Prompts and answers of different lengths (padded rows in trl's batch)."""
    return [{"prompt": _prompt(tokenizer, "x" * (7 * u) + TEXTS[u % 4][: 5 * u]), "completion": TEXTS[u % 4]}
            for u in range(n)]


def _without_answer(batch, row):
    """`batch` with row `row`'s answer labels masked: a row that trains nothing (a truncated answer)."""
    batch["labels"][row] = -100
    return batch


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("pack_tokens", [1, 260, 10_000])  # each row alone, two rows then one per chunk, one chunk
def test_fast_sft_loss_and_gradients_equal_trl(tmp_path, tiny_model_dir, tiny_tokenizer, pack_tokens):
    """The packed loss (rows of different lengths in one sequence, attention within each row) and its
    gradients equal trl's padded full-vocabulary loss; a row without answer tokens adds nothing."""
    from trl import SFTTrainer

    from rlrf.alignment.fast_sft import chunks, fast_sft_trainer

    records = _sft_records(tiny_tokenizer, 5)
    results = []
    for cls in (SFTTrainer, fast_sft_trainer(SFTTrainer, pack_tokens=pack_tokens)):
        trainer = _sft_trainer(tmp_path, tiny_model_dir, tiny_tokenizer, records, cls, batch_size=5)
        batch = _without_answer(trainer.data_collator([trainer.train_dataset[i] for i in range(5)]), 1)
        assert (batch["attention_mask"] == 0).any()  # padded rows
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=None)
        loss.backward()
        results.append((loss.detach(), _grads(trainer.model)))
    lengths = batch["attention_mask"].sum(1).tolist()  # rows of 108-147 tokens
    assert len({*lengths}) == 5
    del lengths[1]  # the row without answer tokens
    assert [len(c) for c in chunks(lengths, pack_tokens)] == {1: [1] * 4, 260: [2, 1, 1], 10_000: [4]}[pack_tokens]
    (trl_loss, trl_grads), (fast_loss, fast_grads) = results
    torch.testing.assert_close(fast_loss, trl_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_grads, trl_grads, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_items_in_batch", [None, 40])  # this batch's answer tokens / trl's count over accumulation
def test_fast_sft_training_step_backpropagates_each_chunk_with_trls_gradients(tmp_path, tiny_model_dir,
                                                                            tiny_tokenizer, num_items_in_batch):
    """One backward per packed chunk (only one chunk's activations alive) gives the gradients and the
    returned loss of trl's single backward of the whole batch's loss, under the same scaling."""
    from trl import SFTTrainer

    from rlrf.alignment.fast_sft import chunks, fast_sft_trainer

    records = _sft_records(tiny_tokenizer, 5)
    results = []
    for cls in (SFTTrainer, fast_sft_trainer(SFTTrainer, pack_tokens=260)):
        trainer = _sft_trainer(tmp_path, tiny_model_dir, tiny_tokenizer, records, cls, batch_size=5)
        trainer.current_gradient_accumulation_steps = 2  # as inside an accumulation of two batches
        batch = _without_answer(trainer.data_collator([trainer.train_dataset[i] for i in range(5)]), 3)
        backward, backwards = trainer.accelerator.backward, []
        trainer.accelerator.backward = lambda loss, **kw: backwards.append(loss) or backward(loss, **kw)
        trainer.model.zero_grad()
        loss = trainer.training_step(trainer.model, batch, num_items_in_batch=num_items_in_batch)
        results.append((loss, _grads(trainer.model), len(backwards)))
    (trl_loss, trl_grads, trl_backwards), (fast_loss, fast_grads, fast_backwards) = results
    lengths = [n for i, n in enumerate(batch["attention_mask"].sum(1).tolist()) if i != 3]
    assert trl_backwards == 1 and fast_backwards == len(chunks(lengths, 260)) == 3
    assert not fast_loss.requires_grad
    torch.testing.assert_close(fast_loss, trl_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_grads, trl_grads, rtol=1e-5, atol=1e-5)


def test_fast_sft_batch_without_answer_tokens_gives_zero_gradients(tmp_path, tiny_model_dir, tiny_tokenizer):
    from trl import SFTTrainer

    from rlrf.alignment.fast_sft import fast_sft_trainer

    trainer = _sft_trainer(tmp_path, tiny_model_dir, tiny_tokenizer, _sft_records(tiny_tokenizer, 2),
                           fast_sft_trainer(SFTTrainer), batch_size=2)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    batch["labels"][:] = -100
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.zero_grad()
    loss = trainer.training_step(trainer.model, batch)
    assert loss.item() == 0.0 and not _grads(trainer.model).any()
