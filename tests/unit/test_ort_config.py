import argparse

import pytest

from recstack.core.config import (
    GatewayOptions,
    RankOptions,
    RecallOptions,
    ServerOptions,
    add_arguments,
    from_args,
)
from recstack.core.errors import BundleError
from recstack.models.ort import CPU, CUDA, choose_providers


@pytest.mark.parametrize(
    ("device", "available", "fallback", "expected"),
    [
        ("auto", [CPU], True, [CPU]),
        ("auto", [CUDA, CPU], True, [CUDA, CPU]),
        ("cpu", [CUDA, CPU], False, [CPU]),
        ("cuda", [CUDA, CPU], False, [CUDA, CPU]),
        ("cuda", ["AzureExecutionProvider", CPU], True, [CPU]),
    ],
)
def test_choose_providers(device, available, fallback, expected):
    assert choose_providers(device, available, fallback) == expected


def test_cuda_without_gpu_and_no_fallback_is_a_clear_error():
    with pytest.raises(BundleError, match="onnxruntime-gpu"):
        choose_providers("cuda", [CPU], allow_cpu_fallback=False)


def test_unknown_device():
    with pytest.raises(ValueError, match="device must be one of"):
        choose_providers("tpu", [CPU], True)


def test_flags_env_and_overrides(monkeypatch):
    monkeypatch.setenv("RECSTACK_MAX_WORKERS", "3")
    parser = argparse.ArgumentParser()
    add_arguments(parser, ServerOptions, "server", {"port": 1234})
    add_arguments(parser, GatewayOptions, "gateway")
    args = parser.parse_args(["--grace-seconds", "2.5", "--default-k", "7"])
    server = from_args(ServerOptions, args)
    assert (server.port, server.max_workers, server.grace_seconds) == (1234, 3, 2.5)
    assert from_args(GatewayOptions, args).default_k == 7
    opts = dict(server.grpc_options())
    assert opts["grpc.max_receive_message_length"] == server.max_message_bytes
    assert opts["grpc.keepalive_time_ms"] == 30000


def test_prefixed_groups_keep_apart_the_fields_they_share(monkeypatch):
    """The colocated entry puts recall's and rank's options on one command line."""
    from gateway.colocated import GROUPS

    monkeypatch.setenv("RECSTACK_RECALL_EF_SEARCH", "77")
    parser = argparse.ArgumentParser(exit_on_error=False, allow_abbrev=False)
    for group in GROUPS:
        add_arguments(parser, group)
    args = parser.parse_args(
        ["--bundle", "b", "--max-history", "5", "--recall-max-history", "6", "--no-rank-batching"]
    )
    gateway, recall, rank, _ = (from_args(g, args) for g in GROUPS)
    assert (gateway.bundle, gateway.max_history) == ("b", 5)
    assert (recall.max_history, recall.ef_search) == (6, 77)
    assert rank.batching is False
    # Skipped fields get no flag and keep their defaults: one bundle for all three stages.
    assert recall.bundle == RecallOptions().bundle and rank.bundle == RankOptions().bundle
    assert recall.shard_count == 1
    for flag in ("--recall-bundle", "--rank-address", "--recall-shard-count"):
        with pytest.raises((SystemExit, argparse.ArgumentError)):
            parser.parse_args([flag, "x"])
