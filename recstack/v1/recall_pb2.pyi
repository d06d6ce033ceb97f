from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecallRequest(_message.Message):
    __slots__ = ("query_text", "history_item_ids", "query_vector", "k", "exclude_ids", "omit_vectors")
    QUERY_TEXT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    QUERY_VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    OMIT_VECTORS_FIELD_NUMBER: _ClassVar[int]
    query_text: str
    history_item_ids: _containers.RepeatedScalarFieldContainer[str]
    query_vector: bytes
    k: int
    exclude_ids: _containers.RepeatedScalarFieldContainer[str]
    omit_vectors: bool
    def __init__(self, query_text: _Optional[str] = ..., history_item_ids: _Optional[_Iterable[str]] = ..., query_vector: _Optional[bytes] = ..., k: _Optional[int] = ..., exclude_ids: _Optional[_Iterable[str]] = ..., omit_vectors: _Optional[bool] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("id", "score", "vector", "title", "text")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    vector: bytes
    title: str
    text: str
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., vector: _Optional[bytes] = ..., title: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class RecallResponse(_message.Message):
    __slots__ = ("candidates", "query_vector", "dim", "bundle_version")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    QUERY_VECTOR_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    query_vector: bytes
    dim: int
    bundle_version: str
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., query_vector: _Optional[bytes] = ..., dim: _Optional[int] = ..., bundle_version: _Optional[str] = ...) -> None: ...

class RecallServiceGetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RecallServiceGetInfoResponse(_message.Message):
    __slots__ = ("bundle_version", "dim", "item_count", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "encoder_provider", "max_k")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    HNSW_M_FIELD_NUMBER: _ClassVar[int]
    HNSW_EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    HNSW_EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    ENCODER_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    dim: int
    item_count: int
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int
    encoder_provider: str
    max_k: int
    def __init__(self, bundle_version: _Optional[str] = ..., dim: _Optional[int] = ..., item_count: _Optional[int] = ..., hnsw_m: _Optional[int] = ..., hnsw_ef_construction: _Optional[int] = ..., hnsw_ef_search: _Optional[int] = ..., encoder_provider: _Optional[str] = ..., max_k: _Optional[int] = ...) -> None: ...
