from recstack.v1 import recall_pb2 as _recall_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "history_item_ids", "query_text", "k", "include_seen", "candidate_count", "filters", "diversity_lambda")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    QUERY_TEXT_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    history_item_ids: _containers.RepeatedScalarFieldContainer[str]
    query_text: str
    k: int
    include_seen: bool
    candidate_count: int
    filters: _containers.RepeatedCompositeFieldContainer[_recall_pb2.MetadataFilter]
    diversity_lambda: float
    def __init__(self, user_id: _Optional[str] = ..., history_item_ids: _Optional[_Iterable[str]] = ..., query_text: _Optional[str] = ..., k: _Optional[int] = ..., include_seen: _Optional[bool] = ..., candidate_count: _Optional[int] = ..., filters: _Optional[_Iterable[_Union[_recall_pb2.MetadataFilter, _Mapping]]] = ..., diversity_lambda: _Optional[float] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("id", "score", "title", "text", "recall_score", "because_item_id", "because_title", "because_query", "trending")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RECALL_SCORE_FIELD_NUMBER: _ClassVar[int]
    BECAUSE_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    BECAUSE_TITLE_FIELD_NUMBER: _ClassVar[int]
    BECAUSE_QUERY_FIELD_NUMBER: _ClassVar[int]
    TRENDING_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    title: str
    text: str
    recall_score: float
    because_item_id: str
    because_title: str
    because_query: bool
    trending: bool
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., title: _Optional[str] = ..., text: _Optional[str] = ..., recall_score: _Optional[float] = ..., because_item_id: _Optional[str] = ..., because_title: _Optional[str] = ..., because_query: _Optional[bool] = ..., trending: _Optional[bool] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "millis")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MILLIS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    millis: float
    def __init__(self, stage: _Optional[str] = ..., millis: _Optional[float] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "bundle_version", "timings", "history_length", "fallback", "missing_shards")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    bundle_version: str
    timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    history_length: int
    fallback: str
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., bundle_version: _Optional[str] = ..., timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., history_length: _Optional[int] = ..., fallback: _Optional[str] = ..., missing_shards: _Optional[_Iterable[int]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("user_id", "item_id", "type", "timestamp_ms")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    type: str
    timestamp_ms: int
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., type: _Optional[str] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class RecordEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class RecordEventsResponse(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class DeleteUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class DeleteUserResponse(_message.Message):
    __slots__ = ("events_deleted",)
    EVENTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    events_deleted: int
    def __init__(self, events_deleted: _Optional[int] = ...) -> None: ...
