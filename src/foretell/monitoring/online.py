"""Online learning: a model learns from its ground truth into a new version, served only if
it is not worse; and rollback to the version served before.

An update reads the labelled predictions of the serving version's model that it has not learned
from yet, oldest first, and holds back the most recent ``holdout`` share. It loads the serving
version's scikit-learn estimator (a ``.skops`` file), trains a copy with ``partial_fit`` on the
other rows (of a Pipeline, the last step learns and the earlier ones stay as fitted), and scores
both on the held-back rows through the whole inference pipeline: accuracy for classifiers, mean
absolute error for regressors. The copy is written as a new version folder, ``n + 1``, never over
an existing one, with ``online.json`` recording what it learned from. It serves (the policy says
``serve: latest``) when its score is not worse than the serving version's; otherwise the policy
pins the serving version and the result says why. Rollback pins the version an online version
was trained from, or else the version before the serving one.

A conjugate model (format ``conjugate``) learns differently: its new version keeps the prior and
adds the new labelled rows to its evidence, so the posterior is exact (Beta(a + s, b + n - s)
per segment, or the Normal posterior of a linear regression). It always serves: a posterior
with more evidence is the belief the evidence supports, and holding rows back would discard it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd
import yaml

from foretell.errors import UserError, ValidationError
from foretell.insight.bayes import BetaBinomial, NormalLinear, count_events
from foretell.monitoring.store import MonitoringStore
from foretell.pipeline.model import Model
from foretell.pipeline.preprocess import encode
from foretell.repository.spec import SPEC_FILE, ModelSpec, write_spec
from foretell.repository.store import POLICY_FILE, ModelVersion, Repository, version_key

if TYPE_CHECKING:
    from foretell.runtimes.conjugate import ConjugateRuntime

#: What an online version learned from, beside its model.yaml.
LINEAGE_FILE = "online.json"
#: Fewest new labelled predictions an update learns from.
MIN_ROWS = 20
TASKS = ("classification", "text_classification", "regression")


@dataclass(frozen=True)
class Update:
    """What an online update did: the version it wrote, and whether that version serves."""

    model: str
    base_version: str
    version: str
    promoted: bool
    reason: str
    metric: str
    before: float
    after: float
    trained_rows: int
    held_out_rows: int
    serving: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Rollback:
    """Which version served before a rollback, and which serves now."""

    model: str
    previous: str
    serving: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def update(
    repository: Repository,
    store: MonitoringStore,
    name: str,
    holdout: float = 0.2,
    epochs: int = 3,
    seed: int = 0,
) -> Update:
    """Trains the serving version of ``name`` on its new ground truth into version n + 1,
    which serves only if it scores no worse on the held-back rows."""
    if not 0 < holdout < 1:
        raise UserError(f"holdout must be a share between 0 and 1; got {holdout}")
    current = repository.get(name)
    if current.spec.format == "conjugate":
        return _update_posterior(repository, store, current)
    spec = current.spec
    estimator = _load_learner(current)
    rows = _unlearned(store, name, _lineage(current.folder))
    records = [orjson.loads(r) for r in rows["inputs"]]
    truth = [orjson.loads(t) for t in rows["ground_truth"]]
    x, kept = _encode(spec, current.folder, records)
    if len(kept) < MIN_ROWS:
        raise UserError(
            f"model '{name}' has {len(kept)} labelled predictions it has not learned from; an "
            f"online update needs at least {MIN_ROWS}: send ground truth to "
            f"/v1/models/{name}/feedback first"
        )
    held = math.ceil(holdout * len(kept))
    if held >= len(kept):
        raise UserError(
            f"holdout {holdout} of {len(kept)} rows leaves none to learn from; use a smaller one"
        )
    train, test = kept[:-held], kept[-held:]
    learned = copy.deepcopy(estimator)
    _partial_fit(learned, spec, x[: len(train)], [truth[i] for i in train], epochs, seed)

    version = _next_version(repository, name)
    model_folder = current.folder.parent
    staging = model_folder / f".staging-{uuid.uuid4().hex}"
    try:
        new_spec = _stage(current, version, staging, _skops_writer(learned))
        test_rows, test_truth = [records[i] for i in test], [truth[i] for i in test]
        metric, before = _score(Model.from_folder(current.folder, spec), test_rows, test_truth)
        _, after = _score(Model.from_folder(staging, new_spec), test_rows, test_truth)
        better = after <= before if metric == "mae" else after >= before
        reason = (
            f"{metric} on the {held} most recent labelled predictions (held back from training): "
            f"{after:.4g} for version {version}, {before:.4g} for version {spec.version}; "
            + ("not worse, so it serves" if better else "worse, so it is written but not served")
        )
        lineage_out = {
            "base_version": spec.version,
            # the last row learned from, in the store's order (time, then prediction id)
            "trained_through": {
                "ts": float(rows["ts"].iloc[train[-1]]),
                "prediction_id": str(rows["prediction_id"].iloc[train[-1]]),
            },
            "trained_rows": len(train),
            "held_out_rows": held,
            "metric": metric,
            "before": before,
            "after": after,
            "promoted": better,
            "reason": reason,
            "created_at": time.time(),
        }
        (staging / LINEAGE_FILE).write_text(json.dumps(lineage_out, indent=2) + "\n")
        if not better:  # pinned before the new version appears, so it never serves
            _set_policy(model_folder, spec.version)
        _publish(staging, model_folder / version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if better:
        _set_policy(model_folder, "latest")
    return Update(
        model=name,
        base_version=spec.version,
        version=version,
        promoted=better,
        reason=reason,
        metric=metric,
        before=before,
        after=after,
        trained_rows=len(train),
        held_out_rows=held,
        serving=repository.serving_version(name),
    )


def rollback(repository: Repository, name: str) -> Rollback:
    """Pins the version served before the serving one: the version an online update was
    trained from, or else the one before it in version order."""
    serving = repository.serving_version(name)
    versions = repository.versions(name)
    base = (_lineage(repository.get(name, serving).folder) or {}).get("base_version")
    if base not in versions:
        earlier = versions[: versions.index(serving)]
        if not earlier:
            raise UserError(
                f"model '{name}' serves its first version '{serving}'; there is no earlier "
                "version to roll back to"
            )
        base = earlier[-1]
    _set_policy(repository.root / name, str(base))
    return Rollback(model=name, previous=serving, serving=repository.serving_version(name))


def _update_posterior(
    repository: Repository, store: MonitoringStore, current: ModelVersion
) -> Update:
    """A conjugate model's evidence plus its new labelled rows, as version n + 1, served."""
    spec, name = current.spec, current.spec.name
    runtime = _conjugate(current.spec, current.folder)
    rows = _unlearned(store, name, _lineage(current.folder))
    records = [orjson.loads(r) for r in rows["inputs"]]
    truth = [orjson.loads(t) for t in rows["ground_truth"]]
    model = runtime.model
    if isinstance(model, BetaBinomial):
        segments = [r.get(model.segment_by) for r in records]
        added = count_events(segments, truth, (spec.labels or [])[-1], runtime.segments)
        learned: BetaBinomial | NormalLinear = model.updated(added)
        evidence: dict[str, Any] = {s: c.model_dump() for s, c in added.items()}
    else:
        x, kept = _encode(spec, current.folder, records)
        learned = model.updated(x, np.asarray([truth[i] for i in kept], dtype=float))
        evidence = {"rows": len(kept)}
    before, after = _evidence_rows(model), _evidence_rows(learned)
    if after == before:
        raise UserError(
            f"model '{name}' has no new labelled predictions to learn from: send ground truth "
            f"to /v1/models/{name}/feedback first"
        )
    version = _next_version(repository, name)
    reason = (
        f"conjugate update: {after - before} new labelled rows added to the evidence of version "
        f"{spec.version}; the posterior is exact, so it serves"
    )
    model_folder = current.folder.parent
    staging = model_folder / f".staging-{uuid.uuid4().hex}"
    try:
        _stage(current, version, staging, _json_writer(learned))
        lineage_out = {
            "base_version": spec.version,
            "trained_through": {
                "ts": float(rows["ts"].iloc[-1]),
                "prediction_id": str(rows["prediction_id"].iloc[-1]),
            },
            "trained_rows": after - before,
            "evidence": evidence,
            "promoted": True,
            "reason": reason,
            "created_at": time.time(),
        }
        (staging / LINEAGE_FILE).write_text(json.dumps(lineage_out, indent=2) + "\n")
        _publish(staging, model_folder / version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _set_policy(model_folder, "latest")
    return Update(
        model=name,
        base_version=spec.version,
        version=version,
        promoted=True,
        reason=reason,
        metric="evidence_rows",
        before=float(before),
        after=float(after),
        trained_rows=after - before,
        held_out_rows=0,
        serving=repository.serving_version(name),
    )


def posterior(model: Model, level: float | None = None) -> dict[str, Any]:
    """A conjugate model's prior, evidence and posterior, and what its last update added."""
    spec = model.spec
    runtime = _conjugate(spec, model.folder, model.runtime)
    lineage = _lineage(model.folder)
    last = (
        {
            "from_version": lineage["base_version"],
            "rows": lineage["trained_rows"],
            "evidence": lineage.get("evidence"),
        }
        if lineage and "evidence" in lineage
        else None
    )
    return {
        "model": spec.name,
        "version": spec.version,
        **runtime.summary(level),
        "last_update": last,
    }


def _conjugate(spec: ModelSpec, folder: Path, loaded: Any = None) -> ConjugateRuntime:
    """The model's conjugate runtime (``loaded`` when it is one), or a UserError."""
    from foretell.runtimes.conjugate import ConjugateRuntime

    if spec.format != "conjugate":
        raise UserError(
            f"model '{spec.name}' has no posterior to show: it is a '{spec.format}' model; "
            "prior, evidence and posterior belong to 'conjugate' models"
        )
    if isinstance(loaded, ConjugateRuntime):
        return loaded
    runtime = ConjugateRuntime(spec, folder)
    runtime.load()
    return runtime


def _evidence_rows(model: BetaBinomial | NormalLinear) -> int:
    if isinstance(model, BetaBinomial):
        return sum(c.trials for c in model.evidence.values())
    return model.evidence.rows


def _load_learner(current: ModelVersion) -> Any:
    from foretell.runtimes.sklearn import SklearnRuntime

    spec = current.spec
    where = f"model '{spec.name}' version {spec.version}"
    if spec.format != "sklearn" or not spec.artifact.endswith(".skops"):
        raise UserError(
            f"{where} cannot learn online: online updates need a scikit-learn estimator saved "
            f"as .skops; got format '{spec.format}', artifact '{spec.artifact}'"
        )
    if spec.task not in TASKS:
        raise UserError(
            f"{where} cannot learn online: online updates need a {', '.join(TASKS)} model; "
            f"got {spec.task}"
        )
    runtime = SklearnRuntime(spec, current.folder)
    runtime.load()
    learner = _last_step(runtime.estimator)
    if not hasattr(learner, "partial_fit"):
        raise UserError(
            f"{where} cannot learn online: its estimator {type(learner).__name__} has no "
            "partial_fit; use one that learns incrementally (SGDClassifier, SGDRegressor, "
            "MultinomialNB, ...)"
        )
    return runtime.estimator


def _last_step(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def _lineage(folder: Path) -> dict[str, Any] | None:
    path = folder / LINEAGE_FILE
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _unlearned(store: MonitoringStore, name: str, lineage: dict[str, Any] | None) -> pd.DataFrame:
    """Labelled predictions after the last one the version learned from, ordered by time,
    then prediction id (here, not by the database's collation)."""
    since = lineage["trained_through"] if lineage else None
    rows = store.labelled(name, since=since["ts"] if since else 0.0)
    if rows.empty:
        return pd.DataFrame(columns=["prediction_id", "ts", "inputs", "ground_truth"])
    rows = rows.sort_values(["ts", "prediction_id"], kind="stable")
    if since:
        rows = rows[(rows["ts"] > since["ts"]) | (rows["prediction_id"] > since["prediction_id"])]
    return rows.reset_index(drop=True)


def _encode(
    spec: ModelSpec, folder: Path, records: list[dict[str, Any]]
) -> tuple[np.ndarray, list[int]]:
    """The encoded rows, and their positions; rows that break the schema (logged while the
    spec flags rather than rejects) are left out."""
    kept = list(range(len(records)))
    if not records:
        return np.empty((0, 0)), kept
    try:
        return encode(spec, records, folder), kept
    except ValidationError as exc:
        broken = {v.row for v in exc.violations}
    kept = [i for i in kept if i not in broken]
    if not kept:
        return np.empty((0, 0)), kept
    return encode(spec, [records[i] for i in kept], folder), kept


def _partial_fit(
    estimator: Any, spec: ModelSpec, x: np.ndarray, truth: list[Any], epochs: int, seed: int
) -> None:
    """``epochs`` shuffled passes of ``partial_fit`` over the rows, on the last step."""
    learner = _last_step(estimator)
    if learner is not estimator:
        x = estimator[:-1].transform(x)
    if spec.task == "regression":
        y: np.ndarray = np.asarray(truth, dtype=float)
    else:  # the estimator's class j is the spec's label j (its probability column j)
        labels = list(spec.labels or [])
        y = np.asarray(learner.classes_)[[labels.index(str(t)) for t in truth]]
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        learner.partial_fit(x[order], y[order])


def _score(model: Model, rows: list[dict[str, Any]], truth: list[Any]) -> tuple[str, float]:
    from sklearn import metrics  # here: a server of ONNX models starts without scikit-learn

    results = model.predict(rows)
    if model.spec.task == "regression":
        values = [r.outputs["value"] for r in results]
        return "mae", float(metrics.mean_absolute_error(np.asarray(truth, float), values))
    labels = [r.outputs["label"] for r in results]
    return "accuracy", float(metrics.accuracy_score([str(t) for t in truth], labels))


def _next_version(repository: Repository, name: str) -> str:
    versions = repository.versions(name)
    version = str(max((int(v) for v in versions if v.isdigit()), default=0) + 1)
    if version_key(version) <= version_key(versions[-1]):
        raise UserError(
            f"online updates number versions 1, 2, 3, ...; model '{name}' has versions "
            f"{versions}, after which '{version}' would not be the latest"
        )
    return version


def _skops_writer(estimator: Any) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import skops.io as sio

        sio.dump(estimator, path)

    return write


def _json_writer(model: BetaBinomial | NormalLinear) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(model.model_dump_json(indent=2) + "\n", encoding="utf-8")

    return write


def _stage(
    current: ModelVersion, version: str, staging: Path, write: Callable[[Path], None]
) -> ModelSpec:
    """Writes the new version into ``staging`` (its model.yaml aside until published) with
    ``write`` writing the artifact."""
    spec = current.spec
    shutil.copytree(
        current.folder,
        staging,
        ignore=shutil.ignore_patterns(SPEC_FILE, LINEAGE_FILE, spec.artifact),
    )
    artifact = staging / spec.artifact
    artifact.parent.mkdir(parents=True, exist_ok=True)
    write(artifact)
    from foretell.runtimes.base import file_sha256

    runtime = dict(spec.runtime)
    if artifact.suffix == ".skops":
        import skops.io as sio

        vouched = sorted(sio.get_untrusted_types(file=artifact))  # we wrote it: we vouch for it
        if vouched:
            runtime["trusted_types"] = vouched
        else:
            runtime.pop("trusted_types", None)
    new_spec = ModelSpec.model_validate(
        {
            **spec.model_dump(),
            "version": version,
            "sha256": file_sha256(artifact),
            "runtime": runtime,
        }
    )
    write_spec(new_spec, staging / ".spec")
    return new_spec


def _publish(staging: Path, final: Path) -> None:
    """Moves the staged version into place; its model.yaml arrives last, in one step."""
    try:
        staging.rename(final)
    except OSError:
        raise UserError(
            f"version folder '{final}' was written meanwhile by another update; run the "
            "update again"
        ) from None
    os.replace(final / ".spec" / SPEC_FILE, final / SPEC_FILE)
    (final / ".spec").rmdir()


def _set_policy(model_folder: Path, serve: str) -> None:
    """Sets ``serve`` in the model's policy.yaml, keeping anything else it says."""
    path = model_folder / POLICY_FILE
    data: Any = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data = {**(data if isinstance(data, dict) else {}), "serve": serve}
    temporary = path.with_name(f".{POLICY_FILE}.{uuid.uuid4().hex}")
    temporary.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    os.replace(temporary, path)
