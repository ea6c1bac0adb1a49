"""The OpenAPI document of the REST routes, with each served model's own input schema."""

from __future__ import annotations

from typing import Any

import foretell
from foretell.repository.spec import Feature, ModelSpec
from foretell.serving.dataplane import DataPlane

_ERROR = {"$ref": "#/components/schemas/Error"}


def _feature_schema(f: Feature) -> dict[str, Any]:
    schema: dict[str, Any]
    if f.dtype in ("float", "int"):
        schema = {"type": "number" if f.dtype == "float" else "integer"}
        if f.min is not None:
            schema["minimum"] = f.min
        if f.max is not None:
            schema["maximum"] = f.max
    elif f.dtype == "bool":
        schema = {"type": "boolean"}
    elif f.dtype == "category":
        schema = {"type": "string", "enum": list(f.categories or [])}
    elif f.dtype == "list":
        schema = {"type": "array", "items": {"type": "string", "enum": list(f.categories or [])}}
    else:
        schema = {"type": "string", "maxLength": f.max_length}
    if f.nullable:
        schema["nullable"] = True
    if f.description:
        schema["description"] = f.description
    return schema


def record_schema(spec: ModelSpec) -> dict[str, Any]:
    """The JSON Schema of one input record of ``spec``."""
    return {
        "type": "object",
        "properties": {f.name: _feature_schema(f) for f in spec.inputs},
        "required": [f.name for f in spec.inputs if not f.nullable],
    }


def _answers(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    described = {
        400: "malformed or invalid input",
        404: "unknown model or version",
        413: "body too large",
        503: "not ready",
    }
    out: dict[str, Any] = {"200": {"description": "OK", "content": {"application/json": ok}}}
    for status in errors:
        out[str(status)] = {
            "description": described[status],
            "content": {"application/json": {"schema": _ERROR}},
        }
    return out


def _op(summary: str, ok: dict[str, Any], *errors: int, **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": _answers({"schema": ok}, *errors), **extra}


def openapi(plane: DataPlane) -> dict[str, Any]:
    """The OpenAPI 3.0 document for the server's routes and models."""
    anything = {"type": "object"}
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    infer_body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/V2Request"}}},
    }
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": _op("Is the server process up", anything)},
        "/v2/health/ready": {"get": _op("Are all models loaded", anything, 503)},
        "/v1/models": {"get": _op("List the models", anything)},
        "/v1/models/{name}": {
            "get": _op("A model's spec summary", anything, 404, parameters=[name])
        },
        "/v1/models/{name}/feedback": {
            "post": _op(
                "Ground truth for logged predictions", anything, 400, 404, parameters=[name]
            )
        },
        "/v1/models/{name}/monitoring": {
            "get": _op(
                "Live quality, drift, fairness and alerts",
                anything,
                400,
                404,
                parameters=[
                    name,
                    {
                        "name": "window",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "number"},
                    },
                ],
            )
        },
        "/v1/models/{name}/update": {
            "post": _op(
                "Learn from feedback into a new version", anything, 400, 404, parameters=[name]
            )
        },
        "/v1/models/{name}/posterior": {
            "get": _op(
                "A conjugate model's prior, evidence and posterior",
                anything,
                400,
                404,
                parameters=[
                    name,
                    {
                        "name": "level",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": 1,
                            "exclusiveMinimum": True,
                            "exclusiveMaximum": True,
                        },
                    },
                ],
            )
        },
        "/v1/models/{name}/rollback": {
            "post": _op("Serve the previous version again", anything, 400, 404, parameters=[name])
        },
        "/metrics": {
            "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "OK"}}}
        },
        "/v2": {"get": _op("Server metadata", anything)},
        "/v2/repository/index": {
            "post": _op("Every model with its state", {"type": "array", "items": anything})
        },
        "/v2/repository/models/{name}/load": {
            "post": _op("Load or reload a model", anything, 404, 503, parameters=[name])
        },
        "/v2/repository/models/{name}/unload": {
            "post": _op(
                "Unload a model once in-flight requests finish", anything, 404, parameters=[name]
            )
        },
    }
    for prefix, params in (
        ("/v2/models/{name}", [name]),
        ("/v2/models/{name}/versions/{version}", [name, version]),
    ):
        paths[prefix] = {"get": _op("Model metadata", anything, 404, 503, parameters=params)}
        paths[prefix + "/ready"] = {
            "get": _op("Is the model ready", anything, 404, 503, parameters=params)
        }
        paths[prefix + "/infer"] = {
            "post": _op(
                "Open Inference Protocol inference",
                anything,
                400,
                404,
                413,
                503,
                parameters=params,
                requestBody=infer_body,
            )
        }
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {"error": {"type": "string"}, "violations": {"type": "array"}},
            "required": ["error"],
        },
        "V2Request": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "datatype": {"type": "string"},
                            "shape": {"type": "array", "items": {"type": "integer"}},
                            "data": {},
                        },
                        "required": ["name", "datatype", "shape"],
                    },
                },
                "outputs": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["inputs"],
        },
    }
    for state in sorted(plane.states.values(), key=lambda s: s.name):
        if state.model is None:
            continue
        spec = state.model.spec
        record = f"{_schema_name(spec.name)}Record"
        schemas[record] = record_schema(spec)
        body = {
            "type": "object",
            "required": ["instances"],
            "properties": {
                "instances": {
                    "type": "array",
                    "items": {
                        "oneOf": [
                            {"$ref": f"#/components/schemas/{record}"},
                            {
                                "type": "array",
                                "minItems": len(spec.inputs),
                                "maxItems": len(spec.inputs),
                            },
                        ]
                    },
                },
                "parameters": INSIGHT_PARAMETERS,
            },
        }
        request = {"required": True, "content": {"application/json": {"schema": body}}}
        paths[f"/v1/models/{spec.name}:predict"] = {
            "post": _op(
                f"Predict with {spec.name} ({spec.task})",
                anything,
                400,
                404,
                413,
                503,
                description=spec.description,
                requestBody=request,
            )
        }
        paths[f"/v1/models/{spec.name}:explain"] = {
            "post": _op(
                f"Predict with {spec.name}, each result with its feature attributions",
                anything,
                400,
                404,
                413,
                503,
                description=":predict with parameter explain true (see docs/insight.md).",
                requestBody=request,
            )
        }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "foretell",
            "version": foretell.__version__,
            "description": "Predictions and decisions from the served models.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _schema_name(model: str) -> str:
    return "".join(
        part.capitalize() for part in model.replace("_", "-").replace(".", "-").split("-")
    )


#: The V1 request parameters that add insight to each result (see docs/insight.md).
INSIGHT_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "explain": {"type": "boolean", "description": "Add feature attributions (SHAP)."},
        "confidence": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "exclusiveMinimum": True,
            "exclusiveMaximum": True,
            "description": "Add a conformal interval or label set at this level, e.g. 0.9.",
        },
    },
}


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>foretell API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>
"""
