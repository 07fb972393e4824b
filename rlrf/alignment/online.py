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
back to trl's own code where it does not apply (rlrf/alignment/online_trainer.py):

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
from typing import TYPE_CHECKING

from rlrf.alignment.adapters import previous_adapter, train_adapter, trainable_policy, trainer_args
from rlrf.core.errors import UserError
from rlrf.core.layout import RunLayout
from rlrf.core.precision import training_precision
from rlrf.core.threads import use_threads
from rlrf.generation.policy import portable_model_id

if TYPE_CHECKING:
    from rlrf.core.config import GenerateConfig, LLMConfig, LoraAdapterConfig, OnlineConfig

METHODS = ("grpo", "rloo")


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


def train_online(layout: RunLayout, iteration: int, records: list[dict],
                 score: Callable[[list[str], list[str]], Sequence[float]], *, method: str, online: OnlineConfig,
                 generate: GenerateConfig, llm: LLMConfig, lora: LoraAdapterConfig, seed: int,
                 start_adapter: Path | None, show_progress: bool = True) -> dict:
    """Train the policy with GRPO / RLOO (`method`) on `records` ({"prompt": chat-templated text,
    "user": id}) under the `online:` section, sampling as the `generate:` section does; writes
    ``<layout>/iter_<t>/adapter`` and ``align_log.json`` like the DPO step, from `start_adapter`
    (None: a fresh LoRA of the `lora:` section on the base model `llm`)."""
    if method not in METHODS:
        raise UserError(f"align.method: '{method}' is not an online method ({', '.join(METHODS)})")
    if not records:
        raise UserError(f"align.method {method}: no training prompts for iteration {iteration}")
    o, g = online, generate

    def build(work_dir: Path):
        from datasets import Dataset
        from trl import GRPOConfig, RLOOConfig

        from rlrf.alignment.online_trainer import TRAINERS

        config_cls, trainer_cls = {"grpo": GRPOConfig, "rloo": RLOOConfig}[method], TRAINERS[method]
        model, tokenizer, peft_config = trainable_policy(llm, lora, None, start_adapter)
        param = next(model.parameters())
        args = trainer_args(config_cls, "online", o.trainer_args, seed=seed, defaults={
            **training_precision(model), "use_cpu": param.device.type == "cpu",  # bf16 autocast over bf16 weights
            "dataloader_num_workers": 0, "disable_tqdm": not show_progress,
            # the summaries are sampled as `rlrf generate` samples them for DPO
            "max_completion_length": g.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k,
            "repetition_penalty": g.repetition_penalty,
        }, fixed={"output_dir": str(work_dir), "remove_unused_columns": False})
        count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        reward = reward_function(score, o.length_penalty, o.free_tokens, count)
        trainer = trainer_cls(model=model, reward_funcs=reward, args=args, processing_class=tokenizer,
                              train_dataset=Dataset.from_list(records), peft_config=peft_config)
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
                         record={"config": o.model_dump(mode="json")}, base_model=portable_model_id(llm.model))


def run_online(cfg, iteration: int, records: list[dict], score: Callable[[list[str], list[str]], Sequence[float]],
               show_progress: bool = True) -> dict:
    """`train_online` in the run directory with the run's sections and seed (`align.method`), from the
    policy before iteration t as the config names it (a script's adapter, like `run_align`)."""
    layout = RunLayout(cfg.run_dir)
    use_threads(cfg)
    return train_online(layout, iteration, records, score, method=cfg.align.method, online=cfg.online,
                        generate=cfg.generate, llm=cfg.llm, lora=cfg.lora, seed=cfg.seed,
                        start_adapter=previous_adapter(cfg.llm.adapter, layout, iteration), show_progress=show_progress)
