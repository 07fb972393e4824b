"""Benchmark: (user, summary) pairs scored per second by the reward model, batched vs a naive loop.

Four measurements side by side in one run, on the same pairs (ml-100k quickstart lists, the real
sentence encoder unless --encoder says otherwise):

  batched, encoding excluded  RewardScorer.score_vectors over precomputed summary embeddings
  naive,   encoding excluded  one pair at a time: gather its list, forward pass, metrics
  batched, encoding included  RewardScorer.score on texts never seen (cold cache in a temp dir)
  naive,   encoding included  one pair at a time: encode its text alone (no cache), forward, metrics

The model is the run's trained reward model when `<run_dir>/reward/<model>_knowledge/model.pt`
exists, else a freshly initialised one of the same shape (speed does not depend on the weights).

    python bench/score.py [--users 100] [--n 4] [--model dlcm|prm] [--threads 1] [--encoder hashing:256]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="quickstart")
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--n", type=int, default=4, help="summaries per user")
    ap.add_argument("--model", choices=["dlcm", "prm"], default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--encoder", default=None, help="override encoder.model (default: the config's)")
    ap.add_argument("--batch-size", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from rlrf.data import texts as kn
    from recmodels.train import build_reranker, item_prior_features
    from rlrf.core.layout import RunLayout
    from rlrf.reward.inputs import encode_summaries, load_lists_for
    from rlrf.reward.scorer import RewardScorer, logit_margin
    from rlrf.reward.training import model_name, reranker_hyperparameters
    from rlrf.core.config import load_config
    from rlrf.data.dataset import load_dataset
    from rlrf.evaluation.metrics import map_at_k, ndcg_at_k

    overrides = {"encoder.model": args.encoder} if args.encoder else {}
    cfg = load_config(args.config, overrides)
    kind = args.model or cfg.reward.model
    ds = load_dataset(cfg.data, seed=cfg.seed)
    lists = load_lists_for(cfg, ds)
    encoder = kn.load_encoder(cfg.encoder, progress=False)
    try:
        scorer = RewardScorer.from_run(cfg, ds=ds, lists=lists, encoder=encoder, kind=kind, knowledge=True)
        source = f"trained {RunLayout(cfg.run_dir).reward_model_file(model_name(kind, True))}"
    except Exception as err:  # not trained yet in this run dir: same shape, fresh weights
        item_vecs = encoder.encode(kn.item_self_texts(ds.catalog))
        hp = reranker_hyperparameters(cfg.reward, kind, True, cfg.data.lists.length)
        prior = item_prior_features(ds, ds.splits["train"], cfg.data.positive_rating)
        model = build_reranker(hp, len(ds.catalog), ds.catalog.genre_matrix(), item_vecs, prior)
        scorer = RewardScorer(model, lists, encoder, cfg.data.lists.max_history, cfg.data.positive_rating)
        source = f"freshly initialised, no usable trained model ({err})"

    users = [u for u in ds.splits["train"] if u in lists][: args.users]
    base = {u: kn.user_self_text(ds.catalog, lists[u].history, lists[u].history_ratings) for u in users}
    genres = ds.catalog.genre_names
    pair_users = [u for u in users for _ in range(args.n)]
    pair_texts = [f"{base[u]} Also enjoys {genres[(j * 7 + i) % len(genres)]} films."
                  for i, u in enumerate(users) for j in range(args.n)]
    n_pairs = len(pair_users)
    ks = scorer.ks

    # encoding excluded: embeddings computed (and cached) beforehand
    vecs, has = encode_summaries(encoder, pair_texts)

    def batched_excluded():
        return scorer.score_vectors(pair_users, vecs, has, args.batch_size)

    def naive_excluded():
        out = []
        with torch.no_grad():
            for i, u in enumerate(pair_users):
                r = torch.tensor([scorer.row[u]])
                s = scorer.model(scorer.data.items[r], scorer.data.hist[r], scorer.data.hist_r[r],
                                 vecs[i: i + 1], has[i: i + 1])
                y = scorer.data.labels[r]
                out.append({f"{m.__name__[:-5]}@{k}": float(m(s, y, k)[0]) for k in ks for m in (ndcg_at_k, map_at_k)}
                           | {"margin": float(logit_margin(s, y)[0])})
        return out

    # encoding included: texts never seen before (a fresh nonce), a cold cache in a temp dir
    raw_model = encoder.model
    nonce = uuid.uuid4().hex[:8]

    def fresh_texts(tag: str) -> list[str]:
        return [f"{t} ({tag}{nonce}{i})" for i, t in enumerate(pair_texts)]

    def batched_included(tmp: Path):
        cold = kn.CachedEncoder(encoder.key, kn.EmbeddingCache(tmp, encoder.key), lambda: raw_model,
                                batch_size=cfg.encoder.batch_size, normalize=encoder.normalize, progress=False)
        scorer.encoder = cold
        try:
            return scorer.score(pair_users, fresh_texts("b"), args.batch_size)
        finally:
            scorer.encoder = encoder

    def naive_included():
        out = []
        texts = fresh_texts("n")
        with torch.no_grad():
            for i, u in enumerate(pair_users):
                v = np.asarray(raw_model.encode([texts[i]], convert_to_numpy=True, show_progress_bar=False), np.float32)
                if encoder.normalize:
                    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
                r = torch.tensor([scorer.row[u]])
                s = scorer.model(scorer.data.items[r], scorer.data.hist[r], scorer.data.hist_r[r],
                                 torch.from_numpy(v), torch.tensor([True]))
                y = scorer.data.labels[r]
                out.append({f"{m.__name__[:-5]}@{k}": float(m(s, y, k)[0]) for k in ks for m in (ndcg_at_k, map_at_k)}
                           | {"margin": float(logit_margin(s, y)[0])})
        return out

    def timed(fn, *a):
        start = time.perf_counter()
        result = fn(*a)
        return time.perf_counter() - start, result

    batched_excluded()  # warm-up (allocator, first-call overheads), not timed
    naive_excluded()
    t_be, res_b = timed(batched_excluded)
    t_ne, res_n = timed(naive_excluded)
    # same numbers both ways (the naive loop is the reference)
    for key in res_b:
        np.testing.assert_allclose(res_b[key], [r[key] for r in res_n], atol=1e-6)
    with tempfile.TemporaryDirectory() as tmp:
        t_bi, _ = timed(batched_included, Path(tmp))
    t_ni, _ = timed(naive_included)

    print(f"reward model: {kind} +knowledge, {source}")
    print(f"encoder: {encoder.key}; pairs: {n_pairs} ({len(users)} users x {args.n} summaries); "
          f"list length {scorer.data.items.shape[1]}; torch threads {args.threads}; K = {ks}")
    print(f"{'':28s}{'batched':>14s}{'naive loop':>14s}{'ratio':>9s}")
    for label, tb, tn in (("encoding excluded (pairs/s)", t_be, t_ne), ("encoding included (pairs/s)", t_bi, t_ni)):
        print(f"{label:28s}{n_pairs / tb:14.1f}{n_pairs / tn:14.1f}{tn / tb:8.1f}x")
    import resource

    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "
          f"load average (1 min) {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
