import argparse

import pytest

from recstack.core.config import GatewayOptions, ServerOptions, add_arguments, from_args
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
