"""Recall building blocks: filters, sharding, the catalog log, the RW lock, the live index."""

import threading
import time

import hnswlib
import numpy as np
import pytest

from recall_service.catalog_log import DELETE, UPSERT, LogWrite, open_log
from recall_service.filters import compile_filters
from recall_service.index import IndexParams, ItemIndex, SearchSpec, member_mask
from recall_service.rwlock import RWLock
from recstack.core.bundle import CatalogItem
from recstack.core.domain import MetadataFilter
from recstack.core.errors import InvalidArgument
from recstack.core.sharding import shard_of
from recstack.core.vectors import l2_normalize

DIM = 16
PARAMS = IndexParams(DIM, "ip", 16, 100, 64)


def unit_vectors(n, seed=0, dim=DIM):
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, dim)))


def empty_index(exact_threshold=0):
    hnsw = hnswlib.Index(space="ip", dim=DIM)
    hnsw.init_index(max_elements=16, M=16, ef_construction=100)
    return ItemIndex(PARAMS, hnsw, [], np.zeros((16, DIM), np.float32), 0, exact_threshold)


def upsert(item_id, vec, **metadata):
    return LogWrite(UPSERT, item_id, f"T{item_id}", f"text {item_id}", metadata, vec, "v1")


# -- filters -------------------------------------------------------------------------------


def test_filters_semantics():
    pred = compile_filters(
        [MetadataFilter("genres", ("Comedy", "Drama")), MetadataFilter("year", min=1990, max=1999)],
        {"genres", "year"},
    )
    assert pred is not None
    assert pred({"genres": ["Action", "Comedy"], "year": 1995})
    assert not pred({"genres": ["Action"], "year": 1995})
    assert not pred({"genres": ["Comedy"], "year": 2001})
    assert not pred({"genres": ["Comedy"]})  # missing field never matches
    assert not pred({"genres": ["Comedy"], "year": "1995"})  # range needs a number
    scalar = compile_filters([MetadataFilter("year", ("1995",))], {"year"})
    assert scalar is not None and scalar({"year": 1995}) and scalar({"year": 1995.0})
    assert compile_filters([], {"year"}) is None


@pytest.mark.parametrize(
    ("flt", "field"),
    [
        (MetadataFilter("colour", ("red",)), "filters[0].field"),
        (MetadataFilter("year"), "filters[0]"),
        (MetadataFilter("year", min=3.0, max=1.0), "filters[0]"),
        (MetadataFilter("year", min=float("nan")), "filters[0].min"),
    ],
)
def test_bad_filters_name_the_field(flt, field):
    with pytest.raises(InvalidArgument) as err:
        compile_filters([flt], {"year"})
    assert err.value.field == field


# -- sharding ------------------------------------------------------------------------------


def test_shard_of_is_stable_and_balanced():
    assert shard_of("item-42", 4) == shard_of("item-42", 4)
    assert shard_of("x", 1) == 0
    counts = np.bincount([shard_of(f"i{n}", 4) for n in range(4000)], minlength=4)
    assert counts.min() > 800  # roughly uniform
    with pytest.raises(ValueError):
        shard_of("x", 0)


# -- catalog log ---------------------------------------------------------------------------


def test_sqlite_log_orders_and_survives_reopen(tmp_path):
    path = tmp_path / "log.db"
    log = open_log(str(path))
    vec = unit_vectors(1)[0]
    s1 = log.append([upsert("a", vec, genre="x"), upsert("b", vec)])
    s2 = log.append([LogWrite(DELETE, "a")])
    assert s2 > s1 == 2 and log.last_sequence() == s2
    log.close()
    reopened = open_log(f"sqlite:///{path}")
    entries = reopened.read_after(0, 10)
    assert [e.sequence for e in entries] == [1, 2, 3]
    assert entries[0].write.metadata == {"genre": "x"}
    np.testing.assert_array_equal(entries[0].write.vector, vec)
    assert entries[2].write.op == DELETE and entries[2].write.vector is None
    assert [e.sequence for e in reopened.read_after(1, 1)] == [2]


# -- RW lock -------------------------------------------------------------------------------


def test_rwlock_readers_share_writer_excludes():
    """Readers provably hold the lock together (a barrier only they can pass inside it), and
    the writer provably asks for the lock while they hold it (it is seen waiting) before
    they let go; no step relies on a sleep being long enough."""
    wait_s = 30.0
    readers_n = 4
    lock = RWLock()
    inside = []
    events = []
    errors = []
    # Passed only once every reader is inside the read lock at the same time (and the test).
    all_inside = threading.Barrier(readers_n + 1, timeout=wait_s)
    release = threading.Event()

    def reader():
        try:
            with lock.read():
                inside.append(1)
                all_inside.wait()
                events.append(("r", len(inside)))
                assert release.wait(wait_s), "the test never released the readers"
                inside.pop()
        except Exception as exc:  # surfaced by the asserts below
            errors.append(exc)

    def writer():
        with lock.write():
            events.append(("w", len(inside)))

    readers = [threading.Thread(target=reader, daemon=True) for _ in range(readers_n)]
    for t in readers:
        t.start()
    try:
        try:
            all_inside.wait()
        except threading.BrokenBarrierError:
            raise AssertionError(f"the readers never held the lock together: {errors}") from None
        w = threading.Thread(target=writer, daemon=True)
        w.start()
        until = time.monotonic() + wait_s
        while lock._waiting_writers == 0:  # the writer asked while all readers hold it
            assert w.is_alive() and time.monotonic() < until, (
                f"the writer never waited for the readers: {events}"
            )
            time.sleep(0.005)
    finally:
        release.set()
    for t in [*readers, w]:
        t.join(wait_s)
        assert not t.is_alive(), "a reader or the writer never finished"
    assert not errors, errors
    assert ("w", 0) in events  # the writer never overlapped a reader
    assert max(n for kind, n in events if kind == "r") > 1  # readers did overlap


# -- live index ----------------------------------------------------------------------------


def test_index_upsert_replace_delete_and_grow():
    index = empty_index()
    vecs = unit_vectors(40)
    index.apply([upsert(f"i{n}", vecs[n]) for n in range(40)], sequence=40)  # grows past 16
    assert len(index) == 40 and index.applied_sequence == 40
    labels, scores = index.search(vecs[:1], [SearchSpec(k=3)])[0]
    assert index.ids(labels)[0] == "i0" and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert index.written(labels) == [True] * 3  # all came from the log, none from a bundle
    np.testing.assert_array_equal(index.rows(labels)[0], vecs[0])
    # replace i0's vector with i1's; delete i1: i0 now answers i1's query
    index.apply([upsert("i0", vecs[1]), LogWrite(DELETE, "i1")], sequence=42)
    ids = index.ids(index.search(vecs[1:2], [SearchSpec(k=40)])[0][0])
    assert ids[0] == "i0" and "i1" not in ids and len(ids) == 39
    # idempotent replay: an already-applied sequence changes nothing
    assert index.apply([LogWrite(DELETE, "i0")], sequence=41) == 0
    assert index.lookup("i0") is not None
    # revive a deleted id
    index.apply([upsert("i1", vecs[1])], sequence=43)
    assert index.ids(index.search(vecs[1:2], [SearchSpec(k=1)])[0][0])[0] in {"i0", "i1"}
    assert len(index) == 40


def test_full_scan_is_exact_and_skips_deleted_and_excluded():
    index = empty_index()
    vecs = unit_vectors(300, seed=5)
    index.apply([upsert(f"i{n}", vecs[n]) for n in range(300)], sequence=1)  # grows
    index.apply([LogWrite(DELETE, f"i{n}") for n in range(0, 300, 7)], sequence=2)
    live = [n for n in range(300) if n % 7]
    excluded = (*(f"i{n}" for n in range(1, 300, 5)), "i0", "no-such-item", "i1")
    query = unit_vectors(1, seed=6)[0]
    allowed = [n for n in live if f"i{n}" not in excluded]
    want = sorted(allowed, key=lambda n: -float(vecs[n] @ query))[:25]
    index.full_scan_threshold = 1000  # 257 live items: scanned
    labels, scores = index.search(query[None], [SearchSpec(k=25, exclude_ids=excluded)])[0]
    assert index.ids(labels) == [f"i{n}" for n in want]
    np.testing.assert_allclose(scores, [vecs[n] @ query for n in want], atol=1e-5)
    # k beyond what is left returns everything left; HNSW (threshold 0) agrees on the top.
    labels, _ = index.search(query[None], [SearchSpec(k=1000, exclude_ids=excluded)])[0]
    assert sorted(index.ids(labels)) == sorted(f"i{n}" for n in allowed)
    index.full_scan_threshold = 0
    labels, _ = index.search(query[None], [SearchSpec(k=5, exclude_ids=excluded)])[0]
    assert index.ids(labels) == [f"i{n}" for n in want[:5]]


def test_index_exclusions_and_filters_keep_k():
    index = empty_index(exact_threshold=5)
    vecs = unit_vectors(200, seed=1)
    index.apply(
        [
            upsert(f"i{n}", vecs[n], parity=("even" if n % 2 == 0 else "odd"), n=n)
            for n in range(200)
        ],
        sequence=1,
    )
    excluded = tuple(f"i{n}" for n in range(0, 200, 3))
    ids = index.ids(index.search(vecs[:1], [SearchSpec(k=20, exclude_ids=excluded)])[0][0])
    assert len(ids) == 20 and not set(ids) & set(excluded)
    # a selective filter (6 items) falls back to exact search and still returns them all
    pred = compile_filters([MetadataFilter("n", min=10, max=15)], index.metadata_fields)
    labels, _ = index.search(vecs[:1], [SearchSpec(k=10, predicate=pred)])[0]
    assert sorted(index.ids(labels)) == [f"i{n}" for n in range(10, 16)]
    # a broad filter (100 items) goes through HNSW with the filter and returns k matches
    pred = compile_filters([MetadataFilter("parity", ("odd",))], index.metadata_fields)
    labels, scores = index.search(vecs[:1], [SearchSpec(k=15, predicate=pred)])[0]
    assert len(labels) == 15
    assert all(index.item(lab).metadata["parity"] == "odd" for lab in labels)
    assert list(scores) == sorted(scores, reverse=True)


def test_snapshot_roundtrip_and_corruption(tmp_path):
    index = empty_index()
    vecs = unit_vectors(30, seed=2)
    index.apply([upsert(f"i{n}", vecs[n]) for n in range(30)], sequence=30)
    index.apply([LogWrite(DELETE, "i3")], sequence=31)
    index.save(tmp_path / "snap", {"bundle_version": "v1"})
    loaded, meta = ItemIndex.load_snapshot(tmp_path / "snap", PARAMS)
    assert meta["bundle_version"] == "v1" and loaded.applied_sequence == 31
    assert len(loaded) == 29 and loaded.lookup("i3") is None
    np.testing.assert_array_equal(loaded.vector_of("i7"), vecs[7])
    labels, _ = loaded.search(vecs[3:4], [SearchSpec(k=29)])[0]
    assert "i3" not in loaded.ids(labels)
    assert loaded.is_written("i7") and loaded.written(labels) == [True] * 29
    with (tmp_path / "snap" / "vectors.npy").open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(Exception, match="checksum mismatch for vectors.npy"):
        ItemIndex.load_snapshot(tmp_path / "snap", PARAMS)


def clustered_vectors(n, rng, centers, noise=0.08):
    """Random unit vectors around random centres (top-1 cosine about 0.4, like embeddings).

    Isotropic noise on the 384-sphere is not used: there every point is nearly equidistant
    from every other (top-1 cosine about 0.15 vs a median of 0), so "nearest" is noise and
    any ANN needs near-exhaustive search (measured: ef=800, M=32 for 0.99).
    """
    picks = centers[rng.integers(0, len(centers), n)]
    return l2_normalize(picks + noise * rng.standard_normal((n, centers.shape[1])))


def test_hnsw_recall_at_10_vs_exact_on_20k_vectors():
    """Congruence: the default parameters (M=16, ef_construction=200, ef=64) keep >= 0.98."""
    dim, n = 384, 20_000
    rng = np.random.default_rng(3)
    centers = l2_normalize(rng.standard_normal((100, dim)))
    vecs = clustered_vectors(n, rng, centers)
    params = IndexParams(dim, "ip", 16, 200, 64)
    hnsw = hnswlib.Index(space="ip", dim=dim)
    hnsw.init_index(max_elements=n, M=16, ef_construction=200, random_seed=100)
    hnsw.add_items(vecs, np.arange(n))
    items = [CatalogItem(f"i{i}", "", "", {}) for i in range(n)]
    index = ItemIndex(params, hnsw, items, vecs, 0)
    queries = clustered_vectors(200, np.random.default_rng(4), centers)
    ann = index.search(queries, [SearchSpec(k=10)] * len(queries), num_threads=2)
    exact = np.argsort(-(queries @ vecs.T), axis=1)[:, :10]
    pairs = zip(ann, exact, strict=True)
    recall = np.mean([len(set(labels.tolist()) & set(e)) / 10 for (labels, _), e in pairs])
    assert recall >= 0.98, recall


def test_member_mask_matches_isin():
    rng = np.random.default_rng(3)
    for n, m in ((100, 20), (20, 100), (0, 5), (5, 0), (1, 1)):
        values = rng.integers(0, 60, n).astype(np.int64)
        pool = rng.integers(0, 60, m).astype(np.uint64 if m % 2 else np.int64)
        mask = member_mask(values, pool)
        assert mask.dtype == bool and mask.shape == (n,)
        assert np.array_equal(mask, np.isin(values, pool.astype(np.int64)))
