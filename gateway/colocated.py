"""All three stages in one process: ``python -m gateway.colocated`` / ``recstack-colocated``.

One gRPC server hosts RecommendService, RecallService (+ admin) and RankService (+ admin)
over one bundle. Recommend calls the recall replica and the rank cores in this process
(:class:`gateway.local.LocalRecall` / :class:`gateway.local.LocalRank`), so a Recommend is
one RPC instead of three; Recall, Upsert/Delete, Rank and the reload RPCs are the same
services the separate processes offer, so a caller cannot tell the two deployments apart
except by speed. The cores, lifecycles and options are the separate services' own:
recall's and rank's flags carry a ``--recall-`` / ``--rank-`` prefix (``--recall-ef-search``,
``--rank-max-queue-delay-ms``), the gateway's have none, and ``--bundle`` is the one bundle
of all three. It is one replica: for more capacity, or shards, run the three services
apart (docs/deploy.md).

Loading order: the recall replica (bundle, catalog log, self-check), then the rank cores
(self-check), then the gateway core over the replica's opened bundle; health reports
SERVING for every service only once all three are up. Stopping drains gRPC first (in-flight
RPCs finish on their cores), then closes the rank cores, the replica and the event store.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace

from gateway import server as gateway_server
from gateway.core import GatewayCore, assemble, open_events
from gateway.events import EventStore
from gateway.local import LocalRank, LocalRecall
from rank_service import server as rank_server
from rank_service.core import rank_lifecycle
from recall_service import server as recall_server
from recall_service.replica import Replica
from recstack.core.config import (
    GATEWAY_PORT,
    GatewayOptions,
    OptionGroup,
    OrtOptions,
    RankOptions,
    RecallOptions,
    ServerOptions,
)
from recstack.runtime.server import CoreRef, RunningServer, cli_main, start_server

# Options that only mean something when the stages are separate processes.
REMOTE_ONLY = frozenset(
    {
        "recall_address",
        "rank_address",
        "shard_failure_policy",
        "downstream_tls_ca",
        "downstream_tls_cert",
        "downstream_tls_key",
        "downstream_token_file",
    }
)
GROUPS = (
    OptionGroup(GatewayOptions, "gateway", skip=REMOTE_ONLY),
    OptionGroup(
        RecallOptions, "recall", "recall", frozenset({"bundle", "shard_index", "shard_count"})
    ),
    OptionGroup(RankOptions, "rank", "rank", frozenset({"bundle"})),
    OptionGroup(OrtOptions, "onnx runtime (encoder and ranker)"),
)


def serve(
    server: ServerOptions,
    gateway: GatewayOptions,
    recall: RecallOptions,
    rank: RankOptions,
    ort: OrtOptions | None = None,
) -> RunningServer:
    """Start the colocated server on ``server.port`` (0 = any; ``running.port`` is it).
    ``gateway.bundle`` (or recall's default when empty) is the bundle of all three."""
    bundle = gateway.bundle or recall.bundle
    gateway = replace(gateway, bundle=bundle)
    recall = replace(recall, bundle=bundle)
    rank = replace(rank, bundle=bundle)
    ort = ort or OrtOptions()
    replica = Replica(recall, ort.session_options())
    ranks = rank_lifecycle(rank, ort)
    ref: CoreRef[GatewayCore] = CoreRef("gateway")
    state: dict[str, EventStore] = {}

    def load() -> None:
        replica.load()
        ranks.load_initial()
        ranks.start_watching(rank.bundle_poll_s)
        opened = replica.versions.primary().bundle  # opened and verified once, by the replica
        events = state["events"] = open_events(gateway, opened)
        local_rank = LocalRank(ranks.versions)
        ref.set(
            assemble(
                gateway,
                opened,
                LocalRecall(replica),
                local_rank,
                events,
                local_rank.side_features(),
            )
        )

    def close() -> None:
        # After the gRPC server has stopped: no RPC holds a core any more.
        ranks.close()
        replica.close()
        if "events" in state:
            state["events"].close()

    specs = [
        gateway_server.service(ref),
        *recall_server.services(replica),
        *rank_server.services(ranks, rank),
    ]
    return start_server(server, specs, load, on_stop=close)


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(
        argv,
        prog="recstack-colocated",
        default_port=GATEWAY_PORT,
        description="Recommend, Recall and Rank in one process (one RPC per Recommend).",
        groups=GROUPS,
        serve=serve,
    )


if __name__ == "__main__":
    sys.exit(main())
