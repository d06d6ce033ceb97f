"""Crash suite: SIGKILL the recall service at random moments during concurrent writes.

Each cycle starts ``python -m recall_service`` on one state directory (small
``--snapshot-every``, so snapshots are written and loaded across cycles), runs writer
threads doing Upsert/Delete on disjoint id ranges, SIGKILLs the process at a random
moment, restarts it and compares what it serves with a model of acknowledged operations:
every acknowledged write is present exactly once with its exact vector (or absent when
deleted); a write in flight at the kill may or may not be present, but all of its batch or
none of it; ``item_count`` and ``applied_sequence`` agree with the items and the log.

Then damaged state: torn or bit-flipped snapshot files must be detected, logged and
rebuilt from bundle + log with the same data; a corrupted SQLite log must either be
recovered or refused (exit status 3, a log line saying why), never a signal or a hang.

CI runs 3 cycles; ``CRASH_CYCLES=20 pytest tests/process/test_crash.py`` runs 20.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recall_service.catalog_log import open_log
from recstack.client import candidate_vectors
from recstack.core.vectors import l2_normalize, pack
from recstack.v1 import recall_pb2, recall_pb2_grpc
from tests.process.helpers import Proc

pytestmark = pytest.mark.process
RECALL = "recstack.v1.RecallService"
WRITERS = 3
IDS_PER_WRITER = 60
SNAPSHOT_EVERY = 15
ABSENT = b""  # model state of a deleted / never-written id


def recall_args(bundle_dir: Path, state: Path, snapshot_every: int = SNAPSHOT_EVERY) -> list[str]:
    return [
        "--bundle",
        str(bundle_dir),
        "--state-dir",
        str(state),
        "--bundle-poll-s",
        "0",
        "--snapshot-every",
        str(snapshot_every),
        "--log-poll-s",
        "0.05",
        "--grace-seconds",
        "5",
    ]


@dataclass
class Model:
    """Acknowledged state per id (packed vector, or ABSENT) plus in-flight batches."""

    acked: dict[str, bytes] = field(default_factory=dict)
    # Batches sent when the server died: {id: state it would set}, one dict per batch.
    pending: list[dict[str, bytes]] = field(default_factory=list)
    acked_ops: int = 0  # acknowledged item writes (upserts + deletes), all cycles
    # RPC errors while the server was still meant to be up (must stay empty)
    unexpected: list[str] = field(default_factory=list)
    lost: int = 0  # acknowledged item writes missing after a restart (must stay 0)
    inflight_applied: int = 0
    inflight_dropped: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def writer(
    stub: recall_pb2_grpc.RecallServiceStub,
    model: Model,
    ids: list[str],
    version: str,
    dim: int,
    seed: int,
    stop: threading.Event,
    killing: threading.Event,
    acked_once: threading.Event,
) -> None:
    """Random Upsert/Delete batches on this writer's own ids until the server dies.

    ``killing`` is set just before the SIGKILL: an RPC error before that is not the kill
    and is recorded as unexpected (not silently counted as an in-flight write).
    ``acked_once`` is set after this cycle's first acknowledged write.
    """
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    while not stop.is_set():
        batch = rng.sample(ids, rng.randint(1, 4))
        if rng.random() < 0.7:
            vectors = l2_normalize(nprng.standard_normal((len(batch), dim)))
            effect = {i: pack(v) for i, v in zip(batch, vectors, strict=True)}
            request = recall_pb2.UpsertRequest(
                items=[
                    recall_pb2.ItemWrite(
                        id=i, vector=effect[i], embedding_version=version, text=f"crash {i}"
                    )
                    for i in batch
                ]
            )
            call = stub.Upsert
        else:
            effect = dict.fromkeys(batch, ABSENT)
            request = recall_pb2.DeleteRequest(ids=batch)
            call = stub.Delete
        try:
            call(request, timeout=30)
        except grpc.RpcError as err:
            with model.lock:
                model.pending.append(effect)
                if not killing.is_set():
                    model.unexpected.append(f"{err.code().name}: {err.details()}")
            return  # the server died mid-call: unacknowledged
        with model.lock:
            model.acked.update(effect)
            model.acked_ops += len(batch)
        acked_once.set()


def served_items(stub: recall_pb2_grpc.RecallServiceStub, dim: int) -> list[tuple[str, bytes]]:
    """Every live item with its stored vector (exact search over everything)."""
    probe = np.zeros(dim, dtype=np.float32)
    probe[0] = 1.0
    resp = stub.Recall(
        recall_pb2.RecallRequest(query_vector=pack(probe), k=1000, exact=True), timeout=30
    )
    vectors = candidate_vectors(resp)
    return [(i, vectors[n].tobytes()) for n, i in enumerate(resp.ids)]


def verify(
    stub: recall_pb2_grpc.RecallServiceStub,
    model: Model,
    bundle: object,
    state: Path,
) -> None:
    """Served state == acknowledged model (in-flight batches: all-or-nothing); resolve them."""
    dim = bundle.dim  # type: ignore[attr-defined]
    items = served_items(stub, dim)
    served_ids = [i for i, _ in items]
    assert len(served_ids) == len(set(served_ids)), "an item is served more than once"
    served = dict(items)
    bundle_ids = {it.id for it in bundle.iter_catalog()}  # type: ignore[attr-defined]
    assert bundle_ids <= set(served), "bundle items went missing"
    pending_ids = {i for batch in model.pending for i in batch}
    for item_id, want in model.acked.items():
        if item_id in pending_ids:
            continue
        if served.get(item_id, ABSENT) != want:
            model.lost += 1
    for batch in model.pending:
        applied = [served.get(i, ABSENT) == s for i, s in batch.items()]
        kept = [served.get(i, ABSENT) == model.acked.get(i, ABSENT) for i in batch]
        # each id shows the acknowledged state or the in-flight one ...
        assert all(a or k for a, k in zip(applied, kept, strict=True)), batch.keys()
        # ... and the batch applied atomically: all of it or none of it
        assert all(applied) or all(kept), f"in-flight batch half-applied: {sorted(batch)}"
        if all(applied) and not all(kept):
            model.inflight_applied += 1
        elif not all(applied):
            model.inflight_dropped += 1
        model.acked.update({i: served.get(i, ABSENT) for i in batch})
    model.pending.clear()
    assert model.lost == 0, f"{model.lost} acknowledged writes lost"
    live = sum(1 for v in model.acked.values() if v != ABSENT)
    assert set(served) == bundle_ids | {i for i, v in model.acked.items() if v != ABSENT}
    info = stub.GetInfo(recall_pb2.RecallServiceGetInfoRequest(), timeout=10)
    assert info.item_count == len(bundle_ids) + live
    log = open_log(f"sqlite:///{state / 'catalog.db'}")
    try:
        assert info.applied_sequence == log.last_sequence()
    finally:
        log.close()


def start(bundle_dir: Path, state: Path, workdir: Path, name: str) -> Proc:
    return Proc("recall_service", *recall_args(bundle_dir, state), workdir=workdir, name=name)


def run_cycles(cycles: int, bundle_dir: Path, bundle: object, tmp_path: Path) -> Model:
    state = tmp_path / "state"
    model = Model()
    version = bundle.version  # type: ignore[attr-defined]
    dim = bundle.dim  # type: ignore[attr-defined]
    rng = random.Random(20261125)
    for cycle in range(cycles):
        server = start(bundle_dir, state, tmp_path, f"recall-{cycle}").wait_serving(RECALL)
        stub = recall_pb2_grpc.RecallServiceStub(server.channel())
        if cycle:
            verify(stub, model, bundle, state)  # the state the last kill left
        stop, killing, acked_once = threading.Event(), threading.Event(), threading.Event()
        threads = [
            threading.Thread(
                target=writer,
                args=(
                    stub,
                    model,
                    [f"c{w}-{n}" for n in range(IDS_PER_WRITER)],
                    version,
                    dim,
                    cycle * 100 + w,
                    stop,
                    killing,
                    acked_once,
                ),
                daemon=True,
            )
            for w in range(WRITERS)
        ]
        for t in threads:
            t.start()
        # The random moment is counted from the first acknowledged write, so that every
        # cycle kills during writes, however slow the machine is to get them going.
        if not acked_once.wait(60):
            server.kill()
            raise AssertionError(f"cycle {cycle}: no write acknowledged: {model.unexpected}")
        time.sleep(rng.uniform(0.05, 1.5))
        killing.set()
        server.proc.kill()  # SIGKILL at a random moment
        server.proc.wait()
        server.log.close()
        stop.set()
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a writer hung after the kill"
        assert not model.unexpected, f"writes failed before the kill: {model.unexpected}"
    final = start(bundle_dir, state, tmp_path, "recall-final").wait_serving(RECALL)
    try:
        verify(recall_pb2_grpc.RecallServiceStub(final.channel()), model, bundle, state)
    finally:
        assert final.terminate() == 0
    print(
        f"\ncrash cycles: {cycles}; acknowledged item writes: {model.acked_ops}; "
        f"lost: {model.lost}; in-flight batches at kill: applied "
        f"{model.inflight_applied}, not applied {model.inflight_dropped}"
    )
    return model


def test_crash_cycles(bundle_dir, bundle, tmp_path):
    model = run_cycles(int(os.environ.get("CRASH_CYCLES", "3")), bundle_dir, bundle, tmp_path)
    assert model.acked_ops > 0 and model.lost == 0


# ---- damaged state -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written_state(bundle_dir, bundle, tmp_path_factory):
    """A state dir with a log and a current snapshot (and log entries after it), stopped.

    The writer runs with ``--snapshot-every`` equal to the number of writes before the last
    one, so exactly one snapshot is taken, at exactly that sequence, whenever the tailer
    gets to it; the test waits for it, then writes once more (replayed after the snapshot).
    """
    root = tmp_path_factory.mktemp("damaged")
    state = root / "state"
    before_last = 20 * 3 + 2  # the upserts and the two deletes below
    server = Proc(
        "recall_service",
        *recall_args(bundle_dir, state, snapshot_every=before_last),
        workdir=root,
        name="writer",
    ).wait_serving(RECALL)
    stub = recall_pb2_grpc.RecallServiceStub(server.channel())
    model = Model()
    rng = np.random.default_rng(7)
    for n in range(0, 60, 3):
        batch = [f"d-{n + j}" for j in range(3)]
        vectors = l2_normalize(rng.standard_normal((3, bundle.dim)))
        effect = {i: pack(v) for i, v in zip(batch, vectors, strict=True)}
        stub.Upsert(
            recall_pb2.UpsertRequest(
                items=[
                    recall_pb2.ItemWrite(id=i, vector=v, embedding_version=bundle.version)
                    for i, v in effect.items()
                ]
            ),
            timeout=10,
        )
        model.acked.update(effect)
    seq = stub.Delete(recall_pb2.DeleteRequest(ids=["d-0", "d-4"]), timeout=10).sequence
    assert seq == before_last, seq
    model.acked.update({"d-0": ABSENT, "d-4": ABSENT})
    end = time.monotonic() + 60
    while not (state / "SNAPSHOT").is_file():
        assert time.monotonic() < end, "no snapshot was written"
        time.sleep(0.05)
    # snapshot-<version>-<applied_sequence>-<ns>: it holds everything written so far
    assert (state / "SNAPSHOT").read_text().strip().rsplit("-", 2)[1] == str(before_last)
    # one more write after the (only) snapshot so that a loaded snapshot needs replay
    vec = l2_normalize(rng.standard_normal(bundle.dim))
    stub.Upsert(
        recall_pb2.UpsertRequest(
            items=[
                recall_pb2.ItemWrite(
                    id="d-last", vector=pack(vec), embedding_version=bundle.version
                )
            ]
        ),
        timeout=10,
    )
    model.acked["d-last"] = pack(vec)
    assert server.terminate() == 0
    assert (state / "SNAPSHOT").is_file()
    return state, model


def copy_state(state: Path, tmp_path: Path) -> tuple[Path, Path]:
    copy = tmp_path / "state"
    shutil.copytree(state, copy)
    snapshot = copy / (copy / "SNAPSHOT").read_text().strip()
    return copy, snapshot


def flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    where = len(data) // 2 if offset is None else offset
    data[where] ^= 0xFF
    path.write_bytes(bytes(data))


def bump_sequence(meta: Path) -> None:
    """A one-digit change in applied_sequence: the checksummed data files stay intact."""
    text = meta.read_text()
    seq = json.loads(text)["applied_sequence"]
    key = f'"applied_sequence": {seq}'
    assert key in text
    meta.write_text(text.replace(key, f'"applied_sequence": {seq + 9}'))


DAMAGE = {
    "index.bin flipped": lambda s: flip(s / "index.bin"),
    "index.bin torn": lambda s: os.truncate(s / "index.bin", (s / "index.bin").stat().st_size // 2),
    "vectors.npy flipped": lambda s: flip(s / "vectors.npy"),
    "vectors.npy torn": lambda s: os.truncate(s / "vectors.npy", 100),
    "items.jsonl flipped": lambda s: flip(s / "items.jsonl"),
    "items.jsonl torn": lambda s: os.truncate(s / "items.jsonl", 10),
    "meta.json flipped": lambda s: flip(s / "meta.json"),
    "meta.json torn": lambda s: os.truncate(s / "meta.json", 20),
    "meta.json sequence changed": lambda s: bump_sequence(s / "meta.json"),
    "snapshot missing": lambda s: shutil.rmtree(s),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_snapshot_is_detected_and_rebuilt(
    damage, written_state, bundle_dir, bundle, tmp_path
):
    state, model = written_state
    copy, snapshot = copy_state(state, tmp_path)
    DAMAGE[damage](snapshot)
    server = start(bundle_dir, copy, tmp_path, "recall").wait_serving(RECALL)
    try:
        check = Model(acked=dict(model.acked))
        verify(recall_pb2_grpc.RecallServiceStub(server.channel()), check, bundle, copy)
    finally:
        assert server.terminate() == 0
    log = (tmp_path / "recall.log").read_text()
    assert "snapshot unusable, rebuilding from bundle + log" in log, log[-2000:]


def test_intact_snapshot_is_used(written_state, bundle_dir, bundle, tmp_path):
    """Control for the test above: without damage the snapshot loads (nothing logged)."""
    state, model = written_state
    copy, _ = copy_state(state, tmp_path)
    server = start(bundle_dir, copy, tmp_path, "recall").wait_serving(RECALL)
    try:
        check = Model(acked=dict(model.acked))
        verify(recall_pb2_grpc.RecallServiceStub(server.channel()), check, bundle, copy)
    finally:
        assert server.terminate() == 0
    log = (tmp_path / "recall.log").read_text()
    assert "snapshot unusable" not in log
    assert '"snapshot_sequence": 0' not in log


def serving_or_exit(proc: subprocess.Popen[bytes], port_file: Path, timeout: float) -> str:
    """Wait until the process is SERVING ("serving") or has exited ("exited")."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return "exited"
        if port_file.exists():
            port = int(port_file.read_text())
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    status = (
                        health_pb2_grpc.HealthStub(channel)
                        .Check(health_pb2.HealthCheckRequest(service=RECALL), timeout=2)
                        .status
                    )
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return "serving"
                except grpc.RpcError:
                    pass
        time.sleep(0.1)
    raise AssertionError(f"neither SERVING nor exited within {timeout}s (hang)")


@pytest.mark.parametrize("where", ["middle", "header"])
def test_corrupted_sqlite_log_recovers_or_refuses(where, written_state, bundle_dir, tmp_path):
    state, _ = written_state
    copy, snapshot = copy_state(state, tmp_path)
    shutil.rmtree(snapshot)  # force a full replay from the log
    db = copy / "catalog.db"
    for extra in ("catalog.db-wal", "catalog.db-shm"):
        (copy / extra).unlink(missing_ok=True)  # checkpointed at the clean stop
    size = db.stat().st_size
    offset = size // 2 if where == "middle" else 0
    with db.open("r+b") as f:
        f.seek(offset)
        f.write(bytes(random.Random(1).randrange(256) for _ in range(4096)))
    port_file = tmp_path / "recall.port"
    with (tmp_path / "recall.log").open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "recall_service",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                *recall_args(bundle_dir, copy),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            outcome = serving_or_exit(proc, port_file, 120)
            if outcome == "serving":
                # SQLite coped: the service must still answer and stop cleanly.
                port = int(port_file.read_text())
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = recall_pb2_grpc.RecallServiceStub(channel)
                    stub.GetInfo(recall_pb2.RecallServiceGetInfoRequest(), timeout=10)
                proc.terminate()
                assert proc.wait(30) == 0
            else:
                code = proc.wait(30)
                assert code >= 0, f"killed by signal {-code}"
                assert code == 3, f"exit status {code}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = (tmp_path / "recall.log").read_text()
    print(f"\ncorrupted catalog.db ({where}): {outcome}")
    if outcome == "exited":
        assert "catalog log" in text and "is unreadable" in text, text[-3000:]
