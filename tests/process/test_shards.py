"""Three recall shard processes behind a gateway equal one node holding every item."""

import numpy as np
import pytest

from gateway.clients import GrpcRecall, ShardedRecall
from rank_service.server import serve as serve_rank
from recall_service.server import serve
from recstack.client import candidate_scores, open_channel
from recstack.core.config import RankOptions, ServerOptions
from recstack.core.domain import RecallQuery
from recstack.core.sharding import shard_of
from recstack.v1 import gateway_pb2, gateway_pb2_grpc, recall_pb2, recall_pb2_grpc
from tests.conftest import channel_to, recall_options
from tests.process.helpers import Proc

pytestmark = pytest.mark.process
SHARDS = 3


@pytest.fixture
def shards(bundle_dir, tmp_path):
    procs = [
        Proc(
            "recall_service",
            "--bundle",
            str(bundle_dir),
            "--state-dir",
            str(tmp_path / f"s{i}"),
            "--shard-index",
            str(i),
            "--shard-count",
            str(SHARDS),
            "--bundle-poll-s",
            "0",
            workdir=tmp_path,
            name=f"shard{i}",
        )
        for i in range(SHARDS)
    ]
    try:
        yield [p.wait_serving("recstack.v1.RecallService") for p in procs]
    finally:
        for p in procs:
            p.terminate()


def test_shards_hold_disjoint_parts_and_refuse_foreign_writes(shards, bundle):
    ids = [it.id for it in bundle.iter_catalog()]
    total = 0
    for i, shard in enumerate(shards):
        stub = recall_pb2_grpc.RecallServiceStub(shard.channel())
        info = stub.GetInfo(recall_pb2.RecallServiceGetInfoRequest())
        assert (info.shard_index, info.shard_count) == (i, SHARDS)
        assert info.item_count == sum(1 for x in ids if shard_of(x, SHARDS) == i)
        total += info.item_count
        foreign = next(x for x in ids if shard_of(x, SHARDS) != i)
        with pytest.raises(Exception) as err:
            stub.Delete(recall_pb2.DeleteRequest(ids=[foreign]))
        assert "FAILED_PRECONDITION" in str(err.value) and f"shard {i}" in str(err.value)
    assert total == len(ids)


def test_sharded_merge_equals_single_node_exact(shards, bundle_dir, bundle, tmp_path):
    single = serve(ServerOptions(port=0), recall_options(bundle_dir, tmp_path / "single"))
    try:
        single.wait_ready(120)
        one = recall_pb2_grpc.RecallServiceStub(channel_to(single))
        merged = ShardedRecall([GrpcRecall(open_channel(f"127.0.0.1:{s.port}")) for s in shards])
        history = tuple(it.id for it in bundle.iter_catalog())[:3]
        for query in (
            RecallQuery(k=15, query_text="a thrilling adventure"),
            RecallQuery(k=10, history_item_ids=history, exclude_ids=history),
        ):
            got = merged.recall(query, timeout=10)
            want = one.Recall(
                recall_pb2.RecallRequest(
                    k=query.k,
                    query_text=query.query_text,
                    history_item_ids=query.history_item_ids,
                    exclude_ids=query.exclude_ids,
                    exact=True,
                )
            )
            assert list(got.ids) == list(want.ids)
            np.testing.assert_allclose(got.scores, candidate_scores(want), atol=1e-5)
        # GetItems asks each id of the shard that owns it; answers keep the request order.
        catalog = [it.id for it in bundle.iter_catalog()]
        some = [next(i for i in catalog if shard_of(i, SHARDS) == s) for s in (2, 0, 1)]
        items = merged.get_items([*some, "no-such-item"], timeout=10)
        assert [it.id for it in items.items] == some and items.missing_ids == ("no-such-item",)
    finally:
        single.stop(0)


def test_gateway_process_fans_out_to_shards(shards, bundle_dir, bundle, tmp_path):
    rank = serve_rank(ServerOptions(port=0), RankOptions(bundle=str(bundle_dir)))
    rank.wait_ready(120)
    gateway = Proc(
        "gateway",
        "--recall-address",
        ",".join(f"127.0.0.1:{s.port}" for s in shards),
        "--rank-address",
        f"127.0.0.1:{rank.port}",
        "--bundle",
        str(bundle_dir),
        workdir=tmp_path,
        name="gateway",
    )
    try:
        gateway.wait_serving("recstack.v1.RecommendService")
        user, history = next(iter(bundle.iter_user_histories()))
        stub = gateway_pb2_grpc.RecommendServiceStub(gateway.channel())
        resp = stub.Recommend(gateway_pb2.RecommendRequest(user_id=user, k=8), timeout=10)
        ids = [i.id for i in resp.items]
        assert len(ids) == len(set(ids)) == 8 and not set(ids) & set(history)
        assert {shard_of(i, SHARDS) for i in ids} != {0}  # items come from several shards
    finally:
        assert gateway.terminate() == 0
        rank.stop(0)
