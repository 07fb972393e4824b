"""Training tokens/s for DPO, S-DPO, SFT and a GRPO step: stock trl, rlrf before the fast path, the fast path.

    python bench/train.py --threads 2 --dpo-steps 32 --sft-steps 8 --json train.json   # the recorded run
    python bench/train.py --threads 2 --short                                           # ~5 min smoke run

Rows (each stage of each row in its own subprocess: its own peak RSS, threads and allocator):

* ``trl`` — stock trl, fp32, as a trl user would run it: ``DPOTrainer`` / ``SFTTrainer`` with a
  peft ``LoraConfig`` (r 8, alpha 16, all-linear), trl's defaults (activation checkpointing on, the
  reference computed at every step, full-vocabulary logits), our learning rate, batch and lengths;
* ``today`` — rlrf with ``RLRF_FAST_TRAIN=0``: the path before the fast path (fp32; shared-prompt
  forward, precomputed reference, trl's SFT loss);
* ``fast`` — the fast path as ``llm.dtype: auto`` trains (fp32 on CPU): each example alone without
  padding, the LM head at completion positions only (rlrf/alignment/fast.py); SFT rows in chunks of
  <= 512 tokens (packed when shorter), one backward per chunk (rlrf/alignment/fast_sft.py);
* ``fast-rows`` (SFT only) — the fast SFT path before chunks (``RLRF_SFT_PACK_TOKENS=0``): each row
  alone, one backward of the whole batch's loss (every row's activations alive at once);
* ``fast-packed`` (SFT only) — the whole batch packed into one sequence (``RLRF_SFT_PACK_TOKENS=4096``),
  one backward;
* ``fast-bf16`` — the fast path in mixed bf16 (``llm.dtype: bfloat16``, opt-in: bf16-stored frozen
  linears under autocast; fp32 residual stream, LoRA updates, LM head, log-softmax).

The reference rows are capped (``--ref-dpo-steps``, ``--ref-sft-steps``: their tokens/s is a rate,
their losses are compared over the steps they ran) so that the whole run fits ~15-20 min on 2 idle cores.

Stages, same data, seed and order for every row: DPO (``--dpo-steps`` x ``--dpo-batch`` pairs: the
quickstart's real user-preference prompts of the first train users, two fixed summaries);
S-DPO with 3 negatives (``--sdpo-steps``); SFT (SPRec's real next-item records, ``--sft-batch`` per
step); one GRPO step (``online.trainer_args`` defaults: 4 prompts x 4 sampled summaries, a toy reward:
the rate is what is measured). Tokens = prompt + completion tokens of every sequence trained on (a
DPO pair = chosen and rejected sequence, each with its prompt). DPO/S-DPO seconds include the
reference pass (precomputed or per step, whichever the row does). ``bf16 limit`` = the share of
~430 GFLOP/s x threads/2 (the cores' bf16 rate) at 0.55 GFLOP per trained token (LoRA on
SmolLM2-135M, forward + backward to activations). The 1-minute load average is printed per stage.
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
NEGATIVES = [REJECTED, "This user likes films.",
             "Comedies, comedies and more comedies: this user only ever watches light musicals and cartoons."]
ROWS = {  # name: (environment, llm.dtype)
    "trl": ({"RLRF_FAST_TRAIN": "0"}, "float32"),
    "today": ({"RLRF_FAST_TRAIN": "0"}, "float32"),
    "fast": ({"RLRF_FAST_TRAIN": "1"}, "auto"),
    "fast-rows": ({"RLRF_FAST_TRAIN": "1", "RLRF_SFT_PACK_TOKENS": "0"}, "auto"),
    "fast-packed": ({"RLRF_FAST_TRAIN": "1", "RLRF_SFT_PACK_TOKENS": "4096"}, "auto"),
    "fast-bf16": ({"RLRF_FAST_TRAIN": "1"}, "bfloat16"),
}
STAGES = ("dpo", "sdpo", "sft", "grpo")
GFLOP_PER_TOKEN = 0.55
BF16_GFLOPS_2_THREADS = 430.0


def _load():
    return os.getloadavg()[0]


class _Timer:
    def __new__(cls):
        from transformers import TrainerCallback

        class Timer(TrainerCallback):
            seconds: list

            def on_step_begin(self, args, state, control, **kw):
                self._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                self.seconds.append(time.perf_counter() - self._start)

        t = Timer()
        t.seconds = []
        return t


def _setup(args, row: str, stage: str):
    import torch

    from rlrf.core.config import load_config

    torch.set_num_threads(args.threads)
    run_dir = Path(tempfile.mkdtemp(prefix=f"rlrf-bench-train-{row}-{stage}-"))
    steps = {"dpo": args.dpo_steps, "sdpo": args.sdpo_steps}.get(stage, 0)
    if stage == "dpo" and row == "trl":
        steps = min(steps, args.ref_dpo_steps)
    sft_steps = min(args.sft_steps, args.ref_sft_steps) if row in ("trl", "today") else args.sft_steps
    overrides = {
        "run_dir": str(run_dir), "threads": args.threads, "llm.dtype": ROWS[row][1],
        "generate.max_users": max(1, args.dpo_steps, args.sdpo_steps) * args.dpo_batch, "generate.users": "train",
        "align.trainer_args": {"max_steps": steps, "report_to": [], "per_device_train_batch_size": args.dpo_batch},
        "sft.users": max(1, args.sft_steps * args.sft_batch),
        "sft.trainer_args": {"per_device_train_batch_size": args.sft_batch, "num_train_epochs": 1.0, "report_to": [],
                             "max_steps": max(1, sft_steps)},
    }
    if stage == "sdpo":
        overrides.update({"align.loss": "sdpo", "score.negatives": 3})
    if stage == "grpo":
        overrides.update({"align.method": "grpo", "generate.max_users": 16,  # 4 prompts x 4 summaries per step
                          "online.trainer_args": {"max_steps": 1, "report_to": []}})
    return load_config(args.config, overrides)


def _pairs(cfg, ds, tokenizer, n: int, negatives: int) -> list[dict]:
    from rlrf.generation.generate import build_prompts

    prompts = build_prompts(cfg, ds, tokenizer, "user_preference")[:n]
    pairs = [{"user": p.key, "iter": 0, "prompt": p.text, "chosen": CHOSEN, "rejected": REJECTED, "margin": 1.0}
             for p in prompts]
    if negatives > 1:
        for p in pairs:
            p["rejected_list"] = NEGATIVES[:negatives]
    return pairs


def _stock_trl_dpo(cfg, pairs, work: Path):
    """trl's DPOTrainer as its docs run it, on the same pairs, lr, batch and max_length."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from rlrf.generation.policy import load_policy

    policy = load_policy(cfg.llm.model_copy(update={"dtype": "float32"}), merge_adapter=False)
    t = cfg.align.trainer_args
    args = DPOConfig(output_dir=str(work), beta=cfg.align.beta, learning_rate=t["learning_rate"],
                     per_device_train_batch_size=t["per_device_train_batch_size"], max_steps=t["max_steps"],
                     max_length=t["max_length"], lr_scheduler_type="linear", logging_steps=1, save_strategy="no",
                     report_to=[], use_cpu=True, seed=cfg.seed, data_seed=cfg.seed, disable_tqdm=True)
    timer = _Timer()
    data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    trainer = DPOTrainer(model=policy.model, args=args, train_dataset=data, processing_class=policy.tokenizer,
                         peft_config=LoraConfig(task_type="CAUSAL_LM", **cfg.lora.model_dump()), callbacks=[timer])
    trainer.train()
    steps = [e for e in trainer.state.log_history if "loss" in e]
    return [e["loss"] for e in steps], sum(timer.seconds), 0.0


def _stock_trl_sft(cfg, records, work: Path):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from rlrf.generation.policy import load_policy

    policy = load_policy(cfg.llm.model_copy(update={"dtype": "float32"}), merge_adapter=False)
    t = cfg.sft.trainer_args
    args = SFTConfig(output_dir=str(work), learning_rate=t["learning_rate"],
                     per_device_train_batch_size=t["per_device_train_batch_size"], max_steps=t["max_steps"],
                     max_length=t["max_length"], lr_scheduler_type="linear", logging_steps=1, save_strategy="no",
                     report_to=[], use_cpu=True, seed=cfg.seed, data_seed=cfg.seed, disable_tqdm=True)
    timer = _Timer()
    trainer = SFTTrainer(model=policy.model, args=args, processing_class=policy.tokenizer,
                         train_dataset=Dataset.from_list(records), callbacks=[timer],
                         peft_config=LoraConfig(task_type="CAUSAL_LM", **cfg.lora.model_dump()))
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e], sum(timer.seconds)


def worker(args) -> dict:
    row, stage = args.worker.split(":")
    from rlrf.core.io import atomic_write_jsonl
    from rlrf.core.layout import RunLayout
    from rlrf.data.dataset import load_dataset
    from rlrf.generation.policy import policy_tokenizer

    cfg = _setup(args, row, stage)
    layout = RunLayout(cfg.run_dir)
    ds = load_dataset(cfg.data, seed=cfg.seed)
    tokenizer = policy_tokenizer(cfg.llm)

    def n_tokens(prompt, completion):
        return len(tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]) + 1

    load0 = _load()
    out: dict = {"row": row, "stage": stage}
    if stage in ("dpo", "sdpo"):
        negatives = 3 if stage == "sdpo" else 1
        steps = args.dpo_steps if stage == "dpo" else args.sdpo_steps  # the data; a capped row runs fewer steps
        pairs = _pairs(cfg, ds, tokenizer, steps * args.dpo_batch, negatives)
        if row == "trl":
            losses, seconds, reference = _stock_trl_dpo(cfg, pairs, cfg.run_dir / "trl")
            dtype = "float32"
        else:
            from rlrf.alignment.dpo import run_align

            atomic_write_jsonl(layout.pairs(0), pairs)
            summary = run_align(cfg, 0, show_progress=False)
            log = json.loads(layout.align_log(0).read_text())
            steps_log = [e for e in log["steps"] if "loss" in e]
            losses = [e["loss"] for e in steps_log]
            seconds, reference, dtype = sum(e["seconds"] for e in steps_log), summary["reference_seconds"], summary["dtype"]
        texts = [CHOSEN] + (NEGATIVES[:negatives] if negatives > 1 else [REJECTED])
        tokens = sum(n_tokens(p["prompt"], t) for p in pairs for t in texts) * len(losses) // steps
        out.update(steps=len(losses), tokens=tokens, train_s=round(seconds, 2), reference_s=round(reference, 2),
                   seconds=round(seconds + reference, 2), losses=[round(x, 7) for x in losses], dtype=dtype)
    elif stage == "sft":
        from rlrf.methods.sprec import sft_records, sft_users

        records = sft_records(cfg, ds, tokenizer, sft_users(ds, cfg.sft, cfg.seed))[: cfg.sft.users]
        if row == "trl":
            losses, seconds = _stock_trl_sft(cfg, records, cfg.run_dir / "trl")
        else:
            from rlrf.alignment.sft import run_sft

            run_sft(cfg, records, None, layout.sft, layout.sft_log, show_progress=False)
            log = json.loads(layout.sft_log.read_text())
            losses = [e["loss"] for e in log["steps"] if "loss" in e]
            seconds = next(e["train_runtime"] for e in log["steps"] if "train_runtime" in e)
        # a capped row trains on len(losses) of the batches: its share of the tokens (mean per example)
        tokens = sum(n_tokens(r["prompt"], r["completion"]) for r in records) * len(losses) * args.sft_batch // len(records)
        out.update(steps=len(losses), tokens=tokens, seconds=round(seconds, 2), losses=[round(x, 7) for x in losses],
                   dtype=ROWS[row][1])
    elif stage == "grpo":
        from rlrf.alignment.online import run_online
        from rlrf.generation.generate import build_prompts

        prompts = build_prompts(cfg, ds, tokenizer, "user_preference")
        records = [{"prompt": p.text, "user": p.key} for p in prompts[:16]]

        def score(users, texts):  # a toy reward (distinct words): the step's cost is what is measured
            return [len(set(t.split())) / 50.0 for t in texts]

        run_online(cfg, 0, records, score, show_progress=False)
        log = json.loads(layout.align_log(0).read_text())
        step = next(e for e in log["steps"] if "loss" in e)
        seconds = next(e["train_runtime"] for e in log["steps"] if "train_runtime" in e)
        out.update(steps=1, tokens=int(step["num_tokens"]), seconds=round(seconds, 2), losses=[step["loss"]],
                   dtype=ROWS[row][1])
    out["step_s"] = round(out["seconds"] / max(1, out["steps"]), 2)
    out["tok_per_s"] = round(out["tokens"] / out["seconds"], 1)
    limit = BF16_GFLOPS_2_THREADS * args.threads / 2 / GFLOP_PER_TOKEN
    out["bf16_limit_share"] = round(out["tok_per_s"] / limit, 3)
    out["load"] = f"{load0:.2f}->{_load():.2f}"
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _plan(args) -> list[tuple[str, str]]:
    wanted = args.rows.split(",")
    plan = []
    for stage in STAGES:
        for row in wanted:
            if {"dpo": args.dpo_steps, "sdpo": args.sdpo_steps, "sft": args.sft_steps, "grpo": args.grpo}[stage] <= 0:
                continue
            if row == "trl" and stage in ("sdpo", "grpo"):  # trl has no k-negative loss; GRPO: one row suffices
                continue
            if stage == "grpo" and row != "fast":  # the fast path leaves the online trainer as it was
                continue
            if row in ("fast-rows", "fast-packed") and stage != "sft":  # SFT's levers only
                continue
            plan.append((row, stage))
    return plan


def _max_diff(a: list[float], b: list[float], digits: int = 5) -> float | None:
    n = min(len(a), len(b))
    return round(max(abs(x - y) for x, y in zip(a[:n], b[:n])), digits) if n else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--rows", default="trl,today,fast-rows,fast,fast-packed,fast-bf16")
    ap.add_argument("--dpo-steps", type=int, default=32)
    ap.add_argument("--sdpo-steps", type=int, default=4)
    ap.add_argument("--dpo-batch", type=int, default=2)
    ap.add_argument("--sft-steps", type=int, default=8)
    ap.add_argument("--sft-batch", type=int, default=8)
    ap.add_argument("--ref-dpo-steps", type=int, default=16, help="cap on the trl row's DPO steps")
    ap.add_argument("--ref-sft-steps", type=int, default=4, help="cap on the trl and today rows' SFT steps")
    ap.add_argument("--grpo", type=int, default=1, help="0 skips the GRPO step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--short", action="store_true",
                    help="4 DPO, 2 S-DPO, 2 SFT steps, rows today, fast-rows, fast, fast-packed, fast-bf16")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.short:
        args.dpo_steps, args.sdpo_steps, args.sft_steps = 4, 2, 2
        args.rows = "today,fast-rows,fast,fast-packed,fast-bf16"
    if args.worker:
        emit(worker(args))
        return 0

    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--short"]
    forwarded += ["--dpo-steps", str(args.dpo_steps), "--sdpo-steps", str(args.sdpo_steps),
                  "--sft-steps", str(args.sft_steps), "--ref-dpo-steps", str(args.ref_dpo_steps),
                  "--ref-sft-steps", str(args.ref_sft_steps)]
    results: list[dict] = []
    started = time.perf_counter()
    for row, stage in _plan(args):
        t0 = time.perf_counter()
        env = {**ROWS[row][0]}
        result, why = run_row(__file__, f"{row}:{stage}", forwarded, env=env)
        if result is None:
            print(f"{row} {stage}: {why}", flush=True)
            continue
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        results.append(result)
        print(f"{row} {stage}: " + json.dumps({k: v for k, v in result.items() if k != "losses"}), flush=True)

    print()
    print("| stage | row | dtype | steps | tokens/step | step s | tok/s | bf16 limit | peak RSS MB | load 1-min |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['stage'].upper()} | {r['row']} | {r['dtype']} | {r['steps']} | {r['tokens'] // max(1, r['steps'])} | "
              f"{r['step_s']} | {r['tok_per_s']} | {r['bf16_limit_share']:.0%} | {r['peak_rss_mb']} | {r['load']} |")
    for stage in STAGES:
        curves = [(r["row"], r["losses"]) for r in results if r["stage"] == stage]
        if curves:
            print(f"\n{stage.upper()} loss per step:")
            for row, losses in curves:
                print(f"  {row:10s} " + " ".join(f"{x:.4f}" for x in losses))

    def get(row, stage):
        return next((r for r in results if r["row"] == row and r["stage"] == stage), None)

    summary: dict = {"wall_s": round(time.perf_counter() - started, 1), "threads": args.threads}
    for stage in ("dpo", "sft", "sdpo"):
        for row, suffix in (("fast", ""), ("fast-bf16", "_bf16")):
            new, today = get(row, stage), get("today", stage)
            if new and today:
                summary[f"{stage}_speedup{suffix}"] = round(new["tok_per_s"] / today["tok_per_s"], 2)
            if new and get("trl", stage):
                summary[f"{stage}_speedup{suffix}_vs_trl"] = round(new["tok_per_s"] / get("trl", stage)["tok_per_s"], 2)
    new = get("fast", "dpo")
    if new:
        if get("today", "dpo"):
            summary["dpo_loss_max_abs_diff"] = _max_diff(new["losses"], get("today", "dpo")["losses"])
        if get("trl", "dpo"):
            summary["dpo_loss_max_abs_diff_vs_trl"] = _max_diff(new["losses"], get("trl", "dpo")["losses"])
        summary["dpo_first_loss_minus_log2"] = round(new["losses"][0] - 0.6931471805599453, 6) if new["losses"] else None
    rows = get("fast-rows", "sft")  # SFT's chunked backward and packing, against the path before them
    for row, key in (("fast", "chunks"), ("fast-packed", "packed")):
        new = get(row, "sft")
        if new and rows:
            summary[f"sft_speedup_{key}_vs_rows"] = round(new["tok_per_s"] / rows["tok_per_s"], 2)
            summary[f"sft_loss_max_abs_diff_{key}_vs_rows"] = _max_diff(new["losses"], rows["losses"], digits=7)
            summary[f"sft_peak_rss_mb_{key}_vs_rows"] = [new["peak_rss_mb"], rows["peak_rss_mb"]]
    if get("fast", "sft") and get("today", "sft"):
        summary["sft_loss_max_abs_diff"] = _max_diff(get("fast", "sft")["losses"], get("today", "sft")["losses"])
    bf16 = get("fast-bf16", "dpo")
    if bf16 and get("today", "dpo"):
        summary["dpo_loss_max_abs_diff_bf16"] = _max_diff(bf16["losses"], get("today", "dpo")["losses"])
        summary["dpo_first_loss_minus_log2_bf16"] = round(bf16["losses"][0] - 0.6931471805599453, 6)
    print("\n" + json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({**summary, "rows": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
