"""`rlrf align`: one iteration of preference alignment — trl DPOTrainer + peft LoRA on the policy.

Input ``<run_dir>/iter_<t>/pairs.jsonl`` (written by `rlrf score`): ``{"user", "iter", "prompt"
(the chat-templated prompt text generation saw), "chosen", "rejected", ["rejected_list"] (k worst,
worst first), "margin"}``. Output ``iter_<t>/adapter/`` (peft: adapter_config.json +
adapter_model.safetensors) and ``iter_<t>/align_log.json`` (per-step loss, reward accuracy and
margins, seconds per step, and a summary).

Reference and adapter design (r(y) = log π(y|x) − log π_ref(y|x), docs/architecture.md):

* The reference of iteration t is the policy BEFORE it: the policy that sampled the iteration's
  responses, i.e. ``llm.model`` + the `start_adapter` the recipe passes `train_dpo` (the loop's
  newest adapter). `rlrf align` (`run_align`) takes ``llm.adapter``, else ``iter_<t-1>/adapter``
  if it exists.
* ``align.reference: base`` makes the reference the base model at every iteration instead (the
  RLRF4Rec paper's π_ref): trl's "ref" copy is dropped, so the reference context disables the adapters.
* There is ONE LoRA adapter over the whole run, relative to the base model: iteration t loads the
  previous adapter *trainable* and continues training it; iteration 0 starts a fresh LoRA
  (the ``lora:`` section). So every ``iter_<t>/adapter`` loads on the plain base model
  (``llm.model`` + ``llm.adapter = iter_<t>/adapter``), with no chain of merged weights.
* The reference log-probs come from the previous policy itself: before the first optimizer step
  (``align.precompute_ref_log_probs``, default) or per step, both under trl's reference context. trl 1.16 makes that context right for both cases: a fresh LoRA →
  adapters disabled = base model = the policy before iteration 0; a loaded adapter → trl adds a
  frozen copy named "ref" (``DPOTrainer.__init__``) = the previous policy. (trl's own
  ``precompute_ref_log_probs`` only knows chosen/rejected pairs, so we precompute ourselves —
  one no-grad pass over chosen + all negatives — and hand trl the ``ref_chosen_logps`` /
  ``ref_rejected_logps`` columns it reads when its built-in losses are passed through.)

Losses: ``align.loss`` names an entry of :mod:`rlrf.alignment.losses` (dpo, sdpo, dmpo, rosepo) or a trl
built-in loss type passed through by name (sigmoid, hinge, ipo, robust, ...). sdpo/dmpo use all the
negatives in ``rejected_list`` (their number is ``score.negatives``); pairwise losses use the
worst one. rosepo's per-pair ε comes from the pair's reward margin (:func:`rlrf.alignment.losses.rosepo_epsilon`).
``align.sft_weight`` > 0 adds weight × the per-token NLL of the chosen response.

Speed: the ~500-token prompt dominates each sequence (~130 response tokens), so with our losses
(``align.share_prompt``, default) each prompt is run once and its KV cache repeated for the chosen
response and the k negatives; gradients flow through the cache. Log-probs and gradients equal the
full-sequence pass (tested). The fast path
(rlrf/alignment/fast.py, default; ``RLRF_FAST_TRAIN=0`` turns it off) runs each example alone without
padding and the LM head only at completion positions, and computes the reference by the same
function (adapter disabled), so at the initial adapter the loss is exactly log 2. trl's pass-through
losses run on it too, their loss computed by trl's own code from the fast path's log-probs, except
where it cannot feed that code (``ld_alpha``, a MoE aux loss): then trl's full-sequence pass runs.
The log's summary says which (``trl_forward``).

The stage is idempotent: a finished ``iter_<t>/adapter`` (written to a temporary folder, then
renamed) makes a rerun skip and return the saved log's summary.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from rlrf.alignment.adapters import (previous_adapter, train_adapter, train_in_mixed_bf16, trainable_policy,
                                     trainer_args)
from rlrf.alignment.fast import fast_training
from rlrf.core.errors import UserError
from rlrf.core.io import read_jsonl
from rlrf.core.layout import RunLayout
from rlrf.core.precision import training_precision
from rlrf.core.threads import use_threads
from rlrf.generation.policy import portable_model_id

if TYPE_CHECKING:
    from rlrf.core.config import AlignConfig, LLMConfig, LoraAdapterConfig


def load_pairs(path: Path, multi_negative: bool) -> list[dict]:
    """Training records from pairs.jsonl; a malformed record is a UserError naming its line."""
    if not path.is_file():
        raise UserError(f"{path}: no pairs file (run `rlrf score` for this iteration first)")
    records = []
    for line, pair in enumerate(read_jsonl(path), start=1):
        missing = [key for key in ("prompt", "chosen", "rejected") if not isinstance(pair.get(key), str)]
        if missing:
            raise UserError(f"{path}: line {line}: missing or non-text field(s) {', '.join(missing)}")
        negatives = pair.get("rejected_list") if multi_negative else None
        if negatives is not None and (not isinstance(negatives, list) or not negatives
                                      or not all(isinstance(x, str) for x in negatives)):
            raise UserError(f"{path}: line {line}: rejected_list must be a non-empty list of texts")
        margin = pair.get("margin", 0.0)
        if not isinstance(margin, (int, float)):
            raise UserError(f"{path}: line {line}: margin must be a number")
        # which texts were cut at the length cap (files written before the flags existed: none)
        if negatives is None:
            negatives, rejected_finished = [pair["rejected"]], [pair.get("rejected_finished", True)]
        else:
            rejected_finished = pair.get("rejected_finished_list") or [True] * len(negatives)
        records.append({
            "prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"],
            "negatives": negatives, "margin": float(margin),
            "finished": [bool(pair.get("chosen_finished", True))] + [bool(f) for f in rejected_finished],
        })
    return records


class _StepTimer:
    """A TrainerCallback recording wall seconds per optimizer step."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Timer(TrainerCallback):
            def __init__(self):
                self.seconds: list[float] = []
                self._start = None

            def on_step_begin(self, args, state, control, **kw):
                self._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if self._start is not None:
                    self.seconds.append(time.perf_counter() - self._start)

        return Timer()


def _tokenize_negatives(records: list[dict], tokenizer) -> list[dict]:
    """prompt + negative (+ EOS, as trl adds it) token ids, for the k > 1 collator."""
    eos = tokenizer.eos_token
    for rec in records:
        rec["negatives_full_ids"] = [
            tokenizer(text=rec["prompt"] + (neg if neg.endswith(eos) else neg + eos))["input_ids"]
            for neg in rec["negatives"]
        ]
    return records


# DPOConfig fields that only trl's own loss code reads: with one of rlrf's losses they would do nothing
TRL_LOSS_ARGS = frozenset({"ld_alpha", "label_smoothing", "use_weighting", "f_divergence_type",
                           "f_alpha_divergence_coef", "discopop_tau", "loss_weights"})


def train_dpo(layout: RunLayout, iteration: int, *, align: AlignConfig, llm: LLMConfig, lora: LoraAdapterConfig,
              seed: int, start_adapter: Path | None, policy=None, show_progress: bool = True) -> dict:
    """Align the policy on ``<layout>/iter_<t>/pairs.jsonl`` under the `align:` section; writes
    ``iter_<t>/adapter`` and ``align_log.json`` there. Returns the log's summary (``"skipped": True``
    when the adapter was already complete).

    `start_adapter` is the policy iteration t starts from and (``align.reference: previous``) is
    referenced to, as the recipe threads it (None: a fresh LoRA of the `lora:` section on the base
    model `llm`); `seed` is the trainer's. `policy` (optional, from ``load_policy(...,
    merge_adapter=False)``) is trained in place.
    """
    from rlrf.alignment.losses import LOSSES, get_loss, is_multi_negative

    a = align
    get_loss(a.loss)  # unknown names are a UserError naming align.loss
    multi = is_multi_negative(a.loss)
    if a.loss not in LOSSES and a.sft_weight > 0 and a.loss == "sft":
        raise UserError("align.sft_weight: the loss is already 'sft'")
    if a.loss not in LOSSES and a.length_alpha > 0:
        raise UserError(f"align.length_alpha: applies to rlrf's losses ({', '.join(LOSSES)}); "
                        f"for trl's '{a.loss}' set align.trainer_args.ld_alpha")
    if a.loss in LOSSES and (trl_only := sorted(TRL_LOSS_ARGS & set(a.trainer_args))):
        raise UserError(f"align.trainer_args.{trl_only[0]}: shapes trl's own losses only, not align.loss "
                        f"'{a.loss}' (for length: align.length_alpha)")
    timer = _StepTimer()
    counts: dict = {"reference_seconds": 0.0}  # filled while the trainer is built
    pairs_path = layout.pairs(iteration)

    def build(work_dir: Path):
        from datasets import Dataset
        from trl import DPOConfig

        from rlrf.alignment.collator import PreferenceCollator
        from rlrf.alignment.trainer import PreferenceTrainer

        records = load_pairs(pairs_path, multi)
        if not records:
            raise UserError(f"{pairs_path}: no pairs (every user tied or was skipped); nothing to align")
        negatives = max(len(r["negatives"]) for r in records) if multi else 1
        model, tokenizer, peft_config = trainable_policy(llm, lora, policy, start_adapter)
        device = next(model.parameters()).device
        if negatives > 1:
            records = _tokenize_negatives(records, tokenizer)
        columns = ["prompt", "chosen", "rejected", "margin", "finished"] + (["negatives_full_ids"] if negatives > 1 else [])
        dataset = Dataset.from_list([{c: r[c] for c in columns} for r in records])
        loss_type = [a.loss] if a.loss not in LOSSES else ["sigmoid"]  # trl's own type only used for pass-through
        loss_weights = None
        if a.loss not in LOSSES and a.sft_weight > 0:
            loss_type, loss_weights = [a.loss, "sft"], [1.0, a.sft_weight]
        args = trainer_args(DPOConfig, "align", a.trainer_args, seed=seed, defaults={
            **training_precision(model), "use_cpu": device.type == "cpu",  # bf16 autocast over bf16 weights
            "push_to_hub": False, "dataloader_num_workers": 0, "disable_tqdm": not show_progress,
        }, fixed={
            "output_dir": str(work_dir), "beta": a.beta, "loss_type": loss_type, "loss_weights": loss_weights,
            "precompute_ref_log_probs": False,  # we precompute ourselves (chosen + k negatives), see the docstring
            "remove_unused_columns": False,
        })
        collator = PreferenceCollator(pad_token_id=tokenizer.pad_token_id, negatives=negatives, max_length=args.max_length,
                                      eos_token_id=tokenizer.eos_token_id)
        trainer = PreferenceTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, data_collator=collator,
            peft_config=peft_config, callbacks=[timer], loss_name=a.loss, negatives=negatives,
            sft_weight=a.sft_weight if a.loss in LOSSES else 0.0,
            rosepo_eps_max=a.rosepo_eps_max, rosepo_tau=a.rosepo_tau, share_prompt=a.share_prompt,
            length_alpha=a.length_alpha, fast_path=fast_training(), mixed_bf16=train_in_mixed_bf16(llm),
            reference=a.reference,
        )
        if len(trainer.train_dataset) == 0:
            raise UserError(f"align.trainer_args.max_length: {args.max_length} tokens is shorter than every prompt; no pair left")
        if a.precompute_ref_log_probs:
            t0 = time.perf_counter()
            trainer.precompute_reference(args.per_device_train_batch_size)
            counts["reference_seconds"] = round(time.perf_counter() - t0, 3)
        counts.update(pairs=len(records), negatives=negatives)
        return trainer

    def summarize(trainer, result, steps: list[dict]) -> dict:
        for entry, seconds in zip(steps, timer.seconds):
            entry["seconds"] = round(seconds, 3)
        param = next(trainer.model.parameters())
        return {
            "iteration": iteration,
            "loss": a.loss,
            "beta": trainer.args.beta,
            "negatives": counts["negatives"],
            "pairs": counts["pairs"],
            "pairs_trained": len(trainer.train_dataset),
            "steps": int(result.global_step),
            "train_loss": float(result.training_loss),
            "first_loss": steps[0]["loss"] if steps else None,
            "last_loss": steps[-1]["loss"] if steps else None,
            "last_reward_accuracy": steps[-1].get("rewards/accuracies") if steps else None,
            "last_reward_margin": steps[-1].get("rewards/margins") if steps else None,
            "seconds_per_step": round(sum(timer.seconds) / len(timer.seconds), 3) if timer.seconds else None,
            "reference_seconds": counts["reference_seconds"],
            "start_adapter": str(start_adapter) if start_adapter else None,
            "reference": f"{llm.model or 'default'} + {start_adapter if a.reference == 'previous' and start_adapter else 'no adapter'}",
            "device": str(param.device),
            "dtype": "mixed-bfloat16" if trainer.mixed_bf16 else str(param.dtype).replace("torch.", ""),
            **({"trl_forward": trainer.trl_forward} if trainer.trl_forward else {}),  # trl's losses: which forward ran
        }

    return train_adapter(layout.adapter(iteration), layout.align_log(iteration), build, summarize,
                         record={"config": a.model_dump(mode="json")},
                         base_model=portable_model_id(llm.model))


def run_align(cfg, iteration: int, policy=None, show_progress: bool = True) -> dict:
    """`rlrf align`: `train_dpo` in the run directory with the run's sections and seed, from the policy
    before iteration t as the config names it (`llm.adapter`, else iteration t−1's adapter)."""
    layout = RunLayout(cfg.run_dir)
    use_threads(cfg)
    return train_dpo(layout, iteration, align=cfg.align, llm=cfg.llm, lora=cfg.lora, seed=cfg.seed,
                     start_adapter=previous_adapter(cfg.llm.adapter, layout, iteration), policy=policy,
                     show_progress=show_progress)
