"""The typed Python clients against real servers, and retries of UNAVAILABLE."""

import asyncio
import threading
import time

import grpc
import numpy as np
import pytest

from recall_service.server import serve as serve_recall
from recstack.client import (
    AsyncRecstackClient,
    RecstackClient,
    RecstackRpcError,
    candidate_vectors,
    item_write,
    open_channel,
    query_vector,
)
from recstack.core import metrics
from recstack.core.config import ServerOptions
from recstack.core.domain import MetadataFilter
from recstack.core.lifecycle import Versions
from recstack.v1 import recall_pb2, recall_pb2_grpc
from tests.conftest import recall_options


def addresses(gateway_server, recall_server):
    return f"127.0.0.1:{gateway_server.port}", f"127.0.0.1:{recall_server.port}"


def test_sync_client_round_trip(gateway_server, recall_server, bundle):
    gateway, recall = addresses(gateway_server, recall_server)
    user, history = next(iter(bundle.iter_user_histories()))
    with RecstackClient(gateway, recall, timeout=10) as client:
        resp = client.recommend(user_id=user, k=4)
        assert len(resp.items) == 4 and not {i.id for i in resp.items} & set(history)
        seq = client.upsert(
            [
                item_write(
                    "client-item",
                    title="Client item",
                    text="an item written by the client",
                    metadata={"genre": "test"},
                )
            ]
        )
        got = client.recall(
            recall_pb2.RecallRequest(
                query_text="an item written by the client", k=3, min_sequence=seq
            )
        )
        assert got.ids[0] == "client-item"
        assert candidate_vectors(got).shape == (3, bundle.dim)
        assert np.linalg.norm(query_vector(got)) > 0.99
        filtered = client.recommend(
            query="anything", k=1, filters=[MetadataFilter("genre", ("test",))]
        )
        assert [i.id for i in filtered.items] == ["client-item"]
        assert client.delete(["client-item"]) > seq
        assert client.record_events([("client-user", history[0], "click")]) > 0


def test_async_client(gateway_server, bundle):
    user, _ = next(iter(bundle.iter_user_histories()))

    async def run():
        async with AsyncRecstackClient(f"127.0.0.1:{gateway_server.port}", timeout=10) as c:
            results = await asyncio.gather(*(c.recommend(user_id=user, k=3) for _ in range(4)))
            await c.record_events([("async-user", "x", "view")])
            return results

    results = asyncio.run(run())
    assert len({tuple(i.id for i in r.items) for r in results}) == 1


async def every_rpc(client, get, tag, bundle):
    """Each RPC of the SDK once; ``get`` turns a method's return value into its result
    (identity for the blocking client, ``await`` for the asyncio one)."""
    item = f"every-rpc-{tag}"
    text = f"an item about {tag} written through every rpc"
    seq = await get(client.upsert([item_write(item, title=f"Every {tag}", text=text)]))
    wanted = recall_pb2.RecallRequest(query_text=text, k=2, min_sequence=seq)
    batch = await get(client.recall_batch([wanted, wanted]))
    assert [r.ids[0] for r in batch] == [item, item]
    got = await get(client.get_items([item, "no-such-item"]))
    assert [i.title for i in got.items] == [f"Every {tag}"]
    assert list(got.missing_ids) == ["no-such-item"]
    info = await get(client.recall_info())
    assert info.bundle_version == bundle.version and info.dim == bundle.dim
    assert await get(client.delete([item])) > seq
    user = f"every-rpc-user-{tag}"
    first = next(iter(bundle.iter_catalog())).id
    assert await get(client.record_events([(user, first, "view"), (user, first, "like")])) > 0
    assert await get(client.delete_user(user)) == 2


def test_both_clients_make_every_rpc(gateway_server, recall_server, bundle):
    gateway, recall = addresses(gateway_server, recall_server)

    async def same(value):
        return value

    async def awaited(value):
        return await value

    with RecstackClient(gateway, recall, timeout=10) as client:
        asyncio.run(every_rpc(client, same, "sync", bundle))

    async def run_async():
        async with AsyncRecstackClient(gateway, recall, timeout=10) as client:
            await every_rpc(client, awaited, "async", bundle)

    asyncio.run(run_async())


def test_sync_client_errors_carry_the_decoded_details(gateway_server, recall_server):
    gateway, recall = addresses(gateway_server, recall_server)
    with RecstackClient(gateway, recall, timeout=10) as client:
        with pytest.raises(RecstackRpcError) as err:
            client.recommend(k=3)  # no user, history or query
        assert isinstance(err.value, grpc.RpcError)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.reason == "MISSING_QUERY"
        assert err.value.fields == ("user_id", "history_item_ids", "query_text")
        assert err.value.retry_delay_s is None
        with pytest.raises(RecstackRpcError) as err:
            client.recall(recall_pb2.RecallRequest(query_text="x", k=10**6))
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert (err.value.reason, err.value.fields) == ("LIMIT_EXCEEDED", ("k",))
        assert int(err.value.metadata["limit"]) < 10**6
        assert err.value.metadata["value"] == str(10**6)
        with pytest.raises(RecstackRpcError) as err:
            client.record_events([("u", "i", "no-such-type")])
        assert err.value.fields == ("events[0].type",)


def test_async_client_errors_carry_the_decoded_details(gateway_server):
    async def run():
        async with AsyncRecstackClient(f"127.0.0.1:{gateway_server.port}", timeout=10) as c:
            await c.recommend(query="x", k=500)

    with pytest.raises(RecstackRpcError) as err:
        asyncio.run(run())
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert err.value.reason == "LIMIT_EXCEEDED" and err.value.fields == ("k",)


def unavailable_count(method):
    return metrics.RPC_REQUESTS.labels(method, "UNAVAILABLE")._value.get()


def test_unavailable_is_retried_until_the_server_is_ready(bundle_dir, tmp_path, monkeypatch):
    gate = threading.Event()
    real_publish = Versions.publish

    def gated_publish(self, core):
        gate.wait()  # the core is built; publish it only when the test says so (finally too)
        return real_publish(self, core)

    monkeypatch.setattr(Versions, "publish", gated_publish)
    method = "/recstack.v1.RecallService/Recall"
    before = unavailable_count(method)
    running = serve_recall(ServerOptions(port=0), recall_options(bundle_dir, tmp_path))
    result: dict[str, object] = {}
    # Long backoffs: the retries must outlast the moment the test takes to open the gate.
    channel = open_channel(f"127.0.0.1:{running.port}", max_attempts=5, initial_backoff_s=1.0)
    stub = recall_pb2_grpc.RecallServiceStub(channel)

    def call():
        try:
            result["resp"] = stub.Recall(recall_pb2.RecallRequest(query_text="x", k=1), timeout=30)
        except grpc.RpcError as exc:
            result["error"] = exc

    try:
        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        until = time.monotonic() + 30
        while unavailable_count(method) == before:  # the first attempt was refused...
            assert caller.is_alive(), f"the call ended without being refused first: {result}"
            assert time.monotonic() < until, "the first attempt was never refused UNAVAILABLE"
            time.sleep(0.005)
        gate.set()  # ...and the service becomes ready: a retry must now succeed
        caller.join(60)
        assert not caller.is_alive(), "the retried call never returned"
        assert "error" not in result, result.get("error")
        assert len(result["resp"].ids) == 1
    finally:
        gate.set()
        channel.close()
        running.stop(0)
