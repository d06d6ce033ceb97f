"""Soak: a bounded mixed read/write load at a fixed rate against recall + rank + gateway.

The three services run as processes (``python -m ...``). A dispatcher issues requests on a
fixed schedule (open loop, ``RATE`` per second) through the typed client: Recommend
(gateway -> recall -> rank), RecordEvents, Upsert and Delete (recall, a bounded id pool so
the catalog churns without growing without limit). Every request must succeed; the
resident set size (VmRSS) of each process is read after a warm-up and at the end, and must
not grow by more than 50% + 50 MB.

CI runs 20 s; ``SOAK_SECONDS=300 pytest tests/process/test_soak.py`` runs longer.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from recstack.client import RecstackClient, item_write
from recstack.core.vectors import l2_normalize
from tests.process.helpers import Proc

pytestmark = pytest.mark.process
RATE = 25.0  # requests per second, all kinds together
WARMUP_S = 3.0
POOL = 150
MIX = [("recommend", 0.6), ("record_events", 0.15), ("upsert", 0.15), ("delete", 0.10)]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def start_stack(bundle_dir: Path, tmp: Path) -> dict[str, Proc]:
    common = ["--bundle", str(bundle_dir), "--bundle-poll-s", "0"]
    recall = Proc(
        "recall_service",
        *common,
        "--state-dir",
        str(tmp / "recall"),
        "--snapshot-every",
        "500",
        workdir=tmp,
        name="recall",
    ).wait_serving("recstack.v1.RecallService")
    rank = Proc("rank_service", *common, workdir=tmp, name="rank").wait_serving(
        "recstack.v1.RankService"
    )
    gateway = Proc(
        "gateway",
        "--bundle",
        str(bundle_dir),
        "--state-dir",
        str(tmp / "gateway"),
        "--recall-address",
        f"127.0.0.1:{recall.port}",
        "--rank-address",
        f"127.0.0.1:{rank.port}",
        workdir=tmp,
        name="gateway",
    ).wait_serving("recstack.v1.RecommendService")
    return {"recall": recall, "rank": rank, "gateway": gateway}


def soak(bundle_dir: Path, bundle: object, tmp: Path, seconds: float) -> None:
    procs = start_stack(bundle_dir, tmp)
    version = bundle.version  # type: ignore[attr-defined]
    dim = bundle.dim  # type: ignore[attr-defined]
    users = [u for u, _ in bundle.iter_user_histories()]  # type: ignore[attr-defined]
    items = [it.id for it in bundle.iter_catalog()]  # type: ignore[attr-defined]
    texts = [it.text for it in bundle.iter_catalog()]  # type: ignore[attr-defined]
    client = RecstackClient(
        f"127.0.0.1:{procs['gateway'].port}", f"127.0.0.1:{procs['recall'].port}", timeout=10
    )
    rng = random.Random(8)
    nprng = np.random.default_rng(8)
    lock = threading.Lock()
    done: Counter[str] = Counter()
    errors: list[str] = []

    def one(kind: str, n: int) -> None:
        try:
            if kind == "recommend":
                if n % 3:
                    client.recommend(user_id=users[n % len(users)], k=5)
                else:
                    client.recommend(query=texts[n % len(texts)], k=5)
            elif kind == "record_events":
                client.record_events([(f"soak-u{n % 50}", items[n % len(items)], "click")])
            elif kind == "upsert":
                vec = l2_normalize(nprng.standard_normal(dim))
                client.upsert(
                    [item_write(f"soak-{n % POOL}", vector=vec, embedding_version=version)]
                )
            else:
                client.delete([f"soak-{n % POOL}"])
        except Exception as exc:  # every failure is a soak error
            with lock:
                errors.append(f"{kind}: {exc!r}"[:300])
            return
        with lock:
            done[kind] += 1

    def run_for(duration: float) -> None:
        kinds, weights = zip(*MIX, strict=True)
        pool = ThreadPoolExecutor(16)
        pending: list[Future[None]] = []
        start = time.monotonic()
        n = 0
        while (due := start + n / RATE) < start + duration:
            time.sleep(max(0.0, due - time.monotonic()))
            pending.append(pool.submit(one, rng.choices(kinds, weights)[0], n))
            n += 1
        for f in pending:
            f.result(timeout=60)
        pool.shutdown()

    try:
        run_for(WARMUP_S)
        start_rss = {name: rss_kb(p.proc.pid) for name, p in procs.items()}
        run_for(seconds)
        end_rss = {name: rss_kb(p.proc.pid) for name, p in procs.items()}
    finally:
        client.close()
        codes = {name: p.terminate() for name, p in procs.items()}
    total = sum(done.values())
    print(
        f"\nsoak: {seconds:.0f} s at {RATE:.0f}/s: {total} requests {dict(done)}, "
        f"{len(errors)} errors"
    )
    for name in procs:
        drift = (end_rss[name] - start_rss[name]) / 1024
        print(
            f"  {name}: RSS {start_rss[name] / 1024:.1f} MB -> {end_rss[name] / 1024:.1f} MB "
            f"({drift:+.1f} MB)"
        )
    assert not errors, errors[:10]
    assert codes == dict.fromkeys(procs, 0)
    assert total >= int(RATE * (seconds + WARMUP_S)) - 1
    for name in procs:
        limit = start_rss[name] * 1.5 + 50 * 1024
        assert end_rss[name] <= limit, f"{name} RSS grew {start_rss[name]} -> {end_rss[name]} kB"


def test_soak(bundle_dir, bundle, tmp_path):
    soak(bundle_dir, bundle, tmp_path, float(os.environ.get("SOAK_SECONDS", "20")))
