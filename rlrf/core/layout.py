"""Every path inside a run directory, in one place.

Stages hand records to each other through files (docs/architecture.md lists them), so the names of
those files are the contract between stages. Building them here, and nowhere else, keeps a renamed
file from silently splitting a run in two. Some stages run inside a sub-run with the same shape (an
evaluation of one policy, the knowledge store of one policy, one SPRec arm): those are `RunLayout`s
too, reached from their parent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# the text generation stage writes one file per mode; its key field names what one prompt is about
OUTPUT_FILE = {"user_preference": "responses.jsonl", "item_knowledge": "item_knowledge.jsonl",
               "next_item": "next_item.jsonl"}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __init__(self, root: Path | str):
        object.__setattr__(self, "root", Path(root))

    # --- the run as a whole -------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def writer_lock(self) -> Path:
        """Held (flock) by the one process writing this run (rlrf/core/rundir.py)."""
        return self.root / ".writer.lock"

    @property
    def run_log(self) -> Path:
        """Every writing command's console lines, time-stamped, one command after another."""
        return self.root / "run.log"

    @property
    def data_summary(self) -> Path:
        return self.root / "data.json"

    @property
    def lists(self) -> Path:
        return self.root / "lists.jsonl"

    @property
    def candidates(self) -> Path:
        return self.root / "candidates.jsonl"

    @property
    def sasrec(self) -> Path:
        return self.root / "sasrec"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def wall_time(self) -> Path:
        """Seconds the processes that worked on this (sub-)run spent, summed over resumes."""
        return self.root / "wall.json"

    @property
    def per_user_table(self) -> Path:
        """The report's per-user values of every evaluated policy, one row per (policy, user)."""
        return self.root / "per_user.csv"

    def figure(self, name: str) -> Path:
        """A plot of the report (`name` without the .png)."""
        return self.root / f"{name}.png"

    @property
    def grounding(self) -> Path:
        """The faiss index of catalogue titles (cached by encoder and catalogue)."""
        return self.root / "grounding"

    # --- reward model -----------------------------------------------------------------------------
    @property
    def reward(self) -> Path:
        return self.root / "reward"

    def reward_model(self, name: str) -> Path:
        """`<name>` is dlcm, prm, dlcm_knowledge or prm_knowledge."""
        return self.reward / name

    def reward_model_file(self, name: str, seed: int | None = None) -> Path:
        """One reranker's weights: `seed_<s>.pt` for a seed, `model.pt` (the run's own seed: the model
        the stages load) without one."""
        return self.reward_model(name) / ("model.pt" if seed is None else f"seed_{seed}.pt")

    @property
    def reward_eval(self) -> Path:
        return self.reward / "eval.json"

    @property
    def reward_train(self) -> Path:
        return self.reward / "train.json"

    @property
    def reward_train_log(self) -> Path:
        return self.reward / "train_log.jsonl"

    def reward_tensorboard(self, name: str, seed: int) -> Path:
        """TensorBoard event files of one reranker's training (per-epoch loss and validation MAP@5)."""
        return self.reward / "tensorboard" / f"{name}_seed_{seed}"

    @property
    def reward_probe(self) -> Path:
        return self.reward / "probe.json"

    # --- one iteration of the loop -----------------------------------------------------------------
    def iteration(self, t: int) -> Path:
        return self.root / f"iter_{t}"

    def responses(self, t: int, mode: str = "user_preference") -> Path:
        return self.iteration(t) / OUTPUT_FILE[mode]

    def prompts(self, t: int, mode: str = "user_preference") -> Path:
        return self.responses(t, mode).with_suffix(".prompts.jsonl")

    def responses_meta(self, t: int, mode: str = "user_preference") -> Path:
        return responses_meta_of(self.responses(t, mode))

    def scores(self, t: int) -> Path:
        return self.iteration(t) / "scores.jsonl"

    def pairs(self, t: int) -> Path:
        return self.iteration(t) / "pairs.jsonl"

    def pairs_meta(self, t: int) -> Path:
        return self.iteration(t) / "pairs.meta.json"

    def adapter(self, t: int) -> Path:
        return self.iteration(t) / "adapter"

    def align_log(self, t: int) -> Path:
        return self.iteration(t) / "align_log.json"

    def sft_adapter(self, t: int) -> Path:
        """SPRec: the SFT step on the iteration's fresh positives, before its DPO."""
        return self.iteration(t) / "sft_adapter"

    def sft_adapter_log(self, t: int) -> Path:
        return self.iteration(t) / "sft_adapter_log.json"

    def recommendations(self, t: int = 0) -> Path:
        return self.iteration(t) / "recommendations.jsonl"

    def policy_adapter(self, t: int) -> Path | None:
        """The adapter of the policy iteration t starts from: the newest complete adapter of an earlier
        iteration, as the loop threads it (an iteration without pairs leaves the policy unchanged);
        None when no earlier iteration aligned (the policy named by `llm`)."""
        earlier = [s for s in self.aligned_iterations() if s < t]
        return self.adapter(earlier[-1]) if earlier else None

    def aligned_iterations(self) -> list[int]:
        """Iterations that wrote a complete adapter, in order."""
        found = []
        for folder in self.root.glob("iter_*"):
            suffix = folder.name.removeprefix("iter_")
            if suffix.isdigit() and adapter_complete(folder / "adapter"):
                found.append(int(suffix))
        return sorted(found)

    # --- sub-runs ---------------------------------------------------------------------------------
    def evaluation(self, label: str) -> "RunLayout":
        """Held-out generations and metrics of one policy (`policy_<t>`, or a policy slug)."""
        return RunLayout(self.root / "eval" / label)

    @property
    def greedy(self) -> "RunLayout":
        """Inside an evaluation: one greedy summary per user (the reranking metrics are read from it)."""
        return RunLayout(self.root / "greedy")

    @property
    def eval_result(self) -> Path:
        """An evaluation sub-run's summary (SPRec caches one per policy)."""
        return self.root / "eval.json"

    def knowledge(self, tag: str) -> "RunLayout":
        """The knowledge texts one policy wrote (`base` or `iter_<t>`), shared by export and experiments."""
        return RunLayout(self.root / "knowledge" / tag)

    def export(self, name: str) -> Path:
        return self.root / "export" / name

    def merged_policy(self, tag: str) -> Path:
        """One policy (`iter_<t>`) with its adapter merged: a plain HF model directory."""
        return self.export("merged") / tag

    def experiment(self, name: str) -> Path:
        return self.root / "experiments" / name

    def experiment_cells(self, name: str) -> Path:
        """An experiment's per-cell cache: a rerun recomputes only the cells whose inputs changed."""
        return self.experiment(name) / "cells.json"

    def experiment_results(self, name: str) -> Path:
        return self.experiment(name) / "results.json"

    def experiment_table(self, name: str) -> Path:
        return self.experiment(name) / "table.md"

    def experiment_figure(self, name: str, figure: str) -> Path:
        """A plot of an experiment (`figure` without the .png)."""
        return self.experiment(name) / f"{figure}.png"

    def experiment_model(self, name: str, policy: str, model: str, seed: int) -> Path:
        """A reranker an experiment trained itself on one policy's summaries (`model` as in `reward_model`)."""
        return self.experiment(name) / "models" / policy / model / f"seed_{seed}.pt"

    @property
    def sft(self) -> Path:
        """SPRec: the initial SFT on train users' next items (policy_0 of every arm)."""
        return self.root / "sft" / "adapter"

    @property
    def sft_log(self) -> Path:
        return self.root / "sft" / "adapter_log.json"

    def sft_epoch(self, epoch: int) -> Path:
        """SPRec with `sprec.sft_until_better`: the initial SFT's adapter after epoch `epoch` (1-based);
        `sft` is then a copy of the epoch the stopping rule settled on."""
        return self.root / "sft" / f"epoch_{epoch}" / "adapter"

    def sft_epoch_log(self, epoch: int) -> Path:
        return self.root / "sft" / f"epoch_{epoch}" / "adapter_log.json"

    def validation(self, label: str) -> "RunLayout":
        """SPRec: one policy's evaluation on VALID users (the SFT stopping rule), kept apart from
        `evaluation` (the reported held-out numbers) so neither cache overwrites the other."""
        return RunLayout(self.root / "valid" / label)

    @property
    def self_play_fallback(self) -> "RunLayout":
        """SPRec: the sampled fallback answers of self-play, a sub-run with its own
        ``iter_<t>/next_item.jsonl`` and ``.meta.json`` beside the greedy generation's."""
        return RunLayout(self.root / "fallback")

    def arm(self, method: str) -> "RunLayout":
        """SPRec: one method's own loop (`sprec`, `dpo_random`, ...)."""
        return RunLayout(self.root / method)


def responses_meta_of(responses: Path) -> Path:
    """The `.meta.json` written beside a responses-style file (model, sampling, counts)."""
    responses = Path(responses)
    return responses.with_name(f"{responses.stem}.meta.json")


def export_meta_of(export_dir: Path) -> Path:
    """The `meta.json` of an `rlrf export` folder (in the run's `export/<name>/` or wherever --out put it):
    what marks the export complete, and what `rlrf experiment recbole` reads first."""
    return Path(export_dir) / "meta.json"


def recbole_result_of(export_dir: Path, stem: str) -> tuple[Path, Path]:
    """`rlrf experiment recbole`'s result (JSON) and its table (Markdown), kept beside the export it
    trained on, so each export folder carries the experiments run on its vectors."""
    export_dir = Path(export_dir)
    return export_dir / f"{stem}.json", export_dir / f"{stem}.md"


def title_index_of(index_dir: Path, digest: str) -> Path:
    """The faiss index of catalogue title vectors, named by a digest of the encoder and the titles (a
    changed catalogue or encoder never reads a stale index)."""
    return Path(index_dir) / f"titles-{digest}.faiss"


def tensorboard_dir(adapter_dir: Path) -> Path:
    """TensorBoard event files of the training step that writes `adapter_dir` (beside it, kept)."""
    adapter_dir = Path(adapter_dir)
    return adapter_dir.parent / "tensorboard" / adapter_dir.name


def adapter_complete(adapter_dir: Path) -> bool:
    """A peft adapter folder with both of its files: what makes an alignment stage skip on rerun."""
    return all((Path(adapter_dir) / name).is_file() for name in ADAPTER_FILES)
