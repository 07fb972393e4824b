"""GEMM rates at the policy's decode shapes: float32, bfloat16 and int8 (dynamic, per-channel weights).

Issue 16's profile puts ~130 of a 128-row decode step's ~195 ms in the projections, MLP and LM head,
whose bf16 GEMMs already run near the machine's bf16 peak. The only way left to make them cheaper on a
CPU with AVX-512 VNNI is fewer bits: this measures what int8 weights and activations
(`torch.ao.quantization.quantize_dynamic`, fbgemm) would buy per GEMM, and the relative error it costs,
side by side in one process with the load printed beside them.

    python bench/gemm.py --rows 128 --threads 2 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import torch

# SmolLM2-135M: hidden 576, MLP 1536, 3 KV heads x 64, vocabulary 49152 (in, out features).
SHAPES = {"q/o projection": (576, 576), "k/v projection": (576, 192), "gate/up": (576, 1536),
          "down": (1536, 576), "LM head": (576, 49152)}


def seconds_per_call(module: torch.nn.Module, x: torch.Tensor, budget_s: float = 0.5) -> float:
    for _ in range(5):
        module(x)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        module(x)
        calls += 1
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128, help="sequences decoded together")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    print(f"rows {args.rows}, threads {args.threads}, load before {os.getloadavg()}")
    rows = []
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        for name, (k, n) in SHAPES.items():
            fp32 = torch.nn.Sequential(torch.nn.Linear(k, n, bias=False))
            bf16 = torch.nn.Sequential(torch.nn.Linear(k, n, bias=False)).to(torch.bfloat16)
            bf16[0].weight.copy_(fp32[0].weight)
            int8 = quantize_dynamic(fp32, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
            x = torch.randn(args.rows, k)
            flops = 2 * args.rows * k * n
            t = {"fp32": seconds_per_call(fp32, x), "bf16": seconds_per_call(bf16, x.bfloat16()),
                 "int8": seconds_per_call(int8, x)}
            exact = fp32(x)
            error = {d: float((y.float() - exact).abs().mean() / exact.abs().mean())
                     for d, y in (("bf16", bf16(x.bfloat16())), ("int8", int8(x)))}
            row = {"gemm": name, "shape": [args.rows, k, n],
                   **{f"{d}_gflops": round(flops / s / 1e9, 1) for d, s in t.items()},
                   "int8_vs_bf16": round(t["bf16"] / t["int8"], 2),
                   **{f"{d}_rel_error": round(e, 4) for d, e in error.items()}}
            rows.append(row)
            print(f"{name:>15} [{args.rows}, {k}] x [{k}, {n}]: fp32 {row['fp32_gflops']:6.1f}, "
                  f"bf16 {row['bf16_gflops']:6.1f}, int8 {row['int8_gflops']:6.1f} GFLOP/s; "
                  f"int8 / bf16 {row['int8_vs_bf16']:.2f}x; mean relative error bf16 {row['bf16_rel_error']:.4f}, "
                  f"int8 {row['int8_rel_error']:.4f}")
    print(f"load after {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": args.rows, "threads": args.threads, "load": os.getloadavg(), "gemms": rows}, f, indent=1)


if __name__ == "__main__":
    main()
