"""Open Inference Protocol over REST: routes, and JSON or binary tensor bodies.

A body with an ``Inference-Header-Content-Length`` header is a JSON header followed by raw
tensor blobs (the binary tensor data extension); any other body is plain JSON. Clients such
as ``tritonclient.http`` send no Content-Type, so only that header tells the two apart.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from foretell.errors import (
    ForetellError,
    InputFormatError,
    MethodNotAllowedError,
    ModelLoadError,
    RequestTimeoutError,
    TooLargeError,
)
from foretell.pipeline.model import Batch
from foretell.serving.limits import Limits, send_error
from foretell.serving.tensors import (
    Tensor,
    check_header,
    from_bytes,
    from_json,
    to_bytes,
    to_json_data,
)
from foretell.serving.v2 import V2, InferRequest, InferResponse, RequestedOutput

HEADER_LENGTH = "inference-header-content-length"


class ModelName(Convertor[str]):
    """A model name or version in a path: no slash and no colon (``name:verb`` stays distinct)."""

    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("model", ModelName())


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed when gzip or deflate, refused past ``limit`` bytes."""
    headers = request.headers
    return await collect_body(
        request.stream(),
        headers.get("content-length", ""),
        headers.get("content-encoding", "identity"),
        limit,
    )


async def collect_body(
    chunks: AsyncIterator[bytes], declared: str, encoding: str, limit: int
) -> bytes:
    """The body of ``chunks``, decompressed per ``encoding``; ``declared`` is its
    Content-Length header (refused at once when it is over ``limit``)."""
    if declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"the request body is larger than the limit of {limit} bytes")
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise TooLargeError(f"the request body is larger than the limit of {limit} bytes")
        parts.append(chunk)
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    encoding = encoding.lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InputFormatError(
            f"Content-Encoding must be gzip, deflate or identity; got {encoding}"
        )
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    try:
        inflater = zlib.decompressobj(wbits)
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InputFormatError(
            f"the {encoding} request body cannot be decompressed: {exc}"
        ) from None
    if len(plain) > limit or inflater.unconsumed_tail:
        raise TooLargeError(
            f"the decompressed request body is larger than the limit of {limit} bytes"
        )
    return plain


_REQUIRED: Any = object()


def decode_json(data: bytes, default: Any = _REQUIRED) -> Any:
    """``data`` as JSON, or InputFormatError; an empty body gives ``default`` when one is set."""
    if default is not _REQUIRED and not data.strip():
        return default
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputFormatError(f"the request body is not valid JSON: {exc}") from None


async def read_json(request: Request, limit: int, default: Any = _REQUIRED) -> Any:
    """The request body decoded as JSON (see :func:`decode_json`)."""
    return decode_json(await read_body(request, limit), default)


def parse_infer(
    body: bytes, header_length: str | None, model: str, version: str | None
) -> InferRequest:
    """An InferRequest from a JSON body, or a JSON header plus binary blobs."""
    if header_length is not None:
        digits = header_length.isascii() and header_length.isdigit()  # not '²'
        if not digits or int(header_length) > len(body):
            raise InputFormatError(
                f"Inference-Header-Content-Length is {header_length!r}, but the body has "
                f"{len(body)} bytes"
            )
        split = int(header_length)
        head, blobs = body[:split], memoryview(body)[split:]
    else:
        head, blobs = body, memoryview(b"")
    data = decode_json(head)
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list):
        raise InputFormatError('the body must be a JSON object with an "inputs" list of tensors')
    inputs, offset = [], 0
    for i, item in enumerate(data["inputs"]):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputFormatError(f"input {i} must be an object with a string 'name'")
        name = item["name"]
        datatype, shape = check_header(name, item.get("datatype"), item.get("shape"))
        params = _parameters(item.get("parameters"), f"input '{name}'")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(blobs):
                raise InputFormatError(
                    f"input '{name}' has binary_data_size {size!r}, but only "
                    f"{len(blobs) - offset} bytes of binary data remain"
                )
            array = from_bytes(name, datatype, shape, blobs[offset : offset + size])
            offset += size
        elif "data" in item:
            array = from_json(name, datatype, shape, item["data"])
        else:
            raise InputFormatError(f"input '{name}' has neither 'data' nor binary_data_size")
        inputs.append(Tensor(name, datatype, shape, array, params))
    if offset != len(blobs):
        raise InputFormatError(f"{len(blobs) - offset} bytes of binary data belong to no input")
    outputs = None
    if data.get("outputs") is not None:
        if not isinstance(data["outputs"], list):
            raise InputFormatError('"outputs" must be a list of {"name": ...} objects')
        outputs = []
        for item in data["outputs"]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InputFormatError('each requested output must be {"name": ...}')
            outputs.append(
                RequestedOutput(item["name"], _parameters(item.get("parameters"), "output"))
            )
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputFormatError(f'"id" must be a string; got {type(request_id).__name__}')
    return InferRequest(
        model, version, inputs, outputs, request_id, _parameters(data.get("parameters"), "request")
    )


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputFormatError(f"the parameters of {where} must be an object")
    return value


def render_infer(
    request: InferRequest, response: InferResponse
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The body and headers: JSON, or a JSON header plus binary blobs for the outputs that
    asked for binary data."""
    all_binary = _all_binary(request)
    blobs = []
    for tensor in response.outputs:
        wants = tensor.parameters.pop("binary_data", all_binary)
        if wants:
            blob = to_bytes(tensor)
            tensor.parameters["binary_data_size"] = len(blob)
            blobs.append(blob)
    header = orjson.dumps(response.to_json(), option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, [(b"content-type", b"application/json")]
    return header + b"".join(blobs), [
        (b"content-type", b"application/octet-stream"),
        (b"inference-header-content-length", str(len(header)).encode()),
    ]


_JSON = (b"content-type", b"application/json")


def _all_binary(request: InferRequest) -> bool:
    """Whether ``request`` asks for every output as binary data."""
    return bool(request.parameters.get("binary_data_output", False))


def _plain_json(request: InferRequest) -> bool:
    """Whether the answer to ``request`` is JSON with every output (see :func:`render_infer`)."""
    return request.outputs is None and not _all_binary(request)


def part_json(v2: V2, batch: Batch, request_id: str | None) -> bytes:
    """The JSON answer, with every output, for the rows of a merged batch that one request
    sent (``batch.part_of``): the merged batch's outputs are made once, as flat data, and each
    request's answer takes its own rows' slice of them. The very text :func:`render_infer`
    writes (``tests/test_v2_http.py`` compares them), at half its cost for a 1-row request:
    no tensors or dicts per request, one orjson call per output."""
    whole, start = batch.part_of or (batch, 0)
    made = whole.shared.get("rest_v2.flat")
    if made is None:
        tensors = v2.outputs(whole.model.spec, whole, None)
        model = {"model_name": whole.model.name, "model_version": whole.model.version}
        made = whole.shared["rest_v2.flat"] = (
            orjson.dumps(model)[:-1],
            [_flat_output(t) for t in tensors],
        )
    head, flat = made
    n, stop = batch.length, start + batch.length
    parts = [head, b',"outputs":[']
    if request_id is not None:
        parts[1:1] = (b',"id":', orjson.dumps(request_id))
    for opening, closing, data, width in flat:
        rows = orjson.dumps(data[start * width : stop * width], option=orjson.OPT_SERIALIZE_NUMPY)
        parts += (opening, str(n).encode(), closing, rows, b"},")
    parts[-1] = b"}]}"
    return b"".join(parts)


def _flat_output(tensor: Tensor) -> tuple[bytes, bytes, list[Any] | np.ndarray, int]:
    """An output of a whole batch for :func:`part_json`: the text of its output object up to
    the number of rows in its shape, the text from there to its data, its flat data
    (:func:`to_json_data`) and the number of elements in a row."""
    opening = orjson.dumps({"name": tensor.name, "datatype": tensor.datatype})[:-1] + b',"shape":['
    closing = "".join(f",{d}" for d in tensor.shape[1:]).encode() + b'],"data":'
    return opening, closing, to_json_data(tensor), math.prod(tensor.shape[1:])


class InferRoute:
    """``/v2/models/{name}[/versions/{version}]/infer`` as a bare ASGI app: the hot path of
    the protocol, without request and response objects or a walk through the route table.
    It applies ``limits`` itself: a request past its time is cancelled (every wait here can be
    cancelled; a batch's thread runs on), cheaper than the task per request of
    :class:`~foretell.serving.limits.EnforceLimits`."""

    PATH = re.compile(r"/v2/models/([^/:]+)(?:/versions/([^/:]+))?/infer")

    def __init__(self, v2: V2, limit: int, limits: Limits | None = None) -> None:
        self.v2, self.limit, self.limits = v2, limit, limits or Limits(request_timeout=None)

    def match(self, path: str) -> dict[str, str] | None:
        """The path parameters when ``path`` is an infer route, else None."""
        found = self.PATH.fullmatch(path)
        if found is None:
            return None
        name, version = found.groups()
        return {"name": name} if version is None else {"name": name, "version": version}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self.limits.admit(scope)
            content, headers = await self.limits.in_time(self._answer(scope, receive))
        except RequestTimeoutError as exc:  # its body may still be arriving: not reused
            await send_error(send, exc, [(b"connection", b"close")])
            return
        except ForetellError as exc:
            await send_error(send, exc)
            return
        except ClientGone:
            return
        headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _answer(
        self, scope: Scope, receive: Receive
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        if scope["method"] != "POST":
            raise MethodNotAllowedError(f"{scope['method']} not allowed")
        params = scope["path_params"]
        name, version = params["name"], params.get("version")
        self.v2.plane.model(name, version)  # unknown or unready: before the body is read
        wanted = _headers(scope, (b"content-length", b"content-encoding", _HEADER_BYTES))
        body = await collect_body(
            _chunks(receive), wanted[0] or "", wanted[1] or "identity", self.limit
        )
        return await self.respond(name, version, body, wanted[2])

    async def respond(
        self, name: str, version: str | None, body: bytes, header_length: str | None
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """The answer's body and headers to the request ``body`` (its
        Inference-Header-Content-Length is ``header_length``) for model ``name``."""
        infer_request = parse_infer(body, header_length, name, version)
        batch = await self.v2.score(infer_request)
        if batch.part_of is not None and not batch.insight and _plain_json(infer_request):
            return part_json(self.v2, batch, infer_request.id), [_JSON]
        return render_infer(infer_request, self.v2.respond(batch, infer_request))


class ClientGone(Exception):
    """The client disconnected before it sent its whole body: nobody to answer."""


_HEADER_BYTES = HEADER_LENGTH.encode()


def _headers(scope: Scope, names: tuple[bytes, ...]) -> list[str | None]:
    """The values of the request headers ``names`` (None where absent), in order."""
    found: list[str | None] = [None] * len(names)
    for key, value in scope["headers"]:
        if key in names:
            found[names.index(key)] = value.decode("latin-1")
    return found


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


def v2_routes(v2: V2, limit: int) -> list[Route]:
    """The Open Inference Protocol's REST routes but infer (:class:`InferRoute`), each with
    and without ``/versions/{v}``."""

    async def server_metadata(request: Request) -> Response:
        return JSON(v2.server_metadata())

    async def model_metadata(request: Request) -> Response:
        params = request.path_params
        return JSON(v2.model_metadata(params["name"], params.get("version")))

    async def model_ready(request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        if v2.model_ready(name, version):
            return JSON({"name": name, "ready": True})
        return JSON({"error": f"model '{name}' is not ready", "name": name, "ready": False}, 503)

    async def index(request: Request) -> Response:
        options = await read_json(request, limit, default={})
        entries = v2.plane.index()
        if isinstance(options, dict) and options.get("ready"):
            entries = [e for e in entries if e["state"] == "READY"]
        return JSON(entries)

    async def load(request: Request) -> Response:
        state = await v2.plane.load_everywhere(request.path_params["name"])
        if not state.ready:
            raise ModelLoadError(f"model '{state.name}' failed to load: {state.reason}")
        return JSON({})

    async def unload(request: Request) -> Response:
        await v2.plane.unload_everywhere(request.path_params["name"])
        return JSON({})

    model = "/v2/models/{name:model}"
    versioned = model + "/versions/{version:model}"
    return [
        Route("/v2", server_metadata),
        Route(model + "/ready", model_ready),
        Route(versioned + "/ready", model_ready),
        Route(versioned, model_metadata),
        Route(model, model_metadata),
        Route("/v2/repository/index", index, methods=["POST"]),
        Route("/v2/repository/models/{name:model}/load", load, methods=["POST"]),
        Route("/v2/repository/models/{name:model}/unload", unload, methods=["POST"]),
    ]
