"""The RecBole side of `rlrf export`: a copy of the run's dataset as RecBole atomic files, each user
and item row carrying its knowledge vectors as `float_seq` columns.

It is a full copy rather than an ``additional_feat_suffix`` file because RecBole 1.2.1 joins only
``.user`` / ``.item`` features into interactions (``Dataset.join``) and its context-aware models
read only fields whose source is the interaction, user or item file
(``ContextRecommender.__init__``): an additional feature file would load but never reach a model.
The name gets ``-rlrf`` because RecBole resolves the dataset name ``ml-100k`` to its bundled copy
whatever ``data_path`` says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlrf.core.errors import UserError

RECBOLE_SUFFIX = "-rlrf"


def _fmt_rows(vecs: np.ndarray) -> list[str]:
    """float32 values written with 9 significant digits: parsing them back gives the same float32."""
    return [" ".join(f"{x:.9g}" for x in row.tolist()) for row in np.asarray(vecs, np.float32)]


def _read_lines(path: Path, encoding: str) -> list[str]:
    try:
        return path.read_text(encoding=encoding).splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid {encoding} (set data.encoding)") from None


def _header_fields(header: str) -> list[str]:
    return [c.split(":", 1)[0] for c in header.split("\t")]


def _feature_file(source: Path | None, id_field: str, ids: list[str], columns: dict[str, np.ndarray],
                  encoding: str) -> str:
    """The original rows of `ids` (in `ids` order) + one float_seq column per entry of `columns`."""
    extra_header = [f"{name}:float_seq" for name in columns]
    extra = {name: _fmt_rows(v) for name, v in columns.items()}
    rows: dict[str, list[str]] = {}
    if source is not None:
        lines = _read_lines(source, encoding)
        header = lines[0].split("\t")
        names = _header_fields(lines[0])
        clash = [n for n in columns if n in names]
        if clash:
            raise UserError(f"{source}: already has a field named {clash[0]}")
        if id_field not in names:
            raise UserError(f"{source}: missing field {id_field}")
        col = names.index(id_field)
        for line in lines[1:]:
            if not line.strip():
                continue
            cells = line.split("\t")
            cells += [""] * (len(header) - len(cells))
            rows.setdefault(cells[col], cells[: len(header)])
    else:
        header, col = [f"{id_field}:token"], 0
    out = ["\t".join(header + extra_header)]
    for r, raw in enumerate(ids):
        cells = rows.get(raw)
        if cells is None:  # in the run's dataset but not in the original file: other fields empty
            cells = [""] * len(header)
            cells[col] = raw
        out.append("\t".join(cells + [extra[name][r] for name in columns]))
    return "\n".join(out) + "\n"


def _inter_file(path: Path, users: set[str], items: set[str], encoding: str) -> str:
    """The original .inter lines (all fields) of the run's users and items, in file order."""
    lines = _read_lines(path, encoding)
    names = _header_fields(lines[0])
    u, i = names.index("user_id"), names.index("item_id")
    kept = [lines[0]]
    for line in lines[1:]:
        cells = line.split("\t")
        if len(cells) > max(u, i) and cells[u] in users and cells[i] in items:
            kept.append(line)
    return "\n".join(kept) + "\n"


def write_recbole(folder: Path, ds, user_ids: list[str], item_ids: list[str], user_cols: dict[str, np.ndarray],
                  item_cols: dict[str, np.ndarray], encoding: str = "utf-8") -> tuple[Path, str]:
    """A RecBole atomic dataset `<ds.name>-rlrf` under `folder`; returns (data_path, dataset name)."""
    from rlrf.data.dataset import dataset_files

    name = ds.name + RECBOLE_SUFFIX
    _, inter, item_file, user_file = dataset_files(Path(ds.path))
    target = folder / name
    target.mkdir(parents=True, exist_ok=True)
    (target / f"{name}.inter").write_text(_inter_file(inter, set(user_ids), set(item_ids), encoding), encoding="utf-8")
    (target / f"{name}.user").write_text(_feature_file(user_file, "user_id", user_ids, user_cols, encoding), encoding="utf-8")
    (target / f"{name}.item").write_text(_feature_file(item_file, "item_id", item_ids, item_cols, encoding), encoding="utf-8")
    return folder, name
