"""What a reader of report.md needs to trust or repeat a run: what ran, on what, for how long, and
how good the reward model and the independent evaluator were on validation users.

Everything is read from files the run already wrote (config.yaml, data.json, reward/train.json,
metrics.json's optional `environment`), so `rlrf report` can redraw it for an old run; a file that
is missing leaves its line out.
"""

from __future__ import annotations

import yaml

from rlrf.core.io import read_json
from rlrf.core.layout import tensorboard_dir


def _config(layout) -> dict:
    try:
        return yaml.safe_load(layout.config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _plain(value) -> str:
    """A JSON value on one line: a mapping as `key value, ...` (unset entries left out; a mapping of
    flags as the names that are set), a list comma-separated."""
    if isinstance(value, dict):
        if value and all(isinstance(v, bool) for v in value.values()):
            return " ".join(k for k, v in value.items() if v) or "none"
        return ", ".join(f"{k.replace('_', ' ')} {_plain(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, list):
        return ", ".join(map(_plain, value))
    return str(value)


def _environment_lines(environment) -> list[str]:
    """metrics.json's `environment` (rlrf.core.environment.describe: versions, numerics; a git
    commit where recorded), one key a line."""
    if not isinstance(environment, dict):
        return []
    return [f"- {key.replace('_', ' ')}: {_plain(value)}" for key, value in environment.items()]


def validation_quality(layout, cfg: dict) -> list[tuple[str, str, float]]:
    """(role, reranker file name, validation MAP@5) for the reward model, the same kind without
    knowledge, and the independent evaluator, as `rlrf reward train` recorded them."""
    trained = (read_json(layout.reward_train) or {}).get("models", {})
    reward, seed = cfg.get("reward", {}), cfg.get("seed", 0)
    kind = reward.get("model", "dlcm")
    knowledge = reward.get("knowledge", True)
    wanted = [("reward model", f"{kind}_knowledge" if knowledge else kind, seed)]
    if knowledge:
        wanted.append(("the same without knowledge", kind, seed))
    if cfg.get("loop", {}).get("independent_evaluator", True):
        wanted.append(("independent evaluator", ("prm" if kind == "dlcm" else "dlcm") + "_knowledge", seed + 1))
    out = []
    for role, name, s in wanted:
        for entry in trained.get(name, []):
            if entry.get("seed") == s and entry.get("valid_map@5") is not None:
                out.append((role, f"{name} seed {s}", float(entry["valid_map@5"])))
    return out


def run_details(metrics: dict, layout) -> list[str]:
    """The report's "Run" section as markdown lines."""
    cfg = _config(layout)
    data = read_json(layout.data_summary) or {}
    lines = ["## Run", ""]
    if data.get("dataset"):
        lines.append(f"- dataset: {data['dataset']} ({data.get('path', '')})")
    lines.append(f"- config: `{layout.config}`" if cfg else f"- run directory: `{layout.root}`")
    if cfg:
        llm, align = cfg.get("llm", {}), cfg.get("align", {})
        lines.append(f"- policy: {llm.get('model') or 'SmolLM2-135M-Instruct (bundled)'}; seed {cfg.get('seed')}; "
                     f"iterations: {cfg.get('loop', {}).get('iterations')} of {align.get('method', 'dpo')} "
                     f"(loss {align.get('loss')}, beta {align.get('beta')})")
    lines += _environment_lines(metrics.get("environment"))
    seconds = [it.get("seconds") for it in metrics.get("iterations", {}).values() if it.get("seconds") is not None]
    if metrics.get("wall_seconds") is not None:
        lines.append(f"- wall time: {metrics['wall_seconds']:.0f} s")
    elif seconds:
        lines.append(f"- time in the iterations (generate, score, align; evaluations not counted): {sum(seconds):.0f} s")
    for role, name, value in validation_quality(layout, cfg):
        lines.append(f"- {role} ({name}): validation MAP@5 {value:.4f}")
    tensorboard = [d for t in sorted(metrics.get("iterations", {}), key=int)
                   if (d := tensorboard_dir(layout.adapter(int(t)))).is_dir()]
    if (layout.reward / "tensorboard").is_dir():  # the rerankers' per-epoch curves
        tensorboard.insert(0, layout.reward / "tensorboard")
    if tensorboard:
        lines.append(f"- training curves: `tensorboard --logdir {layout.root}` (event files in "
                     + ", ".join(f"`{p.relative_to(layout.root)}`" for p in tensorboard) + ")")
    return lines + [""]
