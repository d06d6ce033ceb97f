"""A client in another language: tests/node/client.js (Node.js, @grpc/grpc-js, loaded from
protos/ alone with the shipped service config) calls every RPC of the three services and
the two admin services against the real session servers, and decodes the rich errors
(google.rpc.Status in grpc-status-details-bin) without any Python on its side.

The npm packages are pinned here and installed once under build/node-client/ by
scripts/npm_tool.sh (the same installer as buf's); the google/rpc .proto files come from
the googleapis-common-protos distribution already installed for the servers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import google.rpc

from recstack.runtime import contracts

ROOT = Path(__file__).resolve().parents[2]
NODE_PACKAGES = ["@grpc/grpc-js@1.14.7", "@grpc/proto-loader@0.8.1", "protobufjs@7.6.6"]


def node_modules() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "npm_tool.sh"), "node-client", *NODE_PACKAGES],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def run_node_client(gateway: int, recall: int, rank: int) -> dict:
    node = shutil.which("node")
    assert node, "node (Node.js) is needed by this test: apt-get install nodejs npm"
    args = {
        "gateway": f"127.0.0.1:{gateway}",
        "recall": f"127.0.0.1:{recall}",
        "rank": f"127.0.0.1:{rank}",
        "protos": str(ROOT / "protos"),
        "google_protos": str(Path(next(iter(google.rpc.__path__))).parent.parent),
    }
    result = subprocess.run(
        [node, str(ROOT / "tests" / "node" / "client.js"), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_PATH": str(node_modules())},
        check=False,
    )
    assert result.returncode == 0, f"node client failed:\n{result.stderr}\n{result.stdout}"
    return json.loads(result.stdout)


def test_node_client_calls_every_rpc_and_decodes_rich_errors(
    gateway_server, recall_server, rank_server, bundle
):
    out = run_node_client(gateway_server.port, recall_server.port, rank_server.port)
    calls, errors = out["calls"], out["errors"]

    # every RPC the protos declare was called (and answered OK)
    declared = {m.path.split(".", 2)[-1] for m in contracts.methods()}
    assert set(calls) == declared

    version = bundle.version
    assert calls["RecallService/GetInfo"]["dim"] == bundle.dim
    recalled = calls["RecallService/Recall"]
    assert len(recalled["ids"]) == 5 and recalled["version"] == version
    assert recalled["vector_bytes"] == 5 * bundle.dim * 4
    assert calls["RecallService/RecallBatch"]["sizes"] == [2, 3]
    assert calls["RecallService/GetItems"] == {
        "ids": [recalled["ids"][0]],
        "missing": ["node-no-such-item"],
    }
    assert int(calls["RecallService/Delete"]["sequence"]) > int(
        calls["RecallService/Upsert"]["sequence"]
    )
    for admin in ("RecallService/ReloadBundle", "RecallAdminService/ReloadBundle"):
        assert calls[admin]["swapped"] is False
    assert sorted(calls["RankService/Rank"]["ids"]) == sorted(recalled["ids"])
    assert calls["RankService/Rank"]["version"] == version
    for admin in ("RankService/Reload", "RankAdminService/ReloadBundle"):
        assert calls[admin]["swapped"] is False
    assert len(calls["RecommendService/Recommend"]["ids"]) == 3
    assert int(calls["RecommendService/RecordEvents"]["sequence"]) > 0
    assert int(calls["RecommendService/DeleteUser"]["events_deleted"]) == 1

    def detail(case: str, type_name: str) -> dict:
        found = [d for d in errors[case]["details"] if d["type"] == type_name]
        assert len(found) == 1, (case, errors[case])
        return found[0]

    missing = errors["missing_query"]
    assert missing["code"] == "INVALID_ARGUMENT" and missing["status_code"] == 3
    info = detail("missing_query", "google.rpc.ErrorInfo")
    assert (info["reason"], info["domain"]) == ("MISSING_QUERY", "recstack.dev")
    violations = detail("missing_query", "google.rpc.BadRequest")["field_violations"]
    assert [v["field"] for v in violations] == ["user_id", "history_item_ids", "query_text"]
    assert missing["legacy_field"] == "user_id|history_item_ids|query_text"

    limit = errors["k_too_large"]
    assert limit["code"] == "OUT_OF_RANGE"
    info = detail("k_too_large", "google.rpc.ErrorInfo")
    assert info["reason"] == "LIMIT_EXCEEDED" and info["metadata"]["value"] == "1000000"
    violations = detail("k_too_large", "google.rpc.BadRequest")["field_violations"]
    assert [v["field"] for v in violations] == ["k"]
    assert not [d for d in limit["details"] if d["type"] == "google.rpc.RetryInfo"]

    mismatch = errors["version_mismatch"]
    assert mismatch["code"] == "FAILED_PRECONDITION"
    info = detail("version_mismatch", "google.rpc.ErrorInfo")
    assert info["reason"] == "VERSION_NOT_SERVED"
    assert info["metadata"] == {"version": "not-" + version, "serving": version}
