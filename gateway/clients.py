"""gRPC implementations of the gateway's downstream protocols.

Each call carries the time budget the core computed as its gRPC deadline; a downstream
error comes back as the matching domain error (same kind, fields, reason, metadata and
retry delay, decoded from its google.rpc.Status), so the caller sees e.g. INVALID_ARGUMENT
naming ``history_item_ids`` rather than a generic failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

import grpc

from recstack.core.domain import (
    ItemsResult,
    RankQuery,
    RankResult,
    RecallQuery,
    RecallResult,
)
from recstack.core.errors import (
    ErrorKind,
    FailedPrecondition,
    RecstackError,
    Unavailable,
    details_from_trailers,
    error_for_kind,
)
from recstack.core.lifecycle import VERSION_FIELD
from recstack.core.sharding import shard_of
from recstack.runtime.pbconv import (
    items_from_pb,
    rank_query_to_pb,
    rank_result_from_pb,
    recall_query_to_pb,
    recall_result_from_pb,
)
from recstack.runtime.server import KIND_FOR_STATUS
from recstack.runtime.tracing import ContextThreadPool
from recstack.v1 import rank_pb2, rank_pb2_grpc, recall_pb2, recall_pb2_grpc

R = TypeVar("R")
# A request the shards refuse for what it asks (not a shard failure): the same on every shard.
BAD_REQUEST_KINDS = frozenset({ErrorKind.INVALID_ARGUMENT, ErrorKind.OUT_OF_RANGE})


def relay_errors(service: str, call: Callable[[], R]) -> R:
    """Run a stub call; turn its RpcError into the domain error of the same kind."""
    try:
        return call()
    except grpc.RpcError as err:
        code = err.code()
        details = f"{service}: {err.details()}"
        kind = KIND_FOR_STATUS.get(code)
        if kind is None:
            raise Unavailable(f"{details} ({code.name})") from err
        rich = details_from_trailers(err.trailing_metadata())
        # Without details (e.g. grpc's own RESOURCE_EXHAUSTED past max_concurrent_rpcs)
        # the kind alone is relayed.
        exc: RecstackError = (
            rich.to_error(f"{service}: ")
            if rich is not None and rich.code == kind.value
            else error_for_kind(kind, details)
        )
        raise exc from err


def shard_targets(value: str) -> list[str]:
    """The gRPC target of each recall shard, in shard order, from ``--recall-address``.

    Comma-separated targets, one per shard (``host:port`` or ``dns:///name:port``); an
    ``ipv4:``/``ipv6:`` target lists a shard's replicas itself and keeps the items that
    follow it without a scheme (``ipv4:10.0.0.1:50051,10.0.0.2:50051`` is one shard
    balanced over two replicas; gRPC's own address-list syntax).
    """
    targets: list[str] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        if (
            targets
            and targets[-1].startswith(("ipv4:", "ipv6:"))
            and "://" not in item
            and (not item.startswith(("ipv4:", "ipv6:", "dns:", "unix:")))
        ):
            targets[-1] += "," + item
        else:
            targets.append(item)
    return targets


class GrpcRecall:
    """RecallBackend over a recstack.v1.RecallService channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = recall_pb2_grpc.RecallServiceStub(channel)

    def recall(self, query: RecallQuery, timeout: float | None) -> RecallResult:
        request = recall_query_to_pb(query)
        resp = relay_errors("recall", lambda: self.stub.Recall(request, timeout=timeout))
        return recall_result_from_pb(resp)

    def get_items(self, ids: Sequence[str], timeout: float | None) -> ItemsResult:
        request = recall_pb2.GetItemsRequest(ids=ids)
        resp = relay_errors("recall", lambda: self.stub.GetItems(request, timeout=timeout))
        return items_from_pb(resp)


class GrpcRank:
    """RankBackend over a recstack.v1.RankService channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = rank_pb2_grpc.RankServiceStub(channel)

    def rank(self, query: RankQuery, timeout: float | None) -> RankResult:
        request = rank_query_to_pb(query)
        resp = relay_errors("rank", lambda: self.stub.Rank(request, timeout=timeout))
        return rank_result_from_pb(resp)

    def _info(self, timeout: float | None) -> rank_pb2.RankServiceGetInfoResponse:
        return relay_errors(
            "rank", lambda: self.stub.GetInfo(rank_pb2.RankServiceGetInfoRequest(), timeout=timeout)
        )

    def side_features(self, timeout: float | None) -> tuple[str, ...]:
        """The side features the ranker declares (GetInfo), in the order it expects them."""
        return tuple(self._info(timeout).side_features)

    def serving_versions(self, timeout: float | None) -> tuple[str, ...]:
        """The embedding versions a rank replica serves now (GetInfo), primary first."""
        return tuple(self._info(timeout).serving_versions)


class ShardedRecall:
    """RecallBackend over N recall shards: the same query to all in parallel, merged top-k.

    Every shard computes the same user vector (their vector directories cover all items),
    so merging by score gives what one node holding every item would
    return. Each shard call runs under the caller's deadline. A failing shard fails the
    call under policy "fail"; under "partial" the others answer and the failed shard is
    listed in ``missing_shards`` (all failing still fails).
    """

    def __init__(self, shards: Sequence[GrpcRecall], policy: str = "fail") -> None:
        if not shards:
            raise ValueError("at least one recall shard is required")
        self.shards = list(shards)
        self.policy = policy
        # Shard calls run in the submitter's context: their trace spans are the caller's.
        self._pool: ThreadPoolExecutor = ContextThreadPool(
            max_workers=4 * len(shards), thread_name_prefix="fanout"
        )

    def recall(self, query: RecallQuery, timeout: float | None) -> RecallResult:
        if len(self.shards) == 1:
            return self.shards[0].recall(query, timeout)
        futures = [self._pool.submit(s.recall, query, timeout) for s in self.shards]
        answers: dict[int, RecallResult] = {}
        missing: list[int] = []
        first_error: RecstackError | None = None
        for index, future in enumerate(futures):
            try:
                answers[index] = future.result()
            except RecstackError as exc:
                if self.policy != "partial" or exc.kind in BAD_REQUEST_KINDS:
                    raise  # a bad request is bad on every shard: report it, not a gap
                first_error = first_error or exc
                missing.append(index)
        if not answers:
            assert first_error is not None
            raise first_error
        if len({r.bundle_version for r in answers.values()}) > 1:
            answers = self._in_one_version(query, timeout, answers)
        return RecallResult.concat(list(answers.values()), query.k, tuple(missing))

    def _in_one_version(
        self, query: RecallQuery, timeout: float | None, answers: dict[int, RecallResult]
    ) -> dict[int, RecallResult]:
        """Shards swapped at different moments of a rollout: re-ask the shards that
        answered in another version, pinned to one every shard holds (a swapped shard
        keeps the version it replaced). Never merges two spaces; Unavailable if no
        version is common."""
        versions = [r.bundle_version for r in answers.values()]
        for version in dict.fromkeys(versions):
            pinned = replace(query, embedding_version=version)
            redo = {
                i: self._pool.submit(self.shards[i].recall, pinned, timeout)
                for i, r in answers.items()
                if r.bundle_version != version
            }
            try:
                again = {i: f.result() for i, f in redo.items()}
            except FailedPrecondition as exc:
                if exc.field != VERSION_FIELD:
                    raise
                continue
            return {**answers, **again}
        _same_version(versions)  # raises Unavailable naming the versions
        raise AssertionError("unreachable: more than one version")

    def get_items(self, ids: Sequence[str], timeout: float | None) -> ItemsResult:
        """Each id asked of the shard that owns it (in parallel); results in ``ids`` order."""
        if len(self.shards) == 1:
            return self.shards[0].get_items(ids, timeout)
        owned: dict[int, list[str]] = {}
        for i in ids:
            owned.setdefault(shard_of(i, len(self.shards)), []).append(i)
        futures = {
            s: self._pool.submit(self.shards[s].get_items, part, timeout)
            for s, part in owned.items()
        }
        results = {s: f.result() for s, f in futures.items()}
        version = _same_version(r.bundle_version for r in results.values())
        found = {it.id: it for r in results.values() for it in r.items}
        return ItemsResult(
            [found[i] for i in ids if i in found],
            tuple(i for i in ids if i not in found),
            version,
        )


def _same_version(versions: Iterable[str]) -> str:
    """The one bundle version all shards answered with; Unavailable during a rollout."""
    distinct = sorted(set(versions))
    if len(distinct) > 1:
        raise Unavailable(
            f"recall shards serve different bundle versions {distinct}"
            " (a rollout is in progress); retry shortly"
        )
    return distinct[0]
