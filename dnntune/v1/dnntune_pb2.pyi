from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelSpec(_message.Message):
    __slots__ = ("zoo_name", "sha256", "input_shape", "batch_size", "seed", "name", "graph_inputs", "graph_outputs", "graph_depth", "graph_fold")
    ZOO_NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRAPH_INPUTS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_DEPTH_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FOLD_FIELD_NUMBER: _ClassVar[int]
    zoo_name: str
    sha256: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    batch_size: int
    seed: int
    name: str
    graph_inputs: _containers.RepeatedScalarFieldContainer[str]
    graph_outputs: _containers.RepeatedScalarFieldContainer[str]
    graph_depth: int
    graph_fold: bool
    def __init__(self, zoo_name: _Optional[str] = ..., sha256: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ..., name: _Optional[str] = ..., graph_inputs: _Optional[_Iterable[str]] = ..., graph_outputs: _Optional[_Iterable[str]] = ..., graph_depth: _Optional[int] = ..., graph_fold: _Optional[bool] = ...) -> None: ...

class ModelIdentity(_message.Message):
    __slots__ = ("sha256", "zoo_name", "seed", "input_shape", "graph_inputs", "graph_outputs", "graph_depth", "graph_fold")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ZOO_NAME_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    GRAPH_INPUTS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_DEPTH_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FOLD_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    zoo_name: str
    seed: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    graph_inputs: _containers.RepeatedScalarFieldContainer[str]
    graph_outputs: _containers.RepeatedScalarFieldContainer[str]
    graph_depth: int
    graph_fold: bool
    def __init__(self, sha256: _Optional[str] = ..., zoo_name: _Optional[str] = ..., seed: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., graph_inputs: _Optional[_Iterable[str]] = ..., graph_outputs: _Optional[_Iterable[str]] = ..., graph_depth: _Optional[int] = ..., graph_fold: _Optional[bool] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("sha256", "suffix", "total_bytes", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    suffix: str
    total_bytes: int
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., suffix: _Optional[str] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("sha256", "cached", "total_bytes")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    cached: bool
    total_bytes: int
    def __init__(self, sha256: _Optional[str] = ..., cached: _Optional[bool] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape", "bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    bytes: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., bytes: _Optional[int] = ...) -> None: ...

class Layer(_message.Message):
    __slots__ = ("name", "type", "inputs", "outputs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ...) -> None: ...

class Cut(_message.Message):
    __slots__ = ("index", "after", "tensors", "bytes_up", "bytes_down")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    index: int
    after: str
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    bytes_up: int
    bytes_down: int
    def __init__(self, index: _Optional[int] = ..., after: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ...) -> None: ...

class ModelDescription(_message.Message):
    __slots__ = ("identity", "layers", "cuts", "model_inputs", "model_outputs")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    CUTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_INPUTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    identity: ModelIdentity
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    cuts: _containers.RepeatedCompositeFieldContainer[Cut]
    model_inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    model_outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    def __init__(self, identity: _Optional[_Union[ModelIdentity, _Mapping]] = ..., layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ..., cuts: _Optional[_Iterable[_Union[Cut, _Mapping]]] = ..., model_inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., model_outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ...) -> None: ...

class ProfileRequest(_message.Message):
    __slots__ = ("model", "num_runs", "warmup_runs", "energy", "framework", "cuts", "precision")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    CUTS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    num_runs: int
    warmup_runs: int
    energy: str
    framework: str
    cuts: _containers.RepeatedScalarFieldContainer[int]
    precision: str
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., num_runs: _Optional[int] = ..., warmup_runs: _Optional[int] = ..., energy: _Optional[str] = ..., framework: _Optional[str] = ..., cuts: _Optional[_Iterable[int]] = ..., precision: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "done", "total")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class ProfileEvent(_message.Message):
    __slots__ = ("progress", "profile_json_chunk")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_JSON_CHUNK_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    profile_json_chunk: bytes
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., profile_json_chunk: _Optional[bytes] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("name", "dtype", "shape", "total_bytes", "data", "bulk")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    BULK_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    total_bytes: int
    data: bytes
    bulk: bool
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ..., bulk: _Optional[bool] = ...) -> None: ...

class TensorEncoding(_message.Message):
    __slots__ = ("codec", "quality", "compressor", "scale", "zero_point", "preprocess")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    COMPRESSOR_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_FIELD_NUMBER: _ClassVar[int]
    codec: str
    quality: int
    compressor: str
    scale: _containers.RepeatedScalarFieldContainer[float]
    zero_point: _containers.RepeatedScalarFieldContainer[float]
    preprocess: str
    def __init__(self, codec: _Optional[str] = ..., quality: _Optional[int] = ..., compressor: _Optional[str] = ..., scale: _Optional[_Iterable[float]] = ..., zero_point: _Optional[_Iterable[float]] = ..., preprocess: _Optional[str] = ...) -> None: ...

class EncodedChunk(_message.Message):
    __slots__ = ("name", "dtype", "shape", "encoding", "total_bytes", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    encoding: TensorEncoding
    total_bytes: int
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., encoding: _Optional[_Union[TensorEncoding, _Mapping]] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class TailHeader(_message.Message):
    __slots__ = ("model", "cut_index", "head")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    cut_index: int
    head: ModelIdentity
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., cut_index: _Optional[int] = ..., head: _Optional[_Union[ModelIdentity, _Mapping]] = ...) -> None: ...

class TailRequest(_message.Message):
    __slots__ = ("header", "tensor", "encoded")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    header: TailHeader
    tensor: TensorChunk
    encoded: EncodedChunk
    def __init__(self, header: _Optional[_Union[TailHeader, _Mapping]] = ..., tensor: _Optional[_Union[TensorChunk, _Mapping]] = ..., encoded: _Optional[_Union[EncodedChunk, _Mapping]] = ...) -> None: ...

class TailTiming(_message.Message):
    __slots__ = ("receive_ms", "compute_ms", "load_ms", "decode_ms")
    RECEIVE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    receive_ms: float
    compute_ms: float
    load_ms: float
    decode_ms: float
    def __init__(self, receive_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., load_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ...) -> None: ...

class TailReply(_message.Message):
    __slots__ = ("tensor", "timing")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    tensor: TensorChunk
    timing: TailTiming
    def __init__(self, tensor: _Optional[_Union[TensorChunk, _Mapping]] = ..., timing: _Optional[_Union[TailTiming, _Mapping]] = ...) -> None: ...

class TailCall(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[TailRequest]
    def __init__(self, parts: _Optional[_Iterable[_Union[TailRequest, _Mapping]]] = ...) -> None: ...

class TailResult(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[TailReply]
    def __init__(self, parts: _Optional[_Iterable[_Union[TailReply, _Mapping]]] = ...) -> None: ...

class TensorList(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorChunk]
    def __init__(self, tensors: _Optional[_Iterable[_Union[TensorChunk, _Mapping]]] = ...) -> None: ...

class BulkRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BulkTicket(_message.Message):
    __slots__ = ("port", "ticket", "expires_s", "tls")
    PORT_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_S_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    port: int
    ticket: bytes
    expires_s: float
    tls: bool
    def __init__(self, port: _Optional[int] = ..., ticket: _Optional[bytes] = ..., expires_s: _Optional[float] = ..., tls: _Optional[bool] = ...) -> None: ...

class SplitRequest(_message.Message):
    __slots__ = ("model", "cut_index", "num_runs", "warmup_runs", "framework", "wire")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    WIRE_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    cut_index: int
    num_runs: int
    warmup_runs: int
    framework: str
    wire: str
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., cut_index: _Optional[int] = ..., num_runs: _Optional[int] = ..., warmup_runs: _Optional[int] = ..., framework: _Optional[str] = ..., wire: _Optional[str] = ...) -> None: ...

class SplitRun(_message.Message):
    __slots__ = ("total_ms", "head_ms", "transfer_ms", "tail_ms", "encode_ms", "decode_ms")
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    HEAD_MS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_MS_FIELD_NUMBER: _ClassVar[int]
    TAIL_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    total_ms: float
    head_ms: float
    transfer_ms: float
    tail_ms: float
    encode_ms: float
    decode_ms: float
    def __init__(self, total_ms: _Optional[float] = ..., head_ms: _Optional[float] = ..., transfer_ms: _Optional[float] = ..., tail_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ...) -> None: ...

class SplitReply(_message.Message):
    __slots__ = ("runs", "max_abs_error", "bytes_up", "bytes_down", "wire")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_ERROR_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    WIRE_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[SplitRun]
    max_abs_error: float
    bytes_up: int
    bytes_down: int
    wire: str
    def __init__(self, runs: _Optional[_Iterable[_Union[SplitRun, _Mapping]]] = ..., max_abs_error: _Optional[float] = ..., bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ..., wire: _Optional[str] = ...) -> None: ...

class DeploymentStudyRequest(_message.Message):
    __slots__ = ("model", "frameworks", "precisions", "threads", "affinities", "num_runs", "warmup_runs", "energy", "rounds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORKS_FIELD_NUMBER: _ClassVar[int]
    PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    AFFINITIES_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    frameworks: _containers.RepeatedScalarFieldContainer[str]
    precisions: _containers.RepeatedScalarFieldContainer[str]
    threads: _containers.RepeatedScalarFieldContainer[int]
    affinities: _containers.RepeatedScalarFieldContainer[str]
    num_runs: int
    warmup_runs: int
    energy: str
    rounds: int
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., frameworks: _Optional[_Iterable[str]] = ..., precisions: _Optional[_Iterable[str]] = ..., threads: _Optional[_Iterable[int]] = ..., affinities: _Optional[_Iterable[str]] = ..., num_runs: _Optional[int] = ..., warmup_runs: _Optional[int] = ..., energy: _Optional[str] = ..., rounds: _Optional[int] = ...) -> None: ...

class DeploymentStudyEvent(_message.Message):
    __slots__ = ("progress", "study_json_chunk")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STUDY_JSON_CHUNK_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    study_json_chunk: bytes
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., study_json_chunk: _Optional[bytes] = ...) -> None: ...
