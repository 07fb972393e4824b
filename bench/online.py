"""Where a GRPO / RLOO step's time goes, on the real policy and reward model.

    python bench/online.py --run-dir runs/base --users 4 --steps 2 --threads 1
    python bench/online.py --run-dir runs/base --users 4 --steps 2 --threads 1 \
        online.trainer_args.per_device_train_batch_size=16 align.method=rloo

`--run-dir` is a run directory that already holds the data and the reward model (`rlrf data`,
`rlrf reward train`, e.g. a finished quickstart run); nothing there is written: each bench run
trains into a fresh temporary run directory that links to those inputs. The first `--users`
rankable training users' prompts (what `rlrf run` with `align.method: grpo` trains on) go through
`rlrf.alignment.online.run_online`, i.e. trl's trainer with rlrf's defaults, for `--steps` steps.
Any further `key=value` is a config override, as on the `rlrf` command line.

Timers wrap trl's own methods, so the split is of the code that really ran:

* generate — `_generate_single_turn` (trl's `model.generate` of the completions);
* reward — `_calculate_rewards` (the reward function: sentence-encoder + reranker), of which
  encode = the sentence encoder alone;
* logps (no grad) — `_get_per_token_logps_and_entropies` outside autograd (old / reference log-probs,
  when trl needs them);
* loss forward — `compute_loss` (the policy forward with grad, and the GRPO / RLOO loss);
* backward + optimizer — the rest of the step (`on_step_begin` to `on_step_end`).

The 1-minute load average is printed with every step, because the CPU is shared.
`--generate-only 4 16 64` times the sampling alone at those numbers of completions per call.

Measured 2026-11-24 on the 2-core CPU, torch threads 1, another job on the cores (load ~3), the
quickstart run's DLCM +knowledge reward, SmolLM2-135M fp32 + fresh LoRA r 8, prompts ~310 tokens,
completions <= 96 tokens (mean 73-92), `align.method: grpo`, num_generations 4; seconds per step
(generate / policy forward / backward + optimizer; the reward function is ~1 s or less):

| setting | completions / step | s / step | s / completion |
|---|---:|---:|---:|
| trl as it was (model.generate, per-row forward), batch 4 | 4 | 51.5, 41.9 (20.8 / 13.8 / 16.9) | 10.5-12.9 |
| rlrf sampler + shared prompts, batch 4 | 4 | 19.7, 19.5 (12.4 / 3.5 / 3.8) | 4.9 |
| trl as it was, batch 16 | 16 | 147.9 (35.9 / 62.7 / 47.7) | 9.2 |
| rlrf sampler + shared prompts, batch 16 (the default now) | 16 | 68.0, 54.3 (24.0 / 24.7 / 18.3) | 3.4-4.3 |
| same, + top_p 0.95, top_k 50, lr 2e-4 | 16 | 54.4, 50.1 (18.4 / 17.2 / 17.8) | 3.1-3.4 |
| same as the default, `llm.dtype: bfloat16` (opt-in) | 16 | 40.9, 36.8 (18.6 / 9.5 / 11.9) | 2.3-2.6 |

Sampling alone (`--generate-only`), tokens/s at 4 / 16 / 64 completions per call:
trl's model.generate 17.8 / 24.2 / 22.2 tok/s (it re-reads and re-copies every row's copy of the
prompt's KV cache at each step, so a bigger batch gains nothing); rlrf's sampler 23.3 / 52.3 /
77.2 tok/s.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ("config.yaml", "data.json", "lists.jsonl", "candidates.jsonl", "sasrec", "reward")


def load1() -> float:
    return os.getloadavg()[0]


def generate_only(trainer, records: list[dict], rows_list: list[int]) -> None:
    """Time trl's `_generate_single_turn` alone (the path a step takes), `rows` completions per call:
    rows / num_generations prompts, each repeated num_generations times as trl's sampler does."""
    import torch

    tok = trainer.processing_class
    g = trainer.args.num_generations
    ids = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in records]
    for rows in rows_list:
        prompts = [ids[i % len(ids)] for i in range(rows // g) for _ in range(g)]
        torch.manual_seed(0)
        start = time.perf_counter()
        completions, _ = trainer._generate_single_turn(prompts, None, {}, g)
        seconds = time.perf_counter() - start
        tokens = sum(len(c) for c in completions)
        print(json.dumps({"rows": rows, "seconds": round(seconds, 2), "tokens": tokens,
                          "tok_per_s": round(tokens / seconds, 1), "s_per_completion": round(seconds / rows, 2),
                          "max_len": max(len(c) for c in completions), "load1": round(load1(), 2)}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True, type=Path, help="a run with data + reward model")
    p.add_argument("--config", default=None, help="config (default: the run's own config.yaml)")
    p.add_argument("--users", type=int, default=4, help="training prompts (rankable train users)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="write the per-step records here")
    p.add_argument("--generate-only", type=int, nargs="+", default=None, metavar="ROWS",
                   help="time only trl's generation, at these numbers of completions per call")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sys.path.insert(0, str(ROOT))

    import torch
    from transformers import TrainerCallback

    from rlrf.alignment import online
    from rlrf.cli import load_run_config  # the same key=value overrides as the CLI
    from rlrf.core.layout import RunLayout
    from rlrf.methods.rlrf4rec import RLRF4Rec

    torch.set_num_threads(args.threads)
    src = args.run_dir.resolve()
    work = Path(tempfile.mkdtemp(prefix="rlrf-bench-online-"))
    for name in INPUTS:
        if (src / name).exists():
            (work / name).symlink_to(src / name)
    overrides = ["align.method=grpo", "loop.independent_evaluator=false", *args.overrides,
                 f"threads={args.threads}", f"generate.max_users={args.users}",
                 f"online.trainer_args.max_steps={args.steps}", "online.trainer_args.report_to=[]"]
    cfg = load_run_config(args.config or str(src / "config.yaml"), work, overrides)

    method = RLRF4Rec(show_progress=False)
    t0 = time.perf_counter()
    method.prepare(cfg, RunLayout(cfg.run_dir), cfg.seed)
    records = method._online_records(cfg)
    print(f"prepared {len(records)} prompts in {time.perf_counter() - t0:.1f} s (data, reward model, encoder)")

    times: dict[str, float] = defaultdict(float)

    def timed(name, fn, split_grad=False):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            key = f"{name} ({'grad' if torch.is_grad_enabled() else 'no grad'})" if split_grad else name
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                times[key] += time.perf_counter() - start
        return wrapper

    def add_timers(trainer):  # on the instance: rlrf's trainer subclass overrides some of these
        for attr, name, split in (("_generate_single_turn", "generate", False), ("_calculate_rewards", "reward", False),
                                  ("_get_per_token_logps_and_entropies", "logps", True),
                                  ("compute_loss", "loss forward", False)):
            if hasattr(trainer, attr):
                setattr(trainer, attr, timed(name, getattr(trainer, attr), split))
    encoder = method.scorer.encoder
    encoder.encode = timed("encode", encoder.encode)

    steps: list[dict] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **_):
            times.clear()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **_):
            total = time.perf_counter() - self.start
            record = {"step": state.global_step, "seconds": round(total, 2), "load1": round(load1(), 2),
                      **{k: round(v, 2) for k, v in sorted(times.items())}}
            known = sum(v for k, v in times.items() if k in ("generate", "reward", "logps (no grad)", "loss forward"))
            record["backward + optimizer + other"] = round(total - known, 2)
            steps.append(record)
            print(json.dumps(record), flush=True)

    real_build = online.run_online.__globals__["train_adapter"]

    def train_adapter(adapter_dir, log_path, build, summarize, **kw):
        def build_with_timer(work_dir):
            trainer = build(work_dir)
            trainer.add_callback(StepTimer())
            add_timers(trainer)
            a = trainer.args
            print(f"trainer: {type(trainer).__name__}, batch {a.per_device_train_batch_size}, "
                  f"num_generations {a.num_generations}, steps_per_generation {a.steps_per_generation}, "
                  f"generation_batch_size {a.generation_batch_size}, max_completion_length {a.max_completion_length}, "
                  f"bf16 {a.bf16}, gradient_checkpointing {a.gradient_checkpointing}, "
                  f"model dtype {next(trainer.model.parameters()).dtype}, use_cache {trainer.model.config.use_cache}",
                  flush=True)
            if args.generate_only:
                generate_only(trainer, records, args.generate_only)
                raise SystemExit(0)
            return trainer
        return real_build(adapter_dir, log_path, build_with_timer, summarize, **kw)

    online.run_online.__globals__["train_adapter"] = train_adapter
    metric = cfg.score.metric
    summary = online.run_online(cfg, 0, records, lambda u, t: method.scorer.score(u, t)[metric], show_progress=False)
    log = json.loads((work / "iter_0" / "align_log.json").read_text())
    for rec, entry in zip(steps, [e for e in log["steps"] if "loss" in e]):
        rec["num_tokens"] = entry.get("num_tokens")  # trl's cumulative prompt + completion tokens
        rec["mean_length"] = entry.get("completions/mean_length")
        rec["reward"], rec["reward_std"] = entry.get("reward"), entry.get("reward_std")
    print(json.dumps({"summary": summary, "steps": steps}, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"overrides": overrides, "summary": summary, "steps": steps}, indent=1))


if __name__ == "__main__":
    main()
