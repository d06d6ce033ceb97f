"""Generic-format loading/validation, ML-100K conversion, splits and synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data import (
    DataError,
    convert_ml100k,
    fetch_ml100k,
    leave_last_out,
    load_dataset,
    write_synthetic_dataset,
)


def _write(d: Path, items: str, inters: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "items.csv").write_text(items, encoding="utf-8")
    (d / "interactions.csv").write_text(inters, encoding="utf-8")
    return d


ITEMS = 'item_id,title,text,metadata\na,Alpha,Alpha text,"{""k"": 1}"\nb,,Beta text,\nc,Gamma,G,\n'


def test_load_generic_orders_by_time_then_line(tmp_path: Path) -> None:
    d = _write(
        tmp_path,
        ITEMS,
        "user_id,item_id,timestamp,rating\nu1,b,20,4\nu1,a,10,\nu1,c,20,5\nu2,a,5,1\n",
    )
    ds = load_dataset(d)
    assert [it.id for it in ds.items] == ["a", "b", "c"]
    assert ds.items[0].metadata == {"k": 1}
    assert ds.items[1].title == "Beta text"  # title defaults to text
    assert ds.sequence("u1") == ["a", "b", "c"]  # ts 20 tie keeps file order (b before c)
    assert ds.user_interactions["u1"][1].rating == 4.0
    assert ds.user_interactions["u1"][0].rating is None
    assert ds.n_interactions == 4
    assert len(ds.fingerprint) == 64


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    a = load_dataset(_write(tmp_path / "a", ITEMS, "user_id,item_id,timestamp\nu,a,1\n"))
    b = load_dataset(_write(tmp_path / "b", ITEMS, "user_id,item_id,timestamp\nu,a,2\n"))
    assert a.fingerprint != b.fingerprint


@pytest.mark.parametrize(
    ("items", "inters", "needle"),
    [
        (
            "item_id,title\na,A\n",
            "user_id,item_id,timestamp\nu,a,1\n",
            "items.csv:1: missing column(s) text",
        ),
        (ITEMS, "user_id,item_id\nu,a\n", "interactions.csv:1: missing column(s) timestamp"),
        (
            ITEMS,
            "user_id,item_id,timestamp\nu,a,1\nu,zz,2\n",
            "interactions.csv:3: column item_id: unknown item 'zz'",
        ),
        (
            ITEMS,
            "user_id,item_id,timestamp\nu,a,1\nu,b,yesterday\n",
            "interactions.csv:3: column timestamp: 'yesterday' is not an integer",
        ),
        (ITEMS, "user_id,item_id,timestamp\nu,a,1.5\n", "interactions.csv:2: column timestamp"),
        (ITEMS, "user_id,item_id,timestamp,rating\nu,a,1,good\n", "column rating"),
        (
            "item_id,text\na,x\na,y\n",
            "user_id,item_id,timestamp\nu,a,1\n",
            "items.csv:3: column item_id: duplicate id 'a' (first on line 2)",
        ),
        (
            "item_id,text,metadata\na,x,{bad\n",
            "user_id,item_id,timestamp\nu,a,1\n",
            "items.csv:2: column metadata: invalid JSON",
        ),
        (
            "item_id,text,metadata\na,x,[1]\n",
            "user_id,item_id,timestamp\nu,a,1\n",
            "items.csv:2: column metadata: not a JSON object",
        ),
        ("item_id,text\na,\n", "user_id,item_id,timestamp\nu,a,1\n", "items.csv:2: column text"),
        (
            "item_id,text\na,x,extra\n",
            "user_id,item_id,timestamp\nu,a,1\n",
            "items.csv:2: expected 2 columns",
        ),
        ("item_id,text\n", "user_id,item_id,timestamp\n", "items.csv: no items"),
    ],
)
def test_validation_errors_name_file_line_column(
    tmp_path: Path, items: str, inters: str, needle: str
) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(_write(tmp_path, items, inters))
    assert needle in str(err.value)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "items.csv").write_text("item_id,text\na,x\n")
    with pytest.raises(DataError, match=r"interactions\.csv: file not found"):
        load_dataset(tmp_path)


ML_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "1\tToy Story\t1995\tAnimation Children's Comedy\n"
    "12\tUsual Suspects, The\t1995\tCrime Thriller\n"
    "99\tMystery Film\t\tunknown\n"
)
ML_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "7\t12\t5\t881250950\n"
    "7\t1\t3\t881250949\n"
    "8\t99\t1\t881250000\n"
)


def test_convert_ml100k_sample(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "ml-100k.item").write_text(ML_ITEM)
    (raw / "ml-100k.inter").write_text(ML_INTER)
    ds = load_dataset(convert_ml100k(raw, tmp_path / "out"))
    toy, suspects, mystery = ds.items
    assert toy.title == "Toy Story"
    assert toy.text == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert toy.metadata == {"year": 1995, "genres": ["Animation", "Children's", "Comedy"]}
    assert suspects.title == "The Usual Suspects"
    assert suspects.text == "The Usual Suspects (1995). Genres: Crime, Thriller."
    assert mystery.text == "Mystery Film."
    assert mystery.metadata == {"genres": []}
    assert ds.sequence("7") == ["1", "12"]
    assert ds.user_interactions["7"][0].rating == 3.0


def test_convert_ml100k_merges_duplicate_films(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "ml-100k.item").write_text(
        ML_ITEM + "246\tChasing Amy\t1997\tDrama Romance\n"
        "268\tChasing Amy\t1997\tDrama Romance\n"
        "300\tChasing Amy\t1996\tDrama Romance\n"
    )
    (raw / "ml-100k.inter").write_text(
        ML_INTER + "7\t268\t4\t881250000\n7\t246\t5\t881250999\n8\t268\t2\t881250001\n"
    )
    ds = load_dataset(convert_ml100k(raw, tmp_path / "out"))
    ids = [it.id for it in ds.items]
    assert ids == ["1", "12", "99", "246", "300"]  # 268 is 246; another year is another film
    assert ds.items[ids.index("246")].metadata["merged_ids"] == ["268"]
    # User 7 rated both copies: the earlier interaction stays (under the kept id).
    assert [(x.item_id, x.rating) for x in ds.user_interactions["7"]] == [
        ("246", 4.0),
        ("1", 3.0),
        ("12", 5.0),
    ]
    assert ds.sequence("8") == ["99", "246"]


def _cached_raw(cache: Path) -> None:
    """The raw files fetch_ml100k keeps under ``cache/raw`` (so it needs no network)."""
    raw = cache / "raw" / "ml-100k"
    raw.mkdir(parents=True)
    (raw / "ml-100k.item").write_text(ML_ITEM)
    (raw / "ml-100k.inter").write_text(ML_INTER)
    (raw / "ml-100k.user").write_text("user_id:token\n")


def test_fetch_ml100k_reconverts_a_cache_of_an_older_conversion(tmp_path: Path) -> None:
    _cached_raw(tmp_path)
    out = fetch_ml100k(tmp_path)
    (out / "CONVERSION").unlink()  # what a cache written by older code looks like
    (out / "items.csv").write_text("item_id,text\nstale,x\n")
    assert [it.id for it in load_dataset(fetch_ml100k(tmp_path)).items] == ["1", "12", "99"]


def test_fetch_ml100k_uses_cached_raw_files_without_network(tmp_path: Path) -> None:
    _cached_raw(tmp_path)
    out = fetch_ml100k(tmp_path)
    assert out == tmp_path / "ml100k"
    assert len(load_dataset(out).items) == 3
    assert fetch_ml100k(tmp_path) == out  # idempotent: reuses the converted files


def test_leave_last_out(tmp_path: Path) -> None:
    d = _write(
        tmp_path,
        "item_id,text\n" + "".join(f"i{k},t{k}\n" for k in range(6)),
        "user_id,item_id,timestamp\n"
        "u1,i3,30\nu1,i1,10\nu1,i2,20\nu1,i4,40\n"
        "u2,i0,1\nu2,i1,2\n"
        "u3,i5,3\nu3,i4,2\nu3,i3,1\n",
    )
    split = leave_last_out(load_dataset(d))
    assert split.train == {"u1": ["i1", "i2"], "u2": ["i0", "i1"], "u3": ["i3"]}
    assert split.valid == {"u1": "i3", "u3": "i4"}
    assert split.test == {"u1": "i4", "u3": "i5"}


def test_synthetic_dataset_shape(tmp_path: Path) -> None:
    d = write_synthetic_dataset(tmp_path, n_items=30, n_users=12, seed=3)
    ds = load_dataset(d)
    assert len(ds.items) == 30
    assert len(ds.user_interactions) == 12
    assert all(6 <= len(v) <= 12 for v in ds.user_interactions.values())
    assert all(it.metadata["topic"] for it in ds.items)
    # Users are mostly loyal to one topic: that is the learnable signal.
    topic = {it.id: it.metadata["topic"] for it in ds.items}
    loyal = [
        max(map([topic[i] for i in ds.sequence(u)].count, set(topic.values())))
        / len(ds.sequence(u))
        for u in ds.user_interactions
    ]
    assert sum(loyal) / len(loyal) > 0.6
    again = load_dataset(write_synthetic_dataset(tmp_path / "b", n_items=30, n_users=12, seed=3))
    assert again.fingerprint == ds.fingerprint  # deterministic per seed


def test_split_never_leaks_held_out_items_into_train(tmp_path: Path) -> None:
    ds = load_dataset(write_synthetic_dataset(tmp_path, n_items=30, n_users=20, seed=1))
    split = leave_last_out(ds)
    for user, seq in ds.user_interactions.items():
        if user not in split.test:
            continue
        order = ds.sequence(user)
        assert split.train[user] == order[:-2]
        assert split.valid[user] == order[-2] and split.test[user] == order[-1]
        # The held-out events are the two latest, and they are not part of train.
        assert len(split.train[user]) == len(seq) - 2
        assert max(x.timestamp for x in seq[:-2]) <= seq[-2].timestamp <= seq[-1].timestamp
