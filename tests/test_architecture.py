"""The layering of docs/architecture.md holds: recmodels is a lower layer, and run paths have one owner."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEUTRAL = {"rlrf.core.errors", "rlrf.core.io", "rlrf.evaluation.metrics", "rlrf.evaluation.stats"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_recmodels_imports_no_rlrf_module_but_the_neutral_ones():
    for path in sorted((ROOT / "recmodels").glob("*.py")):
        rlrf = {m for m in _imports(path) if m == "rlrf" or m.startswith("rlrf.")}
        assert rlrf <= NEUTRAL, f"{path.name} imports {sorted(rlrf - NEUTRAL)}"


def test_neutral_modules_import_nothing_of_rlrf_but_errors():
    for module in NEUTRAL:
        path = ROOT / (module.replace(".", "/") + ".py")
        rlrf = {m for m in _imports(path) if m.startswith("rlrf")}
        assert rlrf <= {"rlrf.core.errors"}, f"{module} imports {sorted(rlrf)}"


def test_lower_layers_never_import_higher_ones():
    order = ["core", "data", "generation", "reward", "alignment", "methods", "experiments", "export", "report"]
    top = {"methods": 5, "experiments": 5, "export": 5, "report": 6}
    rank = {name: top.get(name, i) for i, name in enumerate(order)}
    for path in sorted((ROOT / "rlrf").rglob("*.py")):
        folder = path.relative_to(ROOT / "rlrf").parts[0]
        if folder not in rank:
            continue
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] == "rlrf" and len(parts) > 1 and parts[1] in rank and module not in NEUTRAL:
                assert rank[parts[1]] <= rank[folder], f"{path.relative_to(ROOT)} imports {module}"


def test_docs_point_only_inside_the_repository():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "bench").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\.\./shared|DESIGN\.md", text), f"{path.name} points outside the repository"


def test_only_the_run_layout_names_the_files_of_a_run():
    run_files = ["responses.jsonl", "scores.jsonl", "pairs.jsonl", "pairs.meta.json", "lists.jsonl", "candidates.jsonl",
                 "metrics.json", "align_log.json", "data.json", "config.yaml", "report.md", "eval.json", "train.json",
                 "train_log.jsonl", "probe.json", "sft_adapter", "recommendations.jsonl"]
    for path in sorted((ROOT / "rlrf").rglob("*.py")):
        if path.name == "layout.py":
            continue
        text = path.read_text(encoding="utf-8")
        named = [name for name in run_files if f'"{name}"' in text or f"'{name}'" in text]
        assert not named, f"{path.relative_to(ROOT)} names {named}: build it with rlrf.core.layout.RunLayout"
