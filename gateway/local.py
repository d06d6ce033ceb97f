"""In-process implementations of the gateway's downstream protocols (no grpc, no RPC).

``LocalRecall`` and ``LocalRank`` call a recall replica and a rank core directly, so a
:class:`gateway.core.GatewayCore` built over them runs exactly the stages the three servers
run (profile, user tower, HNSW, features, ranker, details) without the two RPC hops: the
in-process floor the benchmarks compare Recommend over gRPC against, and the served path
an embedding application can use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from gateway.core import GatewayCore, assemble, open_events
from gateway.events import EventStore
from rank_service.core import RankCore, load_core
from recall_service.replica import Replica
from recstack.core.config import GatewayOptions, OrtOptions, RankOptions, RecallOptions
from recstack.core.deadline import Deadline
from recstack.core.domain import ItemsResult, RankQuery, RankResult, RecallQuery, RecallResult


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
    """RankBackend over a rank core in this process."""

    def __init__(self, core: RankCore) -> None:
        self.core = core

    def rank(self, query: RankQuery, timeout: float | None) -> RankResult:
        return self.core.rank(query, Deadline.after(timeout))

    def side_features(self, timeout: float | None = None) -> tuple[str, ...]:
        return self.core.side_features

    def serving_versions(self, timeout: float | None) -> tuple[str, ...]:
        return (self.core.version,)


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
        self.ranker = load_core(replace(rank or RankOptions(), bundle=bundle), session)
        gateway_options = replace(
            gateway or GatewayOptions(), bundle=bundle, state_dir=str(state / "gateway")
        )
        Path(gateway_options.state_dir).mkdir(parents=True, exist_ok=True)
        opened = self.replica.versions.primary().bundle  # opened and verified once, by the replica
        self.events: EventStore = open_events(gateway_options, opened)
        self.core: GatewayCore = assemble(
            gateway_options,
            opened,
            LocalRecall(self.replica),
            LocalRank(self.ranker),
            self.events,
            self.ranker.side_features,
        )

    def close(self) -> None:
        self.ranker.close(timeout=5)
        self.replica.close()
        self.events.close()
