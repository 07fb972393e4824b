"""The data layer: any RecBole atomic dataset by path, the bundled ml-100k by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlrf.core.config import DataConfig, ListsConfig
from rlrf.data.dataset import load_dataset, split_users
from rlrf.data.lists import build_lists, history_cut, visible_popularity
from rlrf.core.errors import UserError


def write_atomic(folder: Path, name: str, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for ext, text in files.items():
        (folder / f"{name}.{ext}").write_text(text, encoding="utf-8")
    return folder


TINY_INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
alice\tm-b\t5\t20
alice\tm-a\t4\t10
alice\tm-c\t2\t20
alice\tghost\t5\t30
bob\tm-a\t3\t1
bob\tm-b\t5\t2
bob\tm-c\t4\t3
carol\tm-a\t5\t1
carol\tm-b\t1\t2
"""
TINY_ITEM = """item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq
m-a\tAlpha\t1999\tAction Comedy
m-b\tBeta\t2001\tDrama
m-c\tGamma, The\t1987\t
"""
TINY_USER = """user_id:token\tage:token\tgender:token
alice\t30\tF
bob\t41\tM
carol\t22\tF
dave\t50\tM
"""


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_atomic(tmp_path / "tiny", "tiny", {"inter": TINY_INTER, "item": TINY_ITEM, "user": TINY_USER})


def test_ml100k_bundled_counts():
    ds = load_dataset(DataConfig())
    assert (ds.stats.users, ds.stats.items, ds.stats.interactions) == (943, 1682, 100_000)
    assert ds.stats.users_filtered == 0  # every ml-100k user has at least 20 ratings
    assert ds.catalog.titles[ds.catalog.index("1")] == "Toy Story"
    assert ds.catalog.years[ds.catalog.index("1")] == 1995
    assert ds.catalog.genres[ds.catalog.index("1")] == ("Animation", "Children's", "Comedy")
    assert int(ds.catalog.popularity.sum()) == 100_000
    assert ds.users["1"].profile["occupation"] == "technician"


def test_string_ids_missing_item_rows_and_filtering(tiny):
    ds = load_dataset(DataConfig(path=tiny, split={"train": 0.5, "valid": 0.5, "test": 0.0}))
    # carol (2 interactions) and dave (none) fall under min_interactions=3
    assert set(ds.users) == {"alice", "bob"}
    assert ds.stats.users_filtered == 2
    assert ds.stats.interactions_filtered == 2
    # 'ghost' is rated but has no .item row: kept, titled as unknown, counted
    ghost = ds.catalog.index("ghost")
    assert ds.catalog.titles[ghost] == "unknown item ghost"
    assert ds.stats.items_without_metadata == 1
    assert ds.catalog.genres[ds.catalog.index("m-c")] == ()
    assert ds.users["alice"].profile == {"age": "30", "gender": "F"}


def test_history_is_chronological_with_file_order_breaking_ties(tiny):
    ds = load_dataset(DataConfig(path=tiny))
    alice = ds.users["alice"]
    titles = [ds.catalog.ids[i] for i in alice.items]
    assert titles == ["m-a", "m-b", "m-c", "ghost"]  # m-b and m-c tie at t=20: file order
    assert alice.ratings == [4.0, 5.0, 2.0, 5.0]


def test_genre_matrix_splits_an_item_over_its_genres(tiny):
    ds = load_dataset(DataConfig(path=tiny))
    matrix = ds.catalog.genre_matrix()
    alpha = ds.catalog.index("m-a")
    assert ds.catalog.genre_names == ["Action", "Comedy", "Drama"]
    assert matrix[alpha].tolist() == [0.5, 0.5, 0.0]
    assert matrix[ds.catalog.index("m-c")].sum() == 0


def test_user_split_is_seeded_disjoint_and_complete():
    users = [str(i) for i in range(100)]
    a = split_users(users, 0.8, 0.1, seed=3)
    assert a == split_users(users, 0.8, 0.1, seed=3)
    assert a != split_users(users, 0.8, 0.1, seed=4)
    assert [len(a[s]) for s in ("train", "valid", "test")] == [80, 10, 10]
    assert sorted(a["train"] + a["valid"] + a["test"], key=int) == users


def test_kar_lists_follow_the_history_cut():
    ds = load_dataset(DataConfig(max_users=50), seed=0)
    lists = build_lists(ds, ListsConfig(length=10, max_history=30), seed=0, positive_rating=4)
    assert len(lists) == 50
    for uid, lst in lists.items():
        user = ds.users[uid]
        cut = history_cut(len(user.items), 30)
        assert lst.history == user.items[:cut]
        assert len(lst.items) == 10 and len(set(lst.items)) == 10
        future = dict(zip(user.items[cut:], user.ratings[cut:]))
        for item, label in zip(lst.items, lst.labels):
            if item in future:
                assert label == int(future[item] >= 4)
            else:  # padding: an item the user never rated
                assert label == 0 and item not in user.items


def test_future_lists_put_what_the_user_watched_next_against_unseen_items_of_matched_popularity():
    ds = load_dataset(DataConfig(), seed=0)
    lists = build_lists(ds, ListsConfig(source="future", length=40, max_history=30), seed=0)
    popularity = visible_popularity(ds, 30)
    drawn, watched = [], []
    for uid, lst in lists.items():
        user = ds.users[uid]
        cut = history_cut(len(user.items), 30)
        assert lst.history == user.items[:cut]
        assert len(lst.items) == 40 and len(set(lst.items)) == 40
        positives = {i for i, y in zip(lst.items, lst.labels) if y}
        assert positives == set(user.items[cut: cut + 20])
        watched += list(positives)
        negatives = [i for i, y in zip(lst.items, lst.labels) if not y]
        assert not set(negatives) & set(user.items)
        drawn += negatives
    # negatives as popular as what users watch (within 30 %), far more than a uniform catalog draw
    assert 0.7 < popularity[drawn].mean() / popularity[watched].mean() < 1.3
    assert popularity[drawn].mean() > 2 * popularity.mean()


def test_future_lists_popularity_never_counts_a_held_out_future():
    ds = load_dataset(DataConfig(max_users=60), seed=0)
    counts = visible_popularity(ds, 30)
    held_out = ds.splits["valid"] + ds.splits["test"]
    assert counts.sum() == sum(len(ds.users[u].items) for u in ds.splits["train"]) + sum(
        history_cut(len(ds.users[u].items), 30) for u in held_out)


def test_future_lists_too_long_for_the_catalog_is_one_clear_error():
    ds = load_dataset(DataConfig(max_users=20), seed=0)
    with pytest.raises(UserError, match="data.lists.length: 5000 needs"):
        build_lists(ds, ListsConfig(source="future", length=5000), seed=0)


def test_history_cut_is_half_capped():
    assert [history_cut(n, 30) for n in (3, 4, 20, 61, 200)] == [2, 2, 10, 30, 30]


# --- bad input: one clear line naming the file/field


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(UserError, match="dataset folder not found"):
        load_dataset(DataConfig(path=tmp_path / "nope"))


def test_inter_without_item_id(tmp_path):
    folder = write_atomic(tmp_path / "d", "d", {"inter": "user_id:token\trating:float\n1\t5\n"})
    with pytest.raises(UserError, match=r"d\.inter: missing field\(s\) item_id"):
        load_dataset(DataConfig(path=folder))


def test_empty_histories(tmp_path):
    folder = write_atomic(tmp_path / "d", "d", {"inter": "user_id:token\titem_id:token\n"})
    with pytest.raises(UserError, match="no interactions"):
        load_dataset(DataConfig(path=folder))


def test_every_user_below_min_interactions(tiny):
    with pytest.raises(UserError, match="min_interactions"):
        load_dataset(DataConfig(path=tiny, min_interactions=10))


def test_non_utf8_title_names_file_and_line(tmp_path):
    folder = write_atomic(tmp_path / "d", "d", {"inter": TINY_INTER})
    (folder / "d.item").write_bytes(TINY_ITEM.encode() + "m-z\tCaf\xe9\t1990\tDrama\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"d\.item: line 5 is not valid utf-8"):
        load_dataset(DataConfig(path=folder))
    # naming the real encoding reads it
    ds = load_dataset(DataConfig(path=folder, encoding="latin-1"))
    assert ds.catalog.titles[ds.catalog.index("m-z")] == "Café"


def test_non_numeric_rating_names_its_line(tmp_path):
    text = TINY_INTER.replace("bob\tm-b\t5\t2", "bob\tm-b\tfive\t2")
    folder = write_atomic(tmp_path / "d", "d", {"inter": text})
    with pytest.raises(UserError, match=r"d\.inter: line 7: field rating is not a number"):
        load_dataset(DataConfig(path=folder))


def test_kar_lists_need_ratings_future_lists_do_not(tmp_path):
    unrated = "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
        f"u{u}\tm-{i}\t{i}\n" for u in range(3) for i in range(u, u + 6))
    folder = write_atomic(tmp_path / "d", "d", {"inter": unrated})
    ds = load_dataset(DataConfig(path=folder))
    assert not ds.rated
    with pytest.raises(UserError, match=r"d\.inter: data\.lists\.source 'kar' labels list items by their rating, "
                                        r"but the interactions have no rating field; use data\.lists\.source: future$"):
        build_lists(ds, ListsConfig(source="kar", length=4, max_history=3))
    lists = build_lists(ds, ListsConfig(source="future", length=4, max_history=3))
    assert all(sum(lst.labels) == 2 for lst in lists.values())


def test_rated_data_passes_the_kar_check(tiny):
    ds = load_dataset(DataConfig(path=tiny))
    assert ds.rated
    assert len(build_lists(ds, ListsConfig(source="kar", length=2, max_history=2))) == len(ds.users)


def test_a_genre_field_is_split_on_its_own_separator(tmp_path):
    inter = "user_id:token\titem_id:token\trating:float\n" + "".join(f"u\t{i}\t5\n" for i in "abc")
    item = ("item_id:token\ttitle:token_seq\tcategories:token_seq\n"
            "a\tEarbuds\tElectronics, Headphones & Earbuds\n"
            "b\tPan\tHome & Kitchen,Kitchen & Dining, \n"
            "c\tMystery\t\n")
    ds = load_dataset(DataConfig(path=write_atomic(tmp_path / "amz", "amz", {"inter": inter, "item": item})))
    genres = {ds.catalog.ids[i]: g for i, g in enumerate(ds.catalog.genres)}
    assert genres == {"a": ("Electronics", "Headphones & Earbuds"), "b": ("Home & Kitchen", "Kitchen & Dining"),
                      "c": ()}
    # whitespace-separated fields (RecBole's token_seq, ml-100k's class) keep splitting on whitespace
    ml = load_dataset(DataConfig())
    assert ml.catalog.genres[ml.catalog.index("1")] == ("Animation", "Children's", "Comedy")


def test_kar_lists_longer_than_the_unseen_catalog_are_one_clear_error(tiny):
    ds = load_dataset(DataConfig(path=tiny))  # alice has seen all 4 items
    with pytest.raises(UserError, match="data.lists.length: 4 needs 2 items user 'alice' has not seen; the catalog has 0"):
        build_lists(ds, ListsConfig(source="kar", length=4, max_history=2))


def test_columns_named_as_the_dataset_names_them_load_like_rlrf_s_own(tmp_path, tiny):
    def renamed(text: str, names: dict[str, str]) -> str:
        header, rest = text.split("\n", 1)
        for old, new in names.items():
            header = header.replace(f"{old}:", f"{new}:")
        return header + "\n" + rest

    own = write_atomic(tmp_path / "own", "own", {
        "inter": renamed(TINY_INTER, {"user_id": "uid", "item_id": "iid", "rating": "score", "timestamp": "ts"}),
        "item": renamed(TINY_ITEM, {"item_id": "iid", "movie_title": "label", "class": "tags"}),
        "user": renamed(TINY_USER, {"user_id": "uid"}),
    })
    fields = {"user_id": "uid", "item_id": "iid", "rating": "score", "timestamp": "ts", "title": "label", "genre": "tags"}
    a = load_dataset(DataConfig(path=tiny, min_interactions=1))
    b = load_dataset(DataConfig(path=own, min_interactions=1, fields=fields))
    assert a.stats == b.stats and a.catalog.titles == b.catalog.titles and a.catalog.genres == b.catalog.genres
    assert {u: (x.items, x.ratings) for u, x in a.users.items()} == {u: (x.items, x.ratings) for u, x in b.users.items()}
    with pytest.raises(UserError, match=r"data.fields.rating names 'stars'"):
        load_dataset(DataConfig(path=own, min_interactions=1, fields={**fields, "rating": "stars"}))
