"""DPO and SFT step time and tokens/s, float32 vs bfloat16, side by side, with the loss curves.

    python bench/train.py --threads 2                  # 4 DPO steps (batch 2) and 4 SFT steps (batch 8)
    python bench/train.py --dpo-steps 8 --sft-steps 8 --threads 2 --json train.json

Both halves run rlrf's own training entry points on the quickstart config, each precision in its
own subprocess (its own peak RSS):

* DPO: ``rlrf.alignment.dpo.run_align`` (LoRA all-linear, precomputed reference log-probs, trl
  DPOTrainer subclass) on pairs built from the real user-preference prompts of the first train
  users with two fixed summaries (chosen / rejected) per user; ``align.max_steps`` steps.
* SFT: ``rlrf.alignment.sft.run_sft`` (trl SFTTrainer, completion-only loss) on SPRec's real next-item
  records; ``sft.trainer_args.per_device_train_batch_size`` examples per step.

``float32`` = today's path (fp32 weights, no autocast); ``bfloat16`` = bf16 weights + bf16 autocast
with float32 LoRA parameters (what ``llm.dtype: auto`` gives on CPUs with AVX-512 BF16 / AMX,
``rlrf.core.precision.training_precision``). Same data, seed and order for both: the loss curves are
printed side by side and should agree to ~1e-2 (bf16 has 8 bits of mantissa).

Tokens = prompt + completion tokens of every sequence the step trained on (for DPO the chosen and
the rejected sequence of each pair). The 1-minute load average is printed with every row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from rows import emit, peak_rss_mb, run_row  # bench/rows.py: python puts the script's folder on sys.path


CHOSEN = ("This user loves character-driven dramas and thrillers from the 1990s, especially crime stories "
          "with clever plots such as Fargo and Pulp Fiction; they rate science fiction classics highly and "
          "dislike broad comedies and musicals.")
REJECTED = ("This user watches everything. They like movies. Movies are good. They like movies and "
            "films and movies, mostly the popular ones, and they like movies.")


def worker(args) -> dict:
    import torch

    from rlrf.alignment.dpo import run_align
    from rlrf.core.config import load_config
    from rlrf.data.dataset import load_dataset
    from rlrf.alignment.sft import run_sft
    from rlrf.core.layout import RunLayout
    from rlrf.generation.generate import build_prompts
    from rlrf.generation.policy import policy_tokenizer
    from rlrf.core.io import atomic_write_jsonl
    from rlrf.methods.sprec import sft_records, sft_users

    torch.set_num_threads(args.threads)
    dtype = args.worker
    run_dir = Path(tempfile.mkdtemp(prefix=f"rlrf-bench-train-{dtype}-"))
    n_pairs = args.dpo_steps * args.dpo_batch
    cfg = load_config(args.config, {
        "run_dir": str(run_dir), "threads": args.threads, "llm.dtype": dtype, "generate.max_users": n_pairs,
        "generate.users": "train", "align.trainer_args": {"max_steps": args.dpo_steps, "report_to": [],
                                                          "per_device_train_batch_size": args.dpo_batch},
        "sft.users": args.sft_steps * args.sft_batch,
        "sft.trainer_args": {"per_device_train_batch_size": args.sft_batch, "num_train_epochs": 1.0, "report_to": []},
    })
    layout = RunLayout(cfg.run_dir)
    ds = load_dataset(cfg.data, seed=cfg.seed)
    tokenizer = policy_tokenizer(cfg.llm)
    row: dict = {"dtype": dtype, "threads": torch.get_num_threads()}

    def n_tokens(prompt, completion):
        return len(tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]) + 1

    if args.dpo_steps:
        prompts = build_prompts(cfg, ds, tokenizer, "user_preference")[:n_pairs]
        pairs = [{"user": p.key, "iter": 0, "prompt": p.text, "chosen": CHOSEN, "rejected": REJECTED, "margin": 1.0}
                 for p in prompts]
        atomic_write_jsonl(layout.pairs(0), pairs)
        load0 = os.getloadavg()[0]
        summary = run_align(cfg, 0, show_progress=False)
        log = json.loads(layout.align_log(0).read_text())
        steps = [e for e in log["steps"] if "loss" in e]
        tokens = sum(n_tokens(p["prompt"], p["chosen"]) + n_tokens(p["prompt"], p["rejected"]) for p in pairs)
        seconds = sum(e["seconds"] for e in steps)
        row["dpo"] = {"steps": len(steps), "pairs": len(pairs), "tokens": tokens,
                      "step_s": round(seconds / len(steps), 2), "tok_per_s": round(tokens / seconds, 1),
                      "reference_s": summary["reference_seconds"], "losses": [round(e["loss"], 4) for e in steps],
                      "step_seconds": [e["seconds"] for e in steps],
                      "load": f"{load0:.2f}->{os.getloadavg()[0]:.2f}"}
    if args.sft_steps:
        users = sft_users(ds, cfg)
        records = sft_records(cfg, ds, tokenizer, users)[: args.sft_steps * args.sft_batch]
        load0 = os.getloadavg()[0]
        run_sft(cfg, records, None, layout.sft, layout.sft_log, show_progress=False)
        log = json.loads(layout.sft_log.read_text())
        steps = [e for e in log["steps"] if "loss" in e]
        runtime = next(e["train_runtime"] for e in log["steps"] if "train_runtime" in e)
        tokens = sum(n_tokens(r["prompt"], r["completion"]) for r in records)
        row["sft"] = {"steps": len(steps), "examples": len(records), "tokens": tokens,
                      "step_s": round(runtime / len(steps), 2), "tok_per_s": round(tokens / runtime, 1),
                      "losses": [round(e["loss"], 4) for e in steps], "load": f"{load0:.2f}->{os.getloadavg()[0]:.2f}"}
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--dpo-steps", type=int, default=4)
    ap.add_argument("--dpo-batch", type=int, default=2)
    ap.add_argument("--sft-steps", type=int, default=4)
    ap.add_argument("--sft-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        emit(worker(args))
        return 0

    rows = []
    for dtype in args.dtypes.split(","):
        started = time.perf_counter()
        row, why = run_row(__file__, dtype, argv if argv is not None else sys.argv[1:])
        if row is None:
            print(f"{dtype}: {why}", flush=True)
            continue
        row["wall_s"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(f"{dtype}: {json.dumps(row)}", flush=True)

    print()
    print("| stage | dtype | steps | tokens/step | step s | tok/s | peak RSS MB | load 1-min |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for stage in ("dpo", "sft"):
        for r in rows:
            if stage in r:
                s = r[stage]
                print(f"| {stage.upper()} | {r['dtype']} | {s['steps']} | {s['tokens'] // max(1, s['steps'])} | {s['step_s']} | "
                      f"{s['tok_per_s']} | {r['peak_rss_mb']} | {s['load']} |")
    for stage in ("dpo", "sft"):
        curves = [(r["dtype"], r[stage]["losses"]) for r in rows if stage in r]
        if curves:
            print(f"\n{stage.upper()} loss per step:")
            for dtype, losses in curves:
                print(f"  {dtype:9s} " + " ".join(f"{x:.4f}" for x in losses))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
