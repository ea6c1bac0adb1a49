"""Builds the example models, one per task kind, into a model repository."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foretell.examples import datasets
from foretell.insight.conformal import calibrate
from foretell.insight.explain import set_background
from foretell.monitoring.prediction_drift import output_reference
from foretell.pipeline.model import Model
from foretell.pipeline.preprocess import encode
from foretell.repository.reference import compute_reference
from foretell.repository.spec import (
    Decision,
    Feature,
    ModelSpec,
    Monitoring,
    Postprocess,
    PreprocessStep,
    Rule,
    write_spec,
)
from foretell.runtimes.base import file_sha256

SEED = 0
#: The date the examples' calibration sets record, fixed so that a build is reproducible.
CALIBRATED = datetime.date(2026, 1, 1)


def _numeric_inputs(frame: pd.DataFrame, dtype: str = "float") -> list[Feature]:
    """Features allowing values from 0 (when the data has no negatives) to twice the max seen."""
    features = []
    for name in frame.columns:
        low, high = float(frame[name].min()), float(frame[name].max())
        features.append(
            Feature(
                name=str(name),
                dtype=dtype,  # type: ignore[arg-type]
                min=0.0 if low >= 0 else round(low - abs(low), 6),
                max=round(high + abs(high), 6),
            )
        )
    return features


def _with(spec: ModelSpec, changes: dict[str, Any]) -> ModelSpec:
    """A copy of ``spec`` with ``changes``, validated like a spec read from disk."""
    return ModelSpec.model_validate({**spec.model_dump(), **changes})


def _save_skops(estimator: Any, path: Path) -> None:
    import skops.io as sio

    sio.dump(estimator, path)


def _save_onnx(estimator: Any, path: Path, n_features: int, double: bool = False) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    tensor = DoubleTensorType if double else FloatTensorType
    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "predict_proba") else None
    onx = to_onnx(
        estimator,
        initial_types=[("input", tensor([None, n_features]))],
        options=options,
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    path.write_bytes(onx.SerializeToString())


def _write(
    root: Path, spec: ModelSpec, train: pd.DataFrame, save: Callable[[Path], None]
) -> ModelSpec:
    folder = root / spec.name / spec.version
    folder.mkdir(parents=True, exist_ok=True)
    save(folder / spec.artifact)
    if spec.artifact.endswith(".skops"):  # we wrote this file, so we vouch for its types
        import skops.io as sio

        vouched = sorted(sio.get_untrusted_types(file=folder / spec.artifact))
        if vouched:
            spec = _with(spec, {"runtime": {**spec.runtime, "trusted_types": vouched}})
    spec = _with(
        spec,
        {
            "sha256": file_sha256(folder / spec.artifact),
            "reference": compute_reference(train, spec.inputs),
        },
    )
    write_spec(spec, folder)
    # the baseline of prediction drift: the written model's own results on its training data
    results = Model.from_folder(folder, spec).predict(train)
    outputs = output_reference(spec, [r.outputs for r in results])
    if outputs is not None:
        assert spec.reference is not None
        spec = _with(spec, {"reference": {**spec.reference.model_dump(), "outputs": outputs}})
        write_spec(spec, folder)
    return spec


def _with_insight(
    root: Path,
    spec: ModelSpec,
    background: pd.DataFrame,
    calibration: pd.DataFrame | None = None,
    target: str = "target",
) -> ModelSpec:
    """Stores a background sample (explanations) with a written model version and, given
    held-out rows the model never saw, a calibration set (conformal uncertainty)."""
    folder = root / spec.name / spec.version
    spec = set_background(folder, background, rows=100, seed=SEED)
    if calibration is not None:
        spec = calibrate(folder, calibration, target, created=CALIBRATED)
    return spec


def breast_cancer(root: Path) -> list[ModelSpec]:
    """Gradient boosting on the Wisconsin breast cancer data; version 1 skops, 2 ONNX."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier

    data = load_breast_cancer(as_frame=True)
    frame = data.data
    base = ModelSpec(
        name="breast-cancer",
        version="1",
        task="classification",
        format="sklearn",
        artifact="model.skops",
        description="Is a breast mass malignant or benign, from features of a digitised image "
        "of a fine needle aspirate (scikit-learn's bundled Wisconsin data).",
        inputs=_numeric_inputs(frame),
        labels=[str(n) for n in data.target_names],
        decision=Decision(
            rules=[
                Rule(when="probability[malignant] >= 0.9", action="refer"),
                Rule(when="probability[malignant] >= 0.3", action="review"),
            ],
            default="routine",
        ),
    )
    model = GradientBoostingClassifier(n_estimators=100, max_depth=2, random_state=SEED)
    model.fit(encode(base, frame), data.target.to_numpy())
    first = _write(root, base, frame, lambda p: _save_skops(model, p))
    onnx = _with(base, {"version": "2", "format": "onnx", "artifact": "model.onnx"})
    second = _write(root, onnx, frame, lambda p: _save_onnx(model, p, frame.shape[1]))
    # trained on every row of the data set: no held-out rows are left to calibrate on
    return [_with_insight(root, first, frame), _with_insight(root, second, frame)]


def diabetes(root: Path) -> list[ModelSpec]:
    """Ridge regression of disease progression one year on (scikit-learn's diabetes data)."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_diabetes(as_frame=True, scaled=False)
    frame = data.data
    spec = ModelSpec(
        name="diabetes",
        version="1",
        task="regression",
        format="onnx",
        artifact="model.onnx",
        description="Disease progression one year after baseline, from age, sex, body mass "
        "index, blood pressure and six blood serum measurements (s1-s6).",
        inputs=_numeric_inputs(frame),
        decision=Decision(rules=[Rule(when="value >= 200", action="follow_up")], default="routine"),
    )
    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    model.fit(encode(spec, frame), data.target.to_numpy())
    written = _write(root, spec, frame, lambda p: _save_onnx(model, p, frame.shape[1], True))
    return [_with_insight(root, written, frame)]


def iris_segments(root: Path) -> list[ModelSpec]:
    """k-means segments of iris flowers; each segment named after its most common species."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_iris
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_iris(as_frame=True)
    frame = data.data
    spec = ModelSpec(
        name="iris-segments",
        version="1",
        task="clustering",
        format="sklearn",
        artifact="model.skops",
        description="Groups iris flowers into three segments by sepal and petal size.",
        inputs=_numeric_inputs(frame),
        decision=Decision(rules=[Rule(when="distance > 3", action="outlier")], default="assigned"),
    )
    model = make_pipeline(StandardScaler(), KMeans(n_clusters=3, n_init=10, random_state=SEED))
    clusters = model.fit_predict(encode(spec, frame))
    names = []
    for c in range(3):
        species = data.target_names[np.bincount(data.target[clusters == c], minlength=3).argmax()]
        names.append(f"{species}-like" if f"{species}-like" not in names else f"{species}-like-2")
    spec = _with(spec, {"labels": names})
    return [_write(root, spec, frame, lambda p: _save_skops(model, p))]


def card_fraud(root: Path) -> list[ModelSpec]:
    """Isolation forest on generated card transactions: approve, review or block."""
    from sklearn.ensemble import IsolationForest

    frame = datasets.card_transactions()
    features = frame.drop(columns=["is_fraud"])
    inputs = [
        Feature(name="amount", min=0, max=1_000_000, description="amount in euros"),
        Feature(name="hour", dtype="int", min=0, max=23, description="hour of day, local time"),
        Feature(
            name="merchant_category", dtype="category", categories=datasets.MERCHANT_CATEGORIES
        ),
        Feature(name="foreign", dtype="bool", description="card used outside its home country"),
        Feature(name="card_age_days", dtype="int", min=0, max=36_500),
        Feature(name="transactions_last_24h", dtype="int", min=0, max=10_000),
        Feature(name="distance_from_home_km", min=0, max=40_075),
    ]
    spec = ModelSpec(
        name="card-fraud",
        version="1",
        task="anomaly_detection",
        format="sklearn",
        artifact="model.skops",
        description="Scores card transactions for fraud by how unusual they look "
        "(generated data); higher scores are more anomalous.",
        inputs=inputs,
        preprocessing=[PreprocessStep(step="log1p", features=["amount", "distance_from_home_km"])],
        postprocessing=Postprocess(anomaly_threshold=0.0),  # set from the fitted forest below
    )
    model = IsolationForest(n_estimators=200, contamination=0.02, random_state=SEED)
    x = encode(spec, features)
    model.fit(x)
    scores = -model.score_samples(x)
    review, block = (round(float(np.quantile(scores, q)), 4) for q in (0.95, 0.99))
    spec = _with(
        spec,
        {
            "postprocessing": {"anomaly_threshold": round(float(-model.offset_), 4)},
            "decision": {
                "rules": [
                    {"when": f"score >= {block}", "action": "block"},
                    {"when": f"score >= {review}", "action": "review"},
                ],
                "default": "approve",
            },
        },
    )
    written = _write(root, spec, features, lambda p: _save_skops(model, p))
    return [_with_insight(root, written, features)]


def item_recommender(root: Path) -> list[ModelSpec]:
    """Item-to-item scores from a truncated SVD of generated purchases, as an ONNX graph."""
    from sklearn.decomposition import TruncatedSVD

    history = datasets.interactions()
    items = datasets.item_names()
    matrix = np.array([[item in bought for item in items] for bought in history.values()], float)
    svd = TruncatedSVD(n_components=6, random_state=SEED).fit(matrix)
    similarity = svd.components_.T @ svd.components_
    popularity = matrix.mean(axis=0) * 1e-3  # breaks ties and serves an empty basket
    spec = ModelSpec(
        name="item-recommender",
        version="1",
        task="recommendation",
        format="onnx",
        artifact="model.onnx",
        description="Recommends items for a known user, a basket of items, or both "
        "(generated shop purchases).",
        on_invalid="flag",
        inputs=[
            Feature(
                name="user",
                dtype="category",
                categories=list(history),
                encoding="none",
                nullable=True,
                description="a known user id; their purchases join the basket",
            ),
            Feature(name="items", dtype="list", categories=items, nullable=True),
        ],
        preprocessing=[
            PreprocessStep(
                step="user_history", source="user", features=["items"], file="history.json"
            )
        ],
        postprocessing=Postprocess(top_k=5, exclude_seen=True),
    )
    train = pd.DataFrame({"user": list(history), "items": list(history.values())})

    def save(path: Path) -> None:
        _save_matmul_onnx(similarity, popularity, path)
        (path.parent / "history.json").write_text(json.dumps(history, indent=0))

    return [_write(root, spec, train, save)]


def _save_matmul_onnx(weights: np.ndarray, bias: np.ndarray, path: Path) -> None:
    """An ONNX graph computing ``scores = basket @ weights + bias``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = weights.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["basket", "weights"], ["product"]),
            helper.make_node("Add", ["product", "bias"], ["scores"]),
        ],
        "item_similarity",
        [helper.make_tensor_value_info("basket", TensorProto.FLOAT, [None, n])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, n])],
        [
            numpy_helper.from_array(weights.astype(np.float32), "weights"),
            numpy_helper.from_array(bias.astype(np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def sentiment(root: Path) -> list[ModelSpec]:
    """TF-IDF and logistic regression on a small review corpus shipped with foretell."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    corpus = datasets.sentiment_corpus()
    spec = ModelSpec(
        name="sentiment",
        version="1",
        task="text_classification",
        format="sklearn",
        artifact="model.skops",
        description="Is a short review negative or positive? Raw text in.",
        inputs=[Feature(name="text", dtype="text", max_length=5000)],
        labels=["negative", "positive"],
        decision=Decision(
            rules=[Rule(when="probability[negative] >= 0.8", action="escalate")], default="none"
        ),
    )
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        LogisticRegression(C=10.0, max_iter=1000),
    )
    target = (corpus["label"] == "positive").astype(int).to_numpy()
    model.fit(encode(spec, corpus[["text"]]), target)
    return [_write(root, spec, corpus[["text"]], lambda p: _save_skops(model, p))]


REGIONS = ["north", "south", "east", "west"]
AGE_BANDS = ["18-25", "26-40", "41-60", "61+"]


def loan_applications(
    rows: int = 4000, seed: int = 5, income_factor: float = 1.0, risk_shift: float = 0.0
) -> pd.DataFrame:
    """Generated loan applications and whether each loan was ``repaid`` or went into
    ``default`` (``outcome``). ``income_factor`` scales incomes (a shift of the applicants);
    ``risk_shift`` lowers every applicant's log-odds of repaying (a downturn: the same
    applicant is riskier than the model learned)."""
    rng = np.random.default_rng(seed)
    region = rng.choice(REGIONS, size=rows, p=[0.3, 0.25, 0.25, 0.2])
    age = rng.choice(AGE_BANDS, size=rows, p=[0.15, 0.4, 0.3, 0.15])
    age_index = np.searchsorted(AGE_BANDS, age)
    region_pay = np.select([region == "north", region == "south"], [0.15, -0.15], 0.0)
    income = np.round(
        rng.lognormal(np.log(38) + region_pay + 0.12 * np.minimum(age_index, 2), 0.45, rows)
        * income_factor,
        1,
    )
    loan = np.round(rng.lognormal(np.log(14), 0.6, rows), 1)
    credit = np.clip(np.round(rng.normal(630 + 25 * age_index, 70, rows)), 300, 850).astype(int)
    debt_to_income = np.round(rng.beta(2, 5, rows), 3)
    years = np.minimum(rng.poisson(1 + 5 * age_index, rows), 50)
    logit = (
        1.2
        + 1.5 * np.log(income / 38)
        - 1.3 * np.log(loan / 14)
        + 0.012 * (credit - 650)
        - 5.0 * (debt_to_income - 0.28)
        + 0.04 * years
        - risk_shift
    )
    repaid = rng.random(rows) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "income": income,
            "loan_amount": loan,
            "credit_score": credit,
            "debt_to_income": debt_to_income,
            "years_employed": years,
            "region": region,
            "age_band": age,
            "outcome": np.where(repaid, "repaid", "default"),
        }
    )


def loan_approval(root: Path) -> list[ModelSpec]:
    """Logistic regression by stochastic gradient descent on generated loan applications; it
    learns online from ground truth (``foretell update``), and fairness is watched by age band
    and region."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = loan_applications()
    features = frame.drop(columns=["outcome"])
    spec = ModelSpec(
        name="loan-approval",
        version="1",
        task="classification",
        format="sklearn",
        artifact="model.skops",
        description="Will a loan be repaid? Approve, review or decline an application "
        "(generated data). Learns online from ground truth.",
        inputs=[
            Feature(name="income", min=0, max=10_000, description="yearly income, thousands €"),
            Feature(name="loan_amount", min=0, max=1_000, description="thousands of euros"),
            Feature(name="credit_score", dtype="int", min=300, max=850),
            Feature(name="debt_to_income", min=0, max=5, description="monthly debt / income"),
            Feature(name="years_employed", dtype="int", min=0, max=60),
            Feature(name="region", dtype="category", categories=REGIONS),
            Feature(name="age_band", dtype="category", categories=AGE_BANDS),
        ],
        labels=["default", "repaid"],
        preprocessing=[PreprocessStep(step="log1p", features=["income", "loan_amount"])],
        decision=Decision(
            rules=[
                Rule(when="probability[repaid] >= 0.8", action="approve"),
                Rule(when="probability[repaid] >= 0.5", action="review"),
            ],
            default="decline",
        ),
        monitoring=Monitoring(sensitive=["age_band", "region"]),
    )
    # online updates (partial_fit) train the last step; the scaler stays as fitted here
    model = make_pipeline(
        StandardScaler(),
        SGDClassifier(
            loss="log_loss", alpha=1e-4, learning_rate="constant", eta0=0.01, random_state=SEED
        ),
    )
    model.fit(encode(spec, features), (frame["outcome"] == "repaid").to_numpy(int))
    written = _write(root, spec, features, lambda p: _save_skops(model, p))
    # new applicants (another seed) the model never saw: its conformal calibration set
    held_out = loan_applications(rows=5000, seed=6)
    return [_with_insight(root, written, features, held_out, target="outcome")]


def fraud_rates(root: Path) -> list[ModelSpec]:
    """Bayesian fraud rates per merchant category: a Beta prior and generated outcomes give
    each category's posterior; rules read its credible interval, and ground truth updates it
    (``foretell update``)."""
    from foretell.insight.bayes import BetaBinomial, BetaPrior, count_events

    history = datasets.merchant_outcomes()
    spec = ModelSpec(
        name="fraud-rates",
        version="1",
        task="classification",
        format="conjugate",
        artifact="posterior.json",
        description="How likely is a transaction at this kind of merchant to be fraud? The "
        "posterior fraud rate of its merchant category with a 90% credible interval (generated "
        "data); block when the rate is surely high, review while it may be. Learns from ground "
        "truth by Bayesian updating.",
        inputs=[
            Feature(
                name="merchant_category", dtype="category", categories=datasets.MERCHANT_CATEGORIES
            )
        ],
        labels=["legit", "fraud"],
        decision=Decision(
            rules=[
                Rule(when="lower >= 0.02", action="block"),
                Rule(when="upper >= 0.02", action="review"),
            ],
            default="approve",
        ),
        runtime={"level": 0.9},
    )
    model = BetaBinomial(
        family="beta_binomial",
        segment_by="merchant_category",
        prior=BetaPrior(alpha=1.0, beta=99.0),  # about 1% fraud, worth 100 transactions
        evidence=count_events(
            history["merchant_category"].tolist(),
            history["outcome"].tolist(),
            "fraud",
            datasets.MERCHANT_CATEGORIES,
        ),
    )

    def save(path: Path) -> None:
        path.write_text(model.model_dump_json(indent=2) + "\n", encoding="utf-8")

    return [_write(root, spec, history.drop(columns=["outcome"]), save)]


EXAMPLES: dict[str, Callable[[Path], list[ModelSpec]]] = {
    "breast-cancer": breast_cancer,
    "diabetes": diabetes,
    "iris-segments": iris_segments,
    "card-fraud": card_fraud,
    "item-recommender": item_recommender,
    "sentiment": sentiment,
    "loan-approval": loan_approval,
    "fraud-rates": fraud_rates,
}


def build_examples(root: str | Path, only: list[str] | None = None) -> list[ModelSpec]:
    """Trains the example models and writes them into the repository at ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    built: list[ModelSpec] = []
    for name, builder in EXAMPLES.items():
        if only is None or name in only:
            built.extend(builder(root))
    return built
