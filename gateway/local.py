"""In-process implementations of the gateway's downstream protocols (no grpc, no RPC).

``LocalRecall`` and ``LocalRank`` call a recall replica and a rank core directly, so a
:class:`gateway.core.GatewayCore` built over them runs exactly the stages the three servers
run (profile, user tower, HNSW, features, ranker, details) without the two RPC hops: the
in-process floor the benchmarks compare Recommend over gRPC against, and the served path
an embedding application can use.
"""

from __future__ import annotations

from collections.abc import Sequence

from rank_service.core import RankCore
from recall_service.replica import Replica
from recstack.deadline import Deadline
from recstack.domain import ItemsResult, RankQuery, RankResult, RecallQuery, RecallResult


class LocalRecall:
    """RecallBackend over a loaded recall replica in this process."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def recall(self, query: RecallQuery, timeout: float | None) -> RecallResult:
        return self.replica.recall_batch([query], Deadline.after(timeout))[0]

    def get_items(self, ids: Sequence[str], timeout: float | None) -> ItemsResult:
        return self.replica.ref.get().get_items(ids)


class LocalRank:
    """RankBackend over a rank core in this process."""

    def __init__(self, core: RankCore) -> None:
        self.core = core

    def rank(self, query: RankQuery, timeout: float | None) -> RankResult:
        return self.core.rank(query, Deadline.after(timeout))

    def side_features(self, timeout: float | None = None) -> tuple[str, ...]:
        return self.core.side_features
