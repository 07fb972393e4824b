"""Embedding cache and encoders (recmodels/encoder.py), knowledge texts (rlrf/data/texts.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recmodels import encoder as kn
from rlrf.data import texts as knowledge_texts
from rlrf.core.errors import UserError

torch.set_num_threads(1)


class CountingModel:
    """Forwards to a real encoder and counts what reaches it."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0
        self.texts = 0

    def get_embedding_dimension(self):
        get = getattr(self.inner, "get_embedding_dimension", None) or self.inner.get_sentence_embedding_dimension
        return get()

    def encode(self, texts, **kwargs):
        self.calls += 1
        self.texts += len(texts)
        return self.inner.encode(texts, **kwargs)


def counting_encoder(tmp_path, inner, key="k|norm", batch_size=2):
    model = CountingModel(inner)
    enc = kn.CachedEncoder(key, kn.EmbeddingCache(tmp_path, key), lambda: model, batch_size=batch_size, progress=False)
    return enc, model


def test_real_encoder_second_encode_hits_the_cache(tmp_path):
    inner = kn.build_model(None)  # all-MiniLM-L6-v2 from the wheel, offline
    texts = ["Toy Story (1995); Animation, Children's, Comedy", "Heat (1995); Action, Crime, Thriller", "a user who likes noir"]
    key = kn.encoder_key(None)
    first, m1 = counting_encoder(tmp_path, inner, key)
    v1 = first.encode(texts + texts[:1])  # a duplicate inside one call is encoded once
    assert m1.texts == 3 and v1.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(v1, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(v1[0], v1[3])
    # a fresh encoder over the same folder (another stage / run): the model is called zero times
    second, m2 = counting_encoder(tmp_path, inner, key)
    v2 = second.encode(list(reversed(texts)))
    assert m2.calls == 0 and m2.texts == 0
    np.testing.assert_allclose(v2, v1[[2, 1, 0]], atol=1e-6)
    # the cached vector is the model's own vector
    direct = inner.encode([texts[1]], convert_to_numpy=True)
    np.testing.assert_allclose(v1[1], direct[0] / np.linalg.norm(direct[0]), atol=1e-5)


def test_partial_hits_encode_only_new_texts_and_keys_separate_encoders(tmp_path):
    enc, model = counting_encoder(tmp_path, kn.HashingEncoder(64), "hashing:64|norm")
    enc.encode(["a b", "c d"])
    enc.encode(["a b", "e f", "g h", "c d"])
    assert model.texts == 4  # a b, c d, then e f, g h
    other, other_model = counting_encoder(tmp_path, kn.HashingEncoder(64), "another|norm")
    other.encode(["a b"])
    assert other_model.texts == 1  # same text, other encoder: its own entry
    assert enc.cache.dir != other.cache.dir


def test_cache_sees_shards_of_another_writer_and_compacts(tmp_path, monkeypatch):
    monkeypatch.setattr(kn.EmbeddingCache, "COMPACT_AT", 3)
    a, ma = counting_encoder(tmp_path, kn.HashingEncoder(32), "h|norm", batch_size=100)
    b, mb = counting_encoder(tmp_path, kn.HashingEncoder(32), "h|norm", batch_size=100)
    texts = [f"text number {i}" for i in range(10)]
    for t in texts:  # 10 one-text shards: compaction runs on the way
        a.encode([t])
    assert len(list(a.cache.dir.glob("*.keys.npy"))) <= 4
    vb = b.encode(texts)  # b opened before a wrote anything; it refreshes on a miss
    assert mb.texts == 0
    np.testing.assert_allclose(vb, a.encode(texts))
    assert ma.texts == 10


def test_hashing_encoder_is_deterministic_and_normalised():
    e = kn.HashingEncoder(128)
    v = e.encode(["Drama and comedy", "drama AND comedy", "horror"])
    np.testing.assert_allclose(v[0], v[1])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    assert abs(float(v[0] @ v[2])) < 0.9
    with pytest.raises(UserError, match="hashing:<dim>"):
        kn.build_model("hashing:x")


class _Catalog:
    titles = ["A", "B", "C", "D"]
    genres = [("Drama",), ("Comedy", "Drama"), ("Horror",), ("Comedy",)]


def test_user_self_text_uses_history_only():
    text = knowledge_texts.user_self_text(_Catalog(), [0, 1, 3], [5.0, 4.0, 2.0])
    assert text.startswith("Prefers Drama, Comedy")
    assert "Liked B; A." in text and "Recently watched D; B; A." in text
    assert "C" not in text.replace("Comedy", "")
    assert knowledge_texts.user_self_text(_Catalog(), [], []) == ""


def test_knowledge_file_reports_unknown_and_flags_empty(tmp_path):
    path = tmp_path / "responses.jsonl"
    rows = [
        {"user": "1", "iter": 0, "k": 0, "text": "old summary"},
        {"user": "1", "iter": 1, "k": 0, "text": "new summary"},
        {"user": "1", "iter": 1, "k": 1, "text": "another"},
        {"user": "2", "iter": 1, "k": 0, "text": "   "},
        {"user": "999", "iter": 1, "k": 0, "text": "who?"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kf = knowledge_texts.load_knowledge_file(path, ["1", "2", "3"])
    assert kf.texts == {"1": ["new summary", "another"], "2": ["   "]}
    assert kf.unknown == ["999"] and kf.empty == ["2"]
    assert kf.first() == {"1": "new summary", "2": ""}
    assert "1 unknown ids skipped (999)" in kf.report()
    with pytest.raises(UserError, match="not found"):
        knowledge_texts.load_knowledge_file(tmp_path / "missing.jsonl", [])


def test_a_texts_vector_does_not_depend_on_what_it_is_encoded_with():
    """all-MiniLM-L6-v2 on a CPU gives a text batched with a longer one a vector ~1e-7 off its vector
    alone (padding changes the matrix shapes); the encoder batches only texts of one token count,
    so the shared cache holds the same vector whichever run encoded the text first."""
    inner = kn.build_model(None)
    text = "Heat (1995); Action, Crime, Thriller"
    longer = "Wallace & Gromit: The Best of Aardman Animation (1996); Animation, a user who likes long titles"
    shorter = "Heat (1995)"
    others = [f"Movie number {i} (19{i:02d}); Drama" for i in range(70)] + [longer * 2]

    def fresh():
        return kn.CachedEncoder(kn.encoder_key(None), None, lambda: inner, batch_size=64, progress=False)

    alone = fresh().encode([text])[0]
    for company in ([text, longer], [longer, text], [shorter, text], others[:30] + [text] + others[30:]):
        enc = fresh()
        got = enc.encode(company)[company.index(text)]
        assert np.array_equal(got, alone), (company[:3], np.abs(got - alone).max())
    # the batches themselves: one token count each, at most batch_size texts
    enc = fresh()
    counts = enc._token_counts(others)
    for batch in enc.batches(others):
        assert len({counts[i] for i in batch}) == 1 and len(batch) <= 64
    assert sorted(i for b in enc.batches(others) for i in b) == list(range(len(others)))
