"""SIGKILL during writes: every acknowledged upsert survives, nothing unacknowledged appears."""

import threading

import numpy as np
import pytest

from recall_service.catalog_log import open_log
from recstack.v1 import recall_pb2, recall_pb2_grpc
from recstack.vectors import l2_normalize, pack, unpack_vector
from tests.process.helpers import Proc

pytestmark = pytest.mark.process
RECALL = "recstack.v1.RecallService"


def test_sigkill_during_1000_upserts_loses_no_acknowledged_write(bundle_dir, bundle, tmp_path):
    state = tmp_path / "state"
    args = [
        "--bundle",
        str(bundle_dir),
        "--state-dir",
        str(state),
        "--bundle-poll-s",
        "0",
        "--snapshot-every",
        "300",
        "--log-poll-s",
        "0.05",
    ]
    server = Proc("recall_service", *args, workdir=tmp_path, name="recall").wait_serving(RECALL)
    stub = recall_pb2_grpc.RecallServiceStub(server.channel())
    rng = np.random.default_rng(0)
    vectors = {f"w{n}": l2_normalize(rng.standard_normal(bundle.dim)) for n in range(1000)}
    acked: dict[str, int] = {}
    sent: list[str] = []

    def write_all():
        for item_id, vec in vectors.items():
            sent.append(item_id)
            try:
                resp = stub.Upsert(
                    recall_pb2.UpsertRequest(
                        items=[
                            recall_pb2.ItemWrite(
                                id=item_id, vector=pack(vec), embedding_version=bundle.version
                            )
                        ]
                    ),
                    timeout=10,
                )
            except Exception:
                return  # the server died mid-call: this write is unacknowledged
            acked[item_id] = resp.sequence

    writer = threading.Thread(target=write_all)
    writer.start()
    while len(acked) < 400:  # kill somewhere in the middle, after snapshots have happened
        threading.Event().wait(0.01)
    server.kill()
    writer.join(timeout=60)
    assert 400 <= len(acked) < 1000

    restarted = Proc("recall_service", *args, workdir=tmp_path, name="recall2")
    restarted.wait_serving(RECALL)
    try:
        stub = recall_pb2_grpc.RecallServiceStub(restarted.channel())
        info = stub.GetInfo(recall_pb2.RecallServiceGetInfoRequest())
        committed = open_log(str(state / "catalog.db")).read_after(0, 10_000)
        committed_ids = [e.write.item_id for e in committed]
        # at most the one in-flight write may have committed without its ack arriving
        assert set(acked) <= set(committed_ids) <= set(sent)
        assert len(committed_ids) == len(set(committed_ids)) <= len(acked) + 1
        assert info.item_count == bundle.manifest["items"]["count"] + len(committed_ids)
        assert info.applied_sequence == max(e.sequence for e in committed)
        for item_id in [*list(acked)[::25], list(acked)[-1]]:
            got = stub.Recall(recall_pb2.RecallRequest(query_vector=pack(vectors[item_id]), k=1))
            assert got.candidates[0].id == item_id
            np.testing.assert_array_equal(
                unpack_vector(got.candidates[0].vector, bundle.dim, "v"),
                vectors[item_id].astype(np.float32),
            )
    finally:
        assert restarted.terminate() == 0
