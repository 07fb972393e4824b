"""`rlrf align`: one iteration of preference alignment — trl DPOTrainer + peft LoRA on the policy.

Input ``<run_dir>/iter_<t>/pairs.jsonl`` (written by `rlrf score`): ``{"user", "iter", "prompt"
(the chat-templated prompt text generation saw), "chosen", "rejected", ["rejected_list"] (k worst,
worst first), "margin"}``. Output ``iter_<t>/adapter/`` (peft: adapter_config.json +
adapter_model.safetensors) and ``iter_<t>/align_log.json`` (per-step loss, reward accuracy and
margins, seconds per step, and a summary).

Reference and adapter design (DESIGN.md "Losses": r(y) = log π(y|x) − log π_ref(y|x)):

* The reference of iteration t is the policy BEFORE it: the policy that sampled the iteration's
  responses, i.e. ``llm.model`` + ``llm.adapter`` (the loop passes the newest adapter there). When
  ``llm.adapter`` is unset and t > 0, ``iter_<t-1>/adapter`` is used if it exists.
* There is ONE LoRA adapter over the whole run, relative to the base model: iteration t loads the
  previous adapter *trainable* and continues training it; iteration 0 starts a fresh LoRA
  (``align.lora_*``). So every ``iter_<t>/adapter`` loads on the plain base model
  (``llm.model`` + ``llm.adapter = iter_<t>/adapter``), with no chain of merged weights.
* The reference log-probs come from the previous policy itself: before the first optimizer step
  (``align.precompute_ref_log_probs``, default) or per step, both under trl's reference context. trl 1.16 makes that context right for both cases: a fresh LoRA →
  adapters disabled = base model = the policy before iteration 0; a loaded adapter → trl adds a
  frozen copy named "ref" (``DPOTrainer.__init__``) = the previous policy. (trl's own
  ``precompute_ref_log_probs`` only knows chosen/rejected pairs, so we precompute ourselves —
  one no-grad pass over chosen + all negatives — and hand trl the ``ref_chosen_logps`` /
  ``ref_rejected_logps`` columns it reads when its built-in losses are passed through.)

Losses: ``align.loss`` names an entry of :mod:`rlrf.losses` (dpo, sdpo, dmpo, rosepo) or a trl
built-in loss type passed through by name (sigmoid, hinge, ipo, robust, ...). sdpo/dmpo use all the
negatives in ``rejected_list`` (their number is ``score.negatives``); pairwise losses use the
worst one. rosepo's per-pair ε comes from the pair's reward margin (:func:`rlrf.losses.rosepo_epsilon`).
``align.sft_weight`` > 0 adds weight × the per-token NLL of the chosen response.

Speed: the ~500-token prompt dominates each sequence (~130 response tokens), so with our losses
(``align.share_prompt``, default) each prompt is run once and its KV cache repeated for the chosen
response and the k negatives; gradients flow through the cache. Log-probs and gradients equal the
full-sequence pass (tested); trl's pass-through losses use trl's full-sequence pass.

The stage is idempotent: a finished ``iter_<t>/adapter`` (written to a temporary folder, then
renamed) makes a rerun skip and return the saved log's summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlrf.errors import UserError
from rlrf.memory import releases_memory
from rlrf.runs import atomic_write_json, read_jsonl

PAIRS_FILE = "pairs.jsonl"
ADAPTER_DIR = "adapter"
LOG_FILE = "align_log.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def iteration_dir(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / f"iter_{iteration}"


def adapter_complete(adapter_dir: Path) -> bool:
    return all((Path(adapter_dir) / name).is_file() for name in ADAPTER_FILES)


def previous_adapter(cfg, iteration: int) -> Path | None:
    """The adapter of the policy before iteration t (see the module docstring)."""
    if cfg.llm.adapter is not None:
        return Path(cfg.llm.adapter)
    if iteration > 0:
        candidate = iteration_dir(cfg.run_dir, iteration - 1) / ADAPTER_DIR
        if adapter_complete(candidate):
            return candidate
    return None


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
        records.append({
            "prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"],
            "negatives": negatives or [pair["rejected"]], "margin": float(margin),
        })
    return records


# --------------------------------------------------------------------------- collator


@dataclass
class PreferenceCollator:
    """Pads [chosen × B, negative_1 × B, ..., negative_k × B] into one batch (trl's layout when k = 1).

    Each example holds trl's ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` and, for k > 1, our
    ``negatives_full_ids`` (tokenized prompt + negative + EOS, as trl tokenizes a completion). An
    example with fewer than k negatives repeats its first one, masked out by ``neg_mask``.
    """

    pad_token_id: int
    negatives: int
    max_length: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        k = self.negatives
        rows: list[list[list[int]]] = [[] for _ in range(k + 1)]
        masks: list[list[list[int]]] = [[] for _ in range(k + 1)]
        neg_mask = []
        for ex in examples:
            prompt = ex["prompt_ids"]
            rows[0].append(prompt + ex["chosen_ids"])
            masks[0].append([0] * len(prompt) + [1] * len(ex["chosen_ids"]))
            if k == 1:
                negs = [prompt + ex["rejected_ids"]]
            else:
                negs = list(ex["negatives_full_ids"][:k])
            neg_mask.append([True] * len(negs) + [False] * (k - len(negs)))
            negs += [negs[0]] * (k - len(negs))
            for j, seq in enumerate(negs, start=1):
                rows[j].append(seq)
                masks[j].append([0] * len(prompt) + [1] * (len(seq) - len(prompt)))
        seqs = [s for group in rows for s in group]
        cmask = [m for group in masks for m in group]
        if self.max_length is not None:  # keep_start, as trl
            seqs = [s[: self.max_length] for s in seqs]
            cmask = [m[: self.max_length] for m in cmask]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        completion = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (s, m) in enumerate(zip(seqs, cmask)):
            input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            attention[i, : len(s)] = 1
            completion[i, : len(m)] = torch.tensor(m, dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion,
               "margin": torch.tensor([float(ex["margin"]) for ex in examples])}
        # the same sequences split at the prompt, for the shared-prompt forward (`align.share_prompt`):
        # prompts left-padded (B, P), completions right-padded in the same row order as input_ids (N, C)
        prompts = [ex["prompt_ids"][: self.max_length] if self.max_length else ex["prompt_ids"] for ex in examples]
        p_width = max(len(p) for p in prompts)
        out["prompt_input_ids"] = torch.full((len(prompts), p_width), self.pad_token_id, dtype=torch.long)
        out["prompt_attention_mask"] = torch.zeros((len(prompts), p_width), dtype=torch.long)
        for i, p in enumerate(prompts):
            out["prompt_input_ids"][i, p_width - len(p):] = torch.tensor(p, dtype=torch.long)
            out["prompt_attention_mask"][i, p_width - len(p):] = 1
        B = len(examples)
        completions = [s[len(prompts[i % B]):] for i, s in enumerate(seqs)]
        c_width = max(1, max(len(c) for c in completions))
        out["completion_input_ids"] = torch.full((len(seqs), c_width), self.pad_token_id, dtype=torch.long)
        out["completion_attention_mask"] = torch.zeros((len(seqs), c_width), dtype=torch.long)
        for i, c in enumerate(completions):
            out["completion_input_ids"][i, : len(c)] = torch.tensor(c, dtype=torch.long)
            out["completion_attention_mask"][i, : len(c)] = 1
        if k > 1:
            out["neg_mask"] = torch.tensor(neg_mask, dtype=torch.bool)
        if "ref_logps" in examples[0]:
            ref = torch.tensor([ex["ref_logps"] for ex in examples], dtype=torch.float32)  # (B, 1 + k)
            out["ref_chosen_logps"] = ref[:, 0]
            out["ref_rejected_logps"] = ref[:, 1]
            if k > 1:
                out["ref_rejected_list_logps"] = ref[:, 1:]
        return out


_EXTRA_KEYS = ("margin", "neg_mask", "ref_rejected_list_logps", "prompt_input_ids", "prompt_attention_mask",
               "completion_input_ids", "completion_attention_mask")
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", *_EXTRA_KEYS}


# --------------------------------------------------------------------------- trainer


def _make_trainer_class():
    import torch
    from accelerate.utils import is_peft_model
    from trl import DPOTrainer
    from trl.trainer.utils import use_adapter

    from rlrf.losses import LOSSES, rosepo_epsilon, sequence_nll_per_token

    class PreferenceTrainer(DPOTrainer):
        """DPOTrainer with our loss registry and k negatives per example; trl losses pass through."""

        def __init__(self, *args, loss_name: str, negatives: int, sft_weight: float,
                     rosepo_eps_max: float, rosepo_tau: float, share_prompt: bool = True, **kwargs):
            self.share_prompt = share_prompt
            self.loss_name = loss_name
            self.n_negatives = negatives
            self.sft_weight = sft_weight
            self.rosepo_eps_max = rosepo_eps_max
            self.rosepo_tau = rosepo_tau
            super().__init__(*args, **kwargs)

        # -- reference -------------------------------------------------------------------
        def reference_context(self):
            """The previous policy: trl's frozen "ref" adapter copy, or adapters disabled (fresh LoRA)."""
            if self.ref_model is None and is_peft_model(self.model):
                unwrapped = self.accelerator.unwrap_model(self.model)
                return use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
            return contextlib.nullcontext()

        def _sequence_logps(self, model, inputs):
            """Summed completion log-probs (N,) and completion lengths (N,) of every row of the batch."""
            if self.share_prompt and "prompt_input_ids" in inputs and self._prompt_sharing_supported(model):
                return self._shared_prompt_logps(model, inputs)
            return self._full_sequence_logps(model, inputs)

        def _prompt_sharing_supported(self, model) -> bool:
            lm = self._causal_lm(model)
            text_config = lm.config.get_text_config()
            plain_head = not any(getattr(text_config, name, None) for name in (
                "final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"))
            return plain_head and hasattr(lm, lm.base_model_prefix) and lm.get_output_embeddings() is not None

        def _causal_lm(self, model):
            unwrapped = self.accelerator.unwrap_model(model)
            return unwrapped.get_base_model() if is_peft_model(unwrapped) else unwrapped

        def _shared_prompt_logps(self, model, inputs):
            """The same numbers as `_full_sequence_logps`, with ONE forward pass of each prompt: its KV cache
            is repeated for the chosen response and the k negatives. Prompts are ~500 tokens and responses
            ~130, so this does 1/(1+k) of the prompt work (gradients flow through the cache)."""
            from transformers import DynamicCache

            lm = self._causal_lm(model)
            backbone, head = getattr(lm, lm.base_model_prefix), lm.get_output_embeddings()
            p_ids, p_mask = inputs["prompt_input_ids"], inputs["prompt_attention_mask"]
            c_ids, c_mask = inputs["completion_input_ids"], inputs["completion_attention_mask"]
            B, N = p_ids.size(0), c_ids.size(0)
            reps = N // B
            perm = torch.arange(N, device=c_ids.device).view(reps, B).T.reshape(-1)  # group-major -> example-major
            c_ids, c_mask = c_ids[perm], c_mask[perm]
            p_pos = (p_mask.cumsum(1) - 1).clamp(min=0)
            cache = DynamicCache(config=lm.config)
            prompt_out = backbone(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos,
                                  past_key_values=cache, use_cache=True)
            cache = prompt_out.past_key_values
            cache.batch_repeat_interleave(reps)
            last = prompt_out.last_hidden_state[:, -1:].repeat_interleave(reps, dim=0)  # predicts token 0
            c_pos = p_mask.sum(1, keepdim=True).repeat_interleave(reps, dim=0) + torch.arange(
                c_ids.size(1), device=c_ids.device)
            attn = torch.cat([p_mask.repeat_interleave(reps, dim=0), c_mask], dim=1)
            comp_out = backbone(input_ids=c_ids, attention_mask=attn, position_ids=c_pos,
                                past_key_values=cache, use_cache=True)
            hidden = torch.cat([last, comp_out.last_hidden_state[:, :-1]], dim=1)
            logits = head(hidden).float()
            token_logps = torch.log_softmax(logits, dim=-1).gather(-1, c_ids.unsqueeze(-1)).squeeze(-1)
            logps = (token_logps * c_mask).sum(1)
            lengths = c_mask.sum(1)
            inverse = torch.empty_like(perm)
            inverse[perm] = torch.arange(N, device=perm.device)
            return logps[inverse], lengths[inverse]

        def _full_sequence_logps(self, model, inputs):
            completion_mask = inputs["completion_mask"]
            labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        labels=labels, use_cache=False, fused_lm_head=True)
            shift_mask = completion_mask[:, 1:]
            per_token = out.log_probs[:, -shift_mask.size(1):]
            return (per_token * shift_mask).sum(dim=1), shift_mask.sum(dim=1)

        @torch.no_grad()
        def reference_logps(self, inputs) -> torch.Tensor:
            """(B, 1 + k) reference log-probs of chosen and each negative."""
            model = self.ref_model or self.model
            with self.reference_context():
                logps, _ = self._sequence_logps(model, inputs)
            return logps.view(1 + self.n_negatives, -1).T.contiguous()

        def precompute_reference(self, batch_size: int) -> None:
            """Adds a ``ref_logps`` column (chosen, negatives...) to the training set, before any step."""
            from torch.utils.data import DataLoader

            loader = DataLoader(self.train_dataset, batch_size=batch_size, shuffle=False, collate_fn=self.data_collator)
            was_training = self.model.training
            self.model.eval()
            values = []
            for batch in loader:
                batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
                values.extend(self.reference_logps(batch).float().cpu().tolist())
            self.model.train(was_training)
            self.train_dataset = self.train_dataset.add_column("ref_logps", values)
            self.precompute_ref_logps = True  # trl's pass-through losses then read ref_*_logps from the batch

        # -- loss ------------------------------------------------------------------------
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.loss_name not in LOSSES:  # a trl built-in loss: trl's own code on trl's batch layout
                trl_inputs = {k: v for k, v in inputs.items() if k not in _EXTRA_KEYS}
                return super().compute_loss(model, trl_inputs, return_outputs, num_items_in_batch)
            if return_outputs:
                raise NotImplementedError("return_outputs is not supported by rlrf's preference losses")
            mode = "train" if self.model.training else "eval"
            k = self.n_negatives
            logps, lengths = self._sequence_logps(model, inputs)
            logps = logps.view(1 + k, -1).T  # (B, 1 + k)
            chosen, rejected = logps[:, 0], logps[:, 1:]
            if "ref_chosen_logps" in inputs:
                ref = torch.cat([inputs["ref_chosen_logps"][:, None],
                                 inputs.get("ref_rejected_list_logps", inputs["ref_rejected_logps"][:, None])], dim=1)
            else:
                ref = self.reference_logps(inputs)
            ref = ref.to(logps.dtype)
            ref_chosen, ref_rejected = ref[:, 0], ref[:, 1:]
            mask = inputs.get("neg_mask")
            extra = {}
            if LOSSES[self.loss_name].needs_epsilon:
                extra["epsilon"] = rosepo_epsilon(inputs["margin"].to(logps.dtype), eps_max=self.rosepo_eps_max,
                                                  tau=self.rosepo_tau)
                self._metrics[mode]["rosepo/epsilon"].append(extra["epsilon"].mean().item())
            per_example = LOSSES[self.loss_name].fn(chosen, rejected, ref_chosen, ref_rejected,
                                                    beta=self.beta, mask=mask, **extra)
            loss = per_example.mean()
            if self.sft_weight > 0:
                chosen_len = lengths.view(1 + k, -1)[0]
                sft = sequence_nll_per_token(chosen, chosen_len).mean()
                loss = loss + self.sft_weight * sft
                self._metrics[mode]["sft_nll"].append(sft.item())
            with torch.no_grad():
                r_w = self.beta * (chosen - ref_chosen)
                r_k = self.beta * (rejected - ref_rejected)
                valid = mask if mask is not None else torch.ones_like(r_k, dtype=torch.bool)
                mean_k = (r_k * valid).sum(1) / valid.sum(1).clamp(min=1)
                max_k = r_k.masked_fill(~valid, float("-inf")).max(dim=1).values
                m = self._metrics[mode]
                m["rewards/chosen"].append(r_w.mean().item())
                m["rewards/rejected"].append(mean_k.mean().item())
                m["rewards/accuracies"].append((r_w > max_k).float().mean().item())
                m["rewards/margins"].append((r_w - mean_k).mean().item())
                m["logps/chosen"].append(chosen.mean().item())
                m["logps/rejected"].append(rejected[:, 0].mean().item())
            return loss

    return PreferenceTrainer


# --------------------------------------------------------------------------- stage


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


def trainable_policy(cfg, policy, start_adapter: Path | None):
    """(model, tokenizer, peft_config): a trainable PeftModel continuing `start_adapter`, or a base
    model + a fresh LoraConfig for trl to wrap."""
    from peft import LoraConfig, PeftModel

    from rlrf.llm import attach_adapter, load_policy
    from rlrf.precision import training_dtype

    a = cfg.align
    if policy is None:
        base_cfg = cfg.llm.model_copy(update={"adapter": None, "dtype": training_dtype(cfg.llm)})  # rlrf/precision.py
        policy = load_policy(base_cfg, merge_adapter=False)
    elif policy.adapter is not None and not isinstance(policy.model, PeftModel):
        raise ValueError("run_align needs a policy loaded with merge_adapter=False (its adapter is merged)")
    model, tokenizer = policy.model, policy.tokenizer
    if isinstance(model, PeftModel):
        if start_adapter is None or Path(policy.adapter).resolve() != Path(start_adapter).resolve():
            raise ValueError(f"the policy carries adapter {policy.adapter}, but this iteration starts from {start_adapter}")
    elif start_adapter is not None:
        model = attach_adapter(model, start_adapter, merge=False)
    if isinstance(model, PeftModel):
        # continue training the SAME adapter: trainable "default"; trl adds the frozen "ref" copy
        model.peft_config["default"].inference_mode = False
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name and ".default" in name)
        return model, tokenizer, None
    targets = a.lora_target_modules
    lora = LoraConfig(r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    return model, tokenizer, lora


def save_adapter(peft_model, adapter_dir: Path, before_rename=None) -> None:
    """Write the trainable "default" LoRA to a temporary folder and rename it into place, so a
    complete `adapter_dir` (what makes a stage skip on rerun) is never half-written."""
    adapter_dir = Path(adapter_dir)
    tmp = adapter_dir.parent / f".{adapter_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp), selected_adapters=["default"])
    if not adapter_complete(tmp):
        raise RuntimeError(f"peft did not write {', '.join(ADAPTER_FILES)} into {tmp}")
    if before_rename is not None:
        before_rename()
    shutil.rmtree(adapter_dir, ignore_errors=True)  # a half-written leftover, never a complete one
    tmp.rename(adapter_dir)


@releases_memory  # the trainer's cycles and glibc's retained peak (rlrf/memory.py)
def run_align(cfg, iteration: int, policy=None, show_progress: bool = True) -> dict:
    """Align the policy on ``iter_<t>/pairs.jsonl``; writes ``iter_<t>/adapter`` and ``align_log.json``.

    Returns the log's summary (``"skipped": True`` when the adapter was already complete).
    `policy` (optional, from ``load_policy(..., merge_adapter=False)``) is trained in place.
    """
    import torch

    from rlrf.losses import LOSSES, get_loss, is_multi_negative

    a = cfg.align
    out_dir = iteration_dir(cfg.run_dir, iteration)
    adapter_dir = out_dir / ADAPTER_DIR
    log_path = out_dir / LOG_FILE
    if adapter_complete(adapter_dir):
        saved = json.loads(log_path.read_text(encoding="utf-8")) if log_path.is_file() else {}
        return {**saved.get("summary", {"adapter": str(adapter_dir)}), "skipped": True}

    get_loss(a.loss)  # unknown names are a UserError naming align.loss
    for leftover in [*out_dir.glob(f".{ADAPTER_DIR}.tmp-*"), *out_dir.glob(".align-work-*")]:  # from a killed run
        shutil.rmtree(leftover, ignore_errors=True)
    multi = is_multi_negative(a.loss)
    if a.loss not in LOSSES and a.sft_weight > 0 and a.loss == "sft":
        raise UserError("align.sft_weight: the loss is already 'sft'")
    records = load_pairs(out_dir / PAIRS_FILE, multi)
    if not records:
        raise UserError(f"{out_dir / PAIRS_FILE}: no pairs (every user tied or was skipped); nothing to align")
    negatives = max(len(r["negatives"]) for r in records) if multi else 1
    start_adapter = previous_adapter(cfg, iteration)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()

    from datasets import Dataset
    from trl import DPOConfig

    from rlrf.precision import training_precision

    model, tokenizer, lora = trainable_policy(cfg, policy, start_adapter)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if negatives > 1:
        records = _tokenize_negatives(records, tokenizer)
    columns = ["prompt", "chosen", "rejected", "margin"] + (["negatives_full_ids"] if negatives > 1 else [])
    dataset = Dataset.from_list([{c: r[c] for c in columns} for r in records])

    seed = cfg.seed if a.seed is None else a.seed
    work_dir = out_dir / f".align-work-{os.getpid()}"
    loss_type = [a.loss] if a.loss not in LOSSES else ["sigmoid"]  # trl's own type only used for pass-through
    loss_weights = None
    if a.loss not in LOSSES and a.sft_weight > 0:
        loss_type, loss_weights = [a.loss, "sft"], [1.0, a.sft_weight]
    args = DPOConfig(
        output_dir=str(work_dir),
        per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=a.grad_accum,
        num_train_epochs=a.epochs,
        max_steps=a.max_steps if a.max_steps is not None else -1,
        learning_rate=a.learning_rate,
        lr_scheduler_type=a.lr_scheduler,
        warmup_steps=0,
        weight_decay=0.0,
        beta=a.beta,
        loss_type=loss_type,
        loss_weights=loss_weights,
        label_smoothing=a.label_smoothing,
        max_length=a.max_length,
        precompute_ref_log_probs=False,  # we precompute ourselves (chosen + k negatives), see the docstring
        gradient_checkpointing=a.gradient_checkpointing,
        **training_precision(model),  # bf16 autocast over bf16 weights where the CPU/GPU has bf16
        use_cpu=device.type == "cpu",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        push_to_hub=False,
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not show_progress,
    )
    collator = PreferenceCollator(pad_token_id=tokenizer.pad_token_id, negatives=negatives, max_length=a.max_length)
    timer = _StepTimer()
    trainer_cls = _make_trainer_class()
    try:
        trainer = trainer_cls(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, data_collator=collator,
            peft_config=lora, callbacks=[timer], loss_name=a.loss, negatives=negatives,
            sft_weight=a.sft_weight if a.loss in LOSSES else 0.0,
            rosepo_eps_max=a.rosepo_eps_max, rosepo_tau=a.rosepo_tau, share_prompt=a.share_prompt,
        )
        kept = len(trainer.train_dataset)
        if kept == 0:
            raise UserError(f"align.max_length: {a.max_length} tokens is shorter than every prompt; no pair left")
        ref_seconds = 0.0
        if a.precompute_ref_log_probs:
            t0 = time.perf_counter()
            trainer.precompute_reference(a.batch_size)
            ref_seconds = time.perf_counter() - t0
        result = trainer.train()
        history = [dict(entry) for entry in trainer.state.log_history]
        steps = [e for e in history if "loss" in e]
        for entry, seconds in zip(steps, timer.seconds):
            entry["seconds"] = round(seconds, 3)
        peft_model = trainer.model
        summary = {
            "iteration": iteration,
            "loss": a.loss,
            "beta": a.beta,
            "negatives": negatives,
            "pairs": len(records),
            "pairs_trained": kept,
            "steps": int(result.global_step),
            "train_loss": float(result.training_loss),
            "first_loss": steps[0]["loss"] if steps else None,
            "last_loss": steps[-1]["loss"] if steps else None,
            "last_reward_accuracy": steps[-1].get("rewards/accuracies") if steps else None,
            "last_reward_margin": steps[-1].get("rewards/margins") if steps else None,
            "seconds_per_step": round(sum(timer.seconds) / len(timer.seconds), 3) if timer.seconds else None,
            "reference_seconds": round(ref_seconds, 3),
            "seconds": None,
            "start_adapter": str(start_adapter) if start_adapter else None,
            "reference": f"{cfg.llm.model or 'default'} + {start_adapter or 'no adapter'}",
            "adapter": str(adapter_dir),
            "device": str(device),
            "dtype": str(dtype).replace("torch.", ""),
        }
        summary["seconds"] = round(time.perf_counter() - started, 1)
        save_adapter(peft_model, adapter_dir, before_rename=lambda: atomic_write_json(
            log_path, {"summary": summary, "config": a.model_dump(mode="json"), "steps": history}))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return {**summary, "skipped": False}
