"""The shared PostgreSQL catalog log with a real server: two replicas, one log."""

import numpy as np
import pytest

from recall_service.catalog_log import DELETE, UPSERT, LogWrite, open_log
from recall_service.server import serve
from recstack.core.config import ServerOptions
from recstack.v1 import recall_pb2, recall_pb2_grpc
from tests.conftest import channel_to, recall_options
from tests.postgres import postgres_cluster


@pytest.fixture(scope="module")
def dsn():
    with postgres_cluster() as dsn:
        yield dsn


def test_postgres_log_orders_and_roundtrips(dsn):
    log = open_log(dsn)
    vec = np.arange(4, dtype=np.float32)
    first = log.append([LogWrite(UPSERT, "a", "A", "alpha", {"x": 1}, vec, "v1")])
    second = log.append([LogWrite(DELETE, "a")])
    assert second > first and log.last_sequence() == second
    entries = log.read_after(first - 1, 10)
    assert [e.write.op for e in entries] == [UPSERT, DELETE]
    np.testing.assert_array_equal(entries[0].write.vector, vec)
    assert entries[0].write.metadata == {"x": 1}
    log.close()


def test_two_replicas_share_one_log(dsn, bundle_dir, tmp_path):
    def replica(name):
        options = recall_options(bundle_dir, tmp_path / name, catalog_dsn=dsn, log_poll_s=0.1)
        running = serve(ServerOptions(port=0), options)
        running.wait_ready(120)
        return running

    a, b = replica("a"), replica("b")
    try:
        stub_a = recall_pb2_grpc.RecallServiceStub(channel_to(a))
        stub_b = recall_pb2_grpc.RecallServiceStub(channel_to(b))
        seq = stub_a.Upsert(
            recall_pb2.UpsertRequest(
                items=[recall_pb2.ItemWrite(id="shared-item", text="written through replica a")]
            )
        ).sequence
        got = stub_b.Recall(
            recall_pb2.RecallRequest(query_text="written through replica a", k=1, min_sequence=seq),
            timeout=10,
        )
        assert got.ids[0] == "shared-item"
        seq = stub_b.Delete(recall_pb2.DeleteRequest(ids=["shared-item"])).sequence
        got = stub_a.Recall(
            recall_pb2.RecallRequest(query_text="written through replica a", k=5, min_sequence=seq),
            timeout=10,
        )
        assert "shared-item" not in list(got.ids)
    finally:
        a.stop(0)
        b.stop(0)
