"""Postprocessing: raw model outputs become labels, values, flags and top-k lists.

Outputs stay columnar (one array per output) until a caller asks for them as per-row records
(the JSON results) or as a flat table (the columns a destination stores).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from foretell.errors import ForetellError
from foretell.insight.bayes import POSTERIOR_OUTPUTS, gives_posterior
from foretell.pipeline.preprocess import encoded_names
from foretell.repository.spec import ModelSpec
from foretell.runtimes.base import UPLIFT_OUTPUTS

#: Output name -> array over the scored rows (first axis), columnar.
Columns = dict[str, np.ndarray]
Quantities = dict[str, np.ndarray]


class Postprocessor:
    """Turns a batch's raw outputs into output columns and the quantities rules test."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.task = spec.task
        self.labels = list(spec.labels or [])
        self._label_array = np.array(self.labels, dtype=object)
        self._probability_names = [f"probability[{label}]" for label in self.labels]
        self.top_k = spec.postprocessing.top_k
        #: A Bayesian model's rows also carry its posterior predictive (POSTERIOR_OUTPUTS).
        self.posterior = gives_posterior(spec)
        if self.task == "recommendation":
            items = next(f for f in spec.inputs if f.dtype == "list")
            self.items = np.array(items.categories or [], dtype=object)
            self.item_offset = _offset_of(spec, items.name)
        self._handler = {
            "classification": self._classes,
            "text_classification": self._classes,
            "regression": self._value,
            "clustering": self._clusters,
            "anomaly_detection": self._anomaly,
            "recommendation": self._recommend,
            "uplift": self._uplift,
        }[self.task]

    def quantity_kinds(self) -> dict[str, str]:
        """The names decision rules may use for this model, each with its kind of value:
        ``number``, ``text`` or ``bool``."""
        posterior = dict.fromkeys(POSTERIOR_OUTPUTS if self.posterior else (), "number")
        return {**self._task_kinds(), **posterior}

    def _task_kinds(self) -> dict[str, str]:
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
            "uplift": dict.fromkeys(UPLIFT_OUTPUTS, "number"),
        }[self.task]

    def apply(self, raw: dict[str, np.ndarray], x: np.ndarray) -> tuple[Columns, Quantities]:
        """Output columns for the rows of ``raw``; ``x`` is the encoded input they came from."""
        columns, quantities = self._handler(raw, x)
        posterior = {k: raw[k].astype(np.float64) for k in POSTERIOR_OUTPUTS if k in raw}
        if not posterior:
            return columns, quantities
        return {**columns, **posterior}, {**quantities, **posterior}

    def records(self, columns: Columns) -> list[dict[str, Any]]:
        """The outputs as one JSON-ready dict per row."""
        if self.task in ("classification", "text_classification"):
            labels = self.labels
            probs = columns["probabilities"].tolist()
            # a row has one probability per label (see _classes), and a keyword to zip costs
            # more than the pairing itself, once per row
            out = [
                {"label": label, "probabilities": dict(zip(labels, row, strict=True))}
                for label, row in zip(columns["label"].tolist(), probs, strict=True)
            ]
            if self.top_k:
                for result, row in zip(out, probs, strict=True):
                    order = sorted(range(len(row)), key=row.__getitem__, reverse=True)
                    result["top_k"] = [
                        {"label": labels[j], "probability": row[j]} for j in order[: self.top_k]
                    ]
            posterior = [k for k in POSTERIOR_OUTPUTS if k in columns]
            if posterior:
                for j, result in enumerate(out):
                    result.update((k, float(columns[k][j])) for k in posterior)
            return out
        if self.task == "recommendation":
            return [
                {"items": [{"item": i, "score": s} for i, s in zip(ids, scores, strict=True) if i]}
                for ids, scores in zip(
                    columns["items"].tolist(), columns["scores"].tolist(), strict=True
                )
            ]
        names = list(columns)
        values = zip(*(columns[n].tolist() for n in names), strict=True)
        return [dict(zip(names, row, strict=True)) for row in values]

    def table(self, columns: Columns) -> dict[str, Any]:
        """The outputs as flat columns: one per class probability, lists for top-k items."""
        if self.task in ("classification", "text_classification"):
            flat: dict[str, Any] = {"label": columns["label"]}
            for j, label in enumerate(self.labels):
                flat[f"probability_{label}"] = columns["probabilities"][:, j]
            return flat
        if self.task == "recommendation":
            ids, scores = columns["items"].tolist(), columns["scores"].tolist()
            return {
                "items": [[i for i in row if i] for row in ids],
                "item_scores": [
                    [s for i, s in zip(r_i, r_s, strict=True) if i]
                    for r_i, r_s in zip(ids, scores, strict=True)
                ],
            }
        return dict(columns)

    def _require(self, raw: dict[str, np.ndarray], key: str) -> np.ndarray:
        if key not in raw:
            raise ForetellError(
                f"{self.spec.name}: the runtime returned {sorted(raw)}, not '{key}', "
                f"for a {self.task} model"
            )
        return raw[key]

    def _classes(self, raw: dict[str, np.ndarray], x: np.ndarray) -> tuple[Columns, Quantities]:
        probs = self._require(raw, "probabilities")
        if probs.ndim != 2 or probs.shape[1] != len(self.labels):
            raise ForetellError(
                f"{self.spec.name}: the model gives {probs.shape[-1]} class probabilities, but "
                f"the spec lists {len(self.labels)} labels {self.labels}"
            )
        best = probs.argmax(axis=1)
        labels = self._label_array[best]
        confidence = probs[np.arange(len(probs)), best]
        quantities: Quantities = {"label": labels, "confidence": confidence}
        # the rows of the transpose are the columns of each class, as views
        quantities.update(zip(self._probability_names, probs.T, strict=True))
        return {"label": labels, "probabilities": probs}, quantities

    def _value(self, raw: dict[str, np.ndarray], x: np.ndarray) -> tuple[Columns, Quantities]:
        value = self._require(raw, "value")
        return {"value": value}, {"value": value}

    def _clusters(self, raw: dict[str, np.ndarray], x: np.ndarray) -> tuple[Columns, Quantities]:
        cluster = self._require(raw, "cluster").astype(np.int64)
        columns: Columns = {"cluster": cluster}
        if self.labels:
            columns["cluster_name"] = np.array(self.labels, dtype=object)[cluster]
        if "distances" in raw:
            columns["distance"] = raw["distances"][np.arange(len(cluster)), cluster]
            distance = columns["distance"]
        else:  # the runtime knows no distances: rules on distance never hold
            distance = np.full(len(cluster), np.nan)
        return columns, {**columns, "distance": distance}

    def _anomaly(self, raw: dict[str, np.ndarray], x: np.ndarray) -> tuple[Columns, Quantities]:
        score = self._require(raw, "score")
        flag = score >= (self.spec.postprocessing.anomaly_threshold or 0.0)
        columns: Columns = {"score": score, "is_anomaly": flag}
        return columns, dict(columns)

    def _uplift(self, raw: dict[str, np.ndarray], x: np.ndarray) -> tuple[Columns, Quantities]:
        columns = {k: self._require(raw, k).astype(np.float64, copy=False) for k in UPLIFT_OUTPUTS}
        return columns, dict(columns)

    def _recommend(self, raw: dict[str, np.ndarray], x: np.ndarray) -> tuple[Columns, Quantities]:
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
        ids = np.where(np.isneginf(top_scores), "", self.items[top]).astype(object)
        columns: Columns = {
            "items": ids,
            "scores": np.where(np.isneginf(top_scores), np.nan, top_scores),
        }
        return columns, {"top_score": top_scores[:, 0]}


def _offset_of(spec: ModelSpec, name: str) -> int:
    """Where feature ``name`` starts among the encoded input columns."""
    names = encoded_names(spec)
    return next(i for i, n in enumerate(names) if n == name or n.startswith(f"{name}="))
