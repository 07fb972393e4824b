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


# docs/architecture.md "Layers": the neutral modules (1), recmodels (2), core (3), the stages in pipeline
# order (4.x), the recipes (5), the outputs (6) and the command line on top of everything
RANK = {"evaluation": 1, "core": 3, "data": 4.0, "generation": 4.1, "reward": 4.2, "alignment": 4.3,
        "methods": 5, "experiments": 5, "export": 5, "report": 6, "cli": 7}


def _rank(module: str) -> float | None:
    parts = module.split(".")
    if parts[0] != "rlrf" or len(parts) < 2:
        return None
    return 1 if module in NEUTRAL else RANK.get(parts[1])


def test_every_module_of_rlrf_has_a_layer():
    folders = {p.relative_to(ROOT / "rlrf").parts[0].removesuffix(".py") for p in (ROOT / "rlrf").rglob("*.py")}
    assert folders - {"__init__"} <= set(RANK), f"no layer for {sorted(folders - {'__init__'} - set(RANK))}"


def test_lower_layers_never_import_higher_ones():
    for path in sorted((ROOT / "rlrf").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        own = _rank(module)
        if own is None:
            continue
        for imported in _imports(path):
            theirs = _rank(imported)
            assert theirs is None or theirs <= own, f"{path.relative_to(ROOT)} imports {imported}"


def test_docs_point_only_inside_the_repository():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "bench").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\.\./shared|DESIGN\.md", text), f"{path.name} points outside the repository"


RUN_FILES = ["responses.jsonl", "scores.jsonl", "pairs.jsonl", "pairs.meta.json", "lists.jsonl", "candidates.jsonl",
             "metrics.json", "align_log.json", "data.json", "config.yaml", "report.md", "eval.json", "train.json",
             "train_log.jsonl", "probe.json", "sft_adapter", "recommendations.jsonl", "meta.json", "cells.json",
             "results.json", "table.md", "model.pt", ".writer.lock", "run.log"]
# the extensions of files a stage writes into a run directory
RUN_FILE_SUFFIXES = (".json", ".jsonl", ".md", ".pt", ".png", ".yaml", ".npy", ".safetensors", ".faiss")
# files of a model or adapter folder, named by that folder's format (transformers, peft), not by the run
FOLDER_FORMAT_FILES = {"config.json", "adapter_config.json", "rlrf_base.json", "rlrf_source.json"}


def _joined_file_names(tree: ast.AST) -> list[tuple[int, str]]:
    """`folder / "name.json"` and `folder / f"{x}.json"`: a file name joined onto a path by hand."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            right = node.right
            if isinstance(right, ast.Constant) and isinstance(right.value, str):
                tail = right.value
            elif isinstance(right, ast.JoinedStr) and right.values and isinstance(right.values[-1], ast.Constant):
                tail = str(right.values[-1].value)
            else:
                continue
            if tail.endswith(RUN_FILE_SUFFIXES) and tail not in FOLDER_FORMAT_FILES:
                found.append((node.lineno, ast.unparse(right)))
    return found


def test_only_the_run_layout_names_the_files_of_a_run():
    flagged = []
    for path in sorted((ROOT / "rlrf").rglob("*.py")):
        if path.relative_to(ROOT).as_posix() in {"rlrf/core/layout.py", "rlrf/core/resources.py"}:  # run / package files
            continue
        text = path.read_text(encoding="utf-8")
        named = [name for name in RUN_FILES if f'"{name}"' in text or f"'{name}'" in text]
        joined = [f"line {line}: {name}" for line, name in _joined_file_names(ast.parse(text))]
        if named or joined:
            flagged.append(f"{path.relative_to(ROOT)} names {named + joined}")
    assert not flagged, "build run paths with rlrf.core.layout.RunLayout:\n" + "\n".join(flagged)
