from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RankRequest(_message.Message):
    __slots__ = ("user_vector", "candidate_ids", "candidate_vectors", "embedding_version", "top_k")
    USER_VECTOR_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    user_vector: bytes
    candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    candidate_vectors: bytes
    embedding_version: str
    top_k: int
    def __init__(self, user_vector: _Optional[bytes] = ..., candidate_ids: _Optional[_Iterable[str]] = ..., candidate_vectors: _Optional[bytes] = ..., embedding_version: _Optional[str] = ..., top_k: _Optional[int] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("id", "score")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("items", "bundle_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    bundle_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., bundle_version: _Optional[str] = ...) -> None: ...

class RankServiceGetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RankServiceGetInfoResponse(_message.Message):
    __slots__ = ("bundle_version", "dim", "execution_provider", "max_candidates")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MAX_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    dim: int
    execution_provider: str
    max_candidates: int
    def __init__(self, bundle_version: _Optional[str] = ..., dim: _Optional[int] = ..., execution_provider: _Optional[str] = ..., max_candidates: _Optional[int] = ...) -> None: ...
