"""The outer loop, written once and driving every method: T iterations of generate → score → align.

A `Method` says how one iteration's stages are done (RLRF4Rec: summaries scored by the reward
model, best-vs-worst pairs; SPRec: next-item titles scored against the real next item, the policy's
own predictions as negatives). The loop only orders the stages, threads the newest adapter through
them, evaluates the policy before the first and after every iteration, and records metrics.json.
Each stage is resumable on its own, so rerunning a killed `rlrf run` continues where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from rlrf.core.io import atomic_write_json, read_json
from rlrf.core.layout import RunLayout
from rlrf.core.records import IterationRecord, metrics_record


class Method(Protocol):
    """One iteration's stages. `cfg` is the run's config (the recipe's), the same object for every call;
    `layout` is where this run of the loop writes (the run itself, or a sub-run: one arm, one seed)
    and `seed` its training seed, both as `run_loop` was given them; the policy a stage samples from
    or trains further is the explicit `adapter` (None: the base model `cfg.llm` names), which the
    loop threads from one iteration to the next."""

    name: str

    def prepare(self, cfg, layout: RunLayout, seed: int) -> Path | None:
        """One-time inputs of the loop (data, reward model, SPRec's SFT), skipped when already present;
        returns the adapter policy_0 starts from (None: `llm.adapter`)."""

    def generate(self, cfg, layout: RunLayout, seed: int, iteration: int, adapter: Path | None) -> None:
        """Sample responses from the policy with `adapter`."""

    def score(self, cfg, layout: RunLayout, seed: int, iteration: int) -> dict:
        """Score the responses and write the iteration's pairs; returns their statistics ({"pairs": n, ...},
        or {"prompts": n} for a method whose trainer samples and scores online): `IterationRecord.pairs`."""

    def align(self, cfg, layout: RunLayout, seed: int, iteration: int, adapter: Path | None) -> Path:
        """Train the policy with `adapter` on the iteration's pairs; returns the new adapter directory."""

    def evaluate(self, cfg, layout: RunLayout, seed: int, label: str, adapter: Path | None) -> dict:
        """Held-out metrics of the policy with `adapter` (RLRF4Rec: an `Evaluation` as a dict);
        `label` names its output folder."""

    def outdated(self, cfg, evaluation: dict) -> bool:
        """Whether a recorded evaluation was made under settings `cfg` no longer asks for (SPRec: another
        protocol or cut-offs), so a rerun evaluates the policy again instead of keeping the old record."""
        return False


def run_environment(llm) -> dict:
    """The versions and numerics this process runs with (the policy's dtype as `llm` resolves here):
    a resumed run records the latest, since that is what its newest numbers came from."""
    from rlrf.core.environment import describe
    from rlrf.core.precision import resolve_dtype
    from rlrf.generation.policy import resolve_device

    return describe(resolve_dtype(llm.dtype, resolve_device(llm.device)))


def run_loop(cfg, method: Method, iterations: int, *, layout: RunLayout, seed: int, log=print) -> dict:
    """Run (or resume) `iterations` iterations of `method` in `layout` with training seed `seed`;
    returns the metrics.json it writes there.

    `cfg` is the recipe's whole config, handed to every stage of `method` unchanged; `layout` and
    `seed` say which run this is, so one config drives several (SPRec's and rank's arms and seeds,
    each its own `RunLayout` under the run): `rlrf run` passes ``RunLayout(cfg.run_dir)`` and
    ``cfg.seed``. The policy starts from what `method.prepare` returns, else `cfg.llm.adapter`."""
    from rlrf.core.threads import use_threads

    use_threads(cfg)  # every stage of the loop runs with the config's threads
    metrics_path = layout.metrics
    metrics = read_json(metrics_path) or metrics_record(method.name)
    metrics["environment"] = run_environment(cfg.llm)
    start = method.prepare(cfg, layout, seed)

    def evaluate(adapter: Path | None, label: str) -> None:
        if label not in metrics["evaluations"] or method.outdated(cfg, metrics["evaluations"][label]):
            log(f"[{method.name}] evaluating policy {label}")
            metrics["evaluations"][label] = method.evaluate(cfg, layout, seed, label, adapter)
            atomic_write_json(metrics_path, metrics)

    adapter = start if start is not None else cfg.llm.adapter
    for t in range(iterations):
        evaluate(adapter, f"policy_{t}")
        started = time.perf_counter()
        log(f"[{method.name}] iteration {t}: generate")
        method.generate(cfg, layout, seed, t, adapter)
        log(f"[{method.name}] iteration {t}: score")
        pair_stats = method.score(cfg, layout, seed, t)
        trained_on = IterationRecord(pairs=pair_stats, adapter=None).trained_on
        if trained_on > 0:
            what = f"{trained_on} pairs" if pair_stats.get("pairs") else f"{trained_on} prompts"  # prompts: online RL
            log(f"[{method.name}] iteration {t}: align on {what}")
            adapter = method.align(cfg, layout, seed, t, adapter)
        else:  # every user tied: no preference to learn, the policy stays as it is
            log(f"[{method.name}] iteration {t}: no pairs, policy unchanged")
        seconds = metrics["iterations"].get(str(t), {}).get("seconds", round(time.perf_counter() - started, 1))
        metrics["iterations"][str(t)] = IterationRecord(pairs=pair_stats, adapter=str(adapter) if adapter else None,
                                                        seconds=seconds).to_dict()
        atomic_write_json(metrics_path, metrics)
    evaluate(adapter, f"policy_{iterations}")
    return metrics
