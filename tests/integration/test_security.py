"""TLS, mutual TLS and bearer-token permissions on real servers; health stays reachable;
the load harness connects with the same credentials."""

import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.server import serve as serve_gateway
from loadtest.cli import main as loadtest_main
from rank_service.server import serve as serve_rank
from recall_service.server import serve as serve_recall
from recstack.client import RecstackClient, error_details, open_channel
from recstack.core.config import GatewayOptions, RankOptions, ServerOptions
from recstack.runtime.auth import channel_credentials
from recstack.v1 import rank_pb2, rank_pb2_grpc, recall_pb2
from tests.conftest import recall_options
from tests.tlsutil import make_pki

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text("# token permissions\nreader-token read\nadmin-token read,write\n")
    return path


def secure(pki, tokens, **extra):
    return ServerOptions(
        port=0,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
        auth_tokens_file=str(tokens),
        **extra,
    )


@pytest.fixture(scope="module")
def rank(bundle_dir, pki, tokens):
    running = serve_rank(secure(pki, tokens, health_port=0), RankOptions(bundle=str(bundle_dir)))
    running.wait_ready(120)
    yield running
    running.stop(0)


def creds(pki, token="", client_cert=True):
    return channel_credentials(
        str(pki.ca),
        str(pki.client_cert) if client_cert else "",
        str(pki.client_key) if client_cert else "",
        token,
    )


def info(port, credentials):
    stub = rank_pb2_grpc.RankServiceStub(
        open_channel(f"localhost:{port}", max_attempts=1, credentials=credentials)
    )
    return stub.GetInfo(rank_pb2.RankServiceGetInfoRequest(), timeout=30)


def test_mutual_tls_and_token_allow_reads(rank, pki, bundle):
    assert info(rank.port, creds(pki, "reader-token")).bundle_version == bundle.version


@pytest.mark.parametrize(
    ("credentials", "code", "reason"),
    [
        ("plaintext", grpc.StatusCode.UNAVAILABLE, None),
        ("no-client-cert", grpc.StatusCode.UNAVAILABLE, None),
        ("no-token", grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN"),
        ("wrong-token", grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN"),
    ],
)
def test_refusals(rank, pki, credentials, code, reason):
    chosen = {
        "plaintext": None,
        "no-client-cert": creds(pki, "reader-token", client_cert=False),
        "no-token": creds(pki),
        "wrong-token": creds(pki, "reader-tokem"),
    }[credentials]
    with pytest.raises(grpc.RpcError) as err:
        info(rank.port, chosen)
    assert err.value.code() == code
    if reason is not None:  # refused by our interceptor, not by the TLS handshake
        details = error_details(err.value)
        assert details is not None and details.reason == reason


def test_write_needs_write_permission(rank, pki):
    reader = open_channel(
        f"localhost:{rank.port}", max_attempts=1, credentials=creds(pki, "reader-token")
    )
    admin_service = rank_pb2_grpc.RankAdminServiceStub(reader)
    with pytest.raises(grpc.RpcError) as err:
        admin_service.ReloadBundle(rank_pb2.RankAdminServiceReloadBundleRequest(), timeout=30)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "write" in err.value.details()
    details = error_details(err.value)
    assert details is not None and details.reason == "MISSING_PERMISSION"
    assert details.metadata["permission"] == "write"
    # the deprecated alias in the data-plane service needs the same permission
    with pytest.raises(grpc.RpcError) as err:
        rank_pb2_grpc.RankServiceStub(reader).Reload(
            rank_pb2.RankServiceReloadRequest(), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    writer = open_channel(
        f"localhost:{rank.port}", max_attempts=1, credentials=creds(pki, "admin-token")
    )
    reply = rank_pb2_grpc.RankAdminServiceStub(writer).ReloadBundle(
        rank_pb2.RankAdminServiceReloadBundleRequest(), timeout=30
    )
    assert reply.swapped is False and reply.bundle_version
    rank_pb2_grpc.RankServiceStub(writer).Reload(rank_pb2.RankServiceReloadRequest(), timeout=30)


def test_health_needs_no_token_and_has_a_plaintext_port(rank, pki):
    with_tls = health_pb2_grpc.HealthStub(
        open_channel(f"localhost:{rank.port}", credentials=creds(pki))
    )
    assert with_tls.Check(health_pb2.HealthCheckRequest(), timeout=30).status == SERVING
    plain = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{rank.health_port}"))
    request = health_pb2.HealthCheckRequest(service="recstack.v1.RankService")
    assert plain.Check(request, timeout=30).status == SERVING


def test_gateway_calls_secured_downstreams(rank, bundle_dir, pki, tokens, tmp_path):
    recall = serve_recall(secure(pki, tokens), recall_options(bundle_dir, tmp_path / "r"))
    recall.wait_ready(120)
    token_file = tmp_path / "gateway.token"
    token_file.write_text("reader-token\n")
    gateway = serve_gateway(
        secure(pki, tokens),
        GatewayOptions(
            recall_address=f"localhost:{recall.port}",
            rank_address=f"localhost:{rank.port}",
            bundle=str(bundle_dir),
            state_dir=str(tmp_path / "g"),
            downstream_tls_ca=str(pki.ca),
            downstream_tls_cert=str(pki.client_cert),
            downstream_tls_key=str(pki.client_key),
            downstream_token_file=str(token_file),
        ),
    )
    try:
        gateway.wait_ready(120)
        with RecstackClient(
            f"localhost:{gateway.port}",
            f"localhost:{recall.port}",
            timeout=10,
            credentials=creds(pki, "reader-token"),
        ) as client:
            assert len(client.recommend(query="a good story", k=3).items) == 3
            with pytest.raises(grpc.RpcError) as err:
                client.upsert([recall_pb2.ItemWrite(id="x", text="y")])
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        gateway.stop(0)
        recall.stop(0)


def _loadtest(rank, bundle_dir, pki, tmp_path, token_file, *extra):
    out = tmp_path / "report.json"
    code = loadtest_main(
        [
            "closed",
            "--service",
            "rank",
            "--target",
            f"localhost:{rank.port}",
            "--bundle",
            str(bundle_dir),
            "--tls-ca",
            str(pki.ca),
            "--tls-cert",
            str(pki.client_cert),
            "--tls-key",
            str(pki.client_key),
            "--token-file",
            str(token_file),
            "--concurrency",
            "2",
            "--duration",
            "0.5",
            "--warmup-requests",
            "2",
            "--timeout-ms",
            "20000",
            "--out",
            str(out),
            "--no-plots",
            "--no-progress",
            "--fail-on-errors",
            *extra,
        ]
    )
    return code, out


def test_loadtest_speaks_mutual_tls_and_tokens(rank, bundle_dir, pki, tmp_path):
    token_file = tmp_path / "loadtest.token"
    token_file.write_text("reader-token\n")
    code, out = _loadtest(rank, bundle_dir, pki, tmp_path, token_file)
    assert code == 0
    report = json.loads(out.read_text())
    assert report["meta"]["tls"] is True and report["meta"]["token"] is True
    (phase,) = report["phases"]
    assert phase["ok"] == phase["sent"] > 0 and phase["error_count"] == 0


def test_loadtest_with_a_wrong_token_is_refused(rank, bundle_dir, pki, tmp_path):
    token_file = tmp_path / "loadtest.token"
    token_file.write_text("not-a-token\n")
    code, out = _loadtest(rank, bundle_dir, pki, tmp_path, token_file)
    assert code == 1  # warm-up without one success: every call was UNAUTHENTICATED
    assert not out.exists()
