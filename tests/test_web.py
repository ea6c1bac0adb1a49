"""The web pages, end to end in a real browser (Debian's chromium driven by Playwright) against
real servers: catalogue, form, result charts, feedback, file upload and download, monitoring,
sign-in. Each page is also saved as a screenshot at desktop and phone widths."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from playwright.sync_api import sync_playwright
from sklearn.datasets import load_breast_cancer

from foretell.monitoring.metrics import ServingMetrics
from foretell.monitoring.store import MonitoringStore
from foretell.serving.keys import KeyStore
from foretell.serving.ui import charts
from foretell.serving.ui.downloads import Downloads
from foretell.serving.ui.traffic import Traffic
from tests.conftest import Server

CHROMIUM = Path("/usr/bin/chromium")
#: Without the background-networking flags, Chromium's own connections fail on some machines.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
SIZES = {"desktop": DESKTOP, "phone": {"width": 375, "height": 812}}
SHOTS = Path(os.environ.get("FORETELL_SCREENSHOTS", "build/screenshots"))
MODEL = "/ui/models/breast-cancer"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` (or `make browser`) installs Debian's chromium"
        )
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def web(examples_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(["--repository", str(examples_root)], cwd=tmp_path_factory.mktemp("web"))
    yield running
    running.stop()


@pytest.fixture
def page(browser: Any, web: Server) -> Iterator[Any]:
    context = browser.new_context(base_url=web.url, viewport=DESKTOP)
    opened = context.new_page()
    yield opened
    context.close()


def capture(page: Any, name: str) -> None:
    """Screenshots of the page at each width; at a phone's, nothing may scroll sideways."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for size, viewport in SIZES.items():
        page.set_viewport_size(viewport)
        page.screenshot(path=SHOTS / f"{name}-{size}.png")
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    page.set_viewport_size(DESKTOP)


def cancer_rows(n: int) -> pd.DataFrame:
    return load_breast_cancer(as_frame=True).data.head(n)


def feedback_of(server: Server, prediction: str) -> str | None:
    """The ground truth stored for ``prediction`` in the server's feedback store."""
    store = MonitoringStore(f"sqlite:///{server.log.parent}/foretell-data/monitoring.db")
    try:
        with store.engine.connect() as db:
            table = store.feedback
            found = (
                db.execute(table.select().where(table.c.prediction_id == prediction))
                .mappings()
                .first()
            )
    finally:
        store.dispose()
    return None if found is None else str(found["ground_truth"])


def test_catalogue_lists_every_model(page: Any) -> None:
    page.goto("/")
    cards = page.locator(".card")
    assert cards.count() >= 7
    cancer = cards.filter(has=page.get_by_role("link", name="breast-cancer", exact=True))
    assert "classification" in cancer.inner_text()
    assert re.search(r"1, 2 \(serving\)", cancer.inner_text())
    assert "ready" in cancer.inner_text()
    capture(page, "catalogue")


def test_form_predicts_shows_charts_and_takes_feedback(page: Any, web: Server) -> None:
    page.goto("/")
    page.get_by_role("link", name="breast-cancer", exact=True).click()
    page.wait_for_url(f"**{MODEL}")
    for _ in range(12):  # the skip link and the header come first
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "field-0":
            break
    assert page.evaluate("document.activeElement.id") == "field-0"
    page.keyboard.press("Control+A")
    page.keyboard.type("25.2")
    page.get_by_label("worst concave points").fill("0.25")
    page.get_by_label("an explanation").check()
    page.get_by_role("button", name="Predict", exact=True).click()
    result = page.locator("#result")
    result.wait_for()
    assert result.get_by_test_id("decision").inner_text() in ("Refer", "Review", "Routine")
    assert result.get_by_test_id("headline").inner_text() in ("malignant", "benign")
    chart = result.locator("figure", has_text="Probabilities").locator("svg[role=img]")
    assert "Probability of each label" in chart.locator("title").first.text_content()
    assert chart.locator("rect").count() == 2
    explained = result.locator("figure", has_text="Explanation").locator("svg[role=img]")
    assert "worst concave points" in explained.locator("desc").first.text_content()
    capture(page, "model-result")

    prediction = result.locator("code").first.inner_text()
    result.locator("summary", has_text="Wrong").click()
    truth = result.get_by_label("The right answer").locator("option").first.inner_text()
    result.get_by_role("button", name="Send the right answer").click()
    assert "was stored" in page.get_by_role("status").inner_text()
    assert feedback_of(web, prediction) == f'"{truth}"'


def test_right_button_stores_the_prediction_as_truth(page: Any, web: Server) -> None:
    page.goto(MODEL)
    page.get_by_role("button", name="Predict", exact=True).click()
    label = page.get_by_test_id("headline").inner_text()
    prediction = page.locator("#result code").first.inner_text()
    page.get_by_role("button", name="Right").click()
    page.get_by_role("status").wait_for()
    assert feedback_of(web, prediction) == f'"{label}"'


def test_explanation_and_uncertainty_on_request(page: Any, web: Server) -> None:
    page.goto("/ui/models/loan-approval")
    page.get_by_label("an explanation").check()
    page.get_by_label("Uncertainty").select_option("0.95")
    page.get_by_role("button", name="Predict", exact=True).click()
    stated = page.get_by_test_id("uncertainty").inner_text()
    assert re.fullmatch(r"95 % conformal prediction set: \{[a-z, ]+\}", stated)
    assert page.locator("#result figure", has_text="Explanation").count() == 1
    assert page.get_by_label("Uncertainty").input_value() == "0.95"  # the choice stays
    # a Bayesian model states its credible interval, and draws it around its posterior mean
    answer = httpx.post(
        f"{web.url}/ui/models/fraud-rates",
        data={"merchant_category": "travel", "confidence": "0.8"},
        timeout=30,
    )
    assert answer.status_code == 200
    assert "80 % credible interval: from" in answer.text and "<circle" in answer.text
    # a model without insight has no such controls
    page.goto("/ui/models/sentiment")
    assert page.get_by_label("an explanation").count() == 0


def test_bad_input_is_named_next_to_its_field(page: Any) -> None:
    page.goto(MODEL)
    page.get_by_label("mean radius").fill("-5")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Predict", exact=True).click()
    assert answer.value.status == 400
    field = page.locator(".field.invalid")
    assert field.count() == 1
    assert "'mean radius' must be a number in [0, 56.22]; got -5" in field.inner_text()
    box = page.get_by_label("mean radius")
    assert box.get_attribute("aria-invalid") == "true"
    assert page.locator(f"#{box.get_attribute('id')}-error").count() == 1
    assert page.get_by_role("alert").get_by_role("link").count() == 1
    assert box.input_value() == "-5"  # what was typed stays
    capture(page, "model-invalid")


def test_the_form_works_without_javascript(browser: Any, web: Server) -> None:
    context = browser.new_context(base_url=web.url, java_script_enabled=False)
    plain = context.new_page()
    plain.goto("/ui/models/sentiment")
    plain.get_by_label("text").fill("What a wonderful, lovely film")
    plain.get_by_role("button", name="Predict", exact=True).click()
    assert plain.get_by_test_id("headline").inner_text() == "positive"
    context.close()


def test_a_posted_form_never_gets_a_server_error(web: Server) -> None:
    bad = httpx.post(f"{web.url}{MODEL}", data={"mean radius": "abc"}, timeout=30)
    assert bad.status_code == 400 and bad.headers["content-type"].startswith("text/html")
    assert "must be a number in [0, 56.22]; got &#34;abc&#34;" in bad.text
    garbage = httpx.post(
        f"{web.url}{MODEL}", files={"file": ("x.csv", b"\xff\xfe\x00")}, timeout=30
    )
    assert garbage.status_code == 400 and "not a CSV file" in garbage.text
    unknown = httpx.get(f"{web.url}/ui/models/nothing", timeout=30)
    assert unknown.status_code == 404 and "not served here" in unknown.text


def test_a_csv_file_is_predicted_and_downloaded(page: Any) -> None:
    rows = cancer_rows(150)
    page.goto(MODEL)
    page.get_by_label("A CSV file").set_input_files(
        {"name": "masses.csv", "mimeType": "text/csv", "buffer": rows.to_csv(index=False).encode()}
    )
    page.get_by_role("button", name="Predict every row").click()
    assert "150 rows predicted" in page.get_by_test_id("batch-summary").inner_text()
    assert page.locator("#batch tbody tr").count() == 20
    capture(page, "model-batch")
    with page.expect_download() as waiting:
        page.get_by_role("link", name="Download all results (CSV)").click()
    done = waiting.value
    assert done.suggested_filename == "breast-cancer-predictions.csv"
    results = pd.read_csv(done.path())
    assert len(results) == 150
    assert {"mean radius", "label", "probability_malignant", "decision"} <= set(results.columns)


def test_monitoring_page_charts_traffic_quality_and_drift(page: Any, web: Server) -> None:
    rows = cancer_rows(150).to_dict("records")
    predicted = httpx.post(
        f"{web.url}/v1/models/breast-cancer:predict", json={"instances": rows}, timeout=30
    ).json()["predictions"]
    for p in predicted[:20]:
        body = {"prediction_id": p["prediction_id"], "ground_truth": p["label"]}
        httpx.post(f"{web.url}/v1/models/breast-cancer/feedback", json=body, timeout=30)
    page.goto(f"{MODEL}/monitoring?refresh=2")
    captions = page.locator("figcaption").all_inner_texts()
    for heading in ("Request rate", "Latency", "Error rate", "Quality (accuracy) over time"):
        assert heading in captions
    drift = page.locator("figure", has_text="Input drift").locator("svg[role=img]")
    assert "mean radius" in drift.locator("desc").text_content()
    capture(page, "monitoring")
    page.evaluate("document.getElementById('panels').dataset.seen = 'yes'")
    page.wait_for_function("!document.getElementById('panels').dataset.seen", timeout=10_000)
    assert page.locator("figcaption", has_text="Request rate").count() == 1


@pytest.fixture(scope="module")
def secured(examples_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("web-auth")
    store = KeyStore(folder / "keys.json")
    key, _ = store.create("clinic", ["predict:breast-cancer", "feedback:breast-cancer"])
    running = Server(
        ["--repository", str(examples_root), "--auth", "--keys", str(folder / "keys.json")],
        cwd=folder,
    )
    yield running, key
    running.stop()


def test_sign_in_with_a_key_opens_what_it_allows(browser: Any, secured: Any) -> None:
    running, key = secured
    context = browser.new_context(base_url=running.url)
    signing = context.new_page()
    signing.goto("/")
    assert "/ui/sign-in" in signing.url
    capture(signing, "sign-in")
    signing.get_by_label("API key").fill("ft_000000000000_" + "x" * 43)
    signing.get_by_role("button", name="Sign in").click()
    assert "not valid" in signing.locator(".field.invalid").inner_text()
    signing.get_by_label("API key").fill(key)
    signing.get_by_role("button", name="Sign in").click()
    signing.wait_for_url(f"{running.url}/")
    assert signing.locator(".card h2").all_inner_texts() == ["breast-cancer"]
    cookie = next(c for c in context.cookies() if c["name"] == "foretell_key")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    signing.goto(f"{MODEL}/monitoring")  # the key lacks monitor:breast-cancer
    assert "lacks the scope monitor:breast-cancer" in signing.get_by_role("status").inner_text()
    signing.goto(MODEL)
    signing.get_by_role("button", name="Predict", exact=True).click()
    assert signing.get_by_test_id("decision").is_visible()
    signing.get_by_role("button", name="Sign out").click()
    assert "/ui/sign-in" in signing.url and not context.cookies()
    context.close()


def test_pages_redirect_browsers_and_the_api_stays_json(secured: Any) -> None:
    running, key = secured
    page = httpx.get(f"{running.url}{MODEL}?x=1", timeout=30)
    assert page.status_code == 303
    assert page.headers["location"] == "/ui/sign-in?next=%2Fui%2Fmodels%2Fbreast-cancer%3Fx%3D1"
    assert httpx.get(f"{running.url}/v1/models", timeout=30).status_code == 401
    assert httpx.get(f"{running.url}/ui/static/ui.css", timeout=30).status_code == 200
    # the cookie opens the pages only, never the API
    cookies = {"foretell_key": key}
    assert httpx.get(f"{running.url}/", cookies=cookies, timeout=30).status_code == 200
    assert httpx.get(f"{running.url}/v1/models", cookies=cookies, timeout=30).status_code == 401
    elsewhere = httpx.post(
        f"{running.url}/ui/sign-in", data={"key": key, "next": "//evil.example"}, timeout=30
    )
    assert elsewhere.headers["location"] == "/"


def test_chart_labels_are_escaped() -> None:
    drawn = charts.bar_chart({"<script>": 0.5, "b": -0.2}, "a & b")
    assert "<script>" not in drawn and "&lt;script&gt;" in drawn and "a &amp; b" in drawn


def test_downloads_are_bounded_and_bound_to_their_model() -> None:
    kept = Downloads(entries=2, max_bytes=10, seconds=60)
    first = kept.put("a", b"12345")
    assert kept.get("b", first) is None and kept.get("a", first) == b"12345"
    kept.put("a", b"678901")  # over 10 bytes in all: the oldest goes
    assert kept.get("a", first) is None
    assert kept.get("a", "guess") is None


def test_traffic_is_the_difference_between_readings() -> None:
    metrics = ServingMetrics()
    traffic = Traffic(metrics, every=0.0)
    for status, seconds in (("200", 0.02), ("200", 0.04), ("400", 0.03), ("503", 20.0)):
        metrics.requests.labels("m", "v1", status).inc()
        metrics.duration.labels("m", "v1").observe(seconds)
    traffic.sample()
    (point,) = traffic.history("m")
    assert point.rate > 0
    assert (point.client_error_rate, point.server_error_rate) == (0.25, 0.25)
    # the median, the 2nd of 4, is the first of the two in the (25, 50] ms bucket: its middle
    assert point.latency_ms[0.5] == pytest.approx(37.5)
    # past the last bucket (10 s), only a lower bound is known
    assert point.latency_ms[0.99] == 10_000.0
    assert traffic.history("other")[0].latency_ms[0.5] is None
