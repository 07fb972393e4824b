"""trl's GRPOTrainer and RLOOTrainer sampling with rlrf's batched sampler and computing the group's
prompt once per batch (why: rlrf/alignment/online.py). Module-level classes; this module imports trl
at the top, so load it lazily (the CLI's `--help` stays fast).

trl scores every row as one sequence, prompt + completion; rows of one group repeat the same
prompt. Here each chunk's distinct prompts (all but their last token) run through the policy
once with a KV cache, the cache is indexed out to the rows (a differentiable gather, so the
prompt's LoRA gradients flow from every completion), and the rows' last prompt token +
completion run through trl's own fused head (temperature, entropy and autocast as trl does).
Positions are those of trl's full pass (left-padded prompt, pads masked), so the log-probs match
trl's to float rounding (tests/test_online.py checks values and gradients). Anything this path
does not cover (images, MoE aux loss, gradient checkpointing, several processes, a batch without
a repeated prompt) goes to trl's own code.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache
from trl import GRPOTrainer, RLOOTrainer


class SharedPromptMixin:
    """What both trainers share: rlrf's sampler and the shared-prompt log-probs (module docstring)."""

    shared_prompts = True
    rlrf_generation = True

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                           **extra):
        prompt_len = input_ids.size(1) - logits_to_keep
        checkpointing = self.args.gradient_checkpointing or getattr(self.args, "activation_checkpointing", False)
        plain = (self.shared_prompts and not compute_aux_loss and all(v is None for v in extra.values())
                 and self.accelerator.num_processes == 1 and not checkpointing and prompt_len >= 2)
        if plain:
            # trl's batch is [left-padded prompt | right-padded completion]: prompts repeat within groups
            distinct = torch.unique(torch.cat([input_ids[:, :prompt_len], attention_mask[:, :prompt_len]], 1),
                                    dim=0).size(0)
            plain = distinct < input_ids.size(0)
        if not plain:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                **extra)
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids, mask = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
            lp, ent = self._shared_prompt_chunk(model, ids, mask, prompt_len)
            logps.append(lp)
            entropies.append(ent)
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    def _shared_prompt_chunk(self, model, ids, mask, prompt_len):
        from rlrf.generation.backends import last_position

        key = torch.cat([ids[:, :prompt_len], mask[:, :prompt_len]], 1)
        _, first, inverse = _first_rows(key)
        head = prompt_len - 1  # the cached part; the prompt's last token goes with the completion
        with self.accelerator.autocast():
            cache = DynamicCache()
            model(input_ids=ids[first, :head], attention_mask=mask[first, :head], past_key_values=cache,
                  use_cache=True, logits_to_keep=last_position(head, ids.device))
            cache.batch_select_indices(inverse)  # distinct prompts -> rows (gradients flow back)
            tail = ids[:, head:]
            labels = tail.masked_fill(mask[:, head:] == 0, -100)
            labels[:, 0] = -100  # the prompt's last token is input only
            out = model(input_ids=tail, attention_mask=mask, past_key_values=cache, labels=labels,
                        fused_lm_head=True)
        keep = ids.size(1) - prompt_len
        entropy = out.entropy[:, -keep:] if out.entropy is not None else None
        return out.log_probs[:, -keep:], entropy

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, *rest, **kwargs):
        """The group's completions from rlrf's batched sampler (`rlrf generate`'s engine:
        each prompt prefilled once, preallocated KV cache, finished rows dropped) instead of
        `model.generate` over every row; same sampling (temperature, top-p, top-k, repetition
        penalty). Anything it does not do (vLLM, paged generation, images, min-p, extra
        generation kwargs, several EOS tokens, several processes) goes to trl."""
        from rlrf.generation.backends import Request, SamplingParams, TransformersBackend, sample_seed

        a = self.args
        model = self.accelerator.unwrap_model(self.model)
        if (not self.rlrf_generation or self.use_vllm or self.use_transformers_continuous_batching or images
                or any(v is not None for v in (multimodal_fields or {}).values()) or self.min_p
                or a.generation_kwargs
                or self.accelerator.num_processes > 1 or len(self.eos_token_ids) != 1):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, *rest, **kwargs)
        backend = TransformersBackend(model, self.processing_class, batch_size=max(1, len(prompt_ids)))
        if backend.eos_ids != list(self.eos_token_ids):  # it stops on other tokens than trl would
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, *rest, **kwargs)
        requests, slot = [], {}
        for row, ids in enumerate(prompt_ids):
            key = tuple(ids)
            if key not in slot:
                slot[key] = len(requests)
                requests.append(Request(prompt_ids=list(ids), seeds=[], tags=[]))
            req = requests[slot[key]]
            req.seeds.append(sample_seed(a.seed, "online", self.state.global_step, row))
            req.tags.append(row)
        params = SamplingParams(max_new_tokens=self.max_completion_length, temperature=self.temperature,
                                top_p=self.top_p if self.top_p is not None else 1.0, top_k=self.top_k or 0,
                                repetition_penalty=float(self.repetition_penalty or 1.0))
        completions: list = [None] * len(prompt_ids)
        was_training = model.training
        model.eval()
        try:
            for batch in backend.generate(requests, params):
                for sample in batch:  # trl keeps the EOS token in the completion
                    completions[sample.tag] = list(sample.token_ids) + ([self.eos_token_ids[0]] if sample.finished else [])
        finally:
            model.train(was_training)
        return (completions, None) if self.returns_logprobs else completions  # GRPO: (ids, logprobs); RLOO: ids


def _returns_logprobs(trainer_cls) -> bool:
    """trl's GRPO `_generate_single_turn` returns (ids, logprobs), RLOO's the ids alone."""
    return "num_generations" in inspect.signature(trainer_cls._generate_single_turn).parameters


class SharedPromptGRPOTrainer(SharedPromptMixin, GRPOTrainer):
    returns_logprobs = _returns_logprobs(GRPOTrainer)


class SharedPromptRLOOTrainer(SharedPromptMixin, RLOOTrainer):
    returns_logprobs = _returns_logprobs(RLOOTrainer)


TRAINERS = {"grpo": SharedPromptGRPOTrainer, "rloo": SharedPromptRLOOTrainer}


def _first_rows(key):
    """(distinct rows, index of each one's first occurrence, row -> distinct index) of a 2-D tensor."""
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((distinct.size(0),), key.size(0), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(key.size(0)), reduce="amin")
    return distinct, first, inverse


