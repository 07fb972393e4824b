"""Grounding: map a generated movie title (free text) to a catalogue item index.

SPRec's policy writes the next item as text ("Toy Story (1995)", "The Matrix", "I recommend Star
Wars."). Its scoring, its negatives and its HR/NDCG all need catalogue items, so each text is grounded
level by level, cheapest and most certain first:

1. "exact": the cleaned text equals a catalogue title, with or without its year.
2. "normalised": equal after `normalise_title` (case, accents, punctuation, articles, year), so
   "the usual suspects" finds "Usual Suspects, The". An alternate title in parentheses
   ("Seven (Se7en)") is a key too, ranked below primary titles.
3. "nearest": the catalogue title whose embedding is nearest (cosine, faiss IndexFlatIP over
   L2-normalised vectors of "Title (year)"), accepted only at cosine >= `min_similarity`;
   otherwise "none". Levels 1-2 are exact dictionary look-ups, so the encoder only sees the texts
   they miss, in one batch.

When several items share a key, the item whose year equals the text's year wins, then a primary
title over an alternate one, then the most popular item (the likeliest intended one; pass the
training interactions' counts as `popularity` so no held-out interaction decides).

Twin titles: ml-100k has items that share one title and year ("Chasing Amy (1997)" is two items).
`TitleGrounder.twin` maps every item to the first item of its (normalised title, year) group, so a
negative can be checked against the target by title and a recommendation of either twin is a hit.

`TitleGrounder.nearest` gives the k nearest items to a text's embedding, skipping the user's
history: SPRec's (and BIGRec's) top-K list for evaluation.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlrf.core.io import atomic_write
from rlrf.core.layout import title_index_of

LEVELS = ("exact", "normalised", "nearest", "none")

# Articles moved to the end in catalogue titles ("Matrix, The", "Misérables, Les", "Enfer, L'").
_TRAILING_ARTICLES = "the|a|an|les|la|le|l'|il|das|der|die|det|el|los|las|lo|o"
# Dropped when leading. English words that are also foreign articles ("Die Hard", "O", "Lo") are
# left alone; a catalogue title with such a trailing article also gets its moved form as a key.
_LEADING_ARTICLES = "the|a|an|les|la|le|l'|il|das|der|el|los|las"
_TRAILING_ARTICLE_RE = re.compile(rf"^(.*\S)\s*,\s*({_TRAILING_ARTICLES})$", re.IGNORECASE)
_LEADING_ARTICLE_RE = re.compile(rf"^(?:{_LEADING_ARTICLES})(?:\s+|(?<=')(?=\w))", re.IGNORECASE)
_YEAR_RE = re.compile(r"\s*\((\d{4})\)\s*$")
_ALTERNATE_RE = re.compile(r"^(.*\S)\s*\(([^()]+)\)$")

# extract_title: list bullets, chatty prefixes, decoration around the title.
_BULLET_RE = re.compile(r"^(?:[-*•·+>]+|\d{1,2}[.)]|#+)\s+")
_PREFIX_RE = re.compile(
    r"^(?:(?:title|answer|recommendation|recommended (?:movie|film)|next (?:movie|film|item)|movie|film)"
    r"(?:\s*:\s*|\s+[-–]\s+)"
    r"|(?:i(?: would|'d| will|'ll)? (?:recommend|suggest)|my (?:recommendation|suggestion) (?:is|would be)"
    r"|the next (?:movie|film)(?: (?:they|the user|you) (?:will|would|should) (?:watch|like|enjoy))?"
    r" (?:is|will be|would be|should be))\s*:?\s*(?:watching\s+)?(?:the (?:movie|film)\s+)?)",
    re.IGNORECASE,
)
_EDGE_CHARS = " \t\"*_`“”«»"
_YEAR_THEN_MORE_RE = re.compile(r"^(.*?\(\d{4}\))\s*\S.*$")


def _trim_period(text: str) -> str:
    """Drop one sentence-final period, but keep an ellipsis ("When Harry Met Sally...")."""
    return text[:-1].rstrip() if text.endswith(".") and not text.endswith("..") else text


def extract_title(text: str) -> str:
    """The title part of a raw generation: first non-empty line, without bullets, quotes and chat.

    "1. **Toy Story (1995)**", 'Answer: "The Matrix".' and "I recommend Star Wars." give "Toy Story
    (1995)", "The Matrix" and "Star Wars". Text after a "(year)" is cut ("Fargo (1996) is a dark
    comedy" -> "Fargo (1996)"). A leading apostrophe stays unless it is paired ("'Til There Was You").
    """
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")
    previous = None
    while line != previous:
        previous = line
        line = _BULLET_RE.sub("", line.strip(_EDGE_CHARS))
        line = _PREFIX_RE.sub("", line).strip(_EDGE_CHARS)
        line = _trim_period(line).strip(_EDGE_CHARS)
        if len(line) > 1 and line[0] in "'‘" and line[-1] in "'’":
            line = line[1:-1]
    return _YEAR_THEN_MORE_RE.sub(r"\1", line)


def _split_year(text: str) -> tuple[str, int | None]:
    match = _YEAR_RE.search(text)
    return (text[: match.start()], int(match.group(1))) if match else (text, None)


def _split_alternate(text: str) -> tuple[str, str | None]:
    """("Seven (Se7en)") -> ("Seven", "Se7en"); a title without a final parenthesis -> (text, None)."""
    match = _ALTERNATE_RE.match(text.strip())
    return (match.group(1), match.group(2)) if match else (text, None)


def _move_trailing_article(text: str) -> str:
    """ "Blechtrommel, Die" -> "Die Blechtrommel" (unchanged without a trailing article)."""
    match = _TRAILING_ARTICLE_RE.match(text.strip())
    return f"{match.group(2)} {match.group(1)}" if match else text


def _normalise_part(text: str, keep_articles: bool = False) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower().strip().replace("’", "'")
    if keep_articles:
        text = _move_trailing_article(text)
    else:
        match = _TRAILING_ARTICLE_RE.match(text)
        text = match.group(1) if match else text
        text = _LEADING_ARTICLE_RE.sub("", text, count=1) or text
    text = text.replace("&", " and ")
    text = re.sub(r"['`]", "", text)  # "Schindler's" == "Schindlers"
    return " ".join(re.sub(r"[^\w]+|_", " ", text).split())


def normalise_title(text: str) -> tuple[str, int | None]:
    """(key, year): lowercase, no accents, no punctuation, no leading/trailing article, no "(year)".

    "Matrix, The (1999)", "The Matrix" and "MATRIX!" share the key "matrix"; the year (1999 or
    None) is returned apart because it only disambiguates between items with the same key. A final
    alternate title in parentheses is normalised on its own ("Blue Angel, The (Blaue Engel, Der)" ->
    "blue angel blaue engel"), so articles moved inside either part still go.
    """
    body, year = _split_year(text.strip())
    main, alternate = _split_alternate(body)
    key = _normalise_part(main)
    if alternate is not None:
        key = f"{key} {_normalise_part(alternate)}".strip()
    return key, year


@dataclass(frozen=True)
class Grounding:
    """One grounded text: the catalogue index (None when ungrounded), the level, and the cosine
    similarity when an embedding look-up was made ("nearest", or "none" after a failed look-up)."""

    item: int | None
    level: str
    similarity: float | None = None


def title_twins(catalog) -> tuple[list[tuple[str, int | None]], np.ndarray]:
    """((normalised title, year) of every item, item -> first item of its key): twins are items one
    film has twice in the catalogue; needs no encoder, so a scorer of fixed lists can use it too."""
    keys = []
    for title, year in zip(catalog.titles, catalog.years):
        body, title_year = _split_year(title.strip())
        keys.append((normalise_title(body)[0], year if year is not None else title_year))
    first: dict[tuple[str, int | None], int] = {}
    return keys, np.array([first.setdefault(key, i) for i, key in enumerate(keys)], dtype=np.int64)


def catalogue_text(title: str, year: int | None) -> str:
    """The text embedded for an item: "Title (year)", the form the policy is prompted with and taught."""
    return f"{title} ({year})" if year is not None and f"({year})" not in title else title


class TitleGrounder:
    """Ground texts to `catalog` items; the embedding index is built on first need and cached.

    `encoder` is anything with `.encode(texts) -> float32 [n, dim]` and `.key` (a `CachedEncoder`).
    With `index_dir`, the faiss index is stored as `titles-<sha256(key + titles)[:16]>.faiss`, so a
    new grounder over the same catalogue and encoder reads it instead of encoding every title.
    """

    def __init__(self, catalog, encoder, *, min_similarity: float = 0.5, index_dir: Path | None = None,
                 popularity=None):
        self.catalog = catalog
        self.encoder = encoder
        self.min_similarity = float(min_similarity)
        self.index_dir = Path(index_dir) if index_dir is not None else None
        self._index = None
        self._popularity = np.asarray(catalog.popularity if popularity is None else popularity, dtype=np.int64)
        if len(self._popularity) != len(catalog):
            raise ValueError(f"popularity has {len(self._popularity)} entries for {len(catalog)} items")
        self.texts = [catalogue_text(t, y) for t, y in zip(catalog.titles, catalog.years)]
        # key -> list of (item, rank); rank 0 = primary title, 1 = alternate title.
        self._exact: dict[str, list[tuple[int, int]]] = {}
        self._normalised: dict[str, list[tuple[int, int]]] = {}
        self._years: list[int | None] = []
        # The main title with its article kept: tells "Fear, The" from "Fear" when a key is shared.
        self._with_article: list[str] = []
        for i, title in enumerate(catalog.titles):
            title = title.strip()
            body, title_year = _split_year(title)
            year = catalog.years[i] if catalog.years[i] is not None else title_year
            self._years.append(year)
            exact = {title, _trim_period(title), self.texts[i], body.strip(), _trim_period(body.strip())}
            for key in exact:
                self._exact.setdefault(key, []).append((i, 0))
            main, alternate = _split_alternate(body)
            self._with_article.append(_normalise_part(main, keep_articles=True))
            forms = [(body, 0), (_move_trailing_article(body), 0), (main, 0), (_move_trailing_article(main), 0)]
            if alternate is not None:
                forms += [(alternate, 1), (_move_trailing_article(alternate), 1)]
            ranks: dict[str, int] = {}
            for form, rank in forms:
                key = normalise_title(form)[0]
                if key:
                    ranks[key] = min(rank, ranks.get(key, rank))
            for key, rank in ranks.items():
                self._normalised.setdefault(key, []).append((i, rank))
        self.title_keys, self.twin = title_twins(catalog)

    # --- twins -------------------------------------------------------------------------------

    def same_title(self, i: int, j: int) -> bool:
        """Items i and j are one item or twins (equal normalised title and year)."""
        return int(self.twin[i]) == int(self.twin[j])

    def names_item(self, text: str, item: int) -> bool:
        """The text's title is item's title (normalised; a year in the text must match)."""
        key, year = normalise_title(extract_title(text))
        own_key, own_year = self.title_keys[item]
        return bool(key) and key == own_key and (year is None or own_year is None or year == own_year)

    def twins_of(self, item: int) -> list[int]:
        """Every item sharing item's title and year (item itself included)."""
        return np.flatnonzero(self.twin == self.twin[item]).tolist()

    # --- levels 1-2 --------------------------------------------------------------------------

    def _pick(self, candidates: list[tuple[int, int]], year: int | None, with_article: str = "") -> int:
        """Same year as the text first, then primary over alternate titles, then the same article
        ("The Fear" -> "Fear, The", not "Fear"), then the most popular."""
        return min(candidates, key=lambda c: (year is not None and self._years[c[0]] != year, c[1],
                                              self._with_article[c[0]] != with_article,
                                              -self._popularity[c[0]], c[0]))[0]

    def _lookup(self, title: str) -> Grounding | None:
        if title in self._exact:
            return Grounding(self._pick(self._exact[title], _split_year(title)[1]), "exact")
        key, year = normalise_title(title)
        main, alternate = _split_alternate(_split_year(title)[0])
        keys = [key] + ([normalise_title(main)[0]] if alternate is not None else [])
        for key in keys:
            if key in self._normalised:
                article = _normalise_part(main, keep_articles=True)
                return Grounding(self._pick(self._normalised[key], year, article), "normalised")
        return None

    # --- level 3 -----------------------------------------------------------------------------

    def index_path(self) -> Path | None:
        if self.index_dir is None:
            return None
        digest = hashlib.sha256((self.encoder.key + "\n" + "\n".join(self.texts)).encode("utf-8"))
        return title_index_of(self.index_dir, digest.hexdigest()[:16])

    @property
    def index(self):
        """The faiss IndexFlatIP of catalogue title vectors (row i = item i), built once."""
        if self._index is None:
            import faiss

            path = self.index_path()
            if path is not None and path.exists():
                try:
                    index = faiss.read_index(str(path))
                except RuntimeError:  # unreadable: rebuilt and replaced below
                    index = None
                if index is not None and index.ntotal == len(self.texts):
                    self._index = index
                    return index
            vectors = self._embed(self.texts)
            index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(vectors)
            if path is not None:
                atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)))
            self._index = index
        return self._index

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors (inner product = cosine), whether or not the encoder normalises."""
        import faiss

        vectors = np.ascontiguousarray(self.encoder.encode(list(texts)), dtype=np.float32)
        faiss.normalize_L2(vectors)
        return vectors

    # --- public ------------------------------------------------------------------------------

    def item_similarity(self, i: int, j: int) -> float:
        """Cosine of two catalogue items' title vectors, read back from the index."""
        return float(self.index.reconstruct(int(i)) @ self.index.reconstruct(int(j)))

    def ground(self, texts: Sequence[str]) -> list[Grounding]:
        """One `Grounding` per text; the texts levels 1-2 miss are embedded in one encode call."""
        titles = [extract_title(t) for t in texts]
        out: list[Grounding | None] = [None] * len(titles)
        pending: list[int] = []
        for row, title in enumerate(titles):
            if not title:
                out[row] = Grounding(None, "none")
                continue
            out[row] = self._lookup(title)
            if out[row] is None:
                pending.append(row)
        if pending:
            unique = list(dict.fromkeys(titles[r] for r in pending))
            sims, items = self.index.search(self._embed(unique), 1)
            found = {t: (int(items[j, 0]), float(sims[j, 0])) for j, t in enumerate(unique)}
            for row in pending:
                item, sim = found[titles[row]]
                ok = item >= 0 and sim >= self.min_similarity
                out[row] = Grounding(item if ok else None, "nearest" if ok else "none", sim)
        return out  # type: ignore[return-value]

    def nearest(self, texts: Sequence[str], k: int, exclude: Sequence[Sequence[int]] | None = None,
                *, grounded_first: bool = False) -> np.ndarray:
        """[len(texts), k] int64: the k items nearest each text's embedding, minus `exclude[i]`.

        -1 pads a row only when the catalogue runs out. The default is the SPRec/BIGRec ranking
        (embedding distance only); `grounded_first=True` puts an exact/normalised match at rank 0.
        """
        n = len(texts)
        out = np.full((n, k), -1, dtype=np.int64)
        if n == 0 or k <= 0:
            return out
        excluded = [set(int(i) for i in ex) for ex in (exclude if exclude is not None else [()] * n)]
        if len(excluded) != n:
            raise ValueError(f"exclude has {len(excluded)} rows for {n} texts")
        titles = [extract_title(t) for t in texts]
        depth = min(self.index.ntotal, k + max(len(ex) for ex in excluded) + int(grounded_first))
        sims, items = self.index.search(self._embed(titles), depth)
        # Equal similarities (identical titles; common with the hashing encoder) in catalogue order.
        # Which of several items tied at the cut-off make the list is faiss's choice.
        order = np.lexsort((items, -sims), axis=1)
        items = np.take_along_axis(items, order, axis=1)
        firsts = [self._lookup(t) if grounded_first and t else None for t in titles]
        for row in range(n):
            head = [firsts[row].item] if firsts[row] is not None else []
            ranked = head + [int(i) for i in items[row] if i >= 0 and int(i) not in head]
            kept = [i for i in ranked if i not in excluded[row]][:k]
            out[row, : len(kept)] = kept
        return out


def grounding_shares(groundings: Sequence[Grounding]) -> dict[str, float]:
    """The share of texts at each level (keys = LEVELS); sums to 1, all zeros for no texts."""
    total = len(groundings)
    return {level: (sum(g.level == level for g in groundings) / total if total else 0.0) for level in LEVELS}
