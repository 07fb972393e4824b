"""Grounding generated titles to catalogue items (rlrf/generation/grounding.py).

Fast tests run on the real ml-100k catalogue (the `ml100k_small` fixture) or a tiny hand-built one,
with the deterministic hashing encoder; only the @slow test loads all-MiniLM-L6-v2.
"""

import math

import numpy as np
import pytest

from rlrf.data.texts import load_encoder
from rlrf.core.config import EncoderConfig
from rlrf.data.dataset import Catalog
from rlrf.generation.grounding import (
    LEVELS,
    Grounding,
    TitleGrounder,
    extract_title,
    grounding_shares,
    normalise_title,
)


class CountingEncoder:
    """The hashing encoder, recording every encode call (to check what reaches the model)."""

    def __init__(self, model="hashing:512"):
        self.inner = load_encoder(EncoderConfig(model=model, cache=False), progress=False)
        self.key = self.inner.key
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return self.inner.encode(texts)


@pytest.fixture(scope="module")
def catalog(ml100k_small):
    return ml100k_small.catalog


@pytest.fixture(scope="module")
def grounder(catalog):
    return TitleGrounder(catalog, CountingEncoder(), min_similarity=0.3)


def item(catalog, title, year):
    return next(i for i, (t, y) in enumerate(zip(catalog.titles, catalog.years)) if t == title and y == year)


def tiny_catalog():
    titles = ["Sabrina", "Sabrina", "Matrix, The", "Fear", "Fear, The", "Seven (Se7en)"]
    return Catalog(ids=[str(i) for i in range(1, 7)], titles=titles, years=[1954, 1995, 1999, 1996, 1995, 1995],
                   genres=[()] * 6, popularity=np.array([5, 9, 1, 7, 1, 3]), known=np.ones(6, bool))


@pytest.mark.parametrize("raw, title", [
    ("Toy Story (1995)", "Toy Story (1995)"),
    ("  \n1. **Toy Story (1995)**\n2. Aladdin (1992)", "Toy Story (1995)"),
    ('Answer: "The Matrix".', "The Matrix"),
    ("Title: Heat", "Heat"),
    ("Movie - Heat", "Heat"),
    ("Recommendation: - Fargo (1996)", "Fargo (1996)"),
    ("I recommend Star Wars.", "Star Wars"),
    ("I would recommend 'Star Wars'", "Star Wars"),
    ("The next movie is *Fargo*.", "Fargo"),
    ("- Fargo (1996) is a dark comedy you will love.", "Fargo (1996)"),
    ("When Harry Met Sally...", "When Harry Met Sally..."),  # an ellipsis is part of the title
    ("'Til There Was You", "'Til There Was You"),  # an unpaired apostrophe too
    ("", ""),
    (" \n \n", ""),
])
def test_extract_title_strips_list_markup_quotes_and_chat(raw, title):
    assert extract_title(raw) == title


def test_normalise_title_case_accents_punctuation_articles_year():
    assert normalise_title("Matrix, The (1999)") == ("matrix", 1999)
    assert normalise_title("The Matrix") == ("matrix", None)
    assert normalise_title("  THE   MATRIX!! ") == ("matrix", None)
    assert normalise_title("Misérables, Les") == normalise_title("Les Miserables") == ("miserables", None)
    assert normalise_title("Enfer, L'")[0] == normalise_title("L'Enfer")[0] == "enfer"
    assert normalise_title("In & Out")[0] == normalise_title("In and Out")[0]
    assert normalise_title("Schindler's List")[0] == "schindlers list"
    assert normalise_title("Die Hard")[0] == "die hard"  # "Die" is only dropped when trailing
    assert normalise_title("Blue Angel, The (Blaue Engel, Der) (1930)") == ("blue angel blaue engel", 1930)


def test_exact_match_with_and_without_year(grounder, catalog):
    toy = item(catalog, "Toy Story", 1995)
    assert grounder.ground(["Toy Story (1995)", "Toy Story"]) == [Grounding(toy, "exact", None)] * 2
    assert grounder.ground(["Usual Suspects, The (1995)"])[0].level == "exact"


def test_normalised_match_articles_case_punctuation_year(grounder, catalog):
    usual = item(catalog, "Usual Suspects, The", 1995)
    got = grounder.ground(["The Usual Suspects", "usual suspects (1995)", "USUAL SUSPECTS!"])
    assert got == [Grounding(usual, "normalised", None)] * 3


def test_alternate_titles_in_parentheses_are_keys(grounder, catalog):
    seven = item(catalog, "Seven (Se7en)", 1995)
    nikita = item(catalog, "Nikita (La Femme Nikita)", 1990)
    drum = item(catalog, "Tin Drum, The (Blechtrommel, Die)", 1979)
    got = grounder.ground(["Se7en", "Seven", "La Femme Nikita", "The Tin Drum", "Die Blechtrommel"])
    assert [g.item for g in got] == [seven, seven, nikita, drum, drum]
    assert {g.level for g in got} == {"normalised"}


def test_year_disambiguates_same_titled_items(grounder, catalog):
    old, new = item(catalog, "Cape Fear", 1962), item(catalog, "Cape Fear", 1991)
    got = grounder.ground(["Cape Fear (1962)", "Cape Fear (1991)", "cape fear (1962)", "CAPE FEAR (1991)"])
    assert [(g.item, g.level) for g in got] == [(old, "exact"), (new, "exact"), (old, "normalised"), (new, "normalised")]


def test_without_year_the_most_popular_wins_and_articles_tell_apart():
    g = TitleGrounder(tiny_catalog(), CountingEncoder())
    # Sabrina 1995 has popularity 9 > 5; "Fear" (7) and "Fear, The" (1) share the key "fear".
    assert [x.item for x in g.ground(["Sabrina", "sabrina", "Sabrina (1954)", "Fear", "The Fear", "the fear"])] == \
        [1, 1, 0, 3, 4, 4]
    assert [x.item for x in g.ground(["fear (1995)", "Matrix", "The Matrix (1999)", "se7en"])] == [4, 2, 2, 5]


def test_unknown_title_is_nearest_above_threshold_and_none_below(catalog):
    text = "Star Wars Episode IV: A New Hope"  # not a catalogue title; shares "star wars" with one
    star_wars = item(catalog, "Star Wars", 1977)
    loose = TitleGrounder(catalog, CountingEncoder(), min_similarity=0.0).ground([text])[0]
    assert loose.level == "nearest" and loose.item == star_wars
    assert 0.2 < loose.similarity < 0.9
    at = TitleGrounder(catalog, CountingEncoder(), min_similarity=loose.similarity).ground([text])[0]
    assert at == loose  # the threshold is inclusive
    strict = TitleGrounder(catalog, CountingEncoder(), min_similarity=loose.similarity + 0.01).ground([text])[0]
    assert strict.level == "none" and strict.item is None
    assert strict.similarity == pytest.approx(loose.similarity)


def test_empty_text_is_none_without_an_embedding_lookup(catalog):
    encoder = CountingEncoder()
    got = TitleGrounder(catalog, encoder).ground(["", "  \n", "**"])
    assert got == [Grounding(None, "none", None)] * 3
    assert encoder.calls == []  # not even the catalogue index was built


def test_only_texts_missing_levels_1_2_are_encoded_in_one_call(catalog):
    encoder = CountingEncoder()
    g = TitleGrounder(catalog, encoder, min_similarity=0.0)
    texts = ["Toy Story", "the usual suspects", "Star Wars Episode IV", "Toy Stroy", "Star Wars Episode IV"]
    got = g.ground(texts)
    assert [x.level for x in got] == ["exact", "normalised", "nearest", "nearest", "nearest"]
    assert got[2] == got[4]
    catalogue_call, query_call = encoder.calls  # the lazy index, then one batch of the misses
    assert len(catalogue_call) == len(catalog) and "Toy Story (1995)" in catalogue_call
    assert query_call == ["Star Wars Episode IV", "Toy Stroy"]


def test_nearest_excludes_history_and_returns_k_distinct_items(grounder, catalog):
    star_wars = item(catalog, "Star Wars", 1977)
    top = grounder.nearest(["Star Wars (1977)", "Toy Story"], k=10)
    assert top.shape == (2, 10) and top.dtype == np.int64
    assert top[0, 0] == star_wars and top[1, 0] == item(catalog, "Toy Story", 1995)
    history = [list(top[0, :5]), []]
    again = grounder.nearest(["Star Wars (1977)", "Toy Story"], k=10, exclude=history)
    assert not set(again[0]) & set(history[0])
    assert list(again[0, :5]) == list(top[0, 5:])  # the ranking below the excluded items is kept
    assert again[1, 0] == top[1, 0]
    for row in again:
        assert len(set(row)) == 10 and (row >= 0).all()


def test_nearest_pads_when_the_catalogue_runs_out_and_can_put_the_grounded_item_first():
    g = TitleGrounder(tiny_catalog(), CountingEncoder())
    top = g.nearest(["Sabrina (1954)"], k=8, exclude=[[5]])
    assert sorted(top[0, :5]) == [0, 1, 2, 3, 4] and list(top[0, 5:]) == [-1, -1, -1]
    first = g.nearest(["Sabrina", "unknown words"], k=2, grounded_first=True)
    assert first[0, 0] == 1  # the grounded (most popular) Sabrina, whatever the embedding says
    assert list(first[1]) == list(g.nearest(["unknown words"], k=2)[0])


def test_faiss_index_is_written_once_and_reused(catalog, tmp_path):
    first = TitleGrounder(catalog, CountingEncoder(), min_similarity=0.0, index_dir=tmp_path)
    texts = ["Star Wars Episode IV", "a film about toys"]
    expected = first.ground(texts)
    files = list(tmp_path.iterdir())
    assert files == [first.index_path()] and files[0].name.startswith("titles-") and files[0].suffix == ".faiss"
    mtime = files[0].stat().st_mtime_ns

    encoder = CountingEncoder()
    second = TitleGrounder(catalog, encoder, min_similarity=0.0, index_dir=tmp_path)
    assert second.ground(texts) == expected
    assert encoder.calls == [texts]  # the catalogue titles were read from the file, not encoded
    assert files[0].stat().st_mtime_ns == mtime and list(tmp_path.iterdir()) == files

    other = TitleGrounder(catalog, CountingEncoder("hashing:256"), index_dir=tmp_path)
    assert other.index_path() != first.index_path()  # a different encoder never reads this index


def test_grounding_shares_sum_to_one():
    gs = [Grounding(1, "exact"), Grounding(2, "exact"), Grounding(3, "nearest", 0.7), Grounding(None, "none", 0.1)]
    shares = grounding_shares(gs)
    assert tuple(shares) == LEVELS
    assert shares == {"exact": 0.5, "normalised": 0.0, "nearest": 0.25, "none": 0.25}
    assert math.isclose(sum(shares.values()), 1.0)
    assert grounding_shares([]) == dict.fromkeys(LEVELS, 0.0)


@pytest.mark.slow
def test_minilm_grounds_a_paraphrased_title(catalog, tmp_path):
    import torch

    torch.set_num_threads(1)
    encoder = load_encoder(EncoderConfig(), progress=False)  # all-MiniLM-L6-v2 with the shared disk cache
    g = TitleGrounder(catalog, encoder, min_similarity=0.5, index_dir=tmp_path)
    got = g.ground(["Star Wars Episode IV: A New Hope", "Godfather Part 2"])
    assert [x.item for x in got] == [item(catalog, "Star Wars", 1977), item(catalog, "Godfather: Part II, The", 1974)]
    assert all(x.level in ("exact", "normalised", "nearest") for x in got)


def test_the_popularity_given_breaks_ties_not_the_catalogues_counts():
    # the catalogue says Sabrina 1995 (9) > 1954 (5); training counts say the opposite
    g = TitleGrounder(tiny_catalog(), CountingEncoder(), popularity=np.array([4, 1, 0, 0, 0, 0]))
    assert g.ground(["Sabrina"])[0].item == 0
    with pytest.raises(ValueError):
        TitleGrounder(tiny_catalog(), CountingEncoder(), popularity=np.array([1, 2]))


def test_twin_titles_share_one_key_but_remakes_do_not(grounder, catalog):
    # ml-100k holds "Chasing Amy (1997)" twice (items 245 and 267); Cape Fear 1962 and 1991 are different films
    a, b = [i for i, t in enumerate(catalog.titles) if t == "Chasing Amy"]
    assert grounder.same_title(a, b) and grounder.twins_of(a) == [a, b] and grounder.twin[b] == a
    old, new = item(catalog, "Cape Fear", 1962), item(catalog, "Cape Fear", 1991)
    assert not grounder.same_title(old, new)
    assert grounder.names_item("I recommend chasing amy.", b) and grounder.names_item("Chasing Amy (1997)", a)
    assert not grounder.names_item("Cape Fear (1962)", new) and grounder.names_item("cape fear", new)
    assert not grounder.names_item("", a)
