"""Generation backends: many prompts × many samples, seeded per sample.

The seam is :class:`Backend`: it gets :class:`Request` objects (a tokenised prompt and the seeds of
the samples wanted from it) and yields finished :class:`Sample` objects batch by batch, so the
caller can write each batch to disk before the next one starts (resumability).

Each sample's tokens are drawn from its own seeded stream of uniforms (sampling.py), so a sample
does not depend on the other rows of its batch through the RNG.

The transformers backend (default)
----------------------------------
* prompts sorted by length and cut into batches of ``batch_size`` rows (sequences), left padded;
* each prompt is prefilled ONCE; its keys/values are kept once and read by its N sample rows
  (shared-prefix decode attention), the generated tokens' keys/values per row;
* the KV cache is preallocated (no per-step ``torch.cat`` of the whole cache);
* in bf16 on CPUs with AVX-512 BF16, the prefill and decode attention run in fused kernels
  (cpu_attention.py) and the decoding steps' linear layers on weights packed once
  (cpu_linear.py); elsewhere torch's ops do the same math;
* rows that emitted EOS are dropped from the batch as they finish, so the batch shrinks instead
  of computing padding for the slowest sample;
* logits are computed for the last position only;
* with ``repetition_penalty`` set, every token already in the row's prompt or text is penalised
  before sampling (transformers' and vLLM's rule, :func:`rlrf.generation.sampling.penalise_repeats`).

The vLLM backend (``generate.backend: vllm``, or ``auto`` with vLLM importable and a CUDA GPU) is
the path for large models and many GPUs. vLLM takes a per-request ``seed`` in its
``SamplingParams``; it does not use the uniform streams above, so its samples differ from the
transformers backend's for the same seed, but they are still a function of (prompt, seed) only.
It is isolated in :class:`VLLMBackend` and not exercised by the tests on this CPU machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from rlrf.generation import cpu_attention, cpu_linear
from rlrf.generation.prefix_cache import (PREFILL_ATTN, SHARED_ATTN, attn_implementation, make_cache, register_attention,
                                          shared_prefix_layer, supports_shared_prefix)
from rlrf.generation.sampling import SamplingParams, penalise_repeats, sample_from_logits, sample_seed, uniform_streams

__all__ = ["Backend", "NaiveHFBackend", "Request", "Sample", "SamplingParams", "TransformersBackend", "VLLMBackend",
           "last_position", "make_backend", "resolve_backend", "sample_seed", "seen_tokens", "vllm_available"]


@dataclass
class Request:
    """One prompt and the samples wanted from it; `tags[i]` is returned with sample i."""

    prompt_ids: list[int]
    seeds: list[int]
    tags: list[Any] = field(default_factory=list)

    def __post_init__(self):
        if not self.tags:
            self.tags = list(range(len(self.seeds)))
        if len(self.tags) != len(self.seeds):
            raise ValueError("Request: tags and seeds differ in length")


@dataclass
class Sample:
    request: int  # index into the requests given to the backend
    tag: Any
    token_ids: list[int]
    finished: bool  # True when the sample ended with EOS (not cut by max_new_tokens)


class Backend(Protocol):
    name: str

    def generate(self, requests: Sequence[Request], params: SamplingParams,
                 wanted: Collection[tuple[int, int]] | None = None) -> Iterator[list[Sample]]:
        """Yield finished samples one batch at a time, every (request, seed) at most once.

        `wanted` ((request index, sample index) pairs; None = all) are the samples the caller still
        needs. An engine whose numerics depend on the batch decodes each wanted sample in the batch
        it would have had with every request wanted, and may yield that batch's other samples too:
        a resumed run then writes the bytes an uninterrupted run would have written."""
        ...


# --------------------------------------------------------------------------------------------------
# transformers


def last_position(width: int, device=None) -> torch.Tensor:
    """`logits_to_keep` for a prefill that needs the last position's logits only.

    An index tensor, not the int 1: for an int, transformers hands the LM head the strided view
    ``hidden[:, -1:, :]``, and torch 2.13's CPU ``linear`` on such a view with a weight that does
    not require grad (a merged adapter, LoRA's frozen base) is pathological: 95 prompts x 320
    positions, SmolLM2's 49k-token head, bf16: 6.6 s and +5 GB instead of 19 ms (fp32: 6.5x
    slower). Indexing gathers the rows into a contiguous tensor first (bench/README.md, memory).
    """
    return torch.tensor([width - 1], dtype=torch.long, device=device)



class TransformersBackend:
    """Batched sampling with a hand-written decoding loop over a transformers causal LM."""

    name = "transformers"

    def __init__(self, model, tokenizer, *, batch_size: int = 64, compact_every: float = 0.125,
                 shared_prefix: bool | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.compact_every = compact_every
        # one copy of a prompt's KV for its N samples (decode attention reads it once per prompt);
        # for decoder-only models whose attention goes through transformers' AttentionInterface
        if shared_prefix is None:
            shared_prefix = supports_shared_prefix(model)
        self.shared_prefix = shared_prefix
        if shared_prefix:
            register_attention()
        self.device = next(model.parameters()).device
        # bf16 on a CPU with AVX-512 BF16: prefill and decode attention through cpu_attention.c
        text = model.config.get_text_config(decoder=True)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.group = text.num_attention_heads // (getattr(text, "num_key_value_heads", None) or text.num_attention_heads)
        self.kernels = shared_prefix and cpu_attention.usable(next(model.parameters()).dtype, self.device, head_dim,
                                                              self.group)
        eos = set()
        for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                eos.add(source)
            elif source:
                eos.update(int(t) for t in source)
        self.eos_ids = sorted(eos)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    # batching --------------------------------------------------------------------------------
    def plan(self, requests: Sequence[Request]) -> list[list[tuple[int, int]]]:
        """Batches of (request index, sample index): prompts sorted by length (longest first),
        at most `batch_size` rows each; a prompt's samples may span two batches."""
        order = sorted(range(len(requests)), key=lambda i: (-len(requests[i].prompt_ids), i))
        batches, current = [], []
        for i in order:
            for j in range(len(requests[i].seeds)):
                current.append((i, j))
                if len(current) == self.batch_size:
                    batches.append(current)
                    current = []
        if current:
            batches.append(current)
        return batches

    def generate(self, requests: Sequence[Request], params: SamplingParams,
                 wanted: Collection[tuple[int, int]] | None = None) -> Iterator[list[Sample]]:
        """The planned batches that hold a wanted sample, each decoded whole: bf16 decoding on the
        CPU is not batch-invariant (bench/batch_invariance.py: a sample decoded alone differs from
        the same sample decoded beside its group's other rows; on torch's path it also differs
        between its group alone and a 128-row batch), so a sample is bitwise reproducible only
        inside the batch it was planned in."""
        for batch in self.plan(requests):
            if wanted is None or any(row in wanted for row in batch):
                yield self._run_batch(requests, batch, params)

    # one batch -------------------------------------------------------------------------------
    @torch.inference_mode()
    def _run_batch(self, requests: Sequence[Request], rows: list[tuple[int, int]], params: SamplingParams) -> list[Sample]:
        device = self.device
        prompt_order: list[int] = []
        for i, _ in rows:
            if not prompt_order or prompt_order[-1] != i:
                prompt_order.append(i)
        prompt_pos = {i: p for p, i in enumerate(prompt_order)}
        lengths = [len(requests[i].prompt_ids) for i in prompt_order]
        width = max(lengths)
        ids = torch.full((len(prompt_order), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompt_order), width), dtype=torch.long)
        for p, i in enumerate(prompt_order):
            n = lengths[p]
            ids[p, width - n :] = torch.tensor(requests[i].prompt_ids, dtype=torch.long)
            mask[p, width - n :] = 1
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)

        shared = self.shared_prefix
        cache = make_cache(self.model, width if shared else width + params.max_new_tokens)
        with attn_implementation(self.model, PREFILL_ATTN) if self.kernels else contextlib.nullcontext():
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                logits_to_keep=last_position(width, device),
            )
        # fan each prompt out to its sample rows
        expand = torch.tensor([prompt_pos[i] for i, _ in rows], dtype=torch.long, device=device)
        logits = out.logits[:, -1, :].index_select(0, expand)
        next_pos = positions[:, -1].index_select(0, expand) + 1
        del out
        if shared:
            slot_of, counts = [], {}
            for i, _ in rows:
                slot_of.append(counts.get(i, 0))
                counts[i] = slot_of[-1] + 1
            slot = torch.tensor(slot_of, dtype=torch.long, device=device)
            prefix_mask = mask.bool()
            slots = max(counts.values())
            kernel = self.kernels and slots * self.group <= cpu_attention.MAX_QUERIES
            layers = [
                shared_prefix_layer(layer._k, layer._v, prefix_mask, len(rows), params.max_new_tokens, expand, slot,
                                     slots, kernel)
                for layer in cache.layers
            ]
            cache.layers = layers
            mask = None
        else:
            cache.batch_select_indices(expand)
            mask = mask.index_select(0, expand)
        with contextlib.ExitStack() as stack:
            if shared:
                stack.enter_context(attn_implementation(self.model, SHARED_ATTN))
            if cpu_linear.usable(self.model):
                stack.enter_context(cpu_linear.packed_linears(self.model, len(rows)))
            return self._decode(rows, requests, params, cache, logits, mask, next_pos)

    def _decode(self, rows, requests, params, cache, logits, mask, next_pos) -> list[Sample]:
        device = self.device

        seeds = [requests[i].seeds[j] for i, j in rows]
        u_all = uniform_streams(seeds, params.max_new_tokens).to(device)
        eos = torch.tensor(self.eos_ids, dtype=torch.long, device=device)

        n_rows = len(rows)
        tokens = torch.full((n_rows, params.max_new_tokens), -1, dtype=torch.long, device=device)
        alive = torch.arange(n_rows, device=device)  # original row of each live batch row
        done = torch.zeros(n_rows, dtype=torch.bool, device=device)  # live rows that already ended
        penalty = params.repetition_penalty
        seen = None  # with a repetition penalty: the tokens each row's prompt and text hold so far
        if penalty != 1.0:
            seen = seen_tokens([requests[i].prompt_ids for i, _ in rows], logits.shape[-1], device)
        for step in range(params.max_new_tokens):
            if seen is not None:
                logits = penalise_repeats(logits, seen, penalty)
            tok = sample_from_logits(logits, u_all[alive, step], params)
            tok = torch.where(done, torch.full_like(tok, self.pad_id), tok)
            live_rows = alive[~done]
            tokens[live_rows, step] = tok[~done]
            if seen is not None:
                seen.scatter_(1, tok.unsqueeze(-1), True)
            done = done | torch.isin(tok, eos)
            if step == params.max_new_tokens - 1 or bool(done.all()):
                break
            n_done = int(done.sum())
            if n_done and n_done >= max(1, int(self.compact_every * len(alive))):
                keep = (~done).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                alive, tok, next_pos = alive[keep], tok[keep], next_pos[keep]
                mask = mask[keep] if mask is not None else None
                seen = seen[keep] if seen is not None else None
                done = done[keep]
            if mask is not None:
                mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=device)], dim=1)
            out = self.model(
                input_ids=tok.unsqueeze(-1),
                attention_mask=mask,
                position_ids=next_pos.unsqueeze(-1),
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
            del out

        tokens = tokens.cpu().tolist()
        eos_set = set(self.eos_ids)
        samples = []
        for r, (i, j) in enumerate(rows):
            seq = [t for t in tokens[r] if t >= 0]
            finished = bool(seq) and seq[-1] in eos_set
            if finished:
                seq = seq[:-1]
            samples.append(Sample(request=i, tag=requests[i].tags[j], token_ids=seq, finished=finished))
        return samples


def seen_tokens(prompts: Sequence[list[int]], vocab: int, device=None) -> torch.Tensor:
    """(rows, vocab) bool: the tokens of each row's prompt, which the repetition penalty counts as
    already said (transformers and vLLM count the prompt too). Ids the LM head cannot produce are
    left out, as transformers drops them; padding never enters (each row's own prompt ids only), so
    a row is penalised the same in any batch."""
    seen = torch.zeros((len(prompts), vocab), dtype=torch.bool)
    for row, ids in enumerate(prompts):
        ids = torch.tensor(ids, dtype=torch.long)
        seen[row, ids[ids < vocab]] = True
    return seen.to(device)


class NaiveHFBackend:
    """The reference point: one prompt at a time through `model.generate(num_return_sequences=N)`.

    Uses the global RNG (seeded from the request's first seed), so it is not batch-independent;
    it exists for the benchmark and as a distribution sanity check.
    """

    name = "naive-hf"

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def generate(self, requests: Sequence[Request], params: SamplingParams,
                 wanted: Collection[tuple[int, int]] | None = None) -> Iterator[list[Sample]]:
        for i, req in enumerate(requests):
            if wanted is not None and not any((i, j) in wanted for j in range(len(req.seeds))):
                continue  # one global RNG per request: a request is decoded whole or not at all
            torch.manual_seed(req.seeds[0] % (2**63))
            ids = torch.tensor([req.prompt_ids], dtype=torch.long, device=self.device)
            kwargs = dict(do_sample=params.temperature > 0, max_new_tokens=params.max_new_tokens,
                          repetition_penalty=params.repetition_penalty)
            if params.temperature > 0:
                kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                num_return_sequences=len(req.seeds),
                pad_token_id=self.tokenizer.pad_token_id,
                **kwargs,
            )
            eos = self.model.generation_config.eos_token_id
            eos = {eos} if isinstance(eos, int) else set(eos or [])
            eos.add(self.tokenizer.eos_token_id)
            batch = []
            for j, row in enumerate(out[:, ids.shape[1] :].tolist()):
                seq, finished = [], False
                for t in row:
                    if t in eos:
                        finished = True
                        break
                    seq.append(t)
                batch.append(Sample(request=i, tag=req.tags[j], token_ids=seq, finished=finished))
            yield batch


# --------------------------------------------------------------------------------------------------
# vLLM (GPU, optional; not importable on the CPU machines this project is tested on)


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


class VLLMBackend:
    """vLLM engine behind the same interface. Untested here (no vLLM, no GPU on the CI machines).

    vLLM schedules all requests itself (continuous batching, prefix caching shares a prompt's
    prefill among its N samples); we submit in chunks of `chunk` requests so each chunk can be
    written to disk before the next starts. Each sample is its own request with its own seed.
    """

    name = "vllm"

    def __init__(self, model_source: str, *, dtype: str = "auto", adapter=None, chunk: int = 256, **engine_kwargs):
        from vllm import LLM  # noqa: WPS433 (optional dependency)

        self.llm = LLM(
            model=model_source, dtype=dtype, enable_prefix_caching=True, enable_lora=adapter is not None, **engine_kwargs
        )
        self.adapter = adapter
        self.chunk = chunk

    def generate(self, requests: Sequence[Request], params: SamplingParams,
                 wanted: Collection[tuple[int, int]] | None = None) -> Iterator[list[Sample]]:
        from vllm import SamplingParams as VSP
        from vllm.inputs import TokensPrompt

        lora = None
        if self.adapter is not None:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("policy", 1, str(self.adapter))
        flat = [(i, j) for i, req in enumerate(requests) for j in range(len(req.seeds))
                if wanted is None or (i, j) in wanted]  # each sample is its own seeded request
        for start in range(0, len(flat), self.chunk):
            part = flat[start : start + self.chunk]
            prompts = [TokensPrompt(prompt_token_ids=requests[i].prompt_ids) for i, _ in part]
            sps = [
                VSP(
                    n=1,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k if params.top_k > 0 else -1,
                    max_tokens=params.max_new_tokens,
                    repetition_penalty=params.repetition_penalty,  # transformers' rule; 1.0 = off
                    seed=requests[i].seeds[j] % (2**31),
                )
                for i, j in part
            ]
            outs = self.llm.generate(prompts, sps, lora_request=lora, use_tqdm=False)
            batch = []
            for (i, j), out in zip(part, outs):
                c = out.outputs[0]
                batch.append(
                    Sample(request=i, tag=requests[i].tags[j], token_ids=list(c.token_ids), finished=c.finish_reason == "stop")
                )
            yield batch


def resolve_backend(name: str) -> str:
    """`auto` = vLLM when importable with a CUDA GPU, else transformers."""
    if name == "auto":
        return "vllm" if vllm_available() else "transformers"
    return name


def make_backend(name: str, policy, *, batch_size: int) -> Backend:
    from rlrf.core.errors import UserError

    name = resolve_backend(name)
    if name == "transformers":
        return TransformersBackend(policy.model, policy.tokenizer, batch_size=batch_size)
    if name == "naive":
        return NaiveHFBackend(policy.model, policy.tokenizer)
    if name == "vllm":
        if not vllm_available():
            raise UserError("generate.backend: vllm needs the vllm package and a CUDA GPU")
        dtype = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}.get(policy.dtype, "auto")
        return VLLMBackend(policy.source, dtype=dtype, adapter=policy.adapter, chunk=max(batch_size, 256))
    raise UserError(f"generate.backend: unknown backend '{name}' (auto, transformers, vllm)")
