from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RankRequest(_message.Message):
    __slots__ = ("user_vector", "candidate_ids", "candidate_vectors", "embedding_version", "top_k", "diversity_lambda", "candidate_features")
    USER_VECTOR_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    user_vector: bytes
    candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    candidate_vectors: bytes
    embedding_version: str
    top_k: int
    diversity_lambda: float
    candidate_features: bytes
    def __init__(self, user_vector: _Optional[bytes] = ..., candidate_ids: _Optional[_Iterable[str]] = ..., candidate_vectors: _Optional[bytes] = ..., embedding_version: _Optional[str] = ..., top_k: _Optional[int] = ..., diversity_lambda: _Optional[float] = ..., candidate_features: _Optional[bytes] = ...) -> None: ...

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
    __slots__ = ("bundle_version", "dim", "execution_provider", "max_candidates", "side_features", "batching", "max_batch_rows", "serving_versions")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MAX_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SIDE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    dim: int
    execution_provider: str
    max_candidates: int
    side_features: _containers.RepeatedScalarFieldContainer[str]
    batching: bool
    max_batch_rows: int
    serving_versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, bundle_version: _Optional[str] = ..., dim: _Optional[int] = ..., execution_provider: _Optional[str] = ..., max_candidates: _Optional[int] = ..., side_features: _Optional[_Iterable[str]] = ..., batching: _Optional[bool] = ..., max_batch_rows: _Optional[int] = ..., serving_versions: _Optional[_Iterable[str]] = ...) -> None: ...

class RankServiceReloadRequest(_message.Message):
    __slots__ = ("expected_version",)
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    expected_version: str
    def __init__(self, expected_version: _Optional[str] = ...) -> None: ...

class RankServiceReloadResponse(_message.Message):
    __slots__ = ("bundle_version", "previous_version", "swapped")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    SWAPPED_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    previous_version: str
    swapped: bool
    def __init__(self, bundle_version: _Optional[str] = ..., previous_version: _Optional[str] = ..., swapped: _Optional[bool] = ...) -> None: ...

class RankAdminServiceReloadBundleRequest(_message.Message):
    __slots__ = ("expected_version",)
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    expected_version: str
    def __init__(self, expected_version: _Optional[str] = ...) -> None: ...

class RankAdminServiceReloadBundleResponse(_message.Message):
    __slots__ = ("bundle_version", "previous_version", "swapped")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    SWAPPED_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    previous_version: str
    swapped: bool
    def __init__(self, bundle_version: _Optional[str] = ..., previous_version: _Optional[str] = ..., swapped: _Optional[bool] = ...) -> None: ...
