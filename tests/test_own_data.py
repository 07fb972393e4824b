"""Someone else's data, end to end: an Amazon-shaped RecBole dataset (string ids, no ratings, a
title / brand / categories / price .item, no .user) runs `rlrf run` on a tiny policy, and its prompts
speak of items, never of movies."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import yaml

from rlrf.core.layout import RunLayout


def amazon_shaped(folder, users: int = 48, items: int = 90, per_user: int = 14):
    rng = random.Random(0)
    folder.mkdir(parents=True)
    cats = ["Beauty, Skin Care", "Home & Kitchen, Kitchen & Dining", "Electronics, Headphones", "Toys & Games"]
    ids = [f"B0{rng.randrange(16**8):08X}" for _ in range(items)]
    rows = ["item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq\tprice:float"]
    for k, item in enumerate(ids):
        rows.append(f"{item}\tProduct number {k} deluxe\tBrand{k % 7}\t{cats[k % len(cats)]}\t{9.99 + k}")
    (folder / f"{folder.name}.item").write_text("\n".join(rows) + "\n")
    inter = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(users):
        user = f"A{rng.randrange(16**10):010X}"
        for t, item in enumerate(rng.sample(ids, per_user)):
            inter.append(f"{user}\t{item}\t{1_600_000_000 + 3600 * t}")
    (folder / f"{folder.name}.inter").write_text("\n".join(inter) + "\n")


def test_an_amazon_shaped_dataset_without_ratings_runs_end_to_end_with_item_prompts(tmp_path, tiny_model_dir):
    amazon_shaped(tmp_path / "amazon-tiny")
    config = {
        "run_dir": str(tmp_path / "run"), "seed": 0, "threads": 1,
        "data": {"path": str(tmp_path / "amazon-tiny"), "lists": {"source": "future", "length": 8, "max_history": 6}},
        "sasrec": {"enabled": False},
        "llm": {"model": str(tiny_model_dir)},
        "generate": {"n": 2, "max_new_tokens": 8, "max_users": 6, "batch_size": 32},
        "encoder": {"model": "hashing:32"},
        "reward": {"models": ["dlcm"], "epochs": 2, "embed_dim": 8, "hidden": 16, "adapter_out": 8, "adapter_hidden": 16},
        "align": {"trainer_args": {"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 640}},
        "score": {"metric": "margin"},
        "loop": {"iterations": 1, "eval_users": 3},
    }
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "rlrf.cli", "run", "-c", str(path)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    layout = RunLayout(tmp_path / "run")
    metrics = json.loads(layout.metrics.read_text())
    assert {"policy_0", "policy_1"} <= set(metrics["evaluations"])
    prompts = [json.loads(line)["prompt"] for line in layout.prompts(0).read_text().splitlines()]
    assert prompts and all("Items this user interacted with" in p for p in prompts)
    assert not any(word in p.lower() for p in prompts for word in ("movie", "director", "actor", "film"))
    assert any("Product number" in p for p in prompts)  # the data's own titles


def test_kar_lists_on_data_without_ratings_are_refused_before_anything_is_written(tmp_path):
    amazon_shaped(tmp_path / "amazon-tiny")
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "rlrf.cli", "data", "-c", "quickstart", "--run-dir", str(run_dir),
                             f"data.path={tmp_path / 'amazon-tiny'}", "data.lists.source=kar"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "rating" in result.stderr
    assert not run_dir.exists() or not any(p.name != ".writer.lock" for p in run_dir.iterdir())
