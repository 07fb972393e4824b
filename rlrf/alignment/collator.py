"""Batches of one chosen and k rejected completions per prompt, in the layouts the trainer reads.

trl's DPO collator knows only chosen/rejected pairs. S-DPO and DMPO need k negatives per prompt, and
the shared-prompt forward needs each prompt once with its completions beside it, so the batch is
built here: full sequences for trl's own losses, and the same rows split at the prompt for ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class PreferenceCollator:
    """Pads [chosen × B, negative_1 × B, ..., negative_k × B] into one batch (trl's layout when k = 1).

    Each example holds trl's ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` and, for k > 1, our
    ``negatives_full_ids`` (tokenized prompt + negative + EOS, as trl tokenizes a completion). An
    example with fewer than k negatives repeats its first one, masked out by ``neg_mask``.

    trl appends EOS to every completion. A completion the policy did not finish (cut at the length
    cap; ``finished`` False, in the order chosen, negative_1, ...) loses that EOS here: otherwise
    alignment would teach the policy to stop mid-sentence at the cap, a text it never wrote.
    """

    pad_token_id: int
    negatives: int
    max_length: int | None = None
    eos_token_id: int | None = None

    def _as_written(self, completion: list[int], finished: bool) -> list[int]:
        if not finished and self.eos_token_id is not None and completion and completion[-1] == self.eos_token_id:
            return completion[:-1]
        return completion

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        k = self.negatives
        rows: list[list[list[int]]] = [[] for _ in range(k + 1)]
        masks: list[list[list[int]]] = [[] for _ in range(k + 1)]
        neg_mask = []
        for ex in examples:
            prompt = ex["prompt_ids"]
            finished = list(ex.get("finished") or []) + [True] * (k + 1)
            chosen = self._as_written(ex["chosen_ids"], finished[0])
            rows[0].append(prompt + chosen)
            masks[0].append([0] * len(prompt) + [1] * len(chosen))
            if k == 1:
                negs = [prompt + self._as_written(ex["rejected_ids"], finished[1])]
            else:
                negs = [prompt + self._as_written(seq[len(prompt):], finished[1 + j])
                        for j, seq in enumerate(ex["negatives_full_ids"][:k])]
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


EXTRA_KEYS = ("margin", "neg_mask", "ref_rejected_list_logps", "prompt_input_ids", "prompt_attention_mask",
              "completion_input_ids", "completion_attention_mask")
