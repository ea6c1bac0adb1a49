"""The model spec: what a ``model.yaml`` may say, checked field by field when it is read."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from foretell.errors import SpecError

Task = Literal[
    "classification",
    "regression",
    "clustering",
    "anomaly_detection",
    "recommendation",
    "text_classification",
    "uplift",
]
Format = Literal[
    "onnx", "sklearn", "xgboost", "lightgbm", "python", "torchscript", "uplift", "conjugate"
]
DType = Literal["float", "int", "bool", "category", "text", "list"]

SPEC_FILE = "model.yaml"
#: Tasks whose predictions conformal prediction can bound (intervals or sets of labels).
CONFORMAL_TASKS = ("regression", "classification", "text_classification")
#: Tasks whose predictions have feature attributions: a number per row over tabular inputs.
EXPLAINED_TASKS = ("regression", "classification", "anomaly_detection")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feature(_Strict):
    """One input feature: its type, allowed values and what to do when it is missing."""

    name: str = Field(min_length=1)
    dtype: DType = "float"
    description: str = ""
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    encoding: Literal["one_hot", "ordinal", "none"] = "one_hot"
    nullable: bool = False
    impute: float | str | None = None
    max_length: int = Field(default=10_000, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> Feature:
        if self.dtype in ("category", "list") and not self.categories:
            raise ValueError(f"a '{self.dtype}' feature needs a non-empty 'categories' list")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"'min' ({self.min}) is greater than 'max' ({self.max})")
        if self.encoding != "one_hot" and self.dtype != "category":
            raise ValueError(f"'encoding' applies to 'category' features, not '{self.dtype}'")
        if self.impute is not None:
            self._check_impute(self.impute)
        return self

    def _check_impute(self, value: float | str) -> None:
        if not self.nullable:
            raise ValueError("'impute' only applies to a feature with 'nullable: true'")
        numeric = self.dtype in ("float", "int", "bool")
        if numeric and not isinstance(value, int | float):
            raise ValueError(
                f"'impute' of a '{self.dtype}' feature must be a number; got {value!r}"
            )
        if self.dtype == "category" and value not in (self.categories or []):
            raise ValueError(f"'impute' must be one of the categories; got {value!r}")
        if self.dtype == "text" and not isinstance(value, str):
            raise ValueError(f"'impute' of a 'text' feature must be text; got {value!r}")
        if self.dtype == "list":
            raise ValueError("a 'list' feature cannot be imputed; a missing list is empty")


class Output(_Strict):
    """One output the model's results carry."""

    name: str
    dtype: Literal["float", "int", "bool", "string", "object"] = "float"
    description: str = ""


class PreprocessStep(_Strict):
    """A declared preprocessing step, applied in order before the forward pass."""

    step: Literal["log1p", "clip", "user_history"]
    features: list[str] = Field(default_factory=list)
    source: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _arguments(self) -> PreprocessStep:
        if self.step == "user_history" and not (self.source and self.file and self.features):
            raise ValueError(
                "'user_history' needs 'source' (the user feature), 'file' and 'features'"
            )
        if self.step in ("log1p", "clip") and not self.features:
            raise ValueError(f"'{self.step}' needs a non-empty 'features' list")
        return self


class Postprocess(_Strict):
    """How raw model outputs become results."""

    top_k: int | None = Field(default=None, gt=0)
    anomaly_threshold: float | None = None
    exclude_seen: bool = True


class Rule(_Strict):
    """``when`` a condition on the outputs holds, take ``action``."""

    when: str
    action: str = Field(min_length=1)

    @field_validator("when")
    @classmethod
    def _parses(cls, value: str) -> str:
        from foretell.pipeline.decide import parse_condition

        parse_condition(value)
        return value


class Decision(_Strict):
    """Ordered rules; the first that holds decides, else ``default``."""

    rules: list[Rule] = Field(default_factory=list)
    default: str = Field(default="none", min_length=1)


class Batching(_Strict):
    """How a server merges concurrent requests to the model into one forward pass."""

    #: The most rows in one merged forward pass; 1 runs every request alone.
    max_batch_size: int = Field(default=64, ge=1)
    #: The longest a request waits for others to join its batch, in milliseconds.
    max_wait_ms: float = Field(default=0.0, ge=0, le=10_000)


class Monitoring(_Strict):
    """When live data counts as drifted, how many rows a verdict needs, and whom to compare."""

    psi: float = Field(default=0.2, gt=0)
    p_value: float = Field(default=0.001, gt=0, lt=1)
    min_rows: int = Field(default=100, gt=0)
    #: Alert when a quality metric falls below this floor (e.g. ``accuracy: 0.9``).
    min: dict[str, float] = Field(default_factory=dict)
    #: Alert when an error metric rises above this ceiling (e.g. ``mae: 12``), or a fairness
    #: difference above it (e.g. ``demographic_parity_difference: 0.1``).
    max: dict[str, float] = Field(default_factory=dict)
    #: Inputs whose groups fairness metrics compare (e.g. ``[age_band, region]``).
    sensitive: list[str] = Field(default_factory=list)


class FeatureReference(_Strict):
    """Statistics of one feature in the training data, the baseline for drift."""

    count: int
    missing_rate: float = 0.0
    mean: float | None = None
    std: float | None = None
    quantiles: dict[str, float] | None = None
    histogram: dict[str, list[float]] | None = None
    frequencies: dict[str, float] | None = None


class Reference(_Strict):
    """Reference statistics of the training data, and of the model's outputs on it."""

    rows: int
    features: dict[str, FeatureReference]
    #: The model's own predictions on its training data (label, value or score), the
    #: baseline for prediction drift.
    outputs: dict[str, FeatureReference] | None = None


class Uncertainty(_Strict):
    """Conformal uncertainty: held-out rows with known outcomes, stored in the version folder."""

    method: Literal["conformal"] = "conformal"
    #: A Parquet file of held-out rows: the inputs, and the true outcome in column ``target``.
    calibration: str
    target: str = "target"
    #: How many rows the calibration file holds, and the day it was written.
    rows: int = Field(gt=0)
    created: date
    #: The level used when a call asks for uncertainty without naming one.
    default_confidence: float | None = Field(default=None, gt=0, lt=1)

    @field_validator("calibration")
    @classmethod
    def _inside(cls, value: str) -> str:
        return _inside_version_folder(value)


class Explain(_Strict):
    """Explanations: the background sample attributions are measured against."""

    #: A Parquet file of typical input rows (a sample of the training data).
    background: str
    #: ``auto``: SHAP's tree explainer when the model is a tree ensemble it reads, else
    #: sampled permutations over the inputs.
    algorithm: Literal["auto", "tree", "permutation"] = "auto"
    #: Model evaluations per explained row for ``permutation`` (at least 2 * inputs + 1).
    evaluations: int = Field(default=500, gt=0)
    seed: int = 0

    @field_validator("background")
    @classmethod
    def _inside(cls, value: str) -> str:
        return _inside_version_folder(value)


class Insight(_Strict):
    """What the model needs to explain its predictions and say how uncertain they are."""

    uncertainty: Uncertainty | None = None
    explain: Explain | None = None


def _inside_version_folder(value: str) -> str:
    path = Path(value)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"must be a path inside the version folder; got '{value}'")
    return value


class ModelSpec(_Strict):
    """Everything foretell knows about one model version, read from its ``model.yaml``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: Task
    format: Format
    artifact: str
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    description: str = ""
    trusted: bool = False
    on_invalid: Literal["reject", "flag"] = "reject"
    inputs: list[Feature] = Field(min_length=1)
    outputs: list[Output] = Field(default_factory=list)
    labels: list[str] | None = None
    preprocessing: list[PreprocessStep] = Field(default_factory=list)
    postprocessing: Postprocess = Postprocess()
    decision: Decision = Decision()
    reference: Reference | None = None
    monitoring: Monitoring = Monitoring()
    runtime: dict[str, Any] = Field(default_factory=dict)
    insight: Insight = Insight()
    #: Adaptive batching when served; ``foretell serve --max-batch-size`` overrides it.
    batching: Batching | None = None
    #: ``onnx``: convert a scikit-learn model to ONNX at load, when it converts and agrees.
    compile: Literal["onnx"] | None = None

    @field_validator("artifact")
    @classmethod
    def _artifact_inside(cls, value: str) -> str:
        return _inside_version_folder(value)

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        names = [f.name for f in self.inputs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"input names must be unique; repeated: {duplicates}")
        if self.task in ("classification", "text_classification") and not self.labels:
            raise ValueError(f"a '{self.task}' model needs 'labels' (its class names)")
        if self.task == "text_classification" and [f.dtype for f in self.inputs] != ["text"]:
            raise ValueError("a 'text_classification' model takes exactly one 'text' input")
        if self.task == "recommendation" and not any(f.dtype == "list" for f in self.inputs):
            raise ValueError("a 'recommendation' model needs a 'list' input of item ids")
        if self.task != "text_classification" and any(f.dtype == "text" for f in self.inputs):
            raise ValueError("'text' inputs belong to 'text_classification' models only")
        if self.task == "anomaly_detection" and self.postprocessing.anomaly_threshold is None:
            raise ValueError(
                "an 'anomaly_detection' model needs 'postprocessing.anomaly_threshold': the "
                "score at or above which a row is an anomaly"
            )
        if self.task == "uplift" and self.runtime.get("treatment") in names:
            raise ValueError(
                f"an 'uplift' model predicts the outcome under treatment and under control, so "
                f"its treatment '{self.runtime['treatment']}' must not be one of its inputs"
            )
        for step in self.preprocessing:
            self._check_step(step)
        self._check_sensitive()
        self._check_insight()
        return self

    def _check_insight(self) -> None:
        if self.insight.uncertainty is not None and self.task not in CONFORMAL_TASKS:
            raise ValueError(
                f"'insight.uncertainty' (conformal) applies to {', '.join(CONFORMAL_TASKS)} "
                f"models; this one is '{self.task}'"
            )
        if self.insight.explain is not None and self.task not in EXPLAINED_TASKS:
            raise ValueError(
                f"'insight.explain' applies to {', '.join(EXPLAINED_TASKS)} models; this one is "
                f"'{self.task}'"
            )

    def _check_sensitive(self) -> None:
        named = self.monitoring.sensitive
        if not named:
            return
        if self.task != "classification":
            raise ValueError(
                f"'monitoring.sensitive' applies to classification models; this one is "
                f"'{self.task}'"
            )
        dtypes = {f.name: f.dtype for f in self.inputs}
        unknown = [n for n in named if n not in dtypes]
        if unknown:
            raise ValueError(
                f"'monitoring.sensitive' must name inputs of the model; {unknown} are not "
                f"among {list(dtypes)}"
            )
        wrong = [n for n in named if dtypes[n] not in ("category", "bool", "int")]
        if wrong:
            raise ValueError(
                f"'monitoring.sensitive' inputs must be category, bool or int features (groups); "
                f"{wrong} are not"
            )

    def _check_step(self, step: PreprocessStep) -> None:
        dtypes = {f.name: f.dtype for f in self.inputs}
        named = [*step.features, *([step.source] if step.source else [])]
        unknown = [f for f in named if f not in dtypes]
        if unknown:
            raise ValueError(f"preprocessing step '{step.step}' names unknown inputs {unknown}")
        wanted = {"log1p": ("float", "int"), "clip": ("float", "int"), "user_history": ("list",)}
        wrong = [f for f in step.features if dtypes[f] not in wanted[step.step]]
        if wrong:
            raise ValueError(
                f"preprocessing step '{step.step}' applies to {' or '.join(wanted[step.step])} "
                f"features; {wrong} are not"
            )
        if step.source and dtypes[step.source] != "category":
            raise ValueError(f"'user_history' needs a 'category' source; '{step.source}' is not")

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.inputs]


def parse_spec(data: Any, source: str) -> ModelSpec:
    """Checks a parsed ``model.yaml``; errors name ``source``, the field and the rule broken."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a model spec must be a mapping; got {type(data).__name__}")
    try:
        return ModelSpec.model_validate(data)
    except PydanticValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"]) or "(top level)"
            problems.append(f"field '{where}': {err['msg']}")
        raise SpecError(f"{source}: " + "; ".join(problems)) from None


def read_spec(folder: Path) -> ModelSpec:
    """Reads and checks ``folder/model.yaml``."""
    path = folder / SPEC_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no model spec here; every version folder needs one") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        # libyaml's parser where PyYAML has it: a spec with reference statistics (30 KB) in
        # 10 ms instead of 90, on every start
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        try:  # read again by the Python parser, whose message shows the line at fault
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML: {exc}") from None
    return parse_spec(data, str(path))


def write_spec(spec: ModelSpec, folder: Path) -> Path:
    """Writes ``spec`` as ``folder/model.yaml`` and returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SPEC_FILE
    data = spec.model_dump(mode="json", exclude_defaults=True)
    data = {"name": spec.name, "version": spec.version, **data}
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path
