"""Causal inference on simulated data whose effects are known.

Every estimator's interval covers the true effect while the naive difference is shown biased;
2SLS recovers an effect that adjustment cannot; refutations, causal graphs and identification;
bad input; the report; and an uplift model trained with ``foretell causal train`` and served
by a real server.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import foretell
from foretell import SpecError, UserError
from foretell.cli import app
from foretell.insight.causal import (
    CausalAnalysis,
    CausalWarning,
    estimate_effect,
    identify,
    read_graph,
)
from foretell.insight.causal.graph import parse_dot
from foretell.insight.causal.report import write_html
from foretell.repository.spec import parse_spec
from tests.conftest import Server

runner = CliRunner()
N = 4000
TRUE_ATE = 2.0
CONFOUNDERS = ["X1", "X2", "X3"]
ADJUSTING = ["regression", "matching", "weighting", "aipw"]


def confounded(n: int = N, seed: int = 0) -> pd.DataFrame:
    """X1..X3 raise both the chance of treatment and the outcome, so the treated would have
    done better anyway. The effect, 2 + X1, varies: its mean is the ATE = 2, and the treated,
    who have higher X1, gain more (ATT > ATE). ``tau`` is each row's true effect."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    t = rng.binomial(1, 1 / (1 + np.exp(-(0.8 * x[:, 0] + 0.6 * x[:, 1] + 0.5 * x[:, 2]))))
    tau = TRUE_ATE + x[:, 0]
    y = 1.0 + 1.5 * x[:, 0] + x[:, 1] + 0.5 * x[:, 2] + tau * t + rng.normal(size=n)
    return pd.DataFrame({"X1": x[:, 0], "X2": x[:, 1], "X3": x[:, 2], "T": t, "Y": y, "tau": tau})


def hidden_confounder(n: int = N, seed: int = 2, strength: float = 1.0) -> pd.DataFrame:
    """An unobserved U drives treatment and outcome; the instrument Z moves the treatment
    only. The effect is 2 for everyone, so the local effect 2SLS finds is the ATE."""
    rng = np.random.default_rng(seed)
    u, x1, z = rng.normal(size=(3, n))
    t = (strength * z + u + 0.5 * x1 + rng.normal(size=n) > 0).astype(int)
    y = TRUE_ATE * t + 2.0 * u + x1 + rng.normal(size=n)
    return pd.DataFrame({"X1": x1, "Z": z, "T": t, "Y": y})


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return confounded()


@pytest.fixture(scope="module")
def ate(data: pd.DataFrame) -> CausalAnalysis:
    return estimate_effect(
        data, treatment="T", outcome="Y", confounders=CONFOUNDERS, resamples=100,
        refutation_runs=3,
    )  # fmt: skip


# --------------------------------------------------------------------------- estimates


def test_every_method_covers_the_true_ate(ate: CausalAnalysis) -> None:
    assert [e.method for e in ate.estimates] == ["difference", *ADJUSTING]
    for name in ADJUSTING:
        found = ate.estimate(name)
        assert found.covers(TRUE_ATE), found
        assert found.high - found.low < 0.4, found
        assert found.level == 0.95
    assert ate.estimate("aipw").interval == "analytic"
    assert ate.estimate("matching").describe_interval() == "bootstrap (100 resamples)"
    assert ate.warnings == []


def test_the_naive_difference_is_shown_biased(ate: CausalAnalysis) -> None:
    naive = ate.estimate("difference")
    assert naive.low > TRUE_ATE + 1.0  # the treated would have done better anyway
    assert not naive.covers(TRUE_ATE)
    (note,) = [n for n in ate.notes if "naive difference" in n]
    assert "confounded" in note and "X1" in note


def test_the_effect_on_the_treated_differs_from_the_average_effect(data: pd.DataFrame) -> None:
    true_att = float(data.loc[data["T"] == 1, "tau"].mean())
    assert true_att - TRUE_ATE > 0.25
    att = estimate_effect(
        data, treatment="T", outcome="Y", confounders=CONFOUNDERS, effect="att",
        methods=ADJUSTING, resamples=100, refutations=False,
    )  # fmt: skip
    for found in att.estimates:
        assert found.effect == "att"
        assert found.covers(true_att), found
    assert not att.estimate("aipw").covers(TRUE_ATE)


def test_balance_and_overlap_diagnostics(ate: CausalAnalysis) -> None:
    assert ate.balance is not None and ate.overlap is not None
    rows = {
        name: (before, matched, weighted) for name, before, matched, weighted in ate.balance.rows()
    }
    assert set(rows) == set(CONFOUNDERS)
    assert rows["X1"][0] > 0.5  # the treated have much higher X1 before adjustment
    for before, matched, weighted in rows.values():
        assert abs(before) > 0.3
        assert abs(matched) < 0.1 and abs(weighted) < 0.1
    assert ate.overlap.treated[0] < ate.overlap.control[1]  # the groups overlap
    assert ate.overlap.warning() is None


def test_refutations_report_that_the_estimates_survive(ate: CausalAnalysis) -> None:
    for name in ADJUSTING:
        checks = {r.check: r for r in ate.refutations_of(name)}
        assert set(checks) == {"placebo treatment", "random common cause", "data subsets"}
        assert all(r.survives for r in checks.values()), checks
        assert abs(checks["placebo treatment"].mean) < 0.15
        assert abs(checks["random common cause"].mean - ate.estimate(name).value) < 0.1
        assert len(checks["data subsets"].values) == 3
    naive = {r.check: r for r in ate.refutations_of("difference")}
    assert naive["random common cause"].survives is None


# --------------------------------------------------------------------------- instruments


def test_iv_recovers_the_effect_where_adjustment_fails() -> None:
    frame = hidden_confounder()
    found = estimate_effect(
        frame, treatment="T", outcome="Y", confounders=["X1"], instrument="Z",
        methods=["iv", "regression", "aipw"], resamples=100, refutations=False,
    )  # fmt: skip
    two_stage = found.estimate("iv")
    assert two_stage.covers(TRUE_ATE), two_stage
    assert two_stage.interval == "analytic"
    for name in ("regression", "aipw"):  # biased upwards by the unobserved U
        assert found.estimate(name).low > TRUE_ATE + 0.5, found.estimate(name)
    assert found.first_stage is not None and found.first_stage.f_statistic > 100
    assert any("disagree" in n for n in found.notes)


def test_a_weak_instrument_is_flagged() -> None:
    frame = hidden_confounder(strength=0.02)
    with pytest.warns(CausalWarning, match="weak instrument: the first-stage F statistic is"):
        found = estimate_effect(
            frame, treatment="T", outcome="Y", confounders=["X1"], instrument="Z",
            methods=["iv"], refutations=False,
        )  # fmt: skip
    assert found.first_stage is not None and found.first_stage.f_statistic < 10
    assert any("weak instrument" in w for w in found.warnings)


# --------------------------------------------------------------------------- graphs


DOT = """
digraph causes {  // W only drives X1, so the minimal backdoor set is X1, X2, X3
  W -> X1;
  X1 -> {T Y}; X2 -> T -> Y; X2 -> Y
  "X3" -> T [label="raises"]; X3 -> Y
}
"""


def test_a_dot_graph_identifies_the_backdoor_set(data: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "causes.dot"
    path.write_text(DOT)
    frame = data.assign(W=np.random.default_rng(5).normal(size=len(data)))
    found = identify(read_graph(path), "T", "Y", frame.columns)
    assert found.identifiable and found.strategy == "backdoor"
    assert found.adjustment == ("X1", "X2", "X3")
    assert "adjusting for X1, X2, X3" in found.explanation
    analysis = estimate_effect(
        frame, treatment="T", outcome="Y", graph=path, methods=["aipw"], refutations=False
    )
    assert analysis.question.confounders == ("X1", "X2", "X3")
    assert analysis.estimate("aipw").covers(TRUE_ATE)


def test_an_unobserved_confounder_without_instrument_is_not_identifiable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hidden.yaml"
    path.write_text("edges:\n  U: [T, Y]\n  X1: [T, Y]\n  T: Y\nunobserved: [U]\n")
    frame = hidden_confounder()
    found = identify(read_graph(path), "T", "Y", frame.columns)
    assert not found.identifiable
    assert found.explanation.startswith("not identifiable")
    assert "unobserved U" in found.explanation and "no instrument" in found.explanation
    with pytest.raises(UserError, match="not identifiable"):
        estimate_effect(frame, treatment="T", outcome="Y", graph=path)


def test_an_instrument_in_the_graph_identifies_the_effect(tmp_path: Path) -> None:
    path = tmp_path / "iv.yaml"
    path.write_text("edges:\n  U: [T, Y]\n  Z: T\n  T: Y\nunobserved: [U]\n")
    found = estimate_effect(hidden_confounder(), treatment="T", outcome="Y", graph=path)
    assert found.identification.strategy == "iv"
    assert found.identification.instruments == ("Z",)
    assert [e.method for e in found.estimates] == ["iv"]  # adjustment would be biased
    assert found.estimate("iv").covers(TRUE_ATE)
    with pytest.raises(UserError, match="only 'iv' applies"):
        estimate_effect(
            hidden_confounder(), treatment="T", outcome="Y", graph=path, methods=["matching"]
        )


def test_the_dot_reader_takes_chains_groups_attributes_and_comments() -> None:
    graph = parse_dot(
        'strict digraph { /* c */ A -> B -> C # c\n U [observed="no", shape=box]; '
        'U -> {B; C}; subgraph s { "D e" -> A } }'
    )
    assert set(graph.edges) == {("A", "B"), ("B", "C"), ("U", "B"), ("U", "C"), ("D e", "A")}
    assert graph.unobserved == {"U"}
    with pytest.raises(UserError, match="must be a 'digraph'"):
        parse_dot("graph { A -- B }")


# --------------------------------------------------------------------------- bad input


def test_a_non_binary_treatment_is_refused_by_methods_that_need_one(data: pd.DataFrame) -> None:
    dosed = data.assign(T=data["T"] * np.random.default_rng(2).uniform(1, 3, size=len(data)))
    with pytest.raises(UserError, match=r"method 'matching' .* needs a binary treatment"):
        estimate_effect(
            dosed, treatment="T", outcome="Y", confounders=CONFOUNDERS, methods=["matching"]
        )
    by_default = estimate_effect(
        dosed, treatment="T", outcome="Y", confounders=CONFOUNDERS, resamples=20, refutations=False
    )
    assert [e.method for e in by_default.estimates] == ["regression"]
    assert any("need a binary (0/1) treatment" in n for n in by_default.notes)
    with pytest.raises(UserError, match="coded 0 \\(control\\) and 1 \\(treated\\)"):
        estimate_effect(data.assign(T=data["T"] + 1), treatment="T", outcome="Y")


def test_a_missing_column_is_named(data: pd.DataFrame) -> None:
    with pytest.raises(UserError, match="column 'X9' is not in the data; expected one of"):
        estimate_effect(data, treatment="T", outcome="Y", confounders=["X1", "X9"])


def test_no_overlap_is_an_error_and_weak_overlap_a_warning(data: pd.DataFrame) -> None:
    separated = data.assign(T=(data["X1"] > 0).astype(int))
    with pytest.raises(UserError, match=r"no overlap: .*AUC 1.0000.*most of all 'X1'"):
        estimate_effect(separated, treatment="T", outcome="Y", confounders=CONFOUNDERS)
    rng = np.random.default_rng(3)
    steep = 1 / (1 + np.exp(-4 * data["X1"]))
    weak = data.assign(T=rng.binomial(1, steep))
    with pytest.warns(CausalWarning, match="weak overlap"):
        found = estimate_effect(
            weak, treatment="T", outcome="Y", confounders=CONFOUNDERS, methods=["aipw"],
            refutations=False,
        )  # fmt: skip
    assert any("weak overlap" in w for w in found.warnings)


def test_the_command_line_prints_errors_not_tracebacks(tmp_path: Path) -> None:
    source = tmp_path / "rows.csv"
    confounded(200).to_csv(source, index=False)
    args = ["causal", "estimate", "--source", str(source), "--treatment", "T", "--outcome", "Y"]
    result = runner.invoke(app, [*args, "--confounders", "X1,nope"])
    assert result.exit_code == 2
    assert "Error: column 'nope' is not in the data" in result.output
    result = runner.invoke(app, [*args, "--confounders", "X1", "--method", "nothing"])
    assert result.exit_code == 2 and "unknown method 'nothing'" in result.output


# --------------------------------------------------------------------------- report


def test_the_html_report_has_tables_and_plots(ate: CausalAnalysis, tmp_path: Path) -> None:
    page = write_html(ate, tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 3  # effects by method, propensity overlap, balance
    for text in ("propensity score matching", "Balance", "Overlap", "Refutations", "confounded"):
        assert text in page


def test_the_command_line_estimates_and_writes_the_report(tmp_path: Path) -> None:
    source = tmp_path / "rows.parquet"
    confounded(1000, seed=4).to_parquet(source)
    result = runner.invoke(
        app,
        [
            "causal", "estimate", "--source", str(source), "--treatment", "T", "--outcome", "Y",
            "--confounders", "X1,X2,X3", "-m", "difference,aipw", "--no-refute",
            "--report", str(tmp_path / "out.html"), "--json", str(tmp_path / "out.json"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "doubly robust (AIPW)" in result.stdout and "Balance" in result.stdout
    assert (tmp_path / "out.html").read_text().count("<svg") == 3
    results = pd.read_json(tmp_path / "out.json", typ="series")
    assert [e["method"] for e in results["estimates"]] == ["difference", "aipw"]


# --------------------------------------------------------------------------- uplift


def test_an_uplift_model_is_trained_loaded_and_served(tmp_path: Path) -> None:
    source = tmp_path / "campaign.parquet"
    confounded(3000, seed=6).drop(columns="tau").to_parquet(source)
    repository = tmp_path / "models"
    for learner in ("boosting", "linear"):
        result = runner.invoke(
            app,
            [
                "causal", "train", "--source", str(source), "--treatment", "T", "--outcome", "Y",
                "--features", "X1,X2,X3", "--repository", str(repository), "--name", "coupon",
                "--learner", learner, "--bags", "10",
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (repository / "coupon").iterdir()) == ["1", "2"]

    fresh = confounded(400, seed=7)
    for version in ("1", "2"):
        model = foretell.load(repository / "coupon", version)
        assert model.spec.task == "uplift" and model.spec.format == "uplift"
        out = [p.outputs for p in model.predict(fresh[CONFOUNDERS])]
        effect = np.array([o["effect"] for o in out])
        assert np.corrcoef(effect, fresh["tau"])[0, 1] > 0.8
        for o in out:
            assert o["effect"] == pytest.approx(o["outcome_treated"] - o["outcome_control"])
            assert o["effect_low"] <= o["effect"] <= o["effect_high"]
    local = [p.outputs for p in model.predict(fresh[CONFOUNDERS].iloc[:5])]

    served = Server(["--repository", str(repository)], cwd=tmp_path)
    try:
        instances = fresh[CONFOUNDERS].iloc[:5].to_dict("records")
        answer = httpx.post(
            f"{served.url}/v1/models/coupon:predict", json={"instances": instances}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        for got, want in zip(predictions, local, strict=True):
            assert got["version"] == "2"
            for key in (
                "outcome_treated",
                "outcome_control",
                "effect",
                "effect_low",
                "effect_high",
            ):
                assert got[key] == pytest.approx(want[key])
        metadata = httpx.get(f"{served.url}/v2/models/coupon", timeout=30).json()
        outputs = {o["name"]: o["datatype"] for o in metadata["outputs"]}
        assert outputs["effect"] == outputs["effect_high"] == "FP64"
    finally:
        served.stop()


def test_an_uplift_spec_keeps_the_treatment_out_of_its_inputs() -> None:
    spec = {
        "name": "u", "version": "1", "task": "uplift", "format": "uplift",
        "artifact": "model.skops", "inputs": [{"name": "T"}, {"name": "X1"}],
        "runtime": {"treatment": "T"},
    }  # fmt: skip
    with pytest.raises(SpecError, match="its treatment 'T' must not be one of its inputs"):
        parse_spec(spec, "u/1/model.yaml")
    assert parse_spec({**spec, "inputs": [{"name": "X1"}]}, "u/1/model.yaml").task == "uplift"
