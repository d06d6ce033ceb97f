"""Property-based fuzzing of every request message against the real session servers.

Hypothesis generates RecallRequest, RecallBatchRequest, UpsertRequest, DeleteRequest,
GetInfo (recall.proto), RankRequest, GetInfo (rank.proto) and RecommendRequest,
RecordEventsRequest, DeleteUserRequest (gateway.proto), including NaN/inf, empty, huge,
truncated and odd-length packed vectors, random and real ids, negative/huge k, random
filters, hostile metadata_json and arbitrary unicode text. The property (invariant 5):
the answer is OK or one of INVALID_ARGUMENT, OUT_OF_RANGE, FAILED_PRECONDITION, NOT_FOUND
(DEADLINE_EXCEEDED only where the test itself set a short deadline), never INTERNAL/UNKNOWN
nor RESOURCE_EXHAUSTED (one caller at a time is no load; limits are OUT_OF_RANGE); every
error carries a google.rpc.Status with an ErrorInfo reason, and INVALID_ARGUMENT /
OUT_OF_RANGE name at least one field in a BadRequest; afterwards every server is SERVING
and answers a normal request.
An acknowledged Upsert must also have stored a finite unit vector for each written id.

Runs are reproducible (``derandomize=True``). CI runs ``FUZZ_EXAMPLES`` (default 150)
examples per RPC; ``FUZZ_EXAMPLES=2000 pytest tests/integration/test_fuzz.py`` runs 2000.
Writes use a private id pool and ``fz``-prefixed ids/users, and are deleted at the end,
so the shared servers look the same to later tests.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recstack.client import error_details
from recstack.core.errors import DOMAIN
from recstack.core.vectors import pack, unpack_rows
from recstack.v1 import (
    gateway_pb2,
    gateway_pb2_grpc,
    rank_pb2,
    rank_pb2_grpc,
    recall_pb2,
    recall_pb2_grpc,
)
from tests.conftest import channel_to

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
}
CI_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
TIMEOUT_S = 60.0  # generous: a DEADLINE_EXCEEDED under it is a server bug, not the test's
SHORT_TIMEOUT_S = 1.0  # the test's own short deadline (min_sequence waits)
POOL = [f"fz-pool-{n}" for n in range(40)]
EVENT_TYPES = ["view", "click", "like", "purchase"]

# Cases run per RPC, printed at the end of the module (the "fuzz cases run").
CASES: Counter[str] = Counter()
CODES: Counter[tuple[str, str]] = Counter()


# ---- strategies ----------------------------------------------------------------------------

UNICODE = st.text(st.characters(blacklist_categories=("Cs",)), max_size=120)


def texts(real: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        UNICODE,
        st.sampled_from(real),
        st.integers(1990, 30_000).map(lambda n: "long text " * (n // 10)),
        st.just(""),
        st.just("   \n\t "),
        st.just("\x00\x01\ufffd\U0001f600 \u202e rtl \u0301"),
    )


def ids(real: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(real),
        st.just(""),
        UNICODE.map(lambda s: "fz" + s),
        st.integers(1, 5000).map(lambda n: "fz" + "x" * n),
    )


def pool_ids() -> st.SearchStrategy[str]:
    """Ids a write may touch: a private pool, fz-prefixed junk, or empty (never real ids)."""
    return st.one_of(
        st.sampled_from(POOL),
        st.sampled_from(POOL),
        st.just(""),
        UNICODE.map(lambda s: "fz" + s),
    )


SCALES = [1.0, 1.0, 1e-3, 1e-20, 1e-39, 1e-45, 1e19, 1e30, 3e38]


def _vectors(rows: int, dim: int, seed: int, scale: float) -> bytes:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((rows, dim)) * scale
    return pack(np.clip(data, -3.4e38, 3.4e38))


def packed(dim: int, real_vectors: np.ndarray, rows: int = 1) -> st.SearchStrategy[bytes]:
    """Packed float32 vectors, well-formed and not: NaN/inf, empty, huge, truncated, odd."""
    n = rows * dim
    seeds = st.integers(0, 2**32 - 1)
    good = st.builds(lambda s, c: _vectors(rows, dim, s, c), seeds, st.sampled_from(SCALES))
    real = st.integers(0, len(real_vectors) - 1).map(
        lambda i: pack(np.tile(real_vectors[i], (rows, 1)))
    )

    def poison(data: bytes, where: int, value: float) -> bytes:
        arr = np.frombuffer(data, dtype="<f4").copy()
        if arr.size:
            arr[where % arr.size] = value
        return pack(arr)

    poisoned = st.builds(
        poison, good, st.integers(0, 10**6), st.sampled_from([np.nan, np.inf, -np.inf])
    )
    return st.one_of(
        good,
        good,
        real,
        poisoned,
        st.just(b""),
        st.just(b"\x00" * (4 * n)),  # the zero vector
        st.builds(lambda d, cut: d[: cut % max(len(d), 1)], good, st.integers(0, 10**6)),
        st.builds(lambda d, extra: d + extra, good, st.binary(min_size=1, max_size=7)),
        st.binary(max_size=64),
        st.integers(2, 50).map(lambda m: b"\x00\x00\x80\x3f" * (n * m)),  # too many rows
        st.just(b"\xff" * (4 * n)),  # all NaN bit patterns
    )


def json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        UNICODE,
        st.sampled_from(["space", "cooking", "football", "gardening"]),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(UNICODE, inner, max_size=4)
        ),
        max_leaves=12,
    )


def metadata_json(fields: list[str]) -> st.SearchStrategy[str]:
    # New keys sort after the bundle's fields ("~"): metadata fields are never forgotten,
    # and later tests read GetInfo.filter_fields[0].
    keys = st.one_of(st.sampled_from(fields), UNICODE.map(lambda s: "~fz" + s))
    return st.one_of(
        st.just(""),
        st.dictionaries(keys, json_values(), max_size=5).map(json.dumps),
        UNICODE,  # mostly not JSON
        st.sampled_from(
            [
                "{",
                "[]",
                '"a string"',
                "null",
                "1",
                '{"topic": NaN, "year": Infinity}',
                '{"year": -Infinity}',
                '{"topic": 1e999}',
                '{"year": ' + "9" * 400 + "}",  # an int beyond float range
                '{"year": ' + "9" * 5000 + "}",  # beyond Python's int-parsing digit limit
            ]
        ),
        st.integers(500, 200_000).map(lambda d: '{"~fz": ' + "[" * d + "]" * d + "}"),
    )


def filters(fields: list[str], values: list[str]) -> st.SearchStrategy[list[Any]]:
    bound = st.one_of(
        st.none(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, 1990.0, 2030.0, -1e308]),
    )

    def make(field: str, any_of: list[str], lo: float | None, hi: float | None) -> Any:
        f = recall_pb2.MetadataFilter(field=field, any_of=any_of)
        if lo is not None:
            f.min = lo
        if hi is not None:
            f.max = hi
        return f

    one = st.builds(
        make,
        st.one_of(st.sampled_from(fields), UNICODE, st.just("")),
        st.lists(st.one_of(st.sampled_from(values), UNICODE), max_size=4),
        bound,
        bound,
    )
    return st.lists(one, max_size=3)


KS = st.one_of(
    st.integers(-3, 40),
    st.sampled_from([0, -(2**31), 2**31 - 1, 999, 1000, 1001, 100, 101]),
)


# ---- fixtures and helpers ------------------------------------------------------------------


class Env:
    """Stubs, the bundle's real ids/values, and the bookkeeping for cleanup."""

    def __init__(self, recall_server: Any, rank_server: Any, gateway_server: Any, bundle: Any):
        self.servers = {"recall": recall_server, "rank": rank_server, "gateway": gateway_server}
        self.channels = {name: channel_to(s) for name, s in self.servers.items()}
        self.recall = recall_pb2_grpc.RecallServiceStub(self.channels["recall"])
        self.rank = rank_pb2_grpc.RankServiceStub(self.channels["rank"])
        self.gateway = gateway_pb2_grpc.RecommendServiceStub(self.channels["gateway"])
        self.bundle = bundle
        self.dim = bundle.dim
        self.version = bundle.version
        self.features = len(bundle.section("ranker").get("side_features", []))
        catalog = list(bundle.iter_catalog())
        self.item_ids = [it.id for it in catalog]
        self.texts = [it.text for it in catalog]
        self.users = [u for u, _ in bundle.iter_user_histories()]
        self.fields = sorted({k for it in catalog for k in it.metadata}) or ["topic"]
        self.values = sorted(
            {
                str(v)
                for it in catalog
                for val in it.metadata.values()
                for v in (val if isinstance(val, list) else [val])
            }
        ) or ["x"]
        self.vectors = bundle.load_vectors().astype(np.float32)
        self.fuzz_users: set[str] = set()
        self.written: set[str] = set(POOL)  # every id an acknowledged Upsert wrote

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


@pytest.fixture(scope="module")
def env(recall_server, rank_server, gateway_server, bundle):
    e = Env(recall_server, rank_server, gateway_server, bundle)
    count = e.recall.GetInfo(recall_pb2.RecallServiceGetInfoRequest(), timeout=30).item_count
    yield e
    # Leave the shared servers as the other tests expect them: no fuzz items, no fuzz users.
    written = sorted(e.written)
    for start in range(0, len(written), 200):
        e.recall.Delete(recall_pb2.DeleteRequest(ids=written[start : start + 200]), timeout=30)
    info = e.recall.GetInfo(recall_pb2.RecallServiceGetInfoRequest(), timeout=30)
    assert info.item_count == count, "fuzz items left behind"
    for user in e.fuzz_users:
        if user:
            e.gateway.DeleteUser(gateway_pb2.DeleteUserRequest(user_id=user), timeout=30)
    e.close()
    print(f"\nfuzz cases run: {sum(CASES.values())} total, per RPC {dict(sorted(CASES.items()))}")
    print(f"fuzz status codes: {dict(sorted(CODES.items()))}")


def call(name: str, fn: Callable[..., Any], request: Any, timeout: float = TIMEOUT_S) -> Any:
    """Invoke ``fn``; assert the status is allowed; return the response or None on error."""
    CASES[name] += 1
    allowed = set(ALLOWED)
    if timeout < TIMEOUT_S:
        allowed.add(grpc.StatusCode.DEADLINE_EXCEEDED)
    try:
        response = fn(request, timeout=timeout)
    except grpc.RpcError as err:
        code = err.code()
        CODES[(name, code.name)] += 1
        shown = str(request)[:1500]
        assert code in allowed, f"{name} answered {code.name}: {err.details()}\nrequest: {shown}"
        assert err.details(), f"{name} answered {code.name} with no message"
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return None  # may be the client's own deadline: no server details then
        rich = error_details(err)
        assert rich is not None and rich.reason and rich.domain == DOMAIN, (
            f"{name} answered {code.name} without google.rpc details: {err.details()}"
        )
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
            assert rich.fields, f"{name} answered {code.name} naming no field: {err.details()}"
        return None
    CODES[(name, "OK")] += 1
    return response


def run_property(strategy: st.SearchStrategy[Any], check: Callable[[Any], None], n: int) -> None:
    @settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(strategy)
    def prop(value: Any) -> None:
        check(value)

    prop()


# ---- per-RPC properties --------------------------------------------------------------------


def mostly(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
    """Usually (7 in 8) a well-formed value, so requests get past validation; else hostile."""
    return st.integers(0, 15).flatmap(lambda r: hostile if r < 2 else valid)


MIN_SEQUENCES = mostly(st.just(0), st.sampled_from([1, 2**40, 2**64 - 1]))


def good_vectors(e: Env, rows: int = 1) -> st.SearchStrategy[bytes]:
    return st.builds(lambda seed: _vectors(rows, e.dim, seed, 1.0), st.integers(0, 2**32 - 1))


def valid_filters(e: Env) -> st.SearchStrategy[list[Any]]:
    one = st.builds(
        lambda f, v: recall_pb2.MetadataFilter(field=f, any_of=v),
        st.sampled_from(e.fields),
        st.lists(st.sampled_from(e.values), min_size=1, max_size=3),
    )
    return st.one_of(st.just([]), st.lists(one, max_size=2))


def recall_requests(e: Env) -> st.SearchStrategy[Any]:
    @st.composite
    def build(draw: st.DrawFn) -> Any:
        mode = draw(st.sampled_from(["text", "history", "both", "vector", "any"]))
        request = recall_pb2.RecallRequest(
            k=draw(mostly(st.integers(1, 40), KS)),
            exclude_ids=draw(
                mostly(
                    st.lists(st.sampled_from(e.item_ids), max_size=4),
                    st.lists(ids(e.item_ids), max_size=6),
                )
            ),
            omit_vectors=draw(st.booleans()),
            filters=draw(mostly(valid_filters(e), filters(e.fields, e.values))),
            min_sequence=draw(MIN_SEQUENCES),
            exact=draw(st.booleans()),
            exclude_history=draw(st.booleans()),
            include_details=draw(st.booleans()),
        )
        if mode in ("text", "both", "any"):
            request.query_text = draw(mostly(st.sampled_from(e.texts), texts(e.texts)))
        if mode in ("history", "both", "any"):
            request.history_item_ids.extend(
                draw(
                    mostly(
                        st.lists(st.sampled_from(e.item_ids), min_size=1, max_size=8),
                        st.one_of(
                            st.lists(ids(e.item_ids), max_size=5),
                            st.lists(st.sampled_from(e.item_ids), min_size=190, max_size=210),
                        ),
                    )
                )
            )
        if mode in ("vector", "any"):
            request.query_vector = draw(mostly(good_vectors(e), packed(e.dim, e.vectors)))
        return request

    return build()


def timeout_for(*requests: Any) -> float:
    """The test's short deadline for a read that may wait for a future sequence."""
    waits = any(getattr(r, "min_sequence", 0) for r in requests)
    return SHORT_TIMEOUT_S if waits else TIMEOUT_S


def check_recall(e: Env, n: int) -> None:
    def one(request: Any) -> None:
        resp = call("Recall", e.recall.Recall, request, timeout_for(request))
        if resp is not None:
            assert resp.bundle_version == e.version and resp.dim == e.dim
            n = len(resp.ids)
            assert n <= request.k
            assert not set(resp.ids) & set(request.exclude_ids)
            if request.exclude_history:
                assert not set(resp.ids) & set(request.history_item_ids)
            # Every column has one row per candidate.
            assert len(resp.scores) == 4 * n and len(resp.history_similarities) == 12 * n
            assert len(resp.vectors) == (0 if request.omit_vectors else 4 * n * e.dim)
            assert len(resp.because_item_ids) == len(resp.because_query) == len(resp.written) == n
            details = n if request.include_details else 0
            assert len(resp.titles) == len(resp.texts) == details
            qv = unpack_rows(resp.query_vector, 1, e.dim, "query_vector")
            assert abs(float(np.linalg.norm(qv)) - 1.0) < 1e-3, "query vector not unit"

    run_property(recall_requests(e), one, n)


def check_recall_batch(e: Env, n: int) -> None:
    batches = st.one_of(
        st.lists(recall_requests(e), max_size=4),
        st.integers(257, 300).map(lambda m: [recall_pb2.RecallRequest(query_text="x", k=1)] * m),
    )

    def one(requests: list[Any]) -> None:
        request = recall_pb2.RecallBatchRequest(requests=requests)
        resp = call("RecallBatch", e.recall.RecallBatch, request, timeout_for(*requests))
        if resp is not None:
            assert len(resp.responses) == len(requests)

    run_property(batches, one, n)


def check_get_items(e: Env, n: int) -> None:
    requests = st.one_of(
        st.lists(mostly(st.sampled_from(e.item_ids), ids(e.item_ids)), max_size=8),
        st.integers(257, 300).map(lambda m: [e.item_ids[0]] * m),
    )

    def one(item_ids: list[str]) -> None:
        resp = call("GetItems", e.recall.GetItems, recall_pb2.GetItemsRequest(ids=item_ids))
        if resp is not None:
            found = [it.id for it in resp.items]
            assert found == [i for i in item_ids if i not in set(resp.missing_ids)]
            assert all(isinstance(json.loads(it.metadata_json), dict) for it in resp.items)

    run_property(requests, one, n)


def item_writes(e: Env) -> st.SearchStrategy[Any]:
    return st.builds(
        recall_pb2.ItemWrite,
        id=mostly(st.sampled_from(POOL), pool_ids()),
        title=st.one_of(st.just(""), UNICODE),
        text=mostly(st.sampled_from(e.texts), texts(e.texts)),
        vector=mostly(st.one_of(st.just(b""), good_vectors(e)), packed(e.dim, e.vectors)),
        metadata_json=mostly(
            st.builds(
                lambda f, v: json.dumps({f: v}),
                st.sampled_from(e.fields),
                st.sampled_from(e.values),
            ),
            metadata_json(e.fields),
        ),
        embedding_version=mostly(st.just(e.version), st.sampled_from(["", "other-version"])),
    )


def check_upsert(e: Env, n: int) -> None:
    requests = st.one_of(
        st.lists(item_writes(e), min_size=1, max_size=4),
        st.lists(item_writes(e), max_size=4),
        st.integers(257, 270).map(lambda m: [recall_pb2.ItemWrite(id=POOL[0], text="x")] * m),
    )

    def one(items: list[Any]) -> None:
        resp = call("Upsert", e.recall.Upsert, recall_pb2.UpsertRequest(items=items))
        if resp is None:
            return
        e.written.update(it.id for it in items)
        # Acknowledged: every written id is live with a finite, unit-length stored vector.
        probe = np.zeros(e.dim, dtype=np.float32)
        probe[0] = 1.0
        got = e.recall.Recall(
            recall_pb2.RecallRequest(
                query_vector=pack(probe), k=1000, exact=True, min_sequence=resp.sequence
            ),
            timeout=TIMEOUT_S,
        )
        stored = dict(zip(got.ids, unpack_rows(got.vectors, len(got.ids), e.dim, "v"), strict=True))
        for it in items:
            assert it.id in stored, f"acknowledged upsert of {it.id!r} is not served"
            vec = stored[it.id]
            norm = float(np.linalg.norm(vec.astype(np.float64)))
            assert np.isfinite(vec).all() and abs(norm - 1.0) < 1e-3, (
                f"{it.id!r} stored with norm {norm}"
            )

    run_property(requests, one, n)


def check_delete(e: Env, n: int) -> None:
    requests = st.one_of(
        st.lists(pool_ids(), max_size=6),
        st.integers(257, 300).map(lambda m: ["fz-none"] * m),
    )

    def one(id_list: list[str]) -> None:
        resp = call("Delete", e.recall.Delete, recall_pb2.DeleteRequest(ids=id_list))
        if resp is not None:
            got = e.recall.Recall(
                recall_pb2.RecallRequest(
                    query_text="anything", k=1000, exact=True, min_sequence=resp.sequence
                ),
                timeout=TIMEOUT_S,
            )
            assert not set(got.ids) & set(id_list)

    run_property(requests, one, n)


def rank_requests(e: Env) -> st.SearchStrategy[Any]:
    @st.composite
    def build(draw: st.DrawFn) -> Any:
        n = draw(mostly(st.integers(1, 8), st.sampled_from([0, 49, 50, 51])))
        cand_ids = draw(
            mostly(
                st.lists(ids(e.item_ids), min_size=n, max_size=n, unique=True),
                st.lists(ids(e.item_ids), min_size=n, max_size=n),
            )
        )
        rows = max(len(cand_ids), 1)
        good_rows = good_vectors(e, rows)
        vectors = draw(
            mostly(
                good_rows,
                st.one_of(packed(e.dim, e.vectors, rows), packed(e.dim, e.vectors, rows + 1)),
            )
        )
        return rank_pb2.RankRequest(
            user_vector=draw(mostly(good_vectors(e), packed(e.dim, e.vectors))),
            candidate_ids=cand_ids,
            candidate_vectors=vectors,
            embedding_version=draw(
                mostly(st.just(e.version), st.sampled_from(["", "v-other", "\u00e9"]))
            ),
            top_k=draw(mostly(st.integers(0, 10), KS)),
            diversity_lambda=draw(
                mostly(
                    st.one_of(st.just(0.0), st.floats(0, 1, width=32)),
                    st.floats(width=32, allow_nan=True, allow_infinity=True),
                )
            ),
            candidate_features=draw(
                mostly(
                    st.builds(
                        lambda seed: _vectors(rows, e.features, seed, 1.0) if e.features else b"",
                        st.integers(0, 2**32 - 1),
                    ),
                    st.one_of(st.just(b""), st.binary(max_size=9)),
                )
            ),
        )

    return build()


def check_rank(e: Env, n: int) -> None:
    def one(request: Any) -> None:
        resp = call("Rank", e.rank.Rank, request)
        if resp is not None:
            assert resp.bundle_version == e.version
            got = [i.id for i in resp.items]
            assert len(got) == len(set(got)) and set(got) <= set(request.candidate_ids)

    run_property(rank_requests(e), one, n)


def recommend_requests(e: Env) -> st.SearchStrategy[Any]:
    return st.builds(
        gateway_pb2.RecommendRequest,
        user_id=st.one_of(
            st.just(""), st.sampled_from(e.users), st.sampled_from(e.users), fuzz_users()
        ),
        history_item_ids=mostly(
            st.lists(st.sampled_from(e.item_ids), max_size=5),
            st.one_of(
                st.lists(ids(e.item_ids), max_size=5),
                st.lists(st.sampled_from(e.item_ids), min_size=195, max_size=205),
            ),
        ),
        query_text=st.one_of(st.just(""), st.sampled_from(e.texts), texts(e.texts)),
        k=mostly(st.integers(0, 20), KS),
        include_seen=st.booleans(),
        candidate_count=mostly(st.sampled_from([0, 20, 30, 40]), KS),
        filters=mostly(valid_filters(e), filters(e.fields, e.values)),
        diversity_lambda=mostly(
            st.one_of(st.just(0.0), st.floats(0, 1, width=32)),
            st.floats(width=32, allow_nan=True, allow_infinity=True),
        ),
    )


def check_recommend(e: Env, n: int) -> None:
    def one(request: Any) -> None:
        resp = call("Recommend", e.gateway.Recommend, request)
        if resp is not None:
            assert len(resp.items) <= (request.k or 10)
            assert not resp.missing_shards

    run_property(recommend_requests(e), one, n)


def fuzz_users() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([f"fz-user-{n}" for n in range(8)]), UNICODE.map(lambda s: "fz" + s)
    )


def check_record_events(e: Env, n: int) -> None:
    users = mostly(fuzz_users(), st.just(""))
    events = st.builds(
        gateway_pb2.Event,
        user_id=users,
        item_id=mostly(st.sampled_from(e.item_ids), ids(e.item_ids)),
        type=mostly(st.sampled_from(EVENT_TYPES), UNICODE),
        timestamp_ms=mostly(st.just(0), st.integers(-(2**63), 2**63 - 1)),
    )
    batches = st.one_of(
        st.lists(events, min_size=1, max_size=5),
        st.lists(events, max_size=5),
        st.integers(1001, 1010).map(
            lambda m: [gateway_pb2.Event(user_id="fz-u", item_id=e.item_ids[0], type="view")] * m
        ),
    )

    def one(evs: list[Any]) -> None:
        e.fuzz_users.update(ev.user_id for ev in evs)
        call("RecordEvents", e.gateway.RecordEvents, gateway_pb2.RecordEventsRequest(events=evs))

    run_property(batches, one, n)


def check_delete_user(e: Env, n: int) -> None:
    def one(user: str) -> None:
        resp = call("DeleteUser", e.gateway.DeleteUser, gateway_pb2.DeleteUserRequest(user_id=user))
        if resp is not None:
            e.fuzz_users.add(user)

    run_property(mostly(fuzz_users(), st.just("")), one, n)


def check_get_info(e: Env, n: int) -> None:
    def one(_: int) -> None:
        info = call("Recall.GetInfo", e.recall.GetInfo, recall_pb2.RecallServiceGetInfoRequest())
        assert info is not None and info.dim == e.dim
        rinfo = call("Rank.GetInfo", e.rank.GetInfo, rank_pb2.RankServiceGetInfoRequest())
        assert rinfo is not None and rinfo.bundle_version == e.version

    run_property(st.integers(0, 3), one, max(n // 20, 3))


CHECKS = {
    "Recall": check_recall,
    "RecallBatch": check_recall_batch,
    "GetItems": check_get_items,
    "Upsert": check_upsert,
    "Delete": check_delete,
    "GetInfo": check_get_info,
    "Rank": check_rank,
    "Recommend": check_recommend,
    "RecordEvents": check_record_events,
    "DeleteUser": check_delete_user,
}


def assert_still_healthy(e: Env) -> None:
    for name, channel in e.channels.items():
        status = (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            .status
        )
        assert status == health_pb2.HealthCheckResponse.SERVING, name
    got = e.recall.Recall(recall_pb2.RecallRequest(query_text=e.texts[0], k=3), timeout=30)
    assert len(got.ids) == 3
    user = e.users[0]
    rec = e.gateway.Recommend(gateway_pb2.RecommendRequest(user_id=user, k=3), timeout=30)
    assert len(rec.items) == 3 and rec.bundle_version == e.version


@pytest.mark.parametrize("rpc", list(CHECKS))
def test_fuzz_rpc(env, rpc):
    CHECKS[rpc](env, CI_EXAMPLES)
    assert_still_healthy(env)
