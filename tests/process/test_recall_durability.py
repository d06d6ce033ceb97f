"""SIGKILL during writes: every acknowledged upsert survives, nothing unacknowledged appears.

The writer pauses after 400 acknowledged upserts until a snapshot exists (so that the
restart loads a snapshot and replays the log after it), then writes on; the kill comes once
more writes have been acknowledged after the pause. Every wait is for that exact point and
fails naming it; an RPC error before the kill is a failure, not an unacknowledged write.
"""

import threading
import time

import numpy as np
import pytest

from recall_service.catalog_log import open_log
from recstack.client import candidate_vectors
from recstack.core.vectors import l2_normalize, pack
from recstack.v1 import recall_pb2, recall_pb2_grpc
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
    unexpected: list[BaseException] = []
    paused, resume, killing = threading.Event(), threading.Event(), threading.Event()
    wait_s = 120.0

    def write_all():
        for item_id, vec in vectors.items():
            if len(acked) == 400:
                paused.set()
                resume.wait()  # set by the test (always, in its finally)
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
                    timeout=30,
                )
            except Exception as exc:
                if not killing.is_set():
                    unexpected.append(exc)
                return  # the server died mid-call: this write is unacknowledged
            acked[item_id] = resp.sequence

    def wait_for(predicate, what):
        until = time.monotonic() + wait_s
        while not predicate():
            assert not unexpected, f"writes failed before the kill: {unexpected}"
            assert writer.is_alive(), f"the writer stopped early ({len(acked)} acked)"
            assert time.monotonic() < until, f"{what}: not reached within {wait_s}s"
            threading.Event().wait(0.01)

    writer = threading.Thread(target=write_all, daemon=True)
    writer.start()
    try:
        wait_for(paused.is_set, "400 acknowledged upserts")
        # the tailer snapshots every 300 applied writes; while paused, nothing else changes
        wait_for((state / "SNAPSHOT").is_file, "a snapshot of the first 300+ writes")
        resume.set()
        wait_for(lambda: len(acked) >= 410, "writes acknowledged after the pause")
        killing.set()
        server.kill()  # in the middle of the writes
    finally:
        resume.set()
        if not killing.is_set():
            server.kill()
    writer.join(timeout=60)
    assert not writer.is_alive(), "the writer hung after the kill"
    assert not unexpected, f"writes failed before the kill: {unexpected}"
    assert 410 <= len(acked) < 1000

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
            assert got.ids[0] == item_id
            np.testing.assert_array_equal(
                candidate_vectors(got)[0],
                vectors[item_id].astype(np.float32),
            )
    finally:
        assert restarted.terminate() == 0
