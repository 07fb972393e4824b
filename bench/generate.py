"""Tokens/s of `rlrf generate`'s batched backend vs a naive loop, same prompts, same model, one run.

    python bench/generate.py --config configs/quickstart.yaml --users 32 --n 4 --max-new-tokens 128

* prompts: the real user-preference prompts of the first `--users` users of `generate.users`
  (history before the list cut, `generate.max_prompt_tokens` budget), chat template applied;
* batched: `TransformersBackend` (prompts grouped by length, one prefill per prompt, preallocated
  KV cache, finished rows dropped, per-sample seeds), `--batch-size` rows at a time;
* naive: one user at a time, `model.generate(num_return_sequences=N, do_sample=True)` with the
  same temperature / top-p / top-k and max_new_tokens — run on `--naive-users` of the same users
  (spread evenly over the length-sorted list) because it is slow; tokens/s is a rate, so both
  sides are comparable;
* tokens = generated tokens including the final EOS, padding after EOS not counted.

Prints one table and the ratio; `--json PATH` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--naive-users", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=None, help="rows per batch (default generate.batch_size)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's threads)")
    ap.add_argument("--device", default=None, help="override llm.device (e.g. cuda)")
    ap.add_argument("--dtype", default=None, help="override llm.dtype")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from rlrf.generation.backends import NaiveHFBackend, Request, SamplingParams, TransformersBackend, sample_seed
    from rlrf.core.config import load_config
    from rlrf.data.dataset import load_dataset
    from rlrf.generation.generate import build_prompts
    from rlrf.generation.policy import load_policy

    overrides = {"generate.max_users": args.users, "generate.mode": "user_preference"}
    if args.device:
        overrides["llm.device"] = args.device
    if args.dtype:
        overrides["llm.dtype"] = args.dtype
    cfg = load_config(args.config, overrides)
    threads = args.threads or cfg.threads
    if threads:
        torch.set_num_threads(threads)
    ds = load_dataset(cfg.data, seed=cfg.seed)
    policy = load_policy(cfg.llm)
    prompts = build_prompts(cfg, ds, policy.tokenizer, "user_preference")
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=cfg.generate.temperature,
                            top_p=cfg.generate.top_p, top_k=cfg.generate.top_k)
    requests = [Request(p.ids, [sample_seed(cfg.seed, "bench", u, k) for k in range(args.n)]) for u, p in
                enumerate(prompts)]
    lengths = sorted(len(p.ids) for p in prompts)
    print(f"{len(prompts)} users x {args.n} samples, prompt tokens min/median/max "
          f"{lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[-1]}, max_new_tokens {args.max_new_tokens}, "
          f"device {policy.device}, dtype {policy.dtype}, threads {torch.get_num_threads()}", flush=True)

    def run(backend, reqs):
        if policy.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        tokens = samples = 0
        for batch in backend.generate(reqs, params):
            for s in batch:
                tokens += len(s.token_ids) + int(s.finished)
                samples += 1
        if policy.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return {"samples": samples, "tokens": tokens, "seconds": round(seconds, 2), "tok_per_s": round(tokens / seconds, 2)}

    batch_size = args.batch_size or cfg.generate.batch_size
    # warm-up: one tiny batch each so neither side pays first-call costs
    warm = [Request(requests[0].prompt_ids[:32], [1])]
    list(TransformersBackend(policy.model, policy.tokenizer, batch_size=batch_size).generate(warm, SamplingParams(max_new_tokens=4)))
    load_before = os.getloadavg()[0]
    batched = run(TransformersBackend(policy.model, policy.tokenizer, batch_size=batch_size), requests)
    print(f"batched (rlrf, batch {batch_size} rows): {batched}", flush=True)
    result = {"users": len(prompts), "n": args.n, "max_new_tokens": args.max_new_tokens, "batch_size": batch_size,
              "device": str(policy.device), "dtype": str(policy.dtype), "threads": torch.get_num_threads(),
              "prompt_tokens": {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]},
              "batched": batched, "machine": platform.processor() or platform.machine()}
    if not args.skip_naive:
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt_ids))
        step = max(1, len(order) // max(1, args.naive_users))
        chosen = [requests[order[i]] for i in range(0, len(order), step)][: args.naive_users]
        naive = run(NaiveHFBackend(policy.model, policy.tokenizer), chosen)
        naive["users"] = len(chosen)
        print(f"naive (one user at a time, num_return_sequences={args.n}): {naive}", flush=True)
        result["naive"] = naive
        result["ratio"] = round(batched["tok_per_s"] / naive["tok_per_s"], 2)
        print(f"ratio batched / naive: {result['ratio']}x")
    result["loadavg_1min"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
