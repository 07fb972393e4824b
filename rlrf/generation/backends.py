"""Generation backends: many prompts × many samples, seeded per sample.

The seam is :class:`Backend`: it gets :class:`Request` objects (a tokenised prompt and the seeds of
the samples wanted from it) and yields finished :class:`Sample` objects batch by batch, so the
caller can write each batch to disk before the next one starts (resumability).

Per-sample seeds, independent of batch composition
--------------------------------------------------
``model.generate`` draws every row's token from the one global RNG, so a sample depends on which
other rows shared its batch. Here each sample owns a stream of uniforms ``u[t]``, drawn up front
from ``torch.Generator().manual_seed(seed)`` on the CPU (same numbers on any device), and step
``t`` picks its token by inverse-CDF sampling on its own temperature/top-k/top-p distribution with
``u[t]`` (:func:`sample_from_logits`). A row's tokens are then a function of its prompt, its seed
and the weights only — not of the batch, the batch size, the padding or the device — up to
floating-point differences between batched and unbatched matmuls, which move a probability by
~1e-6 and so flip a draw only when ``u[t]`` lands that close to a bucket edge.

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
* logits are computed for the last position only.

The vLLM backend (``generate.backend: vllm``, or ``auto`` with vLLM importable and a CUDA GPU) is
the path for large models and many GPUs. vLLM takes a per-request ``seed`` in its
``SamplingParams``; it does not use the uniform streams above, so its samples differ from the
transformers backend's for the same seed, but they are still a function of (prompt, seed) only.
It is isolated in :class:`VLLMBackend` and not exercised by the tests on this CPU machine.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from rlrf.generation import cpu_attention, cpu_linear


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.8  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = whole vocabulary


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

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> Iterator[list[Sample]]:
        """Yield finished samples one batch at a time, every (request, seed) exactly once."""
        ...


def sample_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (run seed, iteration, user, k): stable across processes."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def uniform_streams(seeds: Sequence[int], steps: int) -> torch.Tensor:
    """(len(seeds), steps) float64 uniforms in [0, 1), row i from seed i alone."""
    out = torch.empty((len(seeds), steps), dtype=torch.float64)
    gen = torch.Generator()
    for i, seed in enumerate(seeds):
        gen.manual_seed(int(seed))
        out[i] = torch.rand(steps, generator=gen, dtype=torch.float64)
    return out


def sample_from_logits(logits: torch.Tensor, u: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Tokens (rows,) drawn by inverse CDF with one uniform per row.

    Same distribution as transformers' sampling: temperature, then top-k, then top-p (the smallest
    set of most likely tokens whose mass reaches top_p; the most likely token is always kept).
    """
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    # top-k on the raw logits (any dtype), then temperature on the k survivors only: dividing by a
    # positive temperature keeps the order, and the full-vocabulary float copy + division cost
    # more than the top-k itself at 49k tokens (bench/README.md)
    vocab = logits.shape[-1]
    if 0 < params.top_k < vocab:
        values, index = torch.topk(logits, params.top_k, dim=-1)  # sorted, descending
    else:
        values, index = torch.sort(logits, dim=-1, descending=True)
    values = values.float() / params.temperature
    probs = torch.softmax(values, dim=-1)
    if params.top_p < 1.0:
        before = torch.cumsum(probs, dim=-1) - probs
        probs = probs * (before < params.top_p)
    cdf = torch.cumsum(probs, dim=-1)
    target = (u.to(cdf.device, torch.float64) * cdf[:, -1].double()).to(cdf.dtype).unsqueeze(-1)
    choice = torch.searchsorted(cdf, target, right=True).clamp_(max=values.shape[-1] - 1)
    # never land on a token top-p removed (possible only through rounding at the very top of the cdf)
    kept = (probs > 0).sum(dim=-1, keepdim=True) - 1
    choice = torch.minimum(choice, kept)
    return index.gather(-1, choice).squeeze(-1)


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


class _PreallocatedLayer:
    """A KV-cache layer with room for `capacity` positions, filled in place.

    Behaves like transformers' DynamicLayer (returns the keys/values seen so far) without
    re-concatenating the whole cache at every decoding step.
    """

    def __new__(cls, capacity: int):
        from transformers.cache_utils import DynamicLayer

        class PreallocatedLayer(DynamicLayer):
            def __init__(self, capacity: int):
                super().__init__()
                self.capacity = capacity
                self.length = 0
                self._k = self._v = None

            def lazy_initialization(self, key_states, value_states):
                self.dtype, self.device = key_states.dtype, key_states.device
                b, h, _, dk = key_states.shape
                dv = value_states.shape[-1]
                self._k = key_states.new_zeros((b, h, self.capacity, dk))
                self._v = value_states.new_zeros((b, h, self.capacity, dv))
                self.is_initialized = True

            def update(self, key_states, value_states, *args, **kwargs):
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                n = key_states.shape[-2]
                if self.length + n > self.capacity:
                    raise RuntimeError(f"KV cache full ({self.capacity} positions)")
                self._k[:, :, self.length : self.length + n] = key_states
                self._v[:, :, self.length : self.length + n] = value_states
                self.length += n
                self.keys = self._k[:, :, : self.length]
                self.values = self._v[:, :, : self.length]
                return self.keys, self.values

            def get_seq_length(self) -> int:
                return self.length

            def batch_select_indices(self, indices):
                if not self.is_initialized:
                    return
                self._k = self._k.index_select(0, indices)
                self._v = self._v.index_select(0, indices)
                self.keys = self._k[:, :, : self.length]
                self.values = self._v[:, :, : self.length]

            def batch_repeat_interleave(self, repeats: int):
                idx = torch.arange(self._k.shape[0], device=self._k.device).repeat_interleave(repeats)
                self.batch_select_indices(idx)

        return PreallocatedLayer(capacity)


_SHARED_ATTN = "rlrf_shared_prefix"


class SharedPrefixKV:
    """What a shared-prefix cache layer hands to the attention function (not a tensor)."""

    __slots__ = ("prefix_k", "prefix_v", "prefix_mask", "prefix_bias", "suffix_k", "suffix_v", "length", "pidx", "slot",
                 "slots", "kernel", "start", "offsets")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


def _shared_prefix_layer(prefix_k, prefix_v, prefix_mask, rows: int, capacity: int, pidx, slot, slots: int,
                         kernel: bool):
    """A decode-time KV layer: the prompt's keys/values once per PROMPT (P, Hkv, Lp, D) plus the
    generated tokens' keys/values per ROW (R, Hkv, capacity, D), filled in place.

    Where the bf16 CPU kernel runs (cpu_attention.py), keys are kept in its pair-interleaved layout
    (P or R, Hkv, D/2, positions, 2) instead, and the torch path's score bias is not needed."""
    from transformers.cache_utils import DynamicLayer

    n_prompts, hkv, lp, dim = prefix_k.shape

    class SharedPrefixLayer(DynamicLayer):
        def __init__(self):
            super().__init__()
            self.prefix_v, self.prefix_mask = prefix_v, prefix_mask
            if kernel:
                self.prefix_k, self.prefix_bias = cpu_attention.pair_keys(prefix_k), None
                self.start = (~prefix_mask).sum(-1)  # left padding: first real prompt position
                self.suffix_k = prefix_k.new_zeros((rows, hkv, dim // 2, capacity, 2))
            else:
                self.prefix_k, self.start = prefix_k, None
                # 0 / -inf per prompt position (left padding), added to the float32 scores
                self.prefix_bias = torch.zeros(prefix_mask.shape, dtype=torch.float32, device=prefix_mask.device
                                               ).masked_fill_(~prefix_mask, float("-inf"))[:, None, None, None, :]
                self.suffix_k = prefix_k.new_zeros((rows, hkv, capacity, dim))
            self.suffix_v = prefix_v.new_zeros((rows, hkv, capacity, prefix_v.shape[3]))
            self.length = 0
            self.pidx, self.slot, self.slots = pidx, slot, slots
            self.offsets = self._offsets(pidx) if kernel else None  # only the kernel reads it
            self.dtype, self.device = prefix_k.dtype, prefix_k.device
            self.is_initialized = True

        @staticmethod
        def _offsets(pidx):
            """Rows of prompt p are [offsets[p], offsets[p+1]): rows stay grouped by prompt."""
            counts = torch.bincount(pidx, minlength=n_prompts)
            return torch.cat([counts.new_zeros(1), counts.cumsum(0)])

        def update(self, key_states, value_states, *args, **kwargs):
            n = key_states.shape[-2]
            if kernel:
                if n != 1:
                    raise RuntimeError("shared-prefix attention is for single-token decoding steps")
                self.suffix_k[:, :, :, self.length] = key_states.view(-1, hkv, dim // 2, 2)
                self.suffix_v[:, :, self.length] = value_states[:, :, 0]
                self.length += 1
                suffix_k, suffix_v = self.suffix_k, self.suffix_v
            else:
                self.suffix_k[:, :, self.length : self.length + n] = key_states
                self.suffix_v[:, :, self.length : self.length + n] = value_states
                self.length += n
                suffix_k, suffix_v = self.suffix_k[:, :, : self.length], self.suffix_v[:, :, : self.length]
            kv = SharedPrefixKV(prefix_k=self.prefix_k, prefix_v=self.prefix_v, prefix_mask=self.prefix_mask,
                                prefix_bias=self.prefix_bias, suffix_k=suffix_k, suffix_v=suffix_v,
                                length=self.length, pidx=self.pidx, slot=self.slot, slots=self.slots, kernel=kernel,
                                start=self.start, offsets=self.offsets)
            return kv, kv

        def get_seq_length(self) -> int:
            return lp + self.length

        def batch_select_indices(self, indices):
            self.suffix_k = self.suffix_k.index_select(0, indices)
            self.suffix_v = self.suffix_v.index_select(0, indices)
            self.pidx = self.pidx.index_select(0, indices)
            self.slot = self.slot.index_select(0, indices)
            if kernel:
                self.offsets = self._offsets(self.pidx)

    return SharedPrefixLayer()


def shared_prefix_attention(module, query, key, value, attention_mask=None, dropout: float = 0.0, scaling=None, **kwargs):
    """Decode-step attention over (shared prompt KV, per-row generated KV) with one softmax.

    The prompt's keys/values are read once per prompt instead of once per sample: the N samples'
    queries of a prompt are stacked into one matmul against them. The softmax is split the
    flash-attention way: the prompt part stays in the prompt layout (P, Hkv, slots, g, ·) and the
    generated part in the row layout (R, Hkv, g, ·); only the per-row running maximum, the
    normaliser and the (R, Hkv, g, D) partial outputs cross between them, so no (R, ·, Lp) tensor
    is gathered or scattered. Equal to ordinary attention up to floating-point summation order
    (tested against the plain path).
    """
    kv: SharedPrefixKV = key
    rows, heads, q_len, dim = query.shape
    if q_len != 1:
        raise RuntimeError("shared-prefix attention is for single-token decoding steps")
    if kv.kernel:
        return cpu_attention.decode_attention(query, kv.prefix_k, kv.prefix_v, kv.start, kv.suffix_k, kv.suffix_v,
                                              kv.offsets, kv.length, scaling if scaling is not None else dim ** -0.5), None
    hkv = kv.prefix_k.shape[1]
    g = heads // hkv
    scale = scaling if scaling is not None else dim ** -0.5
    n_prompts, lp = kv.prefix_k.shape[0], kv.prefix_k.shape[2]
    qg = query.reshape(rows, hkv, g, dim)
    # prompt part, prompt layout: (P, Hkv, slots*g, D) @ (P, Hkv, D, Lp); row r sits at [pidx[r], :, slot[r]]
    qp = query.new_zeros((n_prompts, hkv, kv.slots, g, dim))
    qp[kv.pidx, :, kv.slot] = qg
    sp = torch.matmul(qp.view(n_prompts, hkv, kv.slots * g, dim), kv.prefix_k.transpose(-1, -2))
    sp = sp.view(n_prompts, hkv, kv.slots, g, lp).float().mul_(scale).add_(kv.prefix_bias)
    mp = sp.amax(dim=-1)  # (P, Hkv, slots, g); empty slots keep their own (finite) max
    # generated part, row layout
    ss = torch.matmul(qg, kv.suffix_k.transpose(-1, -2)).float().mul_(scale)  # (R, Hkv, g, t)
    m = torch.maximum(mp[kv.pidx, :, kv.slot], ss.amax(dim=-1))  # (R, Hkv, g)
    mp[kv.pidx, :, kv.slot] = m
    ep = torch.exp_(sp.sub_(mp.unsqueeze(-1)))
    es = torch.exp_(ss.sub_(m.unsqueeze(-1)))
    op = torch.matmul(ep.to(query.dtype).view(n_prompts, hkv, kv.slots * g, lp), kv.prefix_v)
    op = op.view(n_prompts, hkv, kv.slots, g, dim)[kv.pidx, :, kv.slot].float()  # (R, Hkv, g, D)
    denom = ep.sum(dim=-1)[kv.pidx, :, kv.slot] + es.sum(dim=-1)  # (R, Hkv, g)
    out = op.add_(torch.matmul(es.to(query.dtype), kv.suffix_v).float()).div_(denom.unsqueeze(-1))
    return out.to(query.dtype).reshape(rows, heads, 1, dim).transpose(1, 2).contiguous(), None


_PREFILL_ATTN = "rlrf_prefill"


def prefill_attention(module, query, key, value, attention_mask=None, dropout: float = 0.0, scaling=None, **kwargs):
    """The prompts' causal attention through the bf16 CPU kernel (cpu_attention.py).

    `attention_mask` is the (B, L) left-padding mask itself: the mask interface registered with
    this function hands it through instead of building a 4-D mask.
    """
    if query.shape[2] != key.shape[2]:
        raise RuntimeError("the prefill attention kernel runs on an empty cache only")
    start = (attention_mask == 0).sum(-1) if attention_mask is not None else torch.zeros(query.shape[0], dtype=torch.long)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return cpu_attention.prefill_attention(query, key, value, start, scale), None


def _register_shared_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(_SHARED_ATTN, shared_prefix_attention)
    AttentionMaskInterface.register(_SHARED_ATTN, lambda *args, **kwargs: None)
    AttentionInterface.register(_PREFILL_ATTN, prefill_attention)
    AttentionMaskInterface.register(_PREFILL_ATTN, lambda *args, attention_mask=None, **kwargs: attention_mask)


class _attn_implementation:
    """Temporarily switch a model's attention implementation (restored even on error)."""

    def __init__(self, model, name: str):
        self.configs = [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")]
        self.name = name

    def __enter__(self):
        self.saved = [c._attn_implementation for c in self.configs]
        for c in self.configs:
            c._attn_implementation = self.name

    def __exit__(self, *exc):
        for c, name in zip(self.configs, self.saved):
            c._attn_implementation = name
        return False


def _supports_shared_prefix(model) -> bool:
    """Llama-style decoder (the default SmolLM2 and most chat models): attention dispatched by name."""
    config = model.config
    return (
        not getattr(config, "is_encoder_decoder", False)
        and getattr(config, "model_type", "") in {"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "olmo2", "smollm3"}
        and getattr(config, "sliding_window", None) in (None, 0)
    )


def _make_cache(model, capacity: int):
    from transformers.cache_utils import DynamicCache

    n_layers = model.config.get_text_config(decoder=True).num_hidden_layers
    cache = DynamicCache(config=model.config)
    cache.layers = [_PreallocatedLayer(capacity) for _ in range(n_layers)]
    return cache


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
            shared_prefix = _supports_shared_prefix(model)
        self.shared_prefix = shared_prefix
        if shared_prefix:
            _register_shared_attention()
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

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> Iterator[list[Sample]]:
        for batch in self.plan(requests):
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
        cache = _make_cache(self.model, width if shared else width + params.max_new_tokens)
        with _attn_implementation(self.model, _PREFILL_ATTN) if self.kernels else contextlib.nullcontext():
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
                _shared_prefix_layer(layer._k, layer._v, prefix_mask, len(rows), params.max_new_tokens, expand, slot,
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
                stack.enter_context(_attn_implementation(self.model, _SHARED_ATTN))
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
        for step in range(params.max_new_tokens):
            tok = sample_from_logits(logits, u_all[alive, step], params)
            tok = torch.where(done, torch.full_like(tok, self.pad_id), tok)
            live_rows = alive[~done]
            tokens[live_rows, step] = tok[~done]
            done = done | torch.isin(tok, eos)
            if step == params.max_new_tokens - 1 or bool(done.all()):
                break
            n_done = int(done.sum())
            if n_done and n_done >= max(1, int(self.compact_every * len(alive))):
                keep = (~done).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                alive, tok, next_pos = alive[keep], tok[keep], next_pos[keep]
                mask = mask[keep] if mask is not None else None
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
    def generate(self, requests: Sequence[Request], params: SamplingParams) -> Iterator[list[Sample]]:
        for i, req in enumerate(requests):
            torch.manual_seed(req.seeds[0] % (2**63))
            ids = torch.tensor([req.prompt_ids], dtype=torch.long, device=self.device)
            kwargs = dict(do_sample=params.temperature > 0, max_new_tokens=params.max_new_tokens)
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

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> Iterator[list[Sample]]:
        from vllm import SamplingParams as VSP
        from vllm.inputs import TokensPrompt

        lora = None
        if self.adapter is not None:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("policy", 1, str(self.adapter))
        flat = [(i, j) for i, req in enumerate(requests) for j in range(len(req.seeds))]
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

