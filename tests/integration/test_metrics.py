"""Prometheus /metrics: per-RPC counts by status code and the served bundle version."""

import urllib.request

import grpc
import pytest

from rank_service.server import serve
from recstack.core.config import RankOptions, ServerOptions
from recstack.tools.procs import free_port
from recstack.v1 import rank_pb2, rank_pb2_grpc
from tests.conftest import channel_to


def test_metrics_count_rpcs_by_code(bundle_dir, bundle):
    running = serve(
        ServerOptions(port=0, metrics_port=free_port()), RankOptions(bundle=str(bundle_dir))
    )
    try:
        running.wait_ready(120)
        stub = rank_pb2_grpc.RankServiceStub(channel_to(running))
        stub.GetInfo(rank_pb2.RankServiceGetInfoRequest())
        with pytest.raises(grpc.RpcError):
            stub.Rank(rank_pb2.RankRequest())
        url = f"http://127.0.0.1:{running.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        assert (
            'recstack_rpc_requests_total{code="OK",method="/recstack.v1.RankService/GetInfo"}'
            in text
        )
        assert 'code="INVALID_ARGUMENT",method="/recstack.v1.RankService/Rank"' in text
        assert (
            f'recstack_bundle_info{{provider="CPUExecutionProvider",service="rank",'
            f'version="{bundle.version}"}} 1.0' in text
        )
    finally:
        running.stop(0)
