"""Every repository path the docs name exists.

A pointer to a file that moved sends a reader nowhere. This reads README.md, every Markdown page under
docs/ and bench/, and the docstrings and comments of rlrf/, recmodels/, bench/ and tests/, and checks
each repository path named there (`rlrf/core/layout.py`, `docs/reward.md`, `configs/quickstart.yaml`,
a dotted module such as `rlrf.core.layout`) and each relative Markdown link. Paths inside a run
directory (`iter_<t>/...`, `runs/...`) and placeholders (`configs/<name>.yaml`) are not repository
paths and are skipped.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("rlrf", "recmodels", "bench", "docs", "configs", "prompts", "scripts", "tests", ".ci")

# a path that starts at one of the repository's top folders; not the tail of a longer path
# (`~/.cache/rlrf/embeddings`) or of a dotted name
PATH = re.compile(r"(?<![\w./~-])((?:" + "|".join(re.escape(t) for t in TOP) + r")/(?:[\w.-]+/)*[\w.-]*)")
# a dotted module of rlrf or recmodels (`rlrf.core.layout`, `recmodels.context.float_seq_positions`)
MODULE = re.compile(r"(?<![\w./-])((?:rlrf|recmodels)(?:\.[a-z_][a-z0-9_]*)+)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
PLACEHOLDER = set("<{*")
# where pyproject.toml's force-include puts the bundled prompts and configs inside a wheel
WHEEL_ONLY = {"rlrf/prompts", "rlrf/configs"}


def _exists(path: str) -> bool:
    return (ROOT / path.rstrip("/")).exists()


def _module_exists(dotted: str) -> bool:
    """True when the dotted name walks through packages to a module (what follows the module, a
    function or class name, is not checked) or to a name its package's __init__ binds."""
    parts = dotted.split(".")
    here = ROOT / parts[0]
    for part in parts[1:]:
        if (here / part).is_dir():
            here = here / part
        elif (here / f"{part}.py").is_file() or (here / f"{part}.c").is_file():
            return True
        else:
            init = here / "__init__.py"
            return init.is_file() and re.search(rf"\b{part}\b", init.read_text(encoding="utf-8")) is not None
    return True


def anchors(page: Path) -> set[str]:
    """The link anchors of a Markdown page's headings, as GitHub makes them (lower case, punctuation
    dropped, spaces to hyphens); headings inside fenced code are not headings."""
    found, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def missing_paths(text: str, base: Path = ROOT, page: Path | None = None) -> list[str]:
    """The repository paths, dotted modules and relative Markdown links (with their #anchors) named
    in `text` that do not exist. `base` is the folder a relative link is read from, `page` the
    Markdown file `text` is (for links to its own anchors)."""
    missing = []
    for match in PATH.finditer(text):
        path, after = match.group(1).rstrip("."), text[match.end():match.end() + 1]
        if after in PLACEHOLDER or path.endswith(("_", "-")):
            continue
        if not _exists(path) and path.rstrip("/") not in WHEEL_ONLY:
            missing.append(path)
    for match in MODULE.finditer(text):
        name, after = match.group(1), text[match.end():match.end() + 1]
        if after in PLACEHOLDER or after == "/" or name.endswith(".py"):
            continue
        if not _module_exists(name):
            missing.append(name)
    for match in LINK.finditer(text):
        link = match.group(1)
        target, _, anchor = link.partition("#")
        if "://" in target or target.startswith("mailto:") or (target and target[0] in PLACEHOLDER):
            continue
        if "runs" in Path(target).parts:  # a run directory's file, made by a run
            continue
        linked = (base / target) if target else page
        if linked is None:
            continue
        if not linked.exists():
            missing.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            missing.append(link)
    return list(dict.fromkeys(missing))


def _docstrings_and_comments(path: Path) -> str:
    source = path.read_text(encoding="utf-8")
    pieces = [tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
              if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                pieces.append(doc)
    return "\n".join(pieces)


def _markdown_files() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "bench").rglob("*.md"))]
    return [p for p in pages if p.is_file()]


def _python_files() -> list[Path]:
    return [p for top in ("rlrf", "recmodels", "bench", "tests") for p in sorted((ROOT / top).rglob("*.py"))]


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_page_names_exists(page):
    missing = missing_paths(page.read_text(encoding="utf-8"), base=page.parent, page=page)
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("source", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_docstring_or_comment_names_exists(source):
    missing = missing_paths(_docstrings_and_comments(source), base=ROOT)
    assert not missing, f"{source.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_the_check_finds_a_stale_pointer_and_passes_a_real_one():
    text = ("The code is `rlrf/data.py` and `rlrf/core/layout.py`; see docs/reward.md, "
            "[the map](docs/architecture.md), [gone](docs/nowhere.md), `rlrf.runs.read_jsonl` and "
            "`rlrf.core.layout.RunLayout`; run files `runs/quickstart/iter_0/pairs.jsonl`, "
            "`configs/<name>.yaml`, ~/.cache/rlrf/embeddings.")
    assert sorted(missing_paths(text)) == ["docs/nowhere.md", "rlrf.runs.read_jsonl", "rlrf/data.py"]


def test_a_link_to_a_heading_that_is_not_there_is_found():
    text = "[the map](docs/architecture.md#glossary), [gone](docs/architecture.md#no-such-heading)"
    assert missing_paths(text) == ["docs/architecture.md#no-such-heading"]
    assert "a-run-directory" in anchors(ROOT / "docs" / "architecture.md")


def test_docstrings_and_comments_are_read_but_not_code():
    source = ROOT / "tests" / "_docs_paths_probe.py"
    source.write_text('"""Reads rlrf/gone.py."""\nx = "rlrf/also_gone.py"  # see scripts/none.sh\n', encoding="utf-8")
    try:
        assert sorted(missing_paths(_docstrings_and_comments(source))) == ["rlrf/gone.py", "scripts/none.sh"]
    finally:
        source.unlink()
