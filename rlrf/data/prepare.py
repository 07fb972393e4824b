"""The `rlrf data` stage: dataset statistics, SASRec candidates (`sasrec.enabled`) and reranking lists in the run directory."""

from __future__ import annotations

from dataclasses import dataclass

from rlrf.core.config import RunConfig, save_config
from rlrf.data.dataset import Dataset, load_dataset
from rlrf.data.lists import build_lists, save_lists
from rlrf.core.io import atomic_write_json, atomic_write_jsonl
from rlrf.core.layout import RunLayout


@dataclass
class PreparedData:
    dataset: Dataset
    summary: dict  # what data.json holds: statistics, list statistics, SASRec validation metrics (None if skipped)


def prepare_data(cfg: RunConfig) -> PreparedData:
    from rlrf.data.candidates import generate_candidates

    layout = RunLayout(cfg.run_dir)
    ds = load_dataset(cfg.data, seed=cfg.seed)
    candidates = (generate_candidates(ds, cfg.sasrec, cfg.data.lists.max_history, layout.sasrec, cfg.seed)
                  if cfg.sasrec.enabled else None)
    lists = build_lists(ds, cfg.data.lists, cfg.seed, cfg.data.positive_rating, candidates and candidates.items)

    layout.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, layout.config)
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
            "source": cfg.data.lists.source,
            "count": len(lists),
            "length": cfg.data.lists.length,
            "mean_positives": sum(positives) / max(1, len(positives)),
            "without_positive": sum(p == 0 for p in positives),
        },
        "sasrec": {"valid_hr@10": candidates.valid_hr10, "valid_ndcg@10": candidates.valid_ndcg10} if candidates else None,
    }
    atomic_write_json(layout.data_summary, summary)
    return PreparedData(ds, summary)
