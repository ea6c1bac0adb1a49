"""The gRPC transport of the Open Inference Protocol (KServe V2), translated to :class:`V2`.

Clients of the protocol's ``inference.GRPCInferenceService`` (``tritonclient.grpc`` among them)
work unchanged. This module only converts protobuf messages to and from
:class:`~foretell.serving.v2.InferRequest` and :class:`~foretell.serving.v2.InferResponse`, and
maps foretell's errors to gRPC status codes; what the protocol means is decided in ``v2``.

Inputs arrive as ``raw_input_contents`` (what ``tritonclient`` sends) or in the typed
``contents`` of each input; outputs always travel as ``raw_output_contents``, one per output in
order, since that is the only form ``tritonclient`` reads. Model work and repository loads run
in worker threads, so the event loop keeps answering while a model computes.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any, NoReturn, TypeVar

import grpc
import numpy as np

from foretell.errors import ForetellError, InputFormatError, ModelLoadError, UserError
from foretell.serving.auth import authorise
from foretell.serving.keys import KeyStore
from foretell.serving.limits import Limits
from foretell.serving.protos import inference_pb2 as pb
from foretell.serving.protos import inference_pb2_grpc
from foretell.serving.tensors import Tensor, check_header, from_bytes, from_json, to_bytes
from foretell.serving.v2 import V2, InferRequest, InferResponse, RequestedOutput
from foretell.serving.workers import worker_folder

log = logging.getLogger("foretell.serving")

#: The largest message, in either direction, that the server accepts or sends.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: ForetellError.status (HTTP) -> gRPC status; anything else is INTERNAL.
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    503: grpc.StatusCode.UNAVAILABLE,
}

#: Datatype -> the field of InferTensorContents that carries it (FP16 has none: raw only).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

#: Repository parameters that foretell may ignore: it has no model dependents to unload.
_IGNORED_UNLOAD_PARAMETERS = {"unload_dependents"}


def create_grpc_server(
    v2: V2,
    host: str,
    port: int,
    keys: KeyStore | None = None,
    tls: tuple[bytes, bytes] | None = None,
    limits: Limits | None = None,
) -> grpc.aio.Server:
    """A gRPC server answering the Open Inference Protocol on ``host:port``; not yet started.

    Call it from the event loop that will run the server, then ``await server.start()``;
    ``await server.stop(grace)`` ends it.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Without this a second server on a taken port binds too and shares its calls;
            # only the workers of one `serve --workers N` share it on purpose.
            ("grpc.so_reuseport", 1 if worker_folder() is not None else 0),
        ]
    )
    # protoc writes no types for the grpc module; its one function is called here only.
    add_servicer = inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server
    add_servicer(InferenceServicer(v2, keys, limits), server)  # type: ignore[no-untyped-call]
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    try:
        if tls is None:
            server.add_insecure_port(address)
        else:  # (private key, certificate chain), PEM
            server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
    except RuntimeError:
        raise UserError(
            f"cannot listen for gRPC on {address}: is the port taken, or the host not an "
            "address of this machine?"
        ) from None
    return server


_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Method = Callable[["InferenceServicer", _Request, Any], Awaitable[_Response]]


def _status(exc: ForetellError) -> grpc.StatusCode:
    return _CODES.get(exc.status, grpc.StatusCode.INTERNAL)


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    """Ends the call with the status that ``exc`` maps to; the one place errors are mapped."""
    if isinstance(exc, ForetellError):
        await context.abort(_status(exc), exc.message)
    else:
        log.error("gRPC call failed", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")
    raise AssertionError("context.abort returned")  # it raises; this satisfies the type


def _answers(method: _Method[_Request, _Response]) -> _Method[_Request, _Response]:
    """Turns errors raised by a unary method into the call's gRPC status."""

    @functools.wraps(method)
    async def wrapper(self: InferenceServicer, request: _Request, context: Any) -> _Response:
        try:
            return await method(self, request, context)
        except Exception as exc:
            await _abort(context, exc)

    return wrapper


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over a :class:`V2` data plane."""

    def __init__(self, v2: V2, keys: KeyStore | None = None, limits: Limits | None = None) -> None:
        self.v2, self.keys, self.limits = v2, keys, limits or Limits(request_timeout=None)

    def _allow(self, context: Any, scope: str) -> None:
        """With API keys on, the call's ``authorization`` metadata must grant ``scope``; with a
        rate limit, the caller (its key, or its address) must be within its rate."""
        key = None
        if self.keys is not None:
            metadata = dict(context.invocation_metadata() or ())
            key = authorise(self.keys, str(metadata.get("authorization", "")), scope)
        if self.limits.rate is not None:
            if key is None:
                self.limits.rate.take(f"client {context.peer().rpartition(':')[0]}")
            else:
                self.limits.rate.take(f"key '{key.id}'")

    @_answers
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Any
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_answers
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Any
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.v2.plane.ready())

    @_answers
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        self._allow(context, f"predict:{request.name}")
        return pb.ModelReadyResponse(
            ready=self.v2.model_ready(request.name, request.version or None)
        )

    @_answers
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        meta = self.v2.server_metadata()
        self._allow(context, "predict:any")
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    @_answers
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        self._allow(context, f"predict:{request.name}")
        meta = self.v2.model_metadata(request.name, request.version or None)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=[str(v) for v in meta["versions"]],
            platform=meta["platform"],
            inputs=[
                tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                for t in meta["inputs"]
            ],
            outputs=[
                tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                for t in meta["outputs"]
            ],
        )

    @_answers
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        self._allow(context, f"predict:{request.model_name}")
        return await self._infer(request)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answers each request in turn; an error answers its request and the stream goes on."""
        async for request in requests:
            try:
                self._allow(context, f"predict:{request.model_name}")
                response = await self._infer(request)
            except Exception as exc:
                if isinstance(exc, ForetellError):
                    message = exc.message
                else:
                    log.error("gRPC stream inference failed", exc_info=exc)
                    message = f"internal error: {type(exc).__name__}"
                # The id and model let a client tell which request the error answers.
                echo = pb.ModelInferResponse(
                    id=request.id,
                    model_name=request.model_name,
                    model_version=request.model_version,
                )
                yield pb.ModelStreamInferResponse(error_message=message, infer_response=echo)
            else:
                yield pb.ModelStreamInferResponse(infer_response=response)

    @_answers
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        self._allow(context, "admin")
        models = [
            pb.RepositoryIndexResponse.ModelIndex(
                name=entry["name"],
                version=entry.get("version") or "",
                state=entry["state"],
                reason=entry.get("reason") or "",
            )
            for entry in self.v2.plane.index()
            if not request.ready or entry["state"] == "READY"
        ]
        return pb.RepositoryIndexResponse(models=models)

    @_answers
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        self._allow(context, "admin")
        if request.parameters:
            raise InputFormatError(
                f"model '{request.model_name}': foretell loads models as the repository holds "
                f"them and takes no load parameters; got {sorted(request.parameters)}"
            )
        state = await self.v2.plane.load_everywhere(request.model_name)
        if not state.ready:
            raise ModelLoadError(f"model '{request.model_name}' failed to load: {state.reason}")
        return pb.RepositoryModelLoadResponse()

    @_answers
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        self._allow(context, "admin")
        unknown = sorted(set(request.parameters) - _IGNORED_UNLOAD_PARAMETERS)
        if unknown:
            raise InputFormatError(
                f"model '{request.model_name}': foretell takes no unload parameters but "
                f"{sorted(_IGNORED_UNLOAD_PARAMETERS)}; got {unknown}"
            )
        await self.v2.plane.unload_everywhere(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def _infer(self, message: pb.ModelInferRequest) -> pb.ModelInferResponse:
        request = infer_request(message)
        response = await self.limits.in_time(self.v2.infer(request))
        return infer_response(response)


def infer_request(message: pb.ModelInferRequest) -> InferRequest:
    """The transport-neutral request a ``ModelInferRequest`` carries."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InputFormatError(
            f"the request has {len(message.inputs)} inputs but {len(raw)} raw_input_contents; "
            "send one raw_input_contents per input, in the order of the inputs"
        )
    inputs = []
    for i, tensor in enumerate(message.inputs):
        datatype, shape = check_header(tensor.name, tensor.datatype, list(tensor.shape))
        if raw:
            data = from_bytes(tensor.name, datatype, shape, raw[i])
        else:
            data = _from_contents(tensor.name, datatype, shape, tensor.contents)
        inputs.append(Tensor(tensor.name, datatype, shape, data, _parameters(tensor.parameters)))
    outputs = [RequestedOutput(o.name, _parameters(o.parameters)) for o in message.outputs]
    return InferRequest(
        model=message.model_name,
        version=message.model_version or None,
        inputs=inputs,
        outputs=outputs or None,
        id=message.id or None,
        parameters=_parameters(message.parameters),
    )


def infer_response(response: InferResponse) -> pb.ModelInferResponse:
    """The ``ModelInferResponse`` of a response, every output's data in raw_output_contents."""
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id or "",
    )
    _set_parameters(message.parameters, response.parameters)
    for tensor in response.outputs:
        output = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        _set_parameters(output.parameters, tensor.parameters)
        message.raw_output_contents.append(to_bytes(tensor))
    return message


def _from_contents(
    name: str, datatype: str, shape: list[int], contents: pb.InferTensorContents
) -> np.ndarray:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise InputFormatError(
            f"input '{name}' is {datatype}, which has no typed contents field; "
            "send its data in raw_input_contents"
        )
    try:
        return from_json(name, datatype, shape, list(getattr(contents, field)))
    except InputFormatError as exc:
        raise InputFormatError(f"{exc.message} (from contents.{field})") from None


def _parameters(values: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """Protocol parameters as Python values; one with no value set is None."""
    return {key: _parameter(p) for key, p in values.items()}


def _parameter(parameter: pb.InferParameter) -> Any:
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def _set_parameters(target: MutableMapping[str, pb.InferParameter], values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, np.generic):
            value = value.item()
        if value is None:
            continue
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int) and value >= 2**63:
            parameter.uint64_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        elif isinstance(value, str):
            parameter.string_param = value
        else:
            parameter.string_param = json.dumps(value, default=str)
