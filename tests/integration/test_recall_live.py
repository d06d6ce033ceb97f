"""Live catalog through a real recall server: writes, read-your-writes, filters, batches,
concurrency, hot swap. Each test gets its own server and state directory."""

import json
import shutil
import threading

import grpc
import numpy as np
import pytest

from recall_service import core as recall_core
from recall_service.server import serve
from recstack.client import candidate_scores, candidate_vectors, error_details
from recstack.core.bundle import MANIFEST, write_manifest
from recstack.core.config import ServerOptions
from recstack.core.vectors import l2_normalize, pack
from recstack.v1 import recall_pb2, recall_pb2_grpc
from tests.conftest import channel_to, recall_options


@pytest.fixture
def server(bundle_dir, tmp_path):
    running = serve(ServerOptions(port=0), recall_options(bundle_dir, tmp_path / "state"))
    running.wait_ready(120)
    yield running
    running.stop(0)


@pytest.fixture
def stub(server):
    return recall_pb2_grpc.RecallServiceStub(channel_to(server))


def random_vector(dim, seed):
    return l2_normalize(np.random.default_rng(seed).standard_normal(dim))


def ids_of(resp):
    return list(resp.ids)


def test_upsert_by_text_and_vector_then_delete(stub, bundle):
    vec = random_vector(bundle.dim, 1)
    seq1 = stub.Upsert(
        recall_pb2.UpsertRequest(
            items=[
                recall_pb2.ItemWrite(
                    id="new-text",
                    title="Brand new",
                    text="a submarine heist thriller",
                    metadata_json='{"genres": ["Thriller"], "year": 2030}',
                ),
                recall_pb2.ItemWrite(
                    id="new-vec",
                    title="By vector",
                    vector=pack(vec),
                    embedding_version=bundle.version,
                ),
            ]
        )
    ).sequence
    assert seq1 >= 2
    got = stub.Recall(recall_pb2.RecallRequest(query_vector=pack(vec), k=3))
    assert got.ids[0] == "new-vec"
    assert candidate_scores(got)[0] == pytest.approx(1.0, abs=1e-4)
    assert got.written[0]  # upserted after the bundle
    by_text = stub.Recall(recall_pb2.RecallRequest(query_text="a submarine heist thriller", k=1))
    assert by_text.ids[0] == "new-text"  # item cold start: served from text alone
    # the new item's title is usable in a history right away
    stub.Recall(recall_pb2.RecallRequest(history_item_ids=["new-text"], k=2))
    seq2 = stub.Delete(recall_pb2.DeleteRequest(ids=["new-vec", "never-existed"])).sequence
    assert seq2 > seq1
    after = stub.Recall(recall_pb2.RecallRequest(query_vector=pack(vec), k=50))
    assert "new-vec" not in ids_of(after)
    info = stub.GetInfo(recall_pb2.RecallServiceGetInfoRequest())
    assert info.applied_sequence == seq2
    assert info.item_count == bundle.manifest["items"]["count"] + 1


def test_upsert_replaces_existing_item(stub, bundle):
    first = next(bundle.iter_catalog()).id
    vec = random_vector(bundle.dim, 2)
    stub.Upsert(
        recall_pb2.UpsertRequest(
            items=[
                recall_pb2.ItemWrite(
                    id=first, title="Replaced", vector=pack(vec), embedding_version=bundle.version
                )
            ]
        )
    )
    got = stub.Recall(recall_pb2.RecallRequest(query_vector=pack(vec), k=1, include_details=True))
    assert got.ids[0] == first and got.titles[0] == "Replaced" and got.written[0]
    np.testing.assert_allclose(candidate_vectors(got)[0], vec, atol=1e-6)
    items = stub.GetItems(recall_pb2.GetItemsRequest(ids=[first])).items
    assert [(it.title, it.written) for it in items] == [("Replaced", True)]
    info = stub.GetInfo(recall_pb2.RecallServiceGetInfoRequest())
    assert info.item_count == bundle.manifest["items"]["count"]


def test_min_sequence_read_your_writes(stub, bundle, monkeypatch):
    seq = stub.Upsert(
        recall_pb2.UpsertRequest(items=[recall_pb2.ItemWrite(id="ryw", text="read your writes")])
    ).sequence
    got = stub.Recall(
        recall_pb2.RecallRequest(query_text="read your writes", k=1, min_sequence=seq), timeout=30
    )
    assert got.ids[0] == "ryw"
    # The server gives up a margin before the caller's deadline so that its answer (naming
    # min_sequence) arrives before the caller's own bare expiry. 50 ms is a race on a busy
    # machine; here the margin is 10% of a deadline long enough to reach the server at all.
    monkeypatch.setattr(recall_core, "DEADLINE_MARGIN_S", 1.0)
    with pytest.raises(grpc.RpcError) as err:
        stub.Recall(
            recall_pb2.RecallRequest(query_text="x", k=1, min_sequence=seq + 100), timeout=3.0
        )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "min_sequence" in err.value.details()


def test_filters_and_exact(stub, bundle):
    info = stub.GetInfo(recall_pb2.RecallServiceGetInfoRequest())
    catalog = list(bundle.iter_catalog())
    field = info.filter_fields[0]
    values = {
        str(v)
        for it in catalog
        for v in (
            it.metadata.get(field)
            if isinstance(it.metadata.get(field), list)
            else [it.metadata.get(field)]
        )
        if v is not None
    }
    value = sorted(values)[0]
    flt = recall_pb2.MetadataFilter(field=field, any_of=[value])
    got = stub.Recall(recall_pb2.RecallRequest(query_text="anything", k=5, filters=[flt]))
    by_id = {it.id: it for it in catalog}
    for item_id in got.ids:
        meta = by_id[item_id].metadata[field]
        assert value in ([str(m) for m in meta] if isinstance(meta, list) else [str(meta)])
    exact = stub.Recall(recall_pb2.RecallRequest(query_text="anything", k=10, exact=True))
    ann = stub.Recall(recall_pb2.RecallRequest(query_text="anything", k=10))
    assert ids_of(exact) == ids_of(ann)  # tiny catalog: HNSW is exact here
    with pytest.raises(grpc.RpcError) as err:
        stub.Recall(
            recall_pb2.RecallRequest(
                query_text="x",
                k=5,
                filters=[recall_pb2.MetadataFilter(field="no_such_field", any_of=["1"])],
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "filters[0].field" in err.value.details()


def test_batch_equals_single_calls(stub):
    requests = [recall_pb2.RecallRequest(query_text=t, k=4) for t in ("space", "love", "war")]
    batch = stub.RecallBatch(recall_pb2.RecallBatchRequest(requests=requests))
    assert [ids_of(r) for r in batch.responses] == [ids_of(stub.Recall(r)) for r in requests]
    with pytest.raises(grpc.RpcError) as err:
        stub.RecallBatch(
            recall_pb2.RecallBatchRequest(
                requests=[requests[0], recall_pb2.RecallRequest(query_vector=b"\0" * 8, k=1)]
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[1].query_vector" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.RecallBatch(recall_pb2.RecallBatchRequest(requests=requests * 100))
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
    details = error_details(err.value)
    assert details is not None and details.reason == "LIMIT_EXCEEDED"
    assert details.fields == ("requests",)


@pytest.mark.parametrize(
    ("item", "code", "field"),
    [
        (dict(id="", text="x"), "INVALID_ARGUMENT", "items[0].id"),
        (dict(id="a"), "INVALID_ARGUMENT", "items[0].text"),
        (
            dict(id="a", vector=pack(np.ones(3)), embedding_version="V"),
            "INVALID_ARGUMENT",
            "items[0].vector",
        ),
        (dict(id="a", text="x", metadata_json="[1]"), "INVALID_ARGUMENT", "items[0].metadata_json"),
        (
            dict(id="a", text="x", metadata_json="{bad"),
            "INVALID_ARGUMENT",
            "items[0].metadata_json",
        ),
    ],
)
def test_bad_writes(stub, bundle, item, code, field):
    if item.get("embedding_version") == "V":
        item = {
            **item,
            "vector": pack(np.ones(bundle.dim - 1)),
            "embedding_version": bundle.version,
        }
    with pytest.raises(grpc.RpcError) as err:
        stub.Upsert(recall_pb2.UpsertRequest(items=[recall_pb2.ItemWrite(**item)]))
    assert err.value.code() == grpc.StatusCode[code]
    assert field in err.value.details()
    assert stub.GetInfo(recall_pb2.RecallServiceGetInfoRequest()).applied_sequence == 0


def test_vector_from_another_version_is_refused(stub, bundle):
    with pytest.raises(grpc.RpcError) as err:
        stub.Upsert(
            recall_pb2.UpsertRequest(
                items=[
                    recall_pb2.ItemWrite(
                        id="a", vector=pack(random_vector(bundle.dim, 3)), embedding_version="old"
                    )
                ]
            )
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "items[0].embedding_version" in err.value.details()


def test_concurrent_searches_never_see_acknowledged_deletes(stub, bundle):
    """Searches run throughout the writes, and every acknowledged delete is checked by at
    least one search that started after it while the writer is still writing: the writer
    waits for that before its next write, so the overlap does not depend on machine speed."""
    wait_s = 60.0
    dim = bundle.dim
    vecs = {f"c{n}": random_vector(dim, 100 + n) for n in range(60)}
    deleted: list[str] = []  # acknowledged deletes, in order
    checked = threading.Condition()
    checked_upto = [0]  # every search that saw deleted[:n] finished: the largest such n
    errors: list[str] = []
    done = threading.Event()
    readers_n = 4
    readers_started = threading.Barrier(readers_n + 1, timeout=wait_s)

    def writer():
        try:
            readers_started.wait()
            for name, vec in vecs.items():
                stub.Upsert(
                    recall_pb2.UpsertRequest(
                        items=[
                            recall_pb2.ItemWrite(
                                id=name, vector=pack(vec), embedding_version=bundle.version
                            )
                        ]
                    )
                )
                stub.Delete(recall_pb2.DeleteRequest(ids=[name]))
                with checked:
                    deleted.append(name)  # acknowledged: must never be returned again
                    n = len(deleted)
                    if not checked.wait_for(lambda n=n: checked_upto[0] >= n, wait_s):
                        errors.append(f"no search checked the delete of {name}")
                        return
        except Exception as exc:  # surfaced by the asserts below
            errors.append(f"writer: {exc!r}")
        finally:
            done.set()

    def reader(seed):
        rng = np.random.default_rng(seed)
        try:
            readers_started.wait()
            while not done.is_set():
                name = f"c{rng.integers(0, 60)}"
                with checked:
                    gone = set(deleted)
                resp = stub.Recall(recall_pb2.RecallRequest(query_vector=pack(vecs[name]), k=5))
                leaked = gone & set(ids_of(resp))
                if leaked:
                    errors.append(f"deleted ids returned: {leaked}")
                with checked:
                    checked_upto[0] = max(checked_upto[0], len(gone))
                    checked.notify_all()
        except Exception as exc:  # surfaced by the asserts below
            errors.append(f"reader: {exc!r}")

    threads = [threading.Thread(target=writer, daemon=True)] + [
        threading.Thread(target=reader, args=(s,), daemon=True) for s in range(readers_n)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a writer or reader never finished"
    assert not errors, errors[:5]
    assert done.is_set()
    assert len(deleted) == len(vecs)


def make_version(bundle_dir, root, version):
    """A copy of the test bundle under a new version name, published via CURRENT."""
    target = root / version
    shutil.copytree(bundle_dir, target)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["version"] = version
    write_manifest(target, {k: v for k, v in manifest.items() if k != "files"})
    (root / "CURRENT").write_text(version + "\n")
    return target


def test_hot_swap_keeps_live_writes_and_refuses_bad_bundles(bundle_dir, tmp_path):
    root = tmp_path / "bundles"
    make_version(bundle_dir, root, "v-one")
    running = serve(ServerOptions(port=0), recall_options(root, tmp_path / "state"))
    try:
        running.wait_ready(120)
        stub = recall_pb2_grpc.RecallServiceStub(channel_to(running))
        stub.Upsert(
            recall_pb2.UpsertRequest(
                items=[recall_pb2.ItemWrite(id="live", text="an item written before the swap")]
            )
        )
        admin = recall_pb2_grpc.RecallAdminServiceStub(channel_to(running))
        # the deprecated alias (one release) and the admin service reload alike
        assert stub.ReloadBundle(recall_pb2.ReloadBundleRequest()).swapped is False
        reload = recall_pb2.RecallAdminServiceReloadBundleRequest()
        assert admin.ReloadBundle(reload).swapped is False
        make_version(bundle_dir, root, "v-two")
        resp = admin.ReloadBundle(reload)
        assert resp.swapped and resp.bundle_version == "v-two"
        got = stub.Recall(
            recall_pb2.RecallRequest(query_text="an item written before the swap", k=1)
        )
        assert got.bundle_version == "v-two" and got.ids[0] == "live"
        bad = make_version(bundle_dir, root, "v-bad")
        with (bad / "index" / "hnsw.bin").open("ab") as f:
            f.write(b"junk")
        with pytest.raises(grpc.RpcError) as err:
            admin.ReloadBundle(reload)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "checksum mismatch" in err.value.details()
        info = stub.GetInfo(recall_pb2.RecallServiceGetInfoRequest())
        assert info.bundle_version == "v-two"
    finally:
        running.stop(0)


def test_restart_uses_snapshot_and_replays_the_rest(bundle_dir, tmp_path):
    options = recall_options(bundle_dir, tmp_path / "state", snapshot_every=1, log_poll_s=0.05)
    running = serve(ServerOptions(port=0), options)
    running.wait_ready(120)
    stub = recall_pb2_grpc.RecallServiceStub(channel_to(running))
    stub.Upsert(recall_pb2.UpsertRequest(items=[recall_pb2.ItemWrite(id="s1", text="first")]))
    for _ in range(600):  # the tailer snapshots after >= 1 applied write
        if (tmp_path / "state" / "SNAPSHOT").exists():
            break
        threading.Event().wait(0.05)
    assert (tmp_path / "state" / "SNAPSHOT").exists(), "no snapshot written within 30 s"
    running.stop(0)
    restarted = serve(ServerOptions(port=0), options)
    try:
        restarted.wait_ready(120)
        stub = recall_pb2_grpc.RecallServiceStub(channel_to(restarted))
        got = stub.Recall(recall_pb2.RecallRequest(query_text="first", k=1))
        assert got.ids[0] == "s1"
    finally:
        restarted.stop(0)


def test_int8_query_encoder_leaves_item_vectors_fp32(bundle_dir, bundle, tmp_path):
    """``--query-encoder-int8``: query texts go through the int8 encoder, item texts
    (upserts) through the fp32 one, so live items share the bundle's vector space."""
    from recstack.models.encoder import TextEncoder
    from recstack.models.ort import SessionOptions

    text = "a quiet lighthouse drama"
    fp32 = TextEncoder(bundle, SessionOptions(device="cpu")).encode([text])[0]
    int8 = TextEncoder(bundle, SessionOptions(device="cpu"), int8=True).encode([text])[0]
    assert float(fp32 @ int8) < 1 - 1e-4  # the two encoders differ on this text
    running = serve(
        ServerOptions(port=0),
        recall_options(bundle_dir, tmp_path / "state", query_encoder_int8=True),
    )
    try:
        running.wait_ready(120)
        stub = recall_pb2_grpc.RecallServiceStub(channel_to(running))
        stub.Upsert(recall_pb2.UpsertRequest(items=[recall_pb2.ItemWrite(id="lh", text=text)]))
        by_vector = stub.Recall(recall_pb2.RecallRequest(query_vector=pack(fp32), k=1))
        assert ids_of(by_vector) == ["lh"]
        assert candidate_scores(by_vector)[0] == pytest.approx(1.0, abs=1e-4)  # fp32 item
        by_text = stub.Recall(recall_pb2.RecallRequest(query_text=text, k=50))
        score = dict(zip(ids_of(by_text), candidate_scores(by_text), strict=True))["lh"]
        assert score == pytest.approx(float(int8 @ fp32), abs=1e-4)  # int8 query
    finally:
        running.stop(0)
