"""In-process implementations of the gateway's downstream protocols (no grpc, no RPC).

``LocalRecall`` and ``LocalRank`` call a recall replica and the rank cores directly, so a
:class:`gateway.core.GatewayCore` built over them runs exactly the stages the three servers
run (profile, user tower, HNSW, features, ranker, details) without the two RPC hops: the
in-process floor the benchmarks compare Recommend over gRPC against, the backends of the
colocated server (:mod:`gateway.colocated`), and the served path an embedding application
can use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from gateway.core import GatewayCore, assemble, open_events
from gateway.events import EventStore
from rank_service.core import RankCore, rank_lifecycle
from recall_service.replica import Replica
from recstack.core.config import GatewayOptions, OrtOptions, RankOptions, RecallOptions
from recstack.core.deadline import Deadline
from recstack.core.domain import ItemsResult, RankQuery, RankResult, RecallQuery, RecallResult
from recstack.core.lifecycle import Versions


class LocalRecall:
    """RecallBackend over a loaded recall replica in this process."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def recall(self, query: RecallQuery, timeout: float | None) -> RecallResult:
        return self.replica.recall_batch([query], Deadline.after(timeout))[0]

    def get_items(self, ids: Sequence[str], timeout: float | None) -> ItemsResult:
        with self.replica.versions.lease() as core:
            return core.get_items(ids)


class LocalRank:
    """RankBackend over the rank cores of a lifecycle in this process: each call leases the
    core of the version its vectors came from, as the rank servicer does."""

    def __init__(self, versions: Versions[RankCore]) -> None:
        self.versions = versions

    def rank(self, query: RankQuery, timeout: float | None) -> RankResult:
        with self.versions.lease(query.embedding_version) as core:
            return core.rank(query, Deadline.after(timeout))

    def side_features(self, timeout: float | None = None) -> tuple[str, ...]:
        return self.versions.primary().side_features

    def serving_versions(self, timeout: float | None) -> tuple[str, ...]:
        return self.versions.held()


class LocalPipeline:
    """Recall replica, rank core and gateway core in this process, from one bundle, with
    the services' default options (``state_dir`` holds the replica's and the event
    store's files). ``core.recommend`` is a Recommend without RPCs; ``close`` releases
    the threads and files."""

    def __init__(
        self,
        bundle: str,
        state_dir: str,
        recall: RecallOptions | None = None,
        rank: RankOptions | None = None,
        gateway: GatewayOptions | None = None,
        ort: OrtOptions | None = None,
    ) -> None:
        session = (ort or OrtOptions()).session_options()
        state = Path(state_dir)
        recall_options = replace(
            recall or RecallOptions(), bundle=bundle, state_dir=str(state / "recall")
        )
        self.replica = Replica(recall_options, session)
        self.replica.load()
        self.rank = rank_lifecycle(replace(rank or RankOptions(), bundle=bundle), ort)
        self.rank.load_initial()
        gateway_options = replace(
            gateway or GatewayOptions(), bundle=bundle, state_dir=str(state / "gateway")
        )
        Path(gateway_options.state_dir).mkdir(parents=True, exist_ok=True)
        opened = self.replica.versions.primary().bundle  # opened and verified once, by the replica
        self.events: EventStore = open_events(gateway_options, opened)
        local_rank = LocalRank(self.rank.versions)
        self.core: GatewayCore = assemble(
            gateway_options,
            opened,
            LocalRecall(self.replica),
            local_rank,
            self.events,
            local_rank.side_features(),
        )

    def close(self) -> None:
        self.rank.close()
        self.replica.close()
        self.events.close()
