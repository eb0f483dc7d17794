"""KServeRest: the Open Inference Protocol (KServe v2) over HTTP/REST on the HTTP port, so that `curl` and
tritonclient.http work against adrank.

Paths (GET unless said): `/v2` (server metadata), `/v2/health/live`, `/v2/health/ready`,
`/v2/models/{m}[/versions/{v}]` (model metadata), `/v2/models/{m}[/versions/{v}]/ready`,
`/v2/models/{m}[/versions/{v}]/config` (Triton's model configuration, which perf_analyzer reads),
`/v2/models/stats` and `/v2/models/{m}[/versions/{v}]/stats` (Triton's statistics extension: every version of
every model, of one model, or one version; what each count means: cpp/infer_statistics.h; a model named
`stats` has no metadata path, as in Triton), and
POST `/v2/models/{m}[/versions/{v}]/infer`; Triton's repository extension: POST `/v2/repository/index`,
`/v2/repository/models/{m}/load|unload` (kserve_repository.py; the `Authorization: Bearer` header).

An infer request is JSON, or JSON followed by binary tensor data (the binary tensor data extension: the
`Inference-Header-Content-Length` header gives the JSON's length; an input with parameter
`binary_data_size` takes that many bytes of what follows, in input order). It becomes one
inference.ModelInferRequest with every tensor's bytes in raw_input_contents, and goes through the same
contract as gRPC's ModelInfer (cpp/infer_call.h): the same admission (the front end's RankAdmission: state,
declared size, bytes in flight), checks, routing, batching and messages. Outputs come back as JSON `data`,
or as binary data after the JSON where asked (request parameter `binary_data_output`, or an output's
`binary_data`; tritonclient asks for it by default). Metadata and readiness are the core's answers
(cpp/infer_metadata.h), as JSON.

Errors: every `/v2` path answers JSON, errors included: `{"error": message}`, as KServe v2 REST specifies (a
client such as tritonclient parses every answer as JSON). A path that is none of the above is 404; a known path
called with the wrong method is 405 with an `Allow` header naming the one it takes. Otherwise the HTTP status
is the contract's code's of the contract's code (INVALID_ARGUMENT 400, NOT_FOUND 404,
DEADLINE_EXCEEDED 504, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, ...); malformed JSON or tensors are 400 naming
the field. A readiness that is false is 400, as Triton answers, so a client reads it from the status alone.

Latency: this path runs Python per call (JSON, numpy), on the HTTP endpoint's threads; a call waits for
its answer there without the GIL. It is the convenient path (curl, a quick test); the gRPC one is the fast
one.

Thread-safety: `get` and `post` may run concurrently on the endpoint's threads; they share nothing mutable.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format

import adrank._core as core
from adrank import __version__
from adrank.kserve import grpc_service_pb2 as kserve
from adrank.metrics.pages import Reply
from adrank.server.kserve_repository import KServeRepository
from adrank.status import RequestError, StatusCode

HEADER_LENGTH = "Inference-Header-Content-Length"
NUMPY_TYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
HTTP_STATUS = {
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.FAILED_PRECONDITION: 400,
    StatusCode.OUT_OF_RANGE: 400,
    StatusCode.UNAUTHENTICATED: 401,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.CANCELLED: 499,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DEADLINE_EXCEEDED: 504,
}
REPOSITORY_PATH = re.compile(r"^/v2/repository/(?:index|models/(?P<model>[^/]+)/(?P<action>load|unload))$")
V2_PREFIX = "/v2"
ALL_STATISTICS_PATH = "/v2/models/stats"
MODEL_PATH = re.compile(
    r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/ready|/infer|/config|/stats)?$"
)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INTERNAL_WAIT_S = 300.0  # a call without a deadline still ends: the model's default deadline ends it first


def is_v2(path: str) -> bool:
    """Whether a path is under `/v2`, where every answer is JSON."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def allowed_method(path: str) -> str | None:
    """The one method a `/v2` path takes, or None: no such path."""
    if path in (V2_PREFIX, "/v2/health/live", "/v2/health/ready", ALL_STATISTICS_PATH):
        return "GET"
    if REPOSITORY_PATH.match(path):
        return "POST"
    match = MODEL_PATH.match(path)
    if match is None:
        return None
    return "POST" if match["rest"] == "/infer" else "GET"


def refusal(method: str, path: str) -> Reply:
    """The answer to a `/v2` call that no handler takes: 405 naming the method it takes, or 404."""
    allowed = allowed_method(path)
    if allowed is None:
        return error_reply(404, f"no such path: {path} (KServe v2's paths: GET {V2_PREFIX} lists the server)")
    reply = error_reply(405, f"{method} {path}: this path takes {allowed}")
    return Reply(reply.status, reply.content_type, reply.body, {"Allow": allowed})


class BadRequest(ValueError):
    """Malformed JSON or tensor data: HTTP 400, the message naming the field."""


@dataclass(frozen=True)
class RestCall:
    """What the HTTP endpoint hands over: the path, the request's headers and its body."""

    path: str
    headers: Mapping[str, str]
    body: bytes


def json_reply(status: int, document: Any) -> Reply:
    return Reply(status, "application/json", json.dumps(document).encode())


def error_reply(status: int, message: str) -> Reply:
    return json_reply(status, {"error": message})


def core_error_reply(error: core.CoreError) -> Reply:
    return error_reply(HTTP_STATUS.get(StatusCode(error.grpc_code), 500), str(error))


def readiness(ready: bool) -> Reply:
    return Reply(200 if ready else 400, "application/json", b"")


def infer_parameter(name: str, value: Any) -> kserve.InferParameter:
    if isinstance(value, bool):
        return kserve.InferParameter(bool_param=value)
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise BadRequest(f"parameters.{name}: {value} is outside int64")
        return kserve.InferParameter(int64_param=value)
    if isinstance(value, float):
        return kserve.InferParameter(double_param=value)
    if isinstance(value, str):
        return kserve.InferParameter(string_param=value)
    raise BadRequest(f"parameters.{name}: expected a bool, number or string, got {json.dumps(value)}")


def encode_bytes(values: list[Any], where: str) -> bytes:
    parts = []
    for value in values:
        if not isinstance(value, str):
            raise BadRequest(f"{where}: BYTES data must be strings, got {json.dumps(value)}")
        encoded = value.encode()
        parts.append(struct.pack("<I", len(encoded)) + encoded)
    return b"".join(parts)


def flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [item for element in data for item in flatten(element)]
    return [data]


def json_tensor_bytes(tensor: Mapping[str, Any], where: str) -> bytes:
    """A JSON input's `data`, row-major, as the raw little-endian bytes of its datatype."""
    if "data" not in tensor:
        raise BadRequest(f"{where}: no data (JSON `data`, or parameters.binary_data_size with binary data)")
    values = flatten(tensor["data"])
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest(f"{where}.shape: expected a list of non-negative integers")
    if len(values) != math.prod(shape):
        raise BadRequest(f"{where}.data: {len(values)} values for shape {shape} ({math.prod(shape)} elements)")
    datatype = tensor.get("datatype")
    if datatype == "BYTES":
        return encode_bytes(values, f"{where}.data")
    if datatype not in NUMPY_TYPES:
        return b""  # the core names the datatype it does not serve
    try:
        return np.asarray(values, dtype=wire_dtype(datatype)).tobytes()
    except (TypeError, ValueError, OverflowError) as error:
        raise BadRequest(f"{where}.data: not {datatype} values ({error})") from error


def split_body(call: RestCall) -> tuple[dict, memoryview]:
    """The JSON document and the binary data after it."""
    length_text = call.headers.get(HEADER_LENGTH)
    try:
        length = int(length_text) if length_text is not None else len(call.body)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH}: {length_text!r} is not a length") from None
    if not 0 <= length <= len(call.body):
        raise BadRequest(f"{HEADER_LENGTH}: {length} is outside the body's {len(call.body)} bytes")
    try:
        document = json.loads(call.body[:length])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"request: not JSON ({error})") from error
    if not isinstance(document, dict):
        raise BadRequest("request: expected a JSON object")
    return document, memoryview(call.body)[length:]


def infer_request(model: str, version: str, call: RestCall) -> tuple[kserve.ModelInferRequest, bool]:
    """The ModelInferRequest a REST infer call means, and whether any output is wanted as binary data."""
    document, binary = split_body(call)
    request = kserve.ModelInferRequest(model_name=model, model_version=version, id=str(document.get("id", "")))
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("parameters: expected a JSON object")
    binary_output = bool(parameters.get("binary_data_output", False))
    for name, value in parameters.items():
        if name != "binary_data_output":
            request.parameters[name].CopyFrom(infer_parameter(name, value))
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("inputs: expected a non-empty list")
    offset = 0
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise BadRequest(f"{where}: expected a JSON object")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and INT64_MIN <= d <= INT64_MAX for d in shape):
            raise BadRequest(f"{where}.shape: expected a list of int64 integers")
        request.inputs.add(name=str(tensor.get("name", "")), datatype=str(tensor.get("datatype", "")), shape=shape)
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadRequest(f"{where}.parameters.binary_data_size: {size} is beyond the {len(binary)} bytes sent")
            request.raw_input_contents.append(bytes(binary[offset : offset + size]))
            offset += size
        else:
            request.raw_input_contents.append(json_tensor_bytes(tensor, where))
    if offset != len(binary):
        raise BadRequest(f"request: {len(binary) - offset} bytes of binary data that no input's binary_data_size takes")
    for i, output in enumerate(document.get("outputs") or []):
        if not isinstance(output, dict):
            raise BadRequest(f"outputs[{i}]: expected a JSON object")
        request.outputs.add(name=str(output.get("name", "")))
        binary_output |= bool((output.get("parameters") or {}).get("binary_data", False))
    return request, binary_output


def wire_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a v2 datatype, little-endian as the wire is."""
    return np.dtype(NUMPY_TYPES[datatype]).newbyteorder("<")


def parameter_value(parameter: kserve.InferParameter) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def json_output(output: kserve.ModelInferResponse.InferOutputTensor, raw: bytes) -> list[Any]:
    return np.frombuffer(raw, dtype=wire_dtype(output.datatype)).tolist()


def infer_reply(response: kserve.ModelInferResponse, binary: bool) -> Reply:
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": [],
    }
    if response.id:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = {name: parameter_value(value) for name, value in response.parameters.items()}
    tail = []
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        tensor: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
        if binary:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            tensor["data"] = json_output(output, raw)
        document["outputs"].append(tensor)
    header = json.dumps(document).encode()
    if not binary:
        return Reply(200, "application/json", header)
    return Reply(200, "application/octet-stream", header + b"".join(tail), {HEADER_LENGTH: str(len(header))})


def config_document(config: kserve.ModelConfig) -> dict[str, Any]:
    """Triton's model configuration as its HTTP API gives it (`GET .../config`): dims as numbers."""
    document = json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for tensor in document.get("input", []) + document.get("output", []):
        tensor["dims"] = [int(d) for d in tensor["dims"]]
    return document


def duration_document(duration: kserve.StatisticDuration) -> dict[str, int]:
    return {"count": duration.count, "ns": duration.ns}


def statistics_document(response: kserve.ModelStatisticsResponse) -> dict[str, Any]:
    """Triton's statistics as its HTTP API gives them: every field present, counts as JSON numbers (protobuf's
    JSON mapping would give its uint64s as strings)."""
    durations = [field.name for field in kserve.InferStatistics.DESCRIPTOR.fields]
    batch_durations = [f.name for f in kserve.InferBatchStatistics.DESCRIPTOR.fields if f.name != "batch_size"]
    models = []
    for stats in response.model_stats:
        models.append(
            {
                "name": stats.name,
                "version": stats.version,
                "last_inference": stats.last_inference,
                "inference_count": stats.inference_count,
                "execution_count": stats.execution_count,
                "inference_stats": {n: duration_document(getattr(stats.inference_stats, n)) for n in durations},
                "batch_stats": [
                    {"batch_size": b.batch_size, **{n: duration_document(getattr(b, n)) for n in batch_durations}}
                    for b in stats.batch_stats
                ],
                "memory_usage": [{"type": m.type, "id": m.id, "byte_size": m.byte_size} for m in stats.memory_usage],
                "response_stats": {},  # decoupled models' only; adrank has none
            }
        )
    return {"model_stats": models}


class KServeRest:
    def __init__(
        self,
        registry: core.ModelRegistry,
        admission: Callable[[], core.RankAdmission],
        ready: Callable[[], bool],
        reply_margin_s: float,
        repository: KServeRepository | None = None,
    ) -> None:
        self._registry = registry
        self._admission = admission
        self._ready = ready
        self._reply_margin_s = reply_margin_s
        self._repository = repository

    def get(self, path: str) -> Reply | None:
        """A GET of a `/v2` path (an error for one it does not take), or None: not under `/v2`."""
        if not is_v2(path):
            return None
        if path == V2_PREFIX:
            metadata = kserve.ServerMetadataResponse.FromString(core.infer_server_metadata(__version__))
            document = {"name": metadata.name, "version": metadata.version, "extensions": list(metadata.extensions)}
            return json_reply(200, document)
        if path == "/v2/health/live":
            return readiness(True)
        if path == "/v2/health/ready":
            return readiness(self._serving() and self._ready())
        if path == ALL_STATISTICS_PATH:
            return self._statistics("", "")
        match = MODEL_PATH.match(path)
        if match is None or match["rest"] == "/infer":
            return refusal("GET", path)
        model, version = match["model"], match["version"] or ""
        if match["rest"] == "/stats":
            return self._statistics(model, version)
        if match["rest"] == "/ready":
            request = kserve.ModelReadyRequest(name=model, version=version).SerializeToString()
            answer = kserve.ModelReadyResponse.FromString(
                core.infer_model_ready(self._registry, self._serving(), request)
            )
            return readiness(answer.ready)
        try:
            if match["rest"] == "/config":
                request = kserve.ModelConfigRequest(name=model, version=version).SerializeToString()
                config = kserve.ModelConfigResponse.FromString(core.infer_model_config(self._registry, request)).config
                return json_reply(200, config_document(config))
            request = kserve.ModelMetadataRequest(name=model, version=version).SerializeToString()
            metadata = kserve.ModelMetadataResponse.FromString(core.infer_model_metadata(self._registry, request))
        except core.CoreError as error:
            return core_error_reply(error)
        document = json_format.MessageToDict(metadata, preserving_proto_field_name=True)
        for tensor in document.get("inputs", []) + document.get("outputs", []):
            tensor["shape"] = [int(d) for d in tensor["shape"]]
        return json_reply(200, document)

    def post(self, call: RestCall) -> Reply | None:
        """A POST to /v2/models/{m}[/versions/{v}]/infer or /v2/repository/... (an error for another `/v2`
        path), or None: not under `/v2`."""
        if not is_v2(call.path):
            return None
        repository = REPOSITORY_PATH.match(call.path)
        if repository is not None:
            return self._repository_call(repository["model"], repository["action"], call)
        match = MODEL_PATH.match(call.path)
        if match is None or match["rest"] != "/infer":
            return refusal("POST", call.path)
        try:
            request, binary = infer_request(match["model"], match["version"] or "", call)
        except (ValueError, TypeError, OverflowError) as error:  # BadRequest, or a value protobuf refuses
            return error_reply(400, str(error) if isinstance(error, BadRequest) else f"request: {error}")
        try:
            response = self._infer(request.SerializeToString(), len(call.body))
        except core.CoreError as error:
            return core_error_reply(error)
        return infer_reply(response, binary)

    def _repository_call(self, model: str | None, action: str | None, call: RestCall) -> Reply:
        """Triton's repository extension over HTTP: index (JSON list), load and unload (200, empty)."""
        if self._repository is None:
            return error_reply(501, "the model repository extension is not served here")
        try:
            document = json.loads(call.body) if call.body.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return error_reply(400, f"request: not JSON ({error})")
        if not isinstance(document, dict):
            return error_reply(400, "request: expected a JSON object")
        authorization = call.headers.get("Authorization") or ""
        try:
            if model is None:
                request = kserve.RepositoryIndexRequest(ready=bool(document.get("ready", False)))
                answer = self._repository.call("RepositoryIndex", request.SerializeToString(), authorization)
                index = kserve.RepositoryIndexResponse.FromString(answer)
                return json_reply(
                    200, [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in index.models]
                )
            method = "RepositoryModelLoad" if action == "load" else "RepositoryModelUnload"
            message = kserve.RepositoryModelLoadRequest if action == "load" else kserve.RepositoryModelUnloadRequest
            request = message(model_name=model)
            for name, value in (document.get("parameters") or {}).items():
                request.parameters[name].string_param = str(value)
            self._repository.call(method, request.SerializeToString(), authorization)
            return Reply(200, "application/json", b"")
        except RequestError as error:
            return error_reply(HTTP_STATUS.get(error.code, 500), error.message)

    def _statistics(self, model: str, version: str) -> Reply:
        """Triton's statistics extension: every version of every model ("" model), of one model, or one."""
        request = kserve.ModelStatisticsRequest(name=model, version=version).SerializeToString()
        try:
            answer = kserve.ModelStatisticsResponse.FromString(core.infer_model_statistics(self._registry, request))
        except core.CoreError as error:
            return core_error_reply(error)
        return json_reply(200, statistics_document(answer))

    def _serving(self) -> bool:
        return self._admission().state == "serving"

    def _infer(self, request: bytes, size: int) -> kserve.ModelInferResponse:
        """One call of the contract, admitted and counted as the front end's calls are."""
        admission = self._admission()
        try:
            admission.admit(size)
        except core.CoreError as error:
            admission.answered(error.grpc_code)
            raise
        try:
            pending = core.start_infer(self._registry, request, reply_margin_s=self._reply_margin_s)
            if not pending.wait(INTERNAL_WAIT_S):
                pending.cancel()
                pending.wait()
            try:
                reply = pending.result()
            except core.CoreError as error:
                admission.answered(error.grpc_code)
                raise
            admission.answered(StatusCode.OK)
            return kserve.ModelInferResponse.FromString(reply)
        finally:
            admission.call_done()
            admission.release_bytes(size)
