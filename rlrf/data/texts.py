"""The knowledge texts the rerankers read, and the sentence encoder that embeds them.

Knowledge sources. "self": the item's own text (`Catalog.describe`: title, year, genres) and a user
text derived from the visible history only (top genres, liked and recent titles). "file": a
responses-style JSONL (`{"user", "text", "iter", "k", ...}` or `{"item", "text"}`); ids not in the
dataset are reported and skipped, empty texts are kept as "" and flagged (they are scored as no
knowledge). `load_encoder` turns the `encoder:` section into recmodels' `CachedEncoder`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from recmodels.encoder import DEFAULT_ENCODER, CachedEncoder, cached_encoder
from rlrf.core.config import EncoderConfig
from rlrf.core.errors import UserError

__all__ = ["DEFAULT_ENCODER", "CachedEncoder", "KnowledgeFile", "item_self_texts", "item_texts_from_file",
           "item_texts_with_knowledge", "load_encoder", "load_knowledge_file", "user_self_text", "user_self_texts"]


def load_encoder(cfg: EncoderConfig, progress: bool = True) -> CachedEncoder:
    """The run's sentence encoder (`encoder:` section) behind the shared embedding cache."""
    return cached_encoder(cfg.model, batch_size=cfg.batch_size, normalize=cfg.normalize, cache=cfg.cache,
                          cache_dir=cfg.cache_dir, progress=progress)




def item_self_texts(catalog) -> list[str]:
    """"self" item knowledge: each item's own text (title, year, genres), one per catalog index."""
    return [catalog.describe(i) for i in range(len(catalog))]


def item_texts_with_knowledge(catalog, knowledge: dict[str, str]) -> tuple[list[str], int]:
    """Each item's knowledge text where one exists, else its own text; returns (texts, how many kept their own)."""
    texts = item_self_texts(catalog)
    own = 0
    for i, raw in enumerate(catalog.ids):
        text = knowledge.get(raw, "")
        if text.strip():
            texts[i] = text
        else:
            own += 1
    return texts, own


def item_texts_from_file(catalog, path: Path) -> tuple[list[str], int, "KnowledgeFile"]:
    """Item texts from a knowledge JSONL (the first text per item), each item without one keeping its
    own text; returns (texts, how many kept their own, the file as read)."""
    kf = load_knowledge_file(Path(path), catalog.ids, field_name="item")
    texts, own = item_texts_with_knowledge(catalog, kf.first())
    return texts, own, kf


def user_self_texts(catalog, lists: dict, positive_rating: float = 4.0) -> dict[str, str]:
    """user -> `user_self_text` of the visible history of that user's list (`lists`: user -> an object
    with `history` and `history_ratings`)."""
    return {u: user_self_text(catalog, lst.history, lst.history_ratings, positive_rating) for u, lst in lists.items()}


def user_self_text(catalog, history: Sequence[int], ratings: Sequence[float | None] | None = None,
                   positive_rating: float = 4.0, n_genres: int = 3, n_titles: int = 5) -> str:
    """"self" user knowledge from the visible history only (never the list being ranked).

    Top genres (each item adds 1/m to each of its m genres, liked items count double), then the most
    recent liked titles, then the most recent titles. Deterministic.
    """
    if not history:
        return ""
    ratings = list(ratings) if ratings is not None else [None] * len(history)
    weights: Counter[str] = Counter()
    for item, r in zip(history, ratings):
        gs = catalog.genres[item]
        w = 2.0 if (r is not None and r >= positive_rating) else 1.0
        for g in gs:
            weights[g] += w / len(gs)
    top = [g for g, _ in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:n_genres]]
    liked = [catalog.titles[i] for i, r in zip(history, ratings) if r is not None and r >= positive_rating]
    recent = [catalog.titles[i] for i in history]
    parts = []
    if top:
        parts.append("Prefers " + ", ".join(top) + ".")
    if liked:
        parts.append("Liked " + "; ".join(reversed(liked[-n_titles:])) + ".")
    parts.append("Recently watched " + "; ".join(reversed(recent[-n_titles:])) + ".")
    return " ".join(parts)


@dataclass
class KnowledgeFile:
    """Texts read from a responses-style JSONL: `texts[id]` lists each record's text in file order."""

    path: Path
    texts: dict[str, list[str]] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # ids not in the dataset (skipped)
    empty: list[str] = field(default_factory=list)  # ids with at least one empty text (kept, flagged)

    def first(self) -> dict[str, str]:
        """One text per id: the first non-empty one, else ""."""
        return {k: next((t for t in v if t.strip()), "") for k, v in self.texts.items()}

    def report(self) -> str:
        parts = [f"{self.path}: {sum(map(len, self.texts.values()))} texts for {len(self.texts)} ids"]
        if self.unknown:
            shown = ", ".join(self.unknown[:5]) + (" ..." if len(self.unknown) > 5 else "")
            parts.append(f"{len(self.unknown)} unknown ids skipped ({shown})")
        if self.empty:
            parts.append(f"{len(self.empty)} ids with an empty text (scored as no knowledge)")
        return "; ".join(parts)


def load_knowledge_file(path: Path, known_ids: Iterable[str], field_name: str = "user") -> KnowledgeFile:
    """Read `{"<field_name>": id, "text": str, ...}` records; for responses, latest `iter` wins per id."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: knowledge file not found")
    from rlrf.core.io import read_jsonl

    known = set(known_ids)
    records = read_jsonl(path)
    out = KnowledgeFile(path)
    best_iter: dict[str, int] = {}
    unknown: dict[str, None] = {}
    for number, rec in enumerate(records, start=1):
        if field_name not in rec or "text" not in rec:
            raise UserError(f"{path}: record {number} lacks field '{field_name}' or 'text'")
        rid = str(rec[field_name])
        if rid not in known:
            unknown[rid] = None
            continue
        text = rec["text"] if isinstance(rec["text"], str) else ""
        it = int(rec.get("iter", 0) or 0)
        if rid not in best_iter or it > best_iter[rid]:
            best_iter[rid] = it
            out.texts[rid] = []
        if it == best_iter[rid]:
            out.texts[rid].append(text)
    out.unknown = list(unknown)
    out.empty = [k for k, v in out.texts.items() if any(not t.strip() for t in v)]
    return out
