"""One layer's attention at the issue's decoding shapes: torch's path against the bf16 CPU kernels.

    python bench/attention.py --threads 2

Shapes are SmolLM2-135M's (9 query heads, 3 kv heads, head size 64) at bench/generate.py's
setting: 32 prompts of 320 positions (left padding of 0-19 positions), 4 samples each = 128 rows.

* decode: one step's attention for the 128 rows after t generated tokens; torch =
  ``shared_prefix_attention`` with kernels off (batched matmuls, split softmax), kernel =
  ``cpu_attention.decode_attention``;
* prefill: the 32 prompts' causal attention; torch = transformers' sdpa path as rlrf ran it
  (keys and values repeated to 9 heads, a boolean padding + causal mask), kernel =
  ``cpu_attention.prefill_attention``.

Both get the same bf16 inputs; the max |difference| to a float32 reference is printed beside the
times (the kernels keep scores and probabilities in float32; the torch decode path rounds them to
bf16). Times are the median of `--repeats` calls; the 1-minute load is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from rows import peak_rss_mb  # bench/rows.py: python puts the script's folder on sys.path


def _median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from rlrf.generation import cpu_attention
    from rlrf.generation.prefix_cache import SharedPrefixKV, shared_prefix_attention

    if cpu_attention.load() is None:
        print("the bf16 CPU kernels cannot run here (no AVX-512 BF16 or no C compiler): nothing to compare")
        return 1
    torch.manual_seed(0)
    bf = torch.bfloat16
    prompts, heads, hkv, dim, lp, samples, cap = 32, 9, 3, 64, 320, 4, 128
    rows, scale = prompts * samples, dim ** -0.5
    pk, pv = (torch.randn(prompts, hkv, lp, dim, dtype=bf) for _ in range(2))
    sk, sv = (torch.randn(rows, hkv, cap, dim, dtype=bf) for _ in range(2))
    q = torch.randn(rows, heads, 1, dim, dtype=bf) * 2
    start = torch.arange(prompts) % 20
    mask = torch.arange(lp)[None, :] >= start[:, None]
    pidx, slot = torch.arange(rows) // samples, torch.arange(rows) % samples
    offsets = torch.arange(0, rows + 1, samples)
    bias = torch.zeros(mask.shape).masked_fill_(~mask, float("-inf"))[:, None, None, None, :]
    pkt, skt = cpu_attention.pair_keys(pk), cpu_attention.pair_keys(sk)

    print(f"{args.threads} threads, load 1-min {os.getloadavg()[0]:.2f}; {prompts} prompts x {lp} positions, "
          f"{rows} rows, {heads}/{hkv} heads, head size {dim}, bf16")
    print()
    print("| attention | t | torch ms | kernel ms | speed-up | max abs err torch / kernel |")
    print("|---|---:|---:|---:|---:|---|")
    for t in (16, 64, 128):
        kv = SharedPrefixKV(prefix_k=pk, prefix_v=pv, prefix_mask=mask, prefix_bias=bias, suffix_k=sk[:, :, :t],
                            suffix_v=sv[:, :, :t], length=t, pidx=pidx, slot=slot, slots=samples, kernel=False,
                            start=None, offsets=None)

        def torch_path():
            return shared_prefix_attention(None, q, kv, kv, scaling=scale)[0]

        def kernel_path():
            return cpu_attention.decode_attention(q, pkt, pv, start, skt, sv, offsets, t, scale)

        ref = torch.empty(rows, heads, dim)
        for r in range(rows):
            p, s = int(pidx[r]), int(start[pidx[r]])
            k = torch.cat([pk[p, :, s:], sk[r, :, :t]], 1).float().repeat_interleave(heads // hkv, 0)
            v = torch.cat([pv[p, :, s:], sv[r, :, :t]], 1).float().repeat_interleave(heads // hkv, 0)
            ref[r] = (torch.softmax(q[r].float() @ k.transpose(-1, -2) * scale, -1) @ v)[:, 0]
        err = [(f().reshape(rows, heads, dim).float() - ref).abs().max().item() for f in (torch_path, kernel_path)]
        a, b = _median_ms(torch_path, args.repeats), _median_ms(kernel_path, args.repeats)
        print(f"| decode step | {t} | {a:.3f} | {b:.3f} | {a / b:.1f}x | {err[0]:.4f} / {err[1]:.4f} |", flush=True)

    qf = torch.randn(prompts, heads, lp, dim, dtype=bf) * 2
    causal = torch.ones(lp, lp, dtype=torch.bool).tril()
    full_mask = (causal[None] & mask[:, None, :])[:, None]  # (P, 1, L, L)
    full_mask |= torch.eye(lp, dtype=torch.bool)  # padded queries see themselves (no empty softmax rows)

    def sdpa():
        g = heads // hkv
        return F.scaled_dot_product_attention(qf, pk.repeat_interleave(g, 1), pv.repeat_interleave(g, 1),
                                              attn_mask=full_mask, scale=scale)

    def prefill_kernel():
        return cpu_attention.prefill_attention(qf, pk, pv, start, scale)

    real = mask[:, :, None]  # (P, L, 1): compare real positions only
    ref = torch.softmax((qf.float() @ pk.float().repeat_interleave(3, 1).transpose(-1, -2) * scale).masked_fill(
        ~full_mask, float("-inf")), -1) @ pv.float().repeat_interleave(3, 1)
    ref = ref.transpose(1, 2)
    err = [((f().transpose(1, 2) if f is sdpa else f()).float() - ref).masked_fill(~real[..., None], 0).abs().max().item()
           for f in (sdpa, prefill_kernel)]
    a, b = _median_ms(sdpa, max(5, args.repeats // 10)), _median_ms(prefill_kernel, max(5, args.repeats // 10))
    print(f"| prefill | - | {a:.3f} | {b:.3f} | {a / b:.1f}x | {err[0]:.4f} / {err[1]:.4f} |")
    print()
    print(f"load 1-min after: {os.getloadavg()[0]:.2f}; peak RSS {peak_rss_mb()} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
