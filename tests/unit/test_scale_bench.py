"""bench.scale_bench on a small catalog: one row per (items, shards), exact recall in range,
and --append keeping the other sizes' rows."""

from __future__ import annotations

import json
from pathlib import Path

from bench import scale_bench


def test_rows_and_append(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    assert (
        scale_bench.main(
            ["--sizes", "300", "--shards", "1,2", "--queries", "20", "--out", str(out)]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert [(r["items"], r["shards"]) for r in rows] == [(300, 1), (300, 2)]
    for r in rows:
        assert 0.5 <= r["recall@10"] <= 1.0  # HNSW over 300 items is close to exact
        assert r["memory_mib"] > 0 and r["merged_p99_ms"] >= r["merged_p50_ms"] > 0
    assert out.with_suffix(".png").stat().st_size > 0
    scale_bench.main(
        ["--sizes", "400", "--shards", "1", "--queries", "20", "--out", str(out), "--append"]
    )
    rows = json.loads(out.read_text())["rows"]
    assert [(r["items"], r["shards"]) for r in rows] == [(300, 1), (300, 2), (400, 1)]
    # Without --append the file holds this run only.
    scale_bench.main(["--sizes", "400", "--shards", "1", "--queries", "20", "--out", str(out)])
    assert [(r["items"], r["shards"]) for r in json.loads(out.read_text())["rows"]] == [(400, 1)]
