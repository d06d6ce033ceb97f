"""Thin gRPC servicer: protobuf <-> domain objects, then the replica/core does the work."""

from __future__ import annotations

import json
from typing import Any

import grpc

from recall_service.core import ItemWrite
from recall_service.replica import Replica, batch_version
from recstack.core.errors import InvalidArgument
from recstack.core.vectors import unpack_vector
from recstack.runtime.pbconv import items_to_pb, recall_query_from_pb, recall_result_to_pb
from recstack.runtime.server import deadline_of
from recstack.v1 import recall_pb2, recall_pb2_grpc


def _metadata(raw: str, field: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and ints past Python's digit limit;
        # RecursionError is deeply nested arrays/objects.
        raise InvalidArgument(f"invalid JSON: {str(exc)[:200]}", field=field) from exc
    if not isinstance(value, dict):
        raise InvalidArgument("must be a JSON object", field=field)
    return value


class RecallServicer(recall_pb2_grpc.RecallServiceServicer):
    """recstack.v1.RecallService over a replica."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.versions = replica.versions

    def Recall(
        self, request: recall_pb2.RecallRequest, context: grpc.ServicerContext
    ) -> recall_pb2.RecallResponse:
        with self.versions.lease(request.embedding_version) as core:
            result = core.recall(recall_query_from_pb(request, core.dim), deadline_of(context))
            return recall_result_to_pb(result, core.dim)

    def RecallBatch(
        self, request: recall_pb2.RecallBatchRequest, context: grpc.ServicerContext
    ) -> recall_pb2.RecallBatchResponse:
        version = batch_version(r.embedding_version for r in request.requests)
        with self.versions.lease(version) as core:
            queries = [
                recall_query_from_pb(r, core.dim, f"requests[{i}].")
                for i, r in enumerate(request.requests)
            ]
            results = core.recall_batch(queries, deadline_of(context))
            return recall_pb2.RecallBatchResponse(
                responses=[recall_result_to_pb(r, core.dim) for r in results]
            )

    def GetItems(
        self, request: recall_pb2.GetItemsRequest, context: grpc.ServicerContext
    ) -> recall_pb2.GetItemsResponse:
        with self.versions.lease() as core:
            result = core.get_items(list(request.ids))
        return items_to_pb(result)

    def Upsert(
        self, request: recall_pb2.UpsertRequest, context: grpc.ServicerContext
    ) -> recall_pb2.UpsertResponse:
        dim = self.versions.primary().dim
        items = [
            ItemWrite(
                id=it.id,
                title=it.title,
                text=it.text,
                metadata=_metadata(it.metadata_json, f"items[{i}].metadata_json"),
                vector=unpack_vector(it.vector, dim, f"items[{i}].vector") if it.vector else None,
                embedding_version=it.embedding_version,
            )
            for i, it in enumerate(request.items)
        ]
        return recall_pb2.UpsertResponse(sequence=self.replica.upsert(items))

    def Delete(
        self, request: recall_pb2.DeleteRequest, context: grpc.ServicerContext
    ) -> recall_pb2.DeleteResponse:
        return recall_pb2.DeleteResponse(sequence=self.replica.delete(list(request.ids)))

    def ReloadBundle(
        self, request: recall_pb2.ReloadBundleRequest, context: grpc.ServicerContext
    ) -> recall_pb2.ReloadBundleResponse:
        """Deprecated alias of RecallAdminService.ReloadBundle (one release)."""
        outcome = self.replica.reload()
        return recall_pb2.ReloadBundleResponse(
            bundle_version=outcome.bundle_version, swapped=outcome.swapped
        )

    def GetInfo(
        self, request: recall_pb2.RecallServiceGetInfoRequest, context: grpc.ServicerContext
    ) -> recall_pb2.RecallServiceGetInfoResponse:
        i = self.versions.primary().info()
        return recall_pb2.RecallServiceGetInfoResponse(
            bundle_version=i.bundle_version,
            dim=i.dim,
            item_count=i.item_count,
            hnsw_m=i.hnsw_m,
            hnsw_ef_construction=i.hnsw_ef_construction,
            hnsw_ef_search=i.hnsw_ef_search,
            encoder_provider=i.encoder_provider,
            max_k=i.max_k,
            shard_index=i.shard_index,
            shard_count=i.shard_count,
            applied_sequence=i.applied_sequence,
            filter_fields=i.filter_fields,
            serving_versions=list(self.versions.held()),
        )


class RecallAdminServicer(recall_pb2_grpc.RecallAdminServiceServicer):
    """recstack.v1.RecallAdminService: the operator RPCs, over the same replica."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def ReloadBundle(
        self,
        request: recall_pb2.RecallAdminServiceReloadBundleRequest,
        context: grpc.ServicerContext,
    ) -> recall_pb2.RecallAdminServiceReloadBundleResponse:
        outcome = self.replica.reload()
        return recall_pb2.RecallAdminServiceReloadBundleResponse(
            bundle_version=outcome.bundle_version, swapped=outcome.swapped
        )
