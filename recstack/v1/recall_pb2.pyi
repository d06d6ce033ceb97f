from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecallRequest(_message.Message):
    __slots__ = ("query_text", "history_item_ids", "query_vector", "k", "exclude_ids", "omit_vectors", "filters", "min_sequence", "exact", "ignore_unknown_history", "user_prior", "exclude_history", "include_details", "embedding_version", "include_recent")
    QUERY_TEXT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    QUERY_VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    OMIT_VECTORS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    MIN_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    IGNORE_UNKNOWN_HISTORY_FIELD_NUMBER: _ClassVar[int]
    USER_PRIOR_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DETAILS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_VERSION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_RECENT_FIELD_NUMBER: _ClassVar[int]
    query_text: str
    history_item_ids: _containers.RepeatedScalarFieldContainer[str]
    query_vector: bytes
    k: int
    exclude_ids: _containers.RepeatedScalarFieldContainer[str]
    omit_vectors: bool
    filters: _containers.RepeatedCompositeFieldContainer[MetadataFilter]
    min_sequence: int
    exact: bool
    ignore_unknown_history: bool
    user_prior: bool
    exclude_history: bool
    include_details: bool
    embedding_version: str
    include_recent: bool
    def __init__(self, query_text: _Optional[str] = ..., history_item_ids: _Optional[_Iterable[str]] = ..., query_vector: _Optional[bytes] = ..., k: _Optional[int] = ..., exclude_ids: _Optional[_Iterable[str]] = ..., omit_vectors: _Optional[bool] = ..., filters: _Optional[_Iterable[_Union[MetadataFilter, _Mapping]]] = ..., min_sequence: _Optional[int] = ..., exact: _Optional[bool] = ..., ignore_unknown_history: _Optional[bool] = ..., user_prior: _Optional[bool] = ..., exclude_history: _Optional[bool] = ..., include_details: _Optional[bool] = ..., embedding_version: _Optional[str] = ..., include_recent: _Optional[bool] = ...) -> None: ...

class MetadataFilter(_message.Message):
    __slots__ = ("field", "any_of", "min", "max")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    field: str
    any_of: _containers.RepeatedScalarFieldContainer[str]
    min: float
    max: float
    def __init__(self, field: _Optional[str] = ..., any_of: _Optional[_Iterable[str]] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class RecallBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RecallRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[RecallRequest, _Mapping]]] = ...) -> None: ...

class RecallBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[RecallResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[RecallResponse, _Mapping]]] = ...) -> None: ...

class ItemWrite(_message.Message):
    __slots__ = ("id", "title", "text", "vector", "metadata_json", "embedding_version")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    text: str
    vector: bytes
    metadata_json: str
    embedding_version: str
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., text: _Optional[str] = ..., vector: _Optional[bytes] = ..., metadata_json: _Optional[str] = ..., embedding_version: _Optional[str] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ItemWrite]
    def __init__(self, items: _Optional[_Iterable[_Union[ItemWrite, _Mapping]]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class ReloadBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadBundleResponse(_message.Message):
    __slots__ = ("bundle_version", "swapped")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SWAPPED_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    swapped: bool
    def __init__(self, bundle_version: _Optional[str] = ..., swapped: _Optional[bool] = ...) -> None: ...

class RecallAdminServiceReloadBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RecallAdminServiceReloadBundleResponse(_message.Message):
    __slots__ = ("bundle_version", "swapped")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SWAPPED_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    swapped: bool
    def __init__(self, bundle_version: _Optional[str] = ..., swapped: _Optional[bool] = ...) -> None: ...

class RecallResponse(_message.Message):
    __slots__ = ("query_vector", "dim", "bundle_version", "ids", "scores", "vectors", "history_similarities", "because_item_ids", "because_query", "written", "titles", "texts", "recent")
    QUERY_VECTOR_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_SIMILARITIES_FIELD_NUMBER: _ClassVar[int]
    BECAUSE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    BECAUSE_QUERY_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    TITLES_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    query_vector: bytes
    dim: int
    bundle_version: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    scores: bytes
    vectors: bytes
    history_similarities: bytes
    because_item_ids: _containers.RepeatedScalarFieldContainer[str]
    because_query: _containers.RepeatedScalarFieldContainer[bool]
    written: _containers.RepeatedScalarFieldContainer[bool]
    titles: _containers.RepeatedScalarFieldContainer[str]
    texts: _containers.RepeatedScalarFieldContainer[str]
    recent: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, query_vector: _Optional[bytes] = ..., dim: _Optional[int] = ..., bundle_version: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., scores: _Optional[bytes] = ..., vectors: _Optional[bytes] = ..., history_similarities: _Optional[bytes] = ..., because_item_ids: _Optional[_Iterable[str]] = ..., because_query: _Optional[_Iterable[bool]] = ..., written: _Optional[_Iterable[bool]] = ..., titles: _Optional[_Iterable[str]] = ..., texts: _Optional[_Iterable[str]] = ..., recent: _Optional[_Iterable[bool]] = ...) -> None: ...

class GetItemsRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "title", "text", "metadata_json", "written")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    text: str
    metadata_json: str
    written: bool
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., text: _Optional[str] = ..., metadata_json: _Optional[str] = ..., written: _Optional[bool] = ...) -> None: ...

class GetItemsResponse(_message.Message):
    __slots__ = ("items", "missing_ids", "bundle_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    missing_ids: _containers.RepeatedScalarFieldContainer[str]
    bundle_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., missing_ids: _Optional[_Iterable[str]] = ..., bundle_version: _Optional[str] = ...) -> None: ...

class RecallServiceGetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RecallServiceGetInfoResponse(_message.Message):
    __slots__ = ("bundle_version", "dim", "item_count", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "encoder_provider", "max_k", "shard_index", "shard_count", "applied_sequence", "filter_fields", "serving_versions")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    HNSW_M_FIELD_NUMBER: _ClassVar[int]
    HNSW_EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    HNSW_EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    ENCODER_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELDS_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    dim: int
    item_count: int
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int
    encoder_provider: str
    max_k: int
    shard_index: int
    shard_count: int
    applied_sequence: int
    filter_fields: _containers.RepeatedScalarFieldContainer[str]
    serving_versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, bundle_version: _Optional[str] = ..., dim: _Optional[int] = ..., item_count: _Optional[int] = ..., hnsw_m: _Optional[int] = ..., hnsw_ef_construction: _Optional[int] = ..., hnsw_ef_search: _Optional[int] = ..., encoder_provider: _Optional[str] = ..., max_k: _Optional[int] = ..., shard_index: _Optional[int] = ..., shard_count: _Optional[int] = ..., applied_sequence: _Optional[int] = ..., filter_fields: _Optional[_Iterable[str]] = ..., serving_versions: _Optional[_Iterable[str]] = ...) -> None: ...
