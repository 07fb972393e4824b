"""The decoding KV cache: preallocated, and shared by a prompt's N samples.

Each prompt is prefilled ONCE; its keys/values are kept once and read by its N sample rows
(shared-prefix decode attention), the generated tokens' keys/values per row, in a cache
preallocated for the whole decode (no per-step ``torch.cat``). The attention functions are
registered with transformers' ``AttentionInterface`` and switched on per call
(:class:`attn_implementation`), so the model code itself is untouched. In bf16 on CPUs with
AVX-512 BF16 the prefill and decode attention run in the fused kernels of cpu_attention.py.
"""

from __future__ import annotations

import torch

from rlrf.generation import cpu_attention


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


SHARED_ATTN = "rlrf_shared_prefix"


class SharedPrefixKV:
    """What a shared-prefix cache layer hands to the attention function (not a tensor)."""

    __slots__ = ("prefix_k", "prefix_v", "prefix_mask", "prefix_bias", "suffix_k", "suffix_v", "length", "pidx", "slot",
                 "slots", "kernel", "start", "offsets")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


def shared_prefix_layer(prefix_k, prefix_v, prefix_mask, rows: int, capacity: int, pidx, slot, slots: int,
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


PREFILL_ATTN = "rlrf_prefill"


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


def register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(SHARED_ATTN, shared_prefix_attention)
    AttentionMaskInterface.register(SHARED_ATTN, lambda *args, **kwargs: None)
    AttentionInterface.register(PREFILL_ATTN, prefill_attention)
    AttentionMaskInterface.register(PREFILL_ATTN, lambda *args, attention_mask=None, **kwargs: attention_mask)


class attn_implementation:
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


def supports_shared_prefix(model) -> bool:
    """Llama-style decoder (the default SmolLM2 and most chat models): attention dispatched by name."""
    config = model.config
    return (
        not getattr(config, "is_encoder_decoder", False)
        and getattr(config, "model_type", "") in {"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "olmo2", "smollm3"}
        and getattr(config, "sliding_window", None) in (None, 0)
    )


def make_cache(model, capacity: int):
    from transformers.cache_utils import DynamicCache

    n_layers = model.config.get_text_config(decoder=True).num_hidden_layers
    cache = DynamicCache(config=model.config)
    cache.layers = [_PreallocatedLayer(capacity) for _ in range(n_layers)]
    return cache
