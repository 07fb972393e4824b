"""PreferenceTrainer: trl's DPOTrainer with rlrf's loss registry and k negatives per prompt.

trl has no plug-in point for a custom preference loss, so `compute_loss` is overridden: a loss named
in `rlrf.alignment.losses` runs on our batch layout (chosen + k negatives, optionally one shared
forward pass per prompt); any other name is one of trl's own loss types and runs trl's loss code.

trl's loss types (and their `loss_weights` lists, ``[ipo, sft]``, the f-divergences, WPO weighting)
live inline in ``DPOTrainer._compute_loss``, after the model's forward; they are not callable on
their own. On the fast path that method still computes the loss and its metrics, handed a "model"
that returns the fast path's per-token log-probs (and trl's other fused-head fields) in trl's
layout, and the reference log-probs, computed by the same function, in the batch (as if
precomputed). What this cannot feed trl (``ld_alpha``, a MoE aux loss, several processes)
runs trl's full-sequence forward; `trl_forward` says which ran. This module imports trl at the top:
load it lazily (the CLI's `--help` stays fast).
"""

from __future__ import annotations

import contextlib
import logging

import torch
from accelerate.utils import is_peft_model
from trl import DPOTrainer
from trl.trainer.utils import use_adapter

from rlrf.alignment import fast
from rlrf.alignment.collator import EXTRA_KEYS
from rlrf.alignment.losses import LOSSES, length_regularized, rosepo_epsilon, sequence_nll_per_token

log = logging.getLogger(__name__)


class PreferenceTrainer(DPOTrainer):
    """DPOTrainer with our loss registry and k negatives per example; trl losses pass through."""

    def __init__(self, *args, loss_name: str, negatives: int, sft_weight: float,
                 rosepo_eps_max: float, rosepo_tau: float, share_prompt: bool = True, length_alpha: float = 0.0,
                 fast_path: bool = False, mixed_bf16: bool = False, reference: str = "previous", **kwargs):
        self.share_prompt = share_prompt
        self.fast_path = fast_path
        self.length_alpha = length_alpha
        self.loss_name = loss_name
        self.n_negatives = negatives
        self.sft_weight = sft_weight
        self.rosepo_eps_max = rosepo_eps_max
        self.rosepo_tau = rosepo_tau
        super().__init__(*args, **kwargs)
        if reference == "base" and self.ref_model is None and is_peft_model(self.model):
            # trl keeps the previous policy as a frozen "ref" adapter copy; without it every reference
            # pass (ours, fast or not, and trl's own) runs with the adapters disabled: the base model
            unwrapped = self.accelerator.unwrap_model(self.model)
            if "ref" in unwrapped.peft_config:
                unwrapped.delete_adapter("ref")
        # the fast path (rlrf/alignment/fast.py) covers our losses on one process, and trl's where
        # `_trl_fast_path_gap` finds nothing; DDP and the rest run trl's forward, which knows nothing of
        # bf16-stored weights
        supported = self._prompt_sharing_supported(self.model)
        self.fast_path = fast_path and share_prompt and supported
        self.trl_forward = None  # for trl's losses: "fast path", or why trl's full-sequence forward runs
        if loss_name not in LOSSES:
            gap = self._trl_fast_path_gap(fast_path, share_prompt, supported)
            self.fast_path = gap is None
            self.trl_forward = "fast path" if gap is None else f"trl's full-sequence forward ({gap})"
            log.info("align.loss %s (trl's): %s", loss_name, self.trl_forward)
        self.mixed_bf16 = self.fast_path and mixed_bf16
        if self.mixed_bf16:
            fast.store_frozen_linears_in_bf16(self._causal_lm(self.model))

    def _trl_fast_path_gap(self, fast_path: bool, share_prompt: bool, supported: bool) -> str | None:
        """Why trl's loss code cannot run on the fast path's log-probs here; None when it can."""
        if not fast_path:
            return "fast path off"
        if not share_prompt:
            return "align.share_prompt off"
        if not supported:
            return "several processes, or an LM head with a logit scale"
        if self.n_negatives != 1:  # trl's losses are pairwise: dpo.py never asks for more
            return "more than one negative"
        if self.ld_alpha is not None:  # trl weights each token of policy and reference by position
            return "ld_alpha"
        if self.aux_loss_enabled:
            return "MoE aux loss"
        return None

    # -- reference -------------------------------------------------------------------
    def reference_context(self):
        """The previous policy: trl's frozen "ref" adapter copy, or adapters disabled (a fresh LoRA, or
        `reference="base"`, which drops the copy)."""
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            return use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        return contextlib.nullcontext()

    def _sequence_logps(self, model, inputs):
        """Summed completion log-probs (N,) and completion lengths (N,) of every row of the batch."""
        if self.fast_path and "prompt_input_ids" in inputs:
            if self.loss_name not in LOSSES:  # trl's loss: its head kernel and its sum, as for the policy
                per_token = self._trl_head_fields(model, inputs, ("log_probs",))["log_probs"]
                return per_token.sum(dim=1), inputs["completion_mask"][:, 1:].sum(dim=1)
            return self._per_example_logps(model, inputs)
        if self.share_prompt and "prompt_input_ids" in inputs and self._prompt_sharing_supported(model):
            return self._shared_prompt_logps(model, inputs)
        return self._full_sequence_logps(model, inputs)

    def _prompt_sharing_supported(self, model) -> bool:
        """The shared-prompt pass calls the backbone and head directly, around DDP's wrapper, whose
        forward is what syncs gradients: with several processes the full-sequence pass is used."""
        if self.accelerator.num_processes > 1:
            return False
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

    def _per_example_logps(self, model, inputs):
        """The fast path's `_shared_prompt_logps`: each example alone, its prompt without pads run once
        for its chosen and k negatives, the LM head at completion positions only (rlrf/alignment/fast.py).
        Same numbers as the full-sequence pass; no work on padding; an example's numbers do not
        depend on its batch (so the precomputed reference and the step agree exactly)."""
        backbone, head = self._backbone_and_head(model)
        lengths = inputs["completion_attention_mask"].sum(1)
        logps = [None] * lengths.size(0)
        for rows, prompt, completions in self._examples(inputs):
            values = fast.completion_logps(backbone, head, prompt, completions, lengths[rows], mixed=self.mixed_bf16)
            for row, value in zip(rows, values):
                logps[row] = value
        return torch.stack(logps), lengths

    def _trl_head_fields(self, model, inputs, fields: tuple[str, ...]) -> dict:
        """trl's fused-LM-head `fields` (log_probs, entropy, ...) as its forward lays them out, (N, L - 1)
        over trl's full sequences (zero off the completions), computed by the fast path: each example
        alone, trl's head kernel at the completion positions only (:func:`fast.trl_head_outputs`)."""
        backbone, head = self._backbone_and_head(model)
        lengths = inputs["completion_attention_mask"].sum(1)
        per_row = [None] * lengths.size(0)
        for rows, prompt, completions in self._examples(inputs):
            values = fast.trl_head_outputs(backbone, head, prompt, completions, lengths[rows], mixed=self.mixed_bf16,
                                           outputs=fields)
            sizes = lengths[rows].tolist()
            for row, parts in zip(rows, zip(*(values[name].split(sizes) for name in fields))):
                per_row[row] = parts
        shift_mask = inputs["completion_mask"][:, 1:].bool()  # trl's positions of the completion tokens
        if int(shift_mask.sum()) != int(lengths.sum()):
            raise RuntimeError("the batch's split completions do not match its full sequences")
        out = {}
        for i, name in enumerate(fields):
            flat = torch.cat([parts[i] for parts in per_row])  # row by row, in order: masked_scatter's order
            out[name] = flat.new_zeros(shift_mask.shape).masked_scatter(shift_mask, flat)
        return out

    def _backbone_and_head(self, model):
        lm = self._causal_lm(model)
        return getattr(lm, lm.base_model_prefix), lm.get_output_embeddings()

    @staticmethod
    def _examples(inputs):
        """(rows, prompt without pads, completions) of each example: its rows in the collator's layout
        (chosen x B, negative_1 x B, ...)."""
        p_ids, p_mask = inputs["prompt_input_ids"], inputs["prompt_attention_mask"]
        c_ids = inputs["completion_input_ids"]
        B, N = p_ids.size(0), c_ids.size(0)
        for b in range(B):
            rows = list(range(b, N, B))
            yield rows, p_ids[b][p_mask[b].bool()], c_ids[rows]

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
        """Adds a ``ref_logps`` column (chosen, negatives...) to the training set, before any step.

        Under DDP each process computes every world_size-th row and the rows are gathered, so the
        reference pass is split between processes rather than repeated on each."""
        from torch.utils.data import DataLoader

        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        rows = self.train_dataset.shard(num_shards=world, index=rank, contiguous=False) if world > 1 else self.train_dataset
        loader = DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=self.data_collator)
        was_training = self.model.training
        self.model.eval()
        values = []
        for batch in loader:
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            values.extend(self.reference_logps(batch).float().cpu().tolist())
        self.model.train(was_training)
        if world > 1:
            import torch.distributed as dist

            shards = [None] * world
            dist.all_gather_object(shards, values)
            values = [shards[i % world][i // world] for i in range(len(self.train_dataset))]
        self.train_dataset = self.train_dataset.add_column("ref_logps", values)
        self.precompute_ref_logps = True  # trl's pass-through losses then read ref_*_logps from the batch

    # -- loss ------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_name not in LOSSES:  # a trl built-in loss: trl's own code on trl's batch layout
            trl_inputs = {k: v for k, v in inputs.items() if k not in EXTRA_KEYS}
            if self.fast_path and not return_outputs:
                return self._trl_loss_on_fast_path(model, inputs, trl_inputs, num_items_in_batch)
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
        loss_ref_chosen, loss_ref_rejected = ref_chosen, ref_rejected
        if self.length_alpha > 0:  # R-DPO: the logged rewards below stay the plain β r(y)
            n_tokens = lengths.view(1 + k, -1).T  # (B, 1 + k), as logps
            loss_ref_chosen = length_regularized(ref_chosen, n_tokens[:, 0], alpha=self.length_alpha, beta=self.beta)
            loss_ref_rejected = length_regularized(ref_rejected, n_tokens[:, 1:], alpha=self.length_alpha, beta=self.beta)
        per_example = LOSSES[self.loss_name].fn(chosen, rejected, loss_ref_chosen, loss_ref_rejected,
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

    def _trl_loss_on_fast_path(self, model, inputs, trl_inputs, num_items_in_batch):
        """trl's `compute_loss` (its loss types, weights and metrics) on the fast path's numbers (module
        docstring): the policy's forward is done here, the reference's too unless precomputed."""
        from trl.trainer.utils import FusedCausalLMOutput

        fields = fast.TRL_HEAD_OUTPUTS + (("log_sum_sq_probs",) if self.use_weighting else ())
        outputs = FusedCausalLMOutput(**self._trl_head_fields(model, inputs, fields))

        def forward(**_):  # what trl's `_compute_loss` calls its model with; its forward is done above
            return outputs

        if "ref_chosen_logps" not in trl_inputs:
            ref = self.reference_logps(inputs)
            trl_inputs = {**trl_inputs, "ref_chosen_logps": ref[:, 0], "ref_rejected_logps": ref[:, 1]}
        precomputed, self.precompute_ref_logps = self.precompute_ref_logps, True  # trl reads them from the batch
        try:
            return super().compute_loss(forward, trl_inputs, False, num_items_in_batch)
        finally:
            self.precompute_ref_logps = precomputed
