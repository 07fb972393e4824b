"""The `rlrf data` stage: dataset statistics, SASRec candidates (`sasrec.enabled`) and reranking lists in the run directory."""

from __future__ import annotations

from dataclasses import dataclass

from rlrf.core.config import DataConfig, RunConfig, SASRecConfig, save_config
from rlrf.core.io import atomic_write_json, atomic_write_jsonl
from rlrf.core.layout import RunLayout
from rlrf.data.candidates import Candidates
from rlrf.data.dataset import Dataset, load_dataset
from rlrf.data.lists import RerankList, build_lists, check_source, save_lists


@dataclass
class RunData:
    """What `rlrf data` computes before it writes anything into the run directory."""

    dataset: Dataset
    candidates: Candidates | None  # SASRec's, with `sasrec.enabled`
    lists: dict[str, RerankList]


@dataclass
class PreparedData:
    dataset: Dataset
    summary: dict  # what data.json holds: statistics, list statistics, SASRec validation metrics (None if skipped)


def build_run_data(data: DataConfig, sasrec: SASRecConfig, layout: RunLayout, seed: int) -> RunData:
    """Load and split the dataset, train or reuse SASRec (into `layout.sasrec`), build the lists; a
    bad dataset or list source fails here, before the run directory holds any record."""
    from rlrf.data.candidates import generate_candidates

    ds = load_dataset(data, seed=seed)
    check_source(ds, data.lists)
    candidates = (generate_candidates(ds, sasrec, data.lists.max_history, layout.sasrec, seed)
                  if sasrec.enabled else None)
    lists = build_lists(ds, data.lists, seed, data.positive_rating, candidates and candidates.items)
    return RunData(ds, candidates, lists)


def write_run_data(run: RunData, data: DataConfig, layout: RunLayout) -> PreparedData:
    """candidates.jsonl, lists.jsonl and data.json."""
    ds, candidates, lists = run.dataset, run.candidates, run.lists
    layout.root.mkdir(parents=True, exist_ok=True)
    if candidates is not None:
        atomic_write_jsonl(layout.candidates, (
            {"user": u, "items": [ds.catalog.ids[i] for i in items]} for u, items in candidates.items.items()))
    save_lists(lists, layout.lists)
    positives = [sum(lst.labels) for lst in lists.values()]
    summary = {
        "dataset": ds.name,
        "path": str(ds.path),
        "stats": ds.stats.as_dict(),
        "lists": {
            "source": data.lists.source,
            "count": len(lists),
            "length": data.lists.length,
            "mean_positives": sum(positives) / max(1, len(positives)),
            "without_positive": sum(p == 0 for p in positives),
        },
        "sasrec": {"valid_hr@10": candidates.valid_hr10, "valid_ndcg@10": candidates.valid_ndcg10} if candidates else None,
    }
    atomic_write_json(layout.data_summary, summary)
    return PreparedData(ds, summary)


def prepare_data(cfg: RunConfig) -> PreparedData:
    """The stage for a whole run config: compute, then the resolved config, then the records."""
    layout = RunLayout(cfg.run_dir)
    run = build_run_data(cfg.data, cfg.sasrec, layout, cfg.seed)
    layout.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, layout.config)
    return write_run_data(run, cfg.data, layout)
