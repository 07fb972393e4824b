"""A RecBole atomic dataset as a catalog, user histories and user splits (the lists: rlrf/data/lists.py).

We parse the atomic files ourselves (not through RecBole's Dataset) because every later stage needs
raw ids, titles and ratings in one chronological order, and because bad input must end as one clear
line naming the file and field. The SASRec wrapper feeds RecBole files written from these same
histories, so both sides see identical sequences.

Input rules (each one reported, never silent):
- every line of an atomic file has exactly the header's number of tab-separated fields (a tab
  inside a title is an error naming the file and line); a folder named like one is an error;
- ids (user_id, item_id) may not start with `"`: RecBole's reader takes it as a quote and fails;
- a row with a blank user_id or item_id is skipped and counted (`blank_id_rows`, a warning);
- repeated (user, item) interactions: the LATEST one is kept (RecBole's order: timestamp, then file
  order), with its rating; the others are dropped and counted (`duplicate_interactions`);
- repeated item ids in .item: the FIRST row wins; the others are counted (`duplicate_item_rows`);
- a .item without a title field: a warning, items are titled "unknown item <id>";
- a rating or timestamp that is not a finite number: an error naming the first such line.
Warnings are printed to stderr (one line each) and kept in the statistics (data.json).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rlrf.core.config import DataConfig
from rlrf.core.errors import UserError

TITLE_FIELDS = ("movie_title", "title", "item_name", "name")
GENRE_FIELDS = ("class", "genre", "genres", "categories", "category")
YEAR_FIELDS = ("release_year", "year")
SPLITS = ("train", "valid", "test")


def bundled_ml100k() -> Path:
    """The ml-100k copy that ships inside the recbole wheel."""
    import importlib.util

    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("recbole is not installed: it carries the default ml-100k dataset")
    return Path(spec.submodule_search_locations[0]) / "dataset_example" / "ml-100k"


def read_atomic(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """Read one atomic file (`name:type` header, tab-separated) as strings, types stripped from names.

    The frame's index is each row's line number in the file (the header is line 1); blank lines are
    skipped. A line with more or fewer fields than the header is an error naming the file and line.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a RecBole atomic file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(
            f"{path}: line {line} is not valid {encoding} (byte 0x{raw[err.start]:02x}); "
            "set data.encoding to the file's encoding (e.g. latin-1)"
        ) from None
    lines = text.split("\n")
    header = lines[0].removesuffix("\r").removeprefix("\ufeff")
    if not header.strip():
        raise UserError(f"{path}: line 1: no header (expected tab-separated name:type fields)")
    names = [c.split(":", 1)[0] for c in header.split("\t")]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{path}: line 1: field {repeated[0]} appears twice in the header")
    rows, numbers = [], []
    for number, line in enumerate(lines[1:], start=2):
        line = line.removesuffix("\r")
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != len(names):
            raise UserError(f"{path}: line {number} has {len(fields)} tab-separated fields but the header has "
                            f"{len(names)} (a tab inside a field?)")
        rows.append(fields)
        numbers.append(number)
    return pd.DataFrame(rows, columns=names, index=pd.Index(numbers, dtype=np.int64), dtype=str)


def _warn(message: str, warnings: list[str]) -> None:
    """One line on stderr, kept for the statistics."""
    warnings.append(message)
    print(f"warning: {message}", file=sys.stderr)


def _check_ids(frame: pd.DataFrame, fields, path: Path) -> None:
    """Ids RecBole's own reader cannot take (it treats a leading `"` as a quote) are an error here."""
    for name in fields:
        bad = frame[name].str.startswith('"').to_numpy()
        if bad.any():
            line = int(frame.index[bad].min())
            raise UserError(f"{path}: line {line}: field {name} starts with a double quote "
                            f"({frame[name][line]}); RecBole cannot read such ids: remove the quotes")


def _first_line(frame: pd.DataFrame, mask) -> int:
    return int(frame.index[np.asarray(mask)].min())


def _first_present(columns, names) -> str | None:
    return next((n for n in names if n in columns), None)


def _parse_year(value: str) -> int | None:
    digits = value.strip()[:4]
    return int(digits) if digits.isdigit() else None


@dataclass
class Catalog:
    """Items by index (0..n-1); raw ids, text and popularity side by side."""

    ids: list[str]
    titles: list[str]
    years: list[int | None]
    genres: list[tuple[str, ...]]
    popularity: np.ndarray  # interactions per item in the (filtered) .inter
    known: np.ndarray  # bool: the item has a row in .item
    genre_names: list[str] = field(init=False)
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {raw: i for i, raw in enumerate(self.ids)}
        self.genre_names = sorted({g for gs in self.genres for g in gs})

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, raw_id: str) -> int:
        return self._index[raw_id]

    def get(self, raw_id: str) -> int | None:
        return self._index.get(raw_id)

    def genre_matrix(self) -> np.ndarray:
        """[n_items, n_genres]; an item with m genres has 1/m in each (the MGU/DGU convention)."""
        lookup = {g: j for j, g in enumerate(self.genre_names)}
        matrix = np.zeros((len(self), len(self.genre_names)), dtype=np.float32)
        for i, gs in enumerate(self.genres):
            for g in gs:
                matrix[i, lookup[g]] = 1.0 / len(gs)
        return matrix

    def describe(self, i: int) -> str:
        """One line for prompts and knowledge: "Toy Story (1995); Animation, Comedy"."""
        text = self.titles[i]
        if self.years[i] is not None and f"({self.years[i]})" not in text:
            text += f" ({self.years[i]})"
        if self.genres[i]:
            text += "; " + ", ".join(self.genres[i])
        return text


@dataclass
class User:
    id: str
    items: list[int]  # catalog indices, chronological
    ratings: list[float | None]
    profile: dict[str, str] = field(default_factory=dict)


@dataclass
class DatasetStats:
    users: int
    items: int
    interactions: int
    users_filtered: int  # fewer than data.min_interactions interactions (or none at all)
    interactions_filtered: int
    items_without_metadata: int  # in .inter but not in .item: kept, titled as unknown
    users_kept_by_max_users: int | None
    split_sizes: dict[str, int]
    density: float
    duplicate_interactions: int = 0  # repeated (user, item) rows dropped (the latest is kept)
    blank_id_rows: int = 0  # rows of .inter / .item with a blank id, skipped
    duplicate_item_rows: int = 0  # repeated item ids in .item (the first row wins)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Dataset:
    name: str
    path: Path
    catalog: Catalog
    users: dict[str, User]
    splits: dict[str, list[str]]
    stats: DatasetStats

    @property
    def rated(self) -> bool:
        """Whether the interactions carry ratings (a .inter without a rating field has none)."""
        return any(r is not None for user in self.users.values() for r in user.ratings)


def dataset_files(folder: Path) -> tuple[str, Path, Path | None, Path | None]:
    if not folder.is_dir():
        raise UserError(f"{folder}: dataset folder not found")
    inters = sorted(folder.glob("*.inter"))  # a folder named *.inter is refused by read_atomic
    if not inters:
        raise UserError(f"{folder}: no .inter file in the dataset folder")
    name = folder.name if (folder / f"{folder.name}.inter").exists() else inters[0].stem
    inter = folder / f"{name}.inter"
    item = folder / f"{name}.item"
    user = folder / f"{name}.user"
    return name, inter, item if item.exists() else None, user if user.exists() else None


def load_dataset(cfg: DataConfig, seed: int = 0) -> Dataset:
    """Load, filter and split a RecBole atomic dataset (default: the bundled ml-100k)."""
    folder = Path(cfg.path) if cfg.path is not None else bundled_ml100k()
    name, inter_path, item_path, user_path = dataset_files(folder)

    fields = cfg.fields
    inter = _as_rlrf_columns(read_atomic(inter_path, cfg.encoding), inter_path, {
        "user_id": fields.user_id, "item_id": fields.item_id, "rating": fields.rating, "timestamp": fields.timestamp})
    missing = [f for f in ("user_id", "item_id") if f not in inter.columns]
    if missing:
        raise UserError(f"{inter_path}: missing field(s) {', '.join(missing)} (header has {', '.join(inter.columns)})")
    if inter.empty:
        raise UserError(f"{inter_path}: no interactions")
    _check_ids(inter, ("user_id", "item_id"), inter_path)
    warnings: list[str] = []
    blank = ((inter["user_id"].str.strip() == "") | (inter["item_id"].str.strip() == "")).to_numpy()
    blank_rows = int(blank.sum())
    if blank_rows:
        _warn(f"{inter_path}: {blank_rows} row(s) with a blank user_id or item_id skipped "
              f"(first at line {_first_line(inter, blank)})", warnings)
        inter = inter[~blank]
        if inter.empty:
            raise UserError(f"{inter_path}: every row has a blank user_id or item_id")

    # Chronological order: stable sort by timestamp (float64), file order breaks ties.
    if "timestamp" in inter.columns:
        inter = inter.assign(_ts=_numeric_column(inter, "timestamp", inter_path))
        inter = inter.sort_values(["_ts"], kind="stable")
    ratings = None
    if "rating" in inter.columns:
        ratings = _numeric_column(inter, "rating", inter_path)
        inter = inter.assign(_rating=ratings)
    # Repeated (user, item): keep the latest in that order, with its rating.
    repeated = inter.duplicated(["user_id", "item_id"], keep="last").to_numpy()
    duplicates = int(repeated.sum())
    if duplicates:
        _warn(f"{inter_path}: {duplicates} repeated (user, item) row(s) dropped, each pair's latest kept "
              f"(first repeat at line {_first_line(inter, repeated)})", warnings)
        inter = inter[~repeated]

    sizes = inter.groupby("user_id", sort=False).size()
    keep = sizes[sizes >= cfg.min_interactions].index
    users_listed = set(sizes.index)
    profiles: dict[str, dict[str, str]] = {}
    if user_path is not None:
        users_frame = _as_rlrf_columns(read_atomic(user_path, cfg.encoding), user_path, {"user_id": fields.user_id})
        if "user_id" not in users_frame.columns:
            raise UserError(f"{user_path}: missing field user_id")
        _check_ids(users_frame, ("user_id",), user_path)
        profiles = {
            row["user_id"]: {k: v for k, v in row.items() if k != "user_id" and v != ""}
            for row in users_frame.to_dict("records")
        }
        users_listed |= set(profiles)
    users_filtered = len(users_listed) - len(keep)
    n_before = len(inter)
    inter = inter[inter["user_id"].isin(set(keep))]
    if inter.empty:
        raise UserError(f"{inter_path}: no user has at least {cfg.min_interactions} interactions (data.min_interactions)")

    catalog, item_counts = _build_catalog(inter, item_path, cfg.encoding, warnings, fields)

    rng = np.random.default_rng(seed)
    user_ids = list(dict.fromkeys(inter["user_id"]))  # first appearance, deterministic
    kept_by_max = None
    if cfg.max_users is not None and cfg.max_users < len(user_ids):
        chosen = set(rng.choice(len(user_ids), size=cfg.max_users, replace=False).tolist())
        user_ids = [u for i, u in enumerate(user_ids) if i in chosen]
        kept_by_max = len(user_ids)
        inter = inter[inter["user_id"].isin(set(user_ids))]

    item_idx = inter["item_id"].map(catalog.index).to_numpy()
    rating_values = inter["_rating"].to_numpy() if ratings is not None else np.full(len(inter), np.nan)
    users: dict[str, User] = {u: User(u, [], [], profiles.get(u, {})) for u in sorted(user_ids, key=_natural_key)}
    for u, i, r in zip(inter["user_id"].to_numpy(), item_idx, rating_values):
        user = users[u]
        user.items.append(int(i))
        user.ratings.append(None if np.isnan(r) else float(r))

    splits = split_users(list(users), cfg.split.train, cfg.split.valid, seed)
    n_inter = len(inter)
    stats = DatasetStats(
        users=len(users),
        items=len(catalog),
        interactions=n_inter,
        users_filtered=users_filtered,
        interactions_filtered=n_before - int(sizes[keep].sum()),
        items_without_metadata=int((~catalog.known).sum()),
        users_kept_by_max_users=kept_by_max,
        split_sizes={k: len(v) for k, v in splits.items()},
        density=n_inter / max(1, len(users) * len(catalog)),
        duplicate_interactions=duplicates,
        blank_id_rows=blank_rows + item_counts["blank"],
        duplicate_item_rows=item_counts["duplicate"],
        warnings=warnings,
    )
    return Dataset(name, folder, catalog, users, splits, stats)


def _numeric_column(frame: pd.DataFrame, name: str, path: Path) -> np.ndarray:
    """A column as float64; a non-number (NaN, inf included) is an error naming its FIRST line in the
    file (the frame's index is the line number, see read_atomic)."""
    values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        line = _first_line(frame, bad)
        raise UserError(f"{path}: line {line}: field {name} is not a number ({frame[name][line]!r})")
    return values


def _chosen_field(items: pd.DataFrame, path: Path, key: str, fields, candidates: tuple[str, ...]) -> str | None:
    """The .item column data.fields.<key> names, else the first of `candidates` present."""
    named = getattr(fields, key, None) if fields is not None else None
    if named is None:
        return _first_present(items.columns, candidates)
    if named not in items.columns:
        raise UserError(f"{path}: data.fields.{key} names '{named}', not a field of the file "
                        f"(header has {', '.join(items.columns)})")
    return named


def _natural_key(raw: str):
    return (0, int(raw), "") if raw.isdigit() else (1, 0, raw)


def _as_rlrf_columns(frame: pd.DataFrame, path: Path, names: dict[str, str]) -> pd.DataFrame:
    """`frame` with the dataset's own column names (data.fields) renamed to the ones rlrf reads. A
    field named in the config but absent from the file is an error unless it is the default name
    (optional columns such as rating and timestamp may be missing)."""
    renames = {}
    for ours, theirs in names.items():
        if theirs == ours:
            continue
        if theirs not in frame.columns:
            raise UserError(f"{path}: data.fields.{ours} names '{theirs}', not a field of the file "
                            f"(header has {', '.join(frame.columns)})")
        renames[theirs] = ours
    if not renames:
        return frame
    return frame.drop(columns=[c for c in renames.values() if c in frame.columns]).rename(columns=renames)


def _build_catalog(inter: pd.DataFrame, item_path: Path | None, encoding: str,
                   warnings: list[str], fields=None) -> tuple[Catalog, dict[str, int]]:
    """Items of .item joined by raw id; items only seen in .inter are kept as unknown.
    A repeated .item id: the first row wins. Returns the catalog and the .item rows skipped."""
    meta: dict[str, dict[str, str]] = {}
    title_f = genre_f = year_f = None
    separator = None  # how the genre field separates its tokens (None: whitespace)
    counts = {"blank": 0, "duplicate": 0}
    if item_path is not None:
        items = read_atomic(item_path, encoding)
        if fields is not None:
            items = _as_rlrf_columns(items, item_path, {"item_id": fields.item_id})
        if "item_id" not in items.columns:
            raise UserError(f"{item_path}: missing field item_id (header has {', '.join(items.columns)})")
        _check_ids(items, ("item_id",), item_path)
        title_f = _chosen_field(items, item_path, "title", fields, TITLE_FIELDS)
        genre_f = _chosen_field(items, item_path, "genre", fields, GENRE_FIELDS)
        separator = _seq_separator(items[genre_f]) if genre_f else None
        year_f = _first_present(items.columns, YEAR_FIELDS)
        if title_f is None:
            _warn(f"{item_path}: no title field ({', '.join(TITLE_FIELDS)}); items are titled "
                  "'unknown item <id>'", warnings)
        blank = (items["item_id"].str.strip() == "").to_numpy()
        counts["blank"] = int(blank.sum())
        if counts["blank"]:
            _warn(f"{item_path}: {counts['blank']} row(s) with a blank item_id skipped "
                  f"(first at line {_first_line(items, blank)})", warnings)
            items = items[~blank]
        repeated = items["item_id"].duplicated(keep="first").to_numpy()
        counts["duplicate"] = int(repeated.sum())
        if counts["duplicate"]:
            _warn(f"{item_path}: {counts['duplicate']} repeated item_id row(s) ignored, the first row of each "
                  f"id kept (first repeat at line {_first_line(items, repeated)})", warnings)
            items = items[~repeated]
        meta = {row["item_id"]: row for row in items.to_dict("records")}
    popularity = inter["item_id"].value_counts()
    ids = sorted(set(meta) | set(popularity.index), key=_natural_key)
    titles, years, genres, known = [], [], [], []
    for raw in ids:
        row = meta.get(raw)
        known.append(row is not None)
        title = (row.get(title_f) if row and title_f else "") or ""
        titles.append(title.strip() or f"unknown item {raw}")
        years.append(_parse_year(row[year_f]) if row and year_f else None)
        genres.append(_split_seq(row[genre_f], separator) if row and genre_f and row[genre_f] else ())
    return Catalog(
        ids=ids,
        titles=titles,
        years=years,
        genres=genres,
        popularity=np.array([int(popularity.get(raw, 0)) for raw in ids], dtype=np.int64),
        known=np.array(known, dtype=bool),
    ), counts


def _seq_separator(values: pd.Series) -> str | None:
    """The genre field's own token separator: "," when any value holds one (Amazon's categories,
    "Home & Kitchen, Kitchen & Dining"), else whitespace (RecBole's token_seq, ml-100k's class)."""
    return "," if values.str.contains(",", regex=False).any() else None


def _split_seq(value: str, separator: str | None) -> tuple[str, ...]:
    if separator is None:
        return tuple(value.split())
    return tuple(t for t in (part.strip() for part in value.split(separator)) if t)


def split_users(user_ids: list[str], train: float, valid: float, seed: int) -> dict[str, list[str]]:
    """A seeded random user-level split: a user's whole history lives in exactly one split."""
    order = np.random.default_rng(seed).permutation(len(user_ids))
    n_train = int(round(train * len(user_ids)))
    n_valid = int(round(valid * len(user_ids)))
    shuffled = [user_ids[i] for i in order]
    parts = {
        "train": shuffled[:n_train],
        "valid": shuffled[n_train : n_train + n_valid],
        "test": shuffled[n_train + n_valid :],
    }
    return {k: sorted(v, key=_natural_key) for k, v in parts.items()}


def train_popularity(ds: Dataset) -> np.ndarray:
    """Interactions per catalogue item over TRAINING users only (valid/test users' items never count),
    so no reported popularity and no popularity-sampled negative leaks a held-out user's items."""
    counts = np.zeros(len(ds.catalog), dtype=np.int64)
    for u in ds.splits["train"]:
        np.add.at(counts, np.asarray(ds.users[u].items, dtype=np.int64), 1)
    return counts
