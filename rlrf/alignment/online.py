"""Online RL on the recommender's feedback: trl's GRPOTrainer / RLOOTrainer with the reward model
as a Python reward function (`align.method: grpo | rloo`).

RLRF4Rec samples N summaries, keeps only the best and the worst, and runs DPO offline. Here the
trainer samples its own group of `num_generations` summaries per prompt at every step and learns
from all of them: each summary's reward is centred (and, for GRPO with `scale_rewards: group`,
scaled) within its group, which is the per-group normalisation the reward needs, since lists
differ in how easy they are. Settings: the `online:` section (`online.trainer_args` passes any
GRPOConfig / RLOOConfig field through: beta for the KL to the reference, num_generations,
max_completion_length as the length cap, temperature, ...). trl logs the reward's mean and spread
per step (`reward`, `reward_std`) into the log and TensorBoard.

The reference of the KL term (beta > 0) is the base model with the adapter switched off.

Cost (bench/online.py times each part of a step): on CPU a step is the sampling of the groups plus
the policy's forward and backward over prompt + completion of every row. The prompt (a user's
history, ~310 tokens) is four times as long as a summary (~75) and a group repeats it
`num_generations` times, and `model.generate` reads and re-copies every row's copy of that prompt's
KV cache at every decoding step. So trl's trainer is subclassed here in two places, each falling
back to trl's own code where it does not apply:

* sampling (`online.generator: rlrf`): rlrf's batched sampler, the engine of `rlrf generate` (each
  prompt prefilled once and its KV shared by its samples, preallocated cache, finished rows
  dropped), with trl's temperature / top-p / top-k;
* log-probs (`online.shared_prompts`): each distinct prompt of a batch runs through the policy once
  and its KV cache (gradients included) is shared by the group's completions: the same log-probs,
  entropies and gradients as trl's per-row pass, for far fewer tokens forward and backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from rlrf.alignment.adapters import previous_adapter, train_adapter, trainable_policy, trainer_args
from rlrf.core.errors import UserError
from rlrf.core.layout import RunLayout
from rlrf.core.precision import training_precision
from rlrf.core.threads import use_threads
from rlrf.generation.policy import portable_model_id

METHODS = ("grpo", "rloo")


def shared_prompt_trainer(trainer_cls):
    """`trainer_cls` (trl's GRPOTrainer or RLOOTrainer) sampling with rlrf's batched sampler and
    computing the group's prompt once per batch (see the module docstring for why).

    trl scores every row as one sequence, prompt + completion; rows of one group repeat the same
    prompt. Here each chunk's distinct prompts (all but their last token) run through the policy
    once with a KV cache, the cache is indexed out to the rows (a differentiable gather, so the
    prompt's LoRA gradients flow from every completion), and the rows' last prompt token +
    completion run through trl's own fused head (temperature, entropy and autocast as trl does).
    Positions are those of trl's full pass (left-padded prompt, pads masked), so the log-probs match
    trl's to float rounding (tests/test_online.py checks values and gradients). Anything this path
    does not cover (images, MoE aux loss, gradient checkpointing, several processes, a batch without
    a repeated prompt) goes to trl's own code."""
    import inspect

    import torch
    from transformers import DynamicCache

    returns_logprobs = "num_generations" in inspect.signature(trainer_cls._generate_single_turn).parameters

    class SharedPromptTrainer(trainer_cls):
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
            `model.generate` over every row; same sampling (temperature, top-p, top-k). Anything it
            does not do (vLLM, paged generation, images, min-p, repetition penalty, extra
            generation kwargs, several EOS tokens, several processes) goes to trl."""
            from rlrf.generation.backends import Request, SamplingParams, TransformersBackend, sample_seed

            a = self.args
            model = self.accelerator.unwrap_model(self.model)
            if (not self.rlrf_generation or self.use_vllm or self.use_transformers_continuous_batching or images
                    or any(v is not None for v in (multimodal_fields or {}).values()) or self.min_p
                    or (self.repetition_penalty or 1.0) != 1.0 or a.generation_kwargs
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
                                    top_p=self.top_p if self.top_p is not None else 1.0, top_k=self.top_k or 0)
            completions: list = [None] * len(prompt_ids)
            was_training = model.training
            model.eval()
            try:
                for batch in backend.generate(requests, params):
                    for sample in batch:  # trl keeps the EOS token in the completion
                        completions[sample.tag] = list(sample.token_ids) + ([self.eos_token_ids[0]] if sample.finished else [])
            finally:
                model.train(was_training)
            return (completions, None) if returns_logprobs else completions  # GRPO: (ids, logprobs); RLOO: ids

    SharedPromptTrainer.__name__ = SharedPromptTrainer.__qualname__ = trainer_cls.__name__
    return SharedPromptTrainer


def _first_rows(key):
    """(distinct rows, index of each one's first occurrence, row -> distinct index) of a 2-D tensor."""
    import torch

    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((distinct.size(0),), key.size(0), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(key.size(0)), reduce="amin")
    return distinct, first, inverse


def reward_function(score: Callable[[list[str], list[str]], Sequence[float]], length_penalty: float = 0.0,
                    free_tokens: int = 0, count_tokens: Callable[[str], int] | None = None):
    """A trl reward function: the user id arrives as the dataset's `user` column.

    `score(users, texts)` returns one reward per pair (the reward model, batched through its
    embedding cache). A summary longer than `free_tokens` loses `length_penalty` per extra token,
    so a policy cannot buy reward with length."""

    def reward(prompts, completions, user, **_) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        values = [float(v) for v in score(list(user), texts)]
        if length_penalty > 0 and count_tokens is not None:
            values = [v - length_penalty * max(0, count_tokens(t) - free_tokens) for v, t in zip(values, texts)]
        return values

    reward.__name__ = "recommender_reward"  # the name trl logs the reward under
    return reward


def run_online(cfg, iteration: int, records: list[dict], score: Callable[[list[str], list[str]], Sequence[float]],
               show_progress: bool = True) -> dict:
    """Train the policy with GRPO / RLOO on `records` ({"prompt": chat-templated text, "user": id});
    writes `iter_<t>/adapter` and `align_log.json` like the DPO step."""
    method = cfg.align.method
    if method not in METHODS:
        raise UserError(f"align.method: '{method}' is not an online method ({', '.join(METHODS)})")
    if not records:
        raise UserError(f"align.method {method}: no training prompts for iteration {iteration}")
    layout = RunLayout(cfg.run_dir)
    start_adapter = previous_adapter(cfg, iteration)
    o, g = cfg.online, cfg.generate

    def build(work_dir: Path):
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

        config_cls, trainer_cls = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[method]
        trainer_cls = shared_prompt_trainer(trainer_cls)
        use_threads(cfg)
        model, tokenizer, lora = trainable_policy(cfg, None, start_adapter)
        param = next(model.parameters())
        args = trainer_args(config_cls, "online", o.trainer_args, seed=cfg.seed, defaults={
            **training_precision(model), "use_cpu": param.device.type == "cpu",  # bf16 autocast over bf16 weights
            "dataloader_num_workers": 0, "disable_tqdm": not show_progress,
            # the summaries are sampled as `rlrf generate` samples them for DPO
            "max_completion_length": g.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k,
        }, fixed={"output_dir": str(work_dir), "remove_unused_columns": False})
        count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        reward = reward_function(score, o.length_penalty, o.free_tokens, count)
        trainer = trainer_cls(model=model, reward_funcs=reward, args=args, processing_class=tokenizer,
                              train_dataset=Dataset.from_list(records), peft_config=lora)
        trainer.shared_prompts, trainer.rlrf_generation = o.shared_prompts, o.generator == "rlrf"
        return trainer

    def summarize(trainer, result, steps: list[dict]) -> dict:
        rewards = [e.get("reward") for e in steps if e.get("reward") is not None]
        return {
            "iteration": iteration, "method": method, "prompts": len(records), "steps": int(result.global_step),
            "beta": trainer.args.beta, "num_generations": trainer.args.num_generations,
            "first_reward": rewards[0] if rewards else None, "last_reward": rewards[-1] if rewards else None,
            "start_adapter": str(start_adapter) if start_adapter else None,
        }

    return train_adapter(layout.adapter(iteration), layout.align_log(iteration), build, summarize,
                         record={"config": o.model_dump(mode="json")}, base_model=portable_model_id(cfg.llm.model))
