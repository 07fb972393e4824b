"""`rlrf pool`: one RLRF4Rec config run with several seeds, its change against policy_0 per run and pooled."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from rlrf.evaluation.stats import paired_difference, pooled_difference


def table(users, values, key="reward_mean"):
    return {"users": users, key: list(values)}


def test_pooled_difference_weights_every_user_of_every_run_once():
    a0, a1 = table(["1", "2", "3"], [1.0, 2.0, 3.0]), table(["1", "2", "3"], [1.5, 2.5, 3.5])  # +0.5 each
    b0, b1 = table(["7", "8"], [0.0, 0.0]), table(["7", "8"], [-0.1, -0.3])                    # −0.2 mean
    got = pooled_difference([(a0, a1), (b0, b1)], "reward_mean")
    assert got["mean"] == pytest.approx((3 * 0.5 - 0.4) / 5) and got["runs"] == 2 and got["users"] == 5
    lo, hi = got["ci95"]
    assert lo <= got["mean"] <= hi
    # users are resampled within each run: run a never varies, run b spans its two users
    assert lo == pytest.approx((1.5 - 0.6) / 5) and hi == pytest.approx((1.5 - 0.2) / 5)


def test_one_run_pools_to_its_own_paired_difference():
    rng = np.random.default_rng(0)
    base, other = table([str(u) for u in range(40)], rng.normal(size=40)), table([str(u) for u in range(40)], rng.normal(size=40))
    one = pooled_difference([(base, other)], "reward_mean")
    assert one["mean"] == pytest.approx(paired_difference(base, other, "reward_mean")["mean"])
    assert pooled_difference([(base, other)], "tokens") is None


def metrics(per_user_0, per_user_1):
    return {"method": "rlrf4rec", "evaluations": {"policy_0": {"per_user": per_user_0},
                                                  "policy_1": {"per_user": per_user_1}}}


def test_pool_command_prints_each_run_and_the_pooled_row(tmp_path):
    for name, shift in (("seed0", 0.5), ("seed1", -0.1)):
        (tmp_path / name).mkdir()
        base = {"users": ["1", "2"], "reward_mean": [1.0, 2.0], "copied": [0.2, 0.1]}
        moved = {"users": ["1", "2"], "reward_mean": [1.0 + shift, 2.0 + shift], "copied": [0.0, 0.0]}
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics(base, moved)))
    out = tmp_path / "pooled.md"
    run = subprocess.run([sys.executable, "-m", "rlrf.cli", "pool", str(tmp_path / "seed0"), str(tmp_path / "seed1"),
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith("| policy_1")]
    assert [r.split(" | ")[1] for r in rows] == [str(tmp_path / "seed0"), str(tmp_path / "seed1"), "**pooled**"]
    assert "+0.5000 [+0.5000, +0.5000]" in rows[0] and "+0.2000 [+0.2000, +0.2000]" in rows[2]
    assert "-0.1500" in rows[2]  # copied share, pooled over 4 users


def test_pool_refuses_a_directory_without_a_run(tmp_path):
    run = subprocess.run([sys.executable, "-m", "rlrf.cli", "pool", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: {tmp_path / 'metrics.json'}: no RLRF4Rec metrics; run `rlrf run` there first"
