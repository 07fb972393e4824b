"""The bf16 CPU paths of rlrf generate: the attention kernels (rlrf/generation/cpu_attention.c)
against float32 attention, and packed linear layers (cpu_linear.py) against F.linear."""

import pytest
import torch
import torch.nn.functional as F

from rlrf.generation import cpu_attention, cpu_linear
from rlrf.generation.backends import Request, SamplingParams, TransformersBackend

needs_kernels = pytest.mark.skipif(cpu_attention.load() is None,
                                   reason="this CPU has no AVX-512 BF16, or no C compiler is installed")


def _attention(q, k, v, scale):
    """float32 softmax(q k^T) v for one query row set: q (H, n, D), k and v (Hkv, m, D)."""
    g = q.shape[0] // k.shape[0]
    k, v = k.float().repeat_interleave(g, 0), v.float().repeat_interleave(g, 0)
    return torch.softmax(q.float() @ k.transpose(-1, -2) * scale, -1) @ v


@needs_kernels
@pytest.mark.parametrize("hkv,group,dim", [(2, 3, 64), (1, 1, 128), (3, 12, 64)])
def test_decode_attention_equals_float32_attention_over_prompt_and_own_tokens(hkv, group, dim):
    torch.manual_seed(0)
    bf = torch.bfloat16
    rows_of = [3, 0, 2, 1]  # prompt 1's rows all finished and were dropped
    start = torch.tensor([0, 5, 17, 39])  # left padding before these positions
    n_prompts, lp, cap, t = len(rows_of), 40, 24, 19
    rows = sum(rows_of)
    pidx = torch.repeat_interleave(torch.arange(n_prompts), torch.tensor(rows_of))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(rows_of).cumsum(0)])
    pk, pv = (torch.randn(n_prompts, hkv, lp, dim, dtype=bf) for _ in range(2))
    sk, sv = (torch.randn(rows, hkv, cap, dim, dtype=bf) for _ in range(2))
    q = torch.randn(rows, hkv * group, 1, dim, dtype=bf) * 2
    scale = dim ** -0.5

    out = cpu_attention.decode_attention(q, cpu_attention.pair_keys(pk), pv, start, cpu_attention.pair_keys(sk), sv,
                                         offsets, t, scale)

    assert out.shape == (rows, 1, hkv * group, dim) and out.dtype == bf
    for r in range(rows):
        p, s = int(pidx[r]), int(start[pidx[r]])
        k = torch.cat([pk[p, :, s:], sk[r, :, :t]], 1)
        v = torch.cat([pv[p, :, s:], sv[r, :, :t]], 1)
        want = _attention(q[r], k, v, scale)[:, 0]
        torch.testing.assert_close(out[r, 0].float(), want, atol=2e-2, rtol=1e-2)


@needs_kernels
@pytest.mark.parametrize("hkv,group,dim", [(2, 3, 64), (2, 1, 128)])
def test_prefill_attention_is_causal_over_real_positions_and_zero_on_padding(hkv, group, dim):
    torch.manual_seed(1)
    bf = torch.bfloat16
    batch, length = 3, 37
    start = torch.tensor([0, 4, 36])
    q = torch.randn(batch, hkv * group, length, dim, dtype=bf) * 2
    k, v = (torch.randn(batch, hkv, length, dim, dtype=bf) for _ in range(2))
    scale = dim ** -0.5

    out = cpu_attention.prefill_attention(q, k, v, start, scale)  # (B, L, H, D)

    for b in range(batch):
        s = int(start[b])
        assert torch.count_nonzero(out[b, :s]) == 0
        n = length - s
        g = group
        scores = (q[b, :, s:].float() @ k[b, :, s:].float().repeat_interleave(g, 0).transpose(-1, -2)) * scale
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        want = torch.softmax(scores, -1) @ v[b, :, s:].float().repeat_interleave(g, 0)  # (H, n, D)
        torch.testing.assert_close(out[b, s:].float(), want.transpose(0, 1), atol=2e-2, rtol=1e-2)


@pytest.fixture(scope="module")
def tiny_bf16_llama(tiny_tokenizer):
    """A random 2-layer Llama with SmolLM2's head size (64) and grouping (3 query heads per kv head)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=384, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0, 1.0)
        model.lm_head.weight.normal_(0, 0.3)
    return model.to(torch.bfloat16).eval()


PROMPTS = ["Toy Story (1995) rated 5, Heat (1995) rated 4", "Casablanca (1942)", "Alien (1979) rated 2 and more",
           "Fargo (1996) rated 5, Scream (1996) rated 3, Babe (1995) rated 4"]


@needs_kernels
def test_greedy_decoding_through_the_kernels_follows_the_model(tiny_bf16_llama, tiny_tokenizer):
    """The kernels' greedy continuation, teacher-forced through the plain model (transformers' own
    attention, no cache): same first token for every prompt and >= 90 % of next tokens (bf16 keeps
    8 bits of mantissa, so near-ties may flip; measured 100 % here)."""
    reqs = [Request(tiny_tokenizer(t)["input_ids"], [0, 1]) for t in PROMPTS]  # prompts of different lengths
    backend = TransformersBackend(tiny_bf16_llama, tiny_tokenizer, batch_size=8)
    assert backend.kernels
    out = {(s.request, s.tag): s.token_ids for b in backend.generate(reqs, SamplingParams(max_new_tokens=12, temperature=0))
           for s in b}
    agree = total = 0
    with torch.inference_mode():
        for i, req in enumerate(reqs):
            cont = out[(i, 0)]
            assert cont == out[(i, 1)]  # two samples of one prompt share its KV
            ids = torch.tensor([req.prompt_ids + cont])
            pred = tiny_bf16_llama(input_ids=ids).logits[0, len(req.prompt_ids) - 1 : -1].argmax(-1)
            assert int(pred[0]) == cont[0]
            agree += int((pred == torch.tensor(cont)).sum())
            total += len(cont)
    assert agree / total >= 0.9


def test_kernels_stay_off_where_they_do_not_apply(monkeypatch):
    assert not cpu_attention.usable(torch.float32, torch.device("cpu"), 64, 3)
    assert not cpu_attention.usable(torch.bfloat16, torch.device("cpu"), 80, 3)
    assert not cpu_attention.usable(torch.bfloat16, torch.device("cpu"), 64, 16)
    monkeypatch.setenv("RLRF_CPU_KERNELS", "0")
    cpu_attention.load.cache_clear()
    try:
        assert cpu_attention.load() is None
        assert not cpu_attention.usable(torch.bfloat16, torch.device("cpu"), 64, 3)
    finally:
        monkeypatch.delenv("RLRF_CPU_KERNELS")
        cpu_attention.load.cache_clear()


def test_sampling_with_kernels_off_uses_the_torch_path(tiny_bf16_llama, tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("RLRF_CPU_KERNELS", "0")
    cpu_attention.load.cache_clear()
    try:
        backend = TransformersBackend(tiny_bf16_llama, tiny_tokenizer, batch_size=8)
        reqs = [Request(tiny_tokenizer(t)["input_ids"], [3, 4]) for t in PROMPTS]
        params = SamplingParams(max_new_tokens=6, temperature=1.0, top_k=20)
        samples = [s for b in backend.generate(reqs, params) for s in b]
    finally:
        monkeypatch.delenv("RLRF_CPU_KERNELS")
        cpu_attention.load.cache_clear()
    assert not backend.kernels
    assert len(samples) == 8 and all(s.token_ids or s.finished for s in samples)


def test_packed_linears_give_linear_bit_for_bit_and_put_the_layers_back(tiny_bf16_llama):
    if not cpu_linear.usable(tiny_bf16_llama):
        pytest.skip("torch here has no oneDNN packed linear")
    ids = torch.tensor([[5, 9, 33, 7, 2, 81]])
    linears = [m for m in tiny_bf16_llama.modules() if type(m) is torch.nn.Linear]
    with torch.inference_mode():
        plain = tiny_bf16_llama(input_ids=ids).logits
        with cpu_linear.packed_linears(tiny_bf16_llama, rows=1):
            assert all("forward" in m.__dict__ for m in linears)
            packed = tiny_bf16_llama(input_ids=ids).logits
        assert torch.equal(plain, packed)
        assert not any("forward" in m.__dict__ for m in linears)
        with pytest.raises(KeyError):
            with cpu_linear.packed_linears(tiny_bf16_llama, rows=1):
                raise KeyError("boom")
        assert not any("forward" in m.__dict__ for m in linears)
        x = torch.randn(3, 384, dtype=torch.bfloat16)
        with cpu_linear.packed_linears(tiny_bf16_llama, rows=3):
            assert torch.equal(linears[0](x), F.linear(x, linears[0].weight))
