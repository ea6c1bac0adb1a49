"""Postprocessing: raw model outputs become labels, values, flags and top-k lists."""

from __future__ import annotations

from typing import Any

import numpy as np

from foretell.errors import ForetellError
from foretell.pipeline.preprocess import encoded_names
from foretell.repository.spec import ModelSpec

Outputs = list[dict[str, Any]]
Quantities = dict[str, np.ndarray]


class Postprocessor:
    """Turns a batch's raw outputs into one result per row and the quantities rules test."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.task = spec.task
        self.labels = list(spec.labels or [])
        self.top_k = spec.postprocessing.top_k
        if self.task == "recommendation":
            items = next(f for f in spec.inputs if f.dtype == "list")
            self.items = list(items.categories or [])
            self.item_offset = _offset_of(spec, items.name)

    def quantity_kinds(self) -> dict[str, str]:
        """The names decision rules may use for this model, each with its kind of value:
        ``number``, ``text`` or ``bool``."""
        if self.task in ("classification", "text_classification"):
            probabilities = {f"probability[{label}]": "number" for label in self.labels}
            return {"label": "text", "confidence": "number", **probabilities}
        if self.task == "clustering":
            named = {"cluster_name": "text"} if self.labels else {}
            return {"cluster": "number", "distance": "number", **named}
        return {
            "regression": {"value": "number"},
            "anomaly_detection": {"score": "number", "is_anomaly": "bool"},
            "recommendation": {"top_score": "number"},
        }[self.task]

    def apply(self, raw: dict[str, np.ndarray], x: np.ndarray) -> tuple[Outputs, Quantities]:
        """Results for the rows of ``raw``; ``x`` is the encoded input they came from."""
        handler = {
            "classification": self._classes,
            "text_classification": self._classes,
            "regression": self._value,
            "clustering": self._clusters,
            "anomaly_detection": self._anomaly,
            "recommendation": self._recommend,
        }[self.task]
        return handler(raw, x)

    def _require(self, raw: dict[str, np.ndarray], key: str) -> np.ndarray:
        if key not in raw:
            raise ForetellError(
                f"{self.spec.name}: the runtime returned {sorted(raw)}, not '{key}', "
                f"for a {self.task} model"
            )
        return raw[key]

    def _classes(self, raw: dict[str, np.ndarray], x: np.ndarray) -> tuple[Outputs, Quantities]:
        probs = self._require(raw, "probabilities")
        if probs.ndim != 2 or probs.shape[1] != len(self.labels):
            raise ForetellError(
                f"{self.spec.name}: the model gives {probs.shape[-1]} class probabilities, but "
                f"the spec lists {len(self.labels)} labels {self.labels}"
            )
        best = probs.argmax(axis=1)
        labels = np.array(self.labels, dtype=object)[best]
        confidence = probs[np.arange(len(probs)), best]
        quantities: Quantities = {"label": labels, "confidence": confidence}
        for j, label in enumerate(self.labels):
            quantities[f"probability[{label}]"] = probs[:, j]
        outputs = []
        for label, row in zip(labels.tolist(), probs.tolist(), strict=True):
            result: dict[str, Any] = {
                "label": label,
                "probabilities": dict(zip(self.labels, row, strict=True)),
            }
            if self.top_k:
                order = sorted(range(len(row)), key=row.__getitem__, reverse=True)[: self.top_k]
                result["top_k"] = [{"label": self.labels[j], "probability": row[j]} for j in order]
            outputs.append(result)
        return outputs, quantities

    def _value(self, raw: dict[str, np.ndarray], x: np.ndarray) -> tuple[Outputs, Quantities]:
        value = self._require(raw, "value")
        return [{"value": v} for v in value.tolist()], {"value": value}

    def _clusters(self, raw: dict[str, np.ndarray], x: np.ndarray) -> tuple[Outputs, Quantities]:
        cluster = self._require(raw, "cluster").astype(np.int64)
        quantities: Quantities = {"cluster": cluster}
        columns: dict[str, list[Any]] = {"cluster": cluster.tolist()}
        if self.labels:
            names = np.array(self.labels, dtype=object)[cluster]
            quantities["cluster_name"] = names
            columns["cluster_name"] = names.tolist()
        if "distances" in raw:
            distance = raw["distances"][np.arange(len(cluster)), cluster]
            columns["distance"] = distance.tolist()
        else:  # the runtime knows no distances: rules on distance never hold
            distance = np.full(len(cluster), np.nan)
        quantities["distance"] = distance
        keys = list(columns)
        rows = zip(*columns.values(), strict=True)
        return [dict(zip(keys, r, strict=True)) for r in rows], quantities

    def _anomaly(self, raw: dict[str, np.ndarray], x: np.ndarray) -> tuple[Outputs, Quantities]:
        score = self._require(raw, "score")
        flag = score >= (self.spec.postprocessing.anomaly_threshold or 0.0)
        outputs = [
            {"score": s, "is_anomaly": a}
            for s, a in zip(score.tolist(), flag.tolist(), strict=True)
        ]
        return outputs, {"score": score, "is_anomaly": flag}

    def _recommend(self, raw: dict[str, np.ndarray], x: np.ndarray) -> tuple[Outputs, Quantities]:
        scores = self._require(raw, "scores").astype(np.float64, copy=True)
        if scores.ndim != 2 or scores.shape[1] != len(self.items):
            raise ForetellError(
                f"{self.spec.name}: the model scores {scores.shape[-1]} items, but the spec's "
                f"item list has {len(self.items)}"
            )
        if self.spec.postprocessing.exclude_seen:
            seen = x[:, self.item_offset : self.item_offset + len(self.items)] > 0
            scores[seen] = -np.inf
        k = min(self.top_k or 5, len(self.items))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        outputs = [
            {
                "items": [
                    {"item": self.items[j], "score": s}
                    for j, s in zip(idx, sc, strict=True)
                    if s != -np.inf
                ]
            }
            for idx, sc in zip(top.tolist(), top_scores.tolist(), strict=True)
        ]
        return outputs, {"top_score": top_scores[:, 0]}


def _offset_of(spec: ModelSpec, name: str) -> int:
    """Where feature ``name`` starts among the encoded input columns."""
    names = encoded_names(spec)
    return next(i for i, n in enumerate(names) if n == name or n.startswith(f"{name}="))
