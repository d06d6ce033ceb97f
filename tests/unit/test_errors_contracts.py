"""Rich error details (recstack.core.errors) and the contract tables derived from the protos
(recstack.runtime.contracts): permissions, retries, the shipped service config."""

import json
from pathlib import Path

import pytest
from google.rpc import code_pb2, error_details_pb2

from recstack.core.errors import (
    DOMAIN,
    STATUS_DETAILS_KEY,
    ErrorKind,
    FailedPrecondition,
    InvalidArgument,
    OutOfRange,
    ResourceExhausted,
    details_from_trailers,
    from_status,
    limit_exceeded,
    to_status,
)
from recstack.runtime import contracts
from recstack.runtime.auth import READ, WRITE, required_permission
from recstack.runtime.server import STATUS_FOR_KIND

ROOT = Path(__file__).resolve().parents[2]


def test_one_field_violation_per_field_and_a_stable_reason():
    exc = InvalidArgument(
        "a request needs one", field=("user_id", "history_item_ids"), reason="MISSING_QUERY"
    )
    status = to_status(exc)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == str(exc)
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info) and status.details[1].Unpack(bad)
    assert (info.reason, info.domain) == ("MISSING_QUERY", DOMAIN)
    assert [v.field for v in bad.field_violations] == ["user_id", "history_item_ids"]
    assert len(status.details) == 2  # no RetryInfo: not load
    # the deprecated trailer value keeps its old composite form for one release
    assert exc.field == "user_id|history_item_ids"


def test_limits_are_out_of_range_with_the_limit_in_metadata():
    exc = limit_exceeded("k", 500, 20)
    assert isinstance(exc, OutOfRange) and exc.kind is ErrorKind.OUT_OF_RANGE
    details = from_status(to_status(exc))
    assert details.code == "OUT_OF_RANGE"
    assert details.reason == "LIMIT_EXCEEDED"
    assert dict(details.metadata) == {"limit": "20", "value": "500"}
    assert details.fields == ("k",)
    assert details.retry_delay_s is None


def test_load_shedding_alone_carries_retry_info():
    details = from_status(to_status(ResourceExhausted("queue full", reason="QUEUE_FULL")))
    assert details.code == "RESOURCE_EXHAUSTED" and details.reason == "QUEUE_FULL"
    assert details.retry_delay_s is not None and details.retry_delay_s > 0
    assert from_status(to_status(FailedPrecondition("x"))).retry_delay_s is None


def test_decoded_details_rebuild_the_same_domain_error():
    exc = FailedPrecondition(
        "wrong version",
        field="embedding_version",
        reason="EMBEDDING_VERSION_MISMATCH",
        metadata={"expected": "v1", "got": "v0"},
    )
    trailers = ((STATUS_DETAILS_KEY, to_status(exc).SerializeToString()),)
    details = details_from_trailers(trailers)
    assert details is not None
    again = details.to_error("rank: ")
    assert type(again) is FailedPrecondition
    assert again.fields == exc.fields and again.reason == exc.reason
    assert again.metadata == exc.metadata
    assert str(again) == "embedding_version: rank: wrong version"
    assert details_from_trailers((("other", b""),)) is None


def test_echoed_request_values_cannot_blow_the_trailer_limit():
    # a message and metadata echoing huge, non-ASCII request values (ids, versions)
    huge = "\U0001f600" * 50_000
    exc = FailedPrecondition(
        f"vectors are from bundle {huge!r}",
        field=("a", "b", "c"),
        metadata={"expected": "v1", "got": huge},
    )
    status = to_status(exc)
    assert len(status.SerializeToString()) < 2048
    assert len(status.message.encode()) <= 400 and status.message.endswith("...")
    details = from_status(status)
    assert details.fields == ("a", "b", "c") and details.metadata["expected"] == "v1"
    # a short message is untouched
    assert (
        to_status(InvalidArgument("must be positive", field="k")).message == "k: must be positive"
    )


def test_every_error_kind_has_a_grpc_code():
    assert {k.value for k in ErrorKind} == {c.name for c in STATUS_FOR_KIND.values()}


def test_permissions_come_from_the_declared_idempotency():
    table = contracts.method_table()
    assert table, "no methods read from the descriptors"
    for path, method in table.items():
        expected = READ if method.read_only else WRITE
        assert required_permission(path) == expected, path
    assert required_permission("/recstack.v1.RecallService/Recall") == READ
    assert required_permission("/recstack.v1.RecallService/Upsert") == WRITE
    assert required_permission("/recstack.v1.RecallAdminService/ReloadBundle") == WRITE
    assert required_permission("/recstack.v1.RankService/Reload") == WRITE
    assert required_permission("/grpc.health.v1.Health/Check") is None
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert required_permission(reflection) == READ


@pytest.mark.parametrize(
    ("path", "retried"),
    [
        ("/recstack.v1.RecommendService/Recommend", True),
        ("/recstack.v1.RecallService/GetItems", True),
        ("/recstack.v1.RankService/Rank", True),
        ("/recstack.v1.RecallService/Delete", True),  # IDEMPOTENT
        ("/recstack.v1.RecommendService/RecordEvents", False),
        ("/recstack.v1.RecallService/Upsert", False),
        ("/recstack.v1.RankAdminService/ReloadBundle", False),
    ],
)
def test_retries_follow_the_declared_idempotency(path, retried):
    config = contracts.service_config()
    names = {f"/{n['service']}/{n['method']}" for n in config["methodConfig"][0]["name"]}
    assert (path in names) is retried
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    policy = config["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_the_shipped_service_config_is_the_one_the_python_client_uses():
    shipped = json.loads((ROOT / "protos/recstack/v1/service_config.json").read_text())
    assert shipped == contracts.service_config()
    assert contracts.service_config(max_attempts=1) == {
        "loadBalancingConfig": [{"round_robin": {}}]
    }


def test_every_proto_names_its_package_for_other_languages():
    # protoc-gen-go refuses a file without go_package; Java wants one class per message
    from google.protobuf import descriptor_pb2

    from recstack.v1 import gateway_pb2, rank_pb2, recall_pb2

    for module in (gateway_pb2, recall_pb2, rank_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        o = proto.options
        assert o.go_package == "recstack.dev/gen/go/recstack/v1;recstackv1", proto.name
        assert (o.java_package, o.java_multiple_files) == ("dev.recstack.v1", True), proto.name
        assert o.csharp_namespace == "Recstack.V1" and o.ruby_package == "Recstack::V1"
    reads = [m for m in contracts.methods() if m.read_only]
    assert {m.name for m in reads} == {
        "Recommend",
        "Recall",
        "RecallBatch",
        "GetItems",
        "GetInfo",
        "Rank",
    }
