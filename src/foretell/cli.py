"""The ``foretell`` command line: list, check, build, predict and serve models."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from foretell.errors import ForetellError

if TYPE_CHECKING:
    from foretell.serving.batching import Batcher

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_DATA = Path("foretell-data")
app = typer.Typer(
    help="foretell: serve trained models, score files and check model repositories.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
examples_app = typer.Typer(help="The example models of every task kind.", no_args_is_help=True)
app.add_typer(examples_app, name="examples")
err = Console(stderr=True, soft_wrap=True)

Repo = Annotated[
    Path,
    typer.Option(
        "--repository",
        "-r",
        envvar="FORETELL_REPOSITORY",
        help="Model repository folder (<model>/<version>/model.yaml).",
    ),
]
Explain = Annotated[
    bool, typer.Option("--explain", help="Add each result's feature attributions (SHAP).")
]
Confidence = Annotated[
    float | None,
    typer.Option(help="Add uncertainty at this level, e.g. 0.9: conformal intervals or sets."),
]


def fail(message: str, exit_code: int = 1) -> typer.Exit:
    """Prints ``Error: message`` to stderr; raise the result to end with ``exit_code``."""
    err.print(f"Error: {message}", markup=False, highlight=False)
    return typer.Exit(exit_code)


def user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turns foretell errors raised by ``command`` into a one-line message and exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ForetellError as exc:
            raise fail(exc.message, exc.exit_code) from None

    return wrapper


@app.command()
@user_errors
def models(repository: Repo = DEFAULT_DATA / "models") -> None:
    """List the models of a repository with their versions, task, format and inputs.

    Example: `foretell models --repository foretell-data/models`
    """
    from foretell.repository import Repository

    repo = Repository(repository)
    table = Table(title=f"models in {repository}")
    for column in ("name", "versions", "serving", "task", "format", "inputs"):
        table.add_column(column)
    for name in repo.names():
        serving = repo.serving_version(name)
        spec = repo.get(name, serving).spec
        names = spec.feature_names
        shown = ", ".join(names[:3]) + (f", ... ({len(names)})" if len(names) > 3 else "")
        table.add_row(name, ", ".join(repo.versions(name)), serving, spec.task, spec.format, shown)
    Console(width=200).print(table)


@app.command()
@user_errors
def predict(
    model: Annotated[str, typer.Argument(help="Model name in the repository.")],
    input: Annotated[
        str, typer.Option("--input", "-i", help="CSV, JSON, JSONL or Parquet file; - for stdin.")
    ],
    repository: Repo = DEFAULT_DATA / "models",
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="JSONL, CSV or Parquet file; stdout (JSONL) if unset."),
    ] = None,
    version: Annotated[str | None, typer.Option(help="Version; default: the served one.")] = None,
    format: Annotated[
        str | None, typer.Option("--format", help="Input format when the name does not say.")
    ] = None,
    explain: Explain = False,
    confidence: Confidence = None,
) -> None:
    """Score the rows of a file with a model and write one result per row.

    Examples:

    * `foretell predict breast-cancer --input rows.csv --output scored.parquet`
    * `echo '[{"text": "great kettle"}]' | foretell predict sentiment --input -`
    * `foretell predict loan-approval --input loans.csv --explain --confidence 0.9`
    """
    from foretell.destinations import write_results
    from foretell.repository import Repository
    from foretell.sources import read_rows

    loaded = Repository(repository).load(model, version)
    rows = read_rows(input, format)
    results = loaded.predict(rows, explain=explain, confidence=confidence)
    write_results((r.to_dict() for r in results), output)
    if output:
        err.print(f"scored {len(results)} rows with {loaded.name} v{loaded.version} -> {output}")


@app.command()
@user_errors
def calibrate(
    model: Annotated[str, typer.Argument(help="Model name in the repository.")],
    repository: Repo = DEFAULT_DATA / "models",
    version: Annotated[str | None, typer.Option(help="Version; default: the served one.")] = None,
    data: Annotated[
        str | None,
        typer.Option(help="Held-out rows with true outcomes: the calibration set (a file)."),
    ] = None,
    target: Annotated[str, typer.Option(help="The column of --data with the outcomes.")] = "target",
    background: Annotated[
        str | None, typer.Option(help="Typical rows (e.g. training data) to explain against.")
    ] = None,
    rows: Annotated[int, typer.Option(help="How many --background rows to keep.")] = 100,
) -> None:
    """Store a calibration set (conformal uncertainty) or a background sample (explanations)
    with a model version; both are checked by scoring them, and model.yaml records them.

    Examples:

    * `foretell calibrate loan-approval --data held_out.parquet --target outcome`
    * `foretell calibrate breast-cancer --background training.csv --rows 100`
    """
    import pandas as pd

    from foretell.insight.conformal import calibrate as store_calibration
    from foretell.insight.explain import set_background
    from foretell.repository import Repository
    from foretell.sources import read_rows

    if data is None and background is None:
        raise typer.BadParameter("give --data (a calibration set), --background, or both")
    if rows < 1:
        raise typer.BadParameter(f"--rows must be at least 1; got {rows}")
    repo = Repository(repository)
    folder = repo.get(model, version or repo.serving_version(model)).folder
    if data is not None:
        spec = store_calibration(folder, pd.DataFrame(read_rows(data)), target)
        assert spec.insight.uncertainty is not None
        err.print(f"calibrated {spec.name} v{spec.version} on {spec.insight.uncertainty.rows} rows")
    if background is not None:
        spec = set_background(folder, pd.DataFrame(read_rows(background)), rows)
        err.print(f"stored a background sample for {spec.name} v{spec.version}")


@app.command()
@user_errors
def batch(
    model: Annotated[str | None, typer.Argument(help="Model name (not with --resume).")] = None,
    repository: Repo = DEFAULT_DATA / "models",
    source: Annotated[
        str | None, typer.Option(help="Rows to score: a file, folder or SQL URI.")
    ] = None,
    destination: Annotated[
        str | None, typer.Option(help="Where results go: a .parquet folder, .csv, .jsonl or SQL.")
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="Column identifying each row; default: its position.")
    ] = None,
    chunk_rows: Annotated[int, typer.Option(help="Rows read, scored and written at once.")] = (
        10_000
    ),
    errors: Annotated[
        str | None, typer.Option(help="Where rejected rows go; default: beside the destination.")
    ] = None,
    on_error: Annotated[
        str, typer.Option(help="store: rejected rows go to --errors; fail: stop the job.")
    ] = "store",
    resume: Annotated[str | None, typer.Option(help="Resume this job id where it stopped.")] = None,
    job_id: Annotated[str | None, typer.Option(help="Id for a new job; default: random.")] = None,
    engine: Annotated[str, typer.Option(help="local, or dask to run on a Dask cluster.")] = (
        "local"
    ),
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler address; default: a local cluster.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Scoring threads (local engine).")] = 2,
    store: Annotated[Path, typer.Option(help="Job store (SQLite file).")] = (
        DEFAULT_DATA / "foretell.db"
    ),
    version: Annotated[str | None, typer.Option(help="Version; default: the served one.")] = None,
    feedback_column: Annotated[
        str | None,
        typer.Option(help="A source column of known outcomes, stored as ground_truth."),
    ] = None,
    log_predictions: Annotated[
        bool, typer.Option(help="Also log every prediction in the monitoring store.")
    ] = False,
    monitoring_db: Annotated[
        str, typer.Option(envvar="FORETELL_MONITORING_DB", help="The monitoring store.")
    ] = "sqlite:///foretell-data/monitoring.db",
    explain: Explain = False,
    confidence: Confidence = None,
) -> None:
    """Score a whole table or file into a destination: chunked, exactly once, resumable.

    Examples:

    * `foretell batch breast-cancer --source rows.parquet --destination scored.parquet`
    * `foretell batch card-fraud --source "sqlite:///shop.db?table=payments" --key id
      --destination "postgresql://postgres@127.0.0.1:5432/test?table=scores"`
    * `foretell batch --resume job-1a2b3c4d5e6f` after a crash: finishes the job, no duplicates
    """
    _one_math_thread()
    from foretell.jobs.batch import run_batch
    from foretell.jobs.progress import Bar
    from foretell.jobs.store import JobStore
    from foretell.repository import Repository

    if on_error not in ("store", "fail"):
        raise typer.BadParameter(f"--on-error must be store or fail; got {on_error!r}")
    if engine not in ("local", "dask"):
        raise typer.BadParameter(f"--engine must be local or dask; got {engine!r}")
    if resume is None and model is None:
        raise typer.BadParameter("give a MODEL to start a job, or --resume JOB")
    predlog = None
    if log_predictions:
        if engine == "dask":
            raise typer.BadParameter("--log-predictions works with the local engine only")
        from foretell.monitoring.predlog import PredictionLog
        from foretell.monitoring.store import MonitoringStore

        predlog = PredictionLog(MonitoringStore(monitoring_db))
    try:
        job = run_batch(
            Repository(repository),
            JobStore(store),
            model=model,
            source=source,
            destination=destination,
            resume=resume,
            version=version,
            key=key,
            chunk_rows=chunk_rows,
            errors=errors,
            job_id=job_id,
            on_error=on_error,  # type: ignore[arg-type]
            engine=engine,  # type: ignore[arg-type]
            scheduler=scheduler,
            workers=workers,
            reporter=Bar(model or resume or "batch"),
            truth=feedback_column,
            prediction_log=predlog,
            explain=explain,
            confidence=confidence,
        )
    finally:
        if predlog is not None:
            predlog.close()
    err.print(
        f"job {job.job_id} {job.status}: {job.rows_in:,} rows, {job.rows_scored:,} scored, "
        f"{job.rows_rejected:,} rejected in {job.seconds:.1f} s -> {job.destination}",
        markup=False,
        highlight=False,
    )


@app.command()
@user_errors
def stream(
    model: Annotated[str, typer.Argument(help="Model name in the repository.")],
    source: Annotated[str, typer.Option(help="redis://...?stream=S, mqtt://host/topic, or -.")],
    destination: Annotated[
        str, typer.Option(help="Where results are stored (a SQL table keeps them exactly once).")
    ],
    repository: Repo = DEFAULT_DATA / "models",
    output: Annotated[
        str | None, typer.Option(help="Publish results to a redis://...?stream= or mqtt:// topic.")
    ] = None,
    dead_letter: Annotated[
        str | None,
        typer.Option(help="Bad messages: a stream, topic or table; default: beside the source."),
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Most messages per micro-batch.", min=1)] = 2000,
    max_wait_ms: Annotated[
        int, typer.Option(help="Longest wait for a micro-batch's first message.", min=1)
    ] = 50,
    job_id: Annotated[
        str | None, typer.Option(help="Name of the consumer job; default: stream-MODEL.")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port (127.0.0.1).")
    ] = None,
    exit_when_idle: Annotated[
        float | None, typer.Option(help="Stop after this many seconds without messages.")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Version; default: the served one.")] = None,
) -> None:
    """Score a stream of events as they arrive; store, publish and acknowledge each once.

    Examples:

    * `foretell stream card-fraud --source "redis://127.0.0.1:6379/0?stream=payments"
      --destination "sqlite:///scores.db?table=fraud"
      --output "redis://127.0.0.1:6379/0?stream=decisions"`
    * `foretell stream iris-segments --source "mqtt://127.0.0.1:1883/sensors/#?client_id=iris"
      --destination "sqlite:///scores.db?table=segments"`
    * `cat events.jsonl | foretell stream sentiment --source - --destination out.jsonl`
    """
    import signal
    import threading

    _one_math_thread()
    from foretell.destinations import open_destination
    from foretell.destinations.publish import Publisher, is_publisher, open_publisher
    from foretell.jobs.stream import StreamJob, StreamMetrics
    from foretell.repository import Repository
    from foretell.sources import open_stream_source

    loaded = Repository(repository).load(model, version)
    store = open_destination(destination)
    store.check()
    if dead_letter is None:  # a Redis source's go to the stream dead-NAME beside it
        if source.startswith(("redis://", "rediss://")):
            from urllib.parse import quote

            from foretell.sources.redis_stream import parse_redis_uri

            url, options = parse_redis_uri(source)
            dead_letter = f"{url}?stream={quote('dead-' + options['stream'], safe='')}"
        else:
            dead_letter = store.errors_uri()
    dead = (
        open_publisher(dead_letter) if is_publisher(dead_letter) else open_destination(dead_letter)
    )
    publisher = open_publisher(output) if output else None
    metrics = StreamMetrics(loaded.name)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1", registry=metrics.registry)
    consumer = open_stream_source(source)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    job = StreamJob(
        loaded,
        consumer,
        store,
        dead,
        publisher,
        job_id=job_id,
        max_batch=max_batch,
        max_wait=max_wait_ms / 1000.0,
        metrics=metrics,
    )
    _freeze_loaded()
    err.print(f"consuming {source} with {loaded.name} v{loaded.version}", markup=False)
    err.print(f"dead letters go to {dead_letter}", markup=False)
    try:
        totals = job.run(stop, exit_when_idle)
    finally:
        consumer.close()
        if publisher is not None:
            publisher.close()
        if isinstance(dead, Publisher):
            dead.close()
        else:
            dead.finish(job.job_id)
    store.finish(job.job_id)
    err.print(
        f"stopped: {totals.batches:,} batches, {totals.scored:,} scored, {totals.dead:,} dead "
        "letters",
        markup=False,
    )


keys_app = typer.Typer(help="API keys for servers started with --auth.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
KeysFile = Annotated[
    Path, typer.Option("--keys", envvar="FORETELL_KEYS", help="The API key store.")
]


@keys_app.command("create")
@user_errors
def keys_create(
    scope: Annotated[
        list[str],
        typer.Option(help="predict:<model|*>, feedback:<model|*>, monitor:<model|*> or admin."),
    ],
    name: Annotated[str, typer.Option(help="What the key is for.")] = "",
    keys_file: KeysFile = DEFAULT_DATA / "keys.json",
) -> None:
    """Create an API key; it is printed once and stored only as a hash.

    Example: `foretell keys create --scope predict:* --scope feedback:breast-cancer --name app`
    """
    from foretell.serving.keys import KeyStore

    secret, key = KeyStore(keys_file).create(name, scope)
    err.print(f"key {key.id} with scopes {', '.join(key.scopes)} (shown once):", markup=False)
    print(secret)


@keys_app.command("list")
@user_errors
def keys_list(keys_file: KeysFile = DEFAULT_DATA / "keys.json") -> None:
    """List the keys (ids, names and scopes; never the secrets).

    Example: `foretell keys list`
    """
    from foretell.serving.keys import KeyStore

    table = Table()
    for column in ("id", "name", "scopes"):
        table.add_column(column)
    for key in KeyStore(keys_file).list():
        table.add_row(key.id, key.name, ", ".join(key.scopes))
    Console(width=160).print(table)


@keys_app.command("revoke")
@user_errors
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id, from `foretell keys list`.")],
    keys_file: KeysFile = DEFAULT_DATA / "keys.json",
) -> None:
    """Revoke a key; servers refuse it from their next request on.

    Example: `foretell keys revoke 3f2a9c1b7d4e`
    """
    from foretell.serving.keys import KeyStore

    KeyStore(keys_file).revoke(key_id)
    err.print(f"revoked {key_id}", markup=False)


feedback_app = typer.Typer(help="Ground truth for logged predictions.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
MonitoringDb = Annotated[
    str,
    typer.Option(
        envvar="FORETELL_MONITORING_DB",
        help="The monitoring store the server logs to (sqlite:/// or postgresql://).",
    ),
]


@feedback_app.command("import")
@user_errors
def feedback_import(
    model: Annotated[str, typer.Argument(help="Model the ground truth is for.")],
    source: Annotated[
        str, typer.Argument(help="File or SQL URI with prediction_id, ground_truth.")
    ],
    repository: Repo = DEFAULT_DATA / "models",
    monitoring_db: MonitoringDb = "sqlite:///foretell-data/monitoring.db",
) -> None:
    """Import ground truth from a file or table with columns prediction_id and ground_truth.

    Example: `foretell feedback import breast-cancer labels.csv`
    """
    from foretell.errors import UserError
    from foretell.monitoring.monitor import check_truth
    from foretell.monitoring.store import MonitoringStore
    from foretell.repository import Repository
    from foretell.sources import open_source

    spec = Repository(repository).get(model).spec
    rows = open_source(source)
    missing = {"prediction_id", "ground_truth"} - set(rows.columns())
    if missing:
        raise UserError(
            f"source '{source}' needs the columns prediction_id and ground_truth; it lacks "
            f"{sorted(missing)}"
        )
    store = MonitoringStore(monitoring_db)
    total = 0
    for chunk in rows.chunks(10_000):
        pairs = [
            (str(pid), check_truth(spec, truth.item() if hasattr(truth, "item") else truth))
            for pid, truth in zip(chunk["prediction_id"], chunk["ground_truth"], strict=True)
        ]
        total += store.add_feedback(spec.name, pairs)
    err.print(f"imported {total:,} ground-truth values for {spec.name}", markup=False)


@app.command()
@user_errors
def monitor(
    model: Annotated[str, typer.Argument(help="Model to report on.")],
    repository: Repo = DEFAULT_DATA / "models",
    monitoring_db: MonitoringDb = "sqlite:///foretell-data/monitoring.db",
    window: Annotated[float, typer.Option(help="Hours of predictions to look at.")] = 24.0,
    html: Annotated[Path | None, typer.Option(help="Also write an HTML report here.")] = None,
) -> None:
    """Live quality, drift and alerts of a model, from its prediction log and feedback.

    Example: `foretell monitor breast-cancer --window 24 --html report.html`
    """
    from prometheus_client import CollectorRegistry

    from foretell.monitoring.monitor import Monitor
    from foretell.monitoring.report import html_report, print_report
    from foretell.monitoring.store import MonitoringStore
    from foretell.repository import Repository

    if window <= 0:
        raise typer.BadParameter(f"--window must be positive; got {window}")
    spec = Repository(repository).get(model).spec
    watcher = Monitor(MonitoringStore(monitoring_db), CollectorRegistry(), interval=3600)
    try:
        report = watcher.report(spec, window * 3600)
    finally:
        watcher.close()
    print_report(report, Console(width=120))
    if html is not None:
        html.write_text(html_report(report, spec.monitoring.psi), encoding="utf-8")
        err.print(f"wrote {html}", markup=False)


@app.command()
@user_errors
def update(
    model: Annotated[str, typer.Argument(help="Model that learns from its ground truth.")],
    repository: Repo = DEFAULT_DATA / "models",
    monitoring_db: MonitoringDb = "sqlite:///foretell-data/monitoring.db",
    holdout: Annotated[
        float, typer.Option(help="Share of the most recent labelled rows held back to compare.")
    ] = 0.2,
) -> None:
    """Train the serving version on its new ground truth (partial_fit) into a new version,
    which serves only if it is not worse on the held-back rows.

    Example: `foretell update loan-approval -r foretell-data/models`
    """
    from foretell.monitoring.online import update as learn
    from foretell.monitoring.store import MonitoringStore
    from foretell.repository import Repository

    result = learn(Repository(repository), MonitoringStore(monitoring_db), model, holdout)
    state = "serves" if result.promoted else "is written but not served"
    err.print(
        f"{model} v{result.version} (from v{result.base_version}, {result.trained_rows:,} rows "
        f"learned) {state}: {result.reason}",
        markup=False,
        highlight=False,
    )
    if result.promoted:
        err.print(
            f"a running server serves it after: curl -X POST "
            f"localhost:8080/v2/repository/models/{model}/load",
            markup=False,
            highlight=False,
        )


@app.command()
@user_errors
def rollback(
    model: Annotated[str, typer.Argument(help="Model to roll back.")],
    repository: Repo = DEFAULT_DATA / "models",
) -> None:
    """Serve the version served before the current one again (pinned in policy.yaml).

    Example: `foretell rollback loan-approval -r foretell-data/models`
    """
    from foretell.monitoring.online import rollback as back
    from foretell.repository import Repository

    result = back(Repository(repository), model)
    err.print(
        f"{model}: serving v{result.serving} (was v{result.previous})",
        markup=False,
        highlight=False,
    )


@app.command("validate-repository")
@user_errors
def validate_repository(
    repository: Annotated[Path, typer.Argument(help="Model repository folder.")],
) -> None:
    """Check every spec of every version and load every artifact; list all problems.

    Example: `foretell validate-repository foretell-data/models`
    """
    from foretell.repository import Repository

    repo = Repository(repository)
    problems = repo.check()
    for problem in problems:
        err.print(f"problem: {problem}", markup=False, highlight=False)
    if problems:
        raise fail(f"{len(problems)} problem(s) in {repository}")
    count = sum(len(repo.versions(n)) for n in repo.names())
    err.print(f"ok: {len(repo.names())} models, {count} versions in {repository}")


@examples_app.command("build")
@user_errors
def examples_build(
    directory: Annotated[Path, typer.Argument(help="Folder to write the repository into.")],
    only: Annotated[
        list[str] | None, typer.Option(help="Build only these examples (repeatable).")
    ] = None,
) -> None:
    """Train the example models and write them as a model repository.

    Example: `foretell examples build /tmp/models && foretell models -r /tmp/models`
    """
    from foretell.examples import EXAMPLES, build_examples

    unknown = sorted(set(only or []) - set(EXAMPLES))
    if unknown:
        raise typer.BadParameter(f"unknown examples {unknown}; choose from {sorted(EXAMPLES)}")
    with err.status("training the example models..."):
        built = build_examples(directory, only)
    for spec in built:
        err.print(f"built {spec.name} v{spec.version} ({spec.task}, {spec.format})")


@app.command()
@user_errors
def serve(
    repository: Annotated[
        Path | None,
        typer.Option(
            "--repository",
            "-r",
            envvar="FORETELL_REPOSITORY",
            help="Model repository; default: the examples, built into foretell-data/models.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(envvar="FORETELL_HOST", help="Address to bind.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(envvar="FORETELL_PORT", help="HTTP port.")] = 8080,
    grpc_port: Annotated[
        int, typer.Option(envvar="FORETELL_GRPC_PORT", help="gRPC port; 0 turns gRPC off.")
    ] = 8081,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    log_format: Annotated[
        str, typer.Option(help="text, or json: one JSON object per line.")
    ] = "text",
    monitoring_db: Annotated[
        str, typer.Option(help="Prediction log and feedback store (sqlite:/// or postgresql://).")
    ] = "sqlite:///foretell-data/monitoring.db",
    log_sample_rate: Annotated[
        float, typer.Option(help="Share of predictions logged, from 0 to 1.")
    ] = 1.0,
    no_monitoring: Annotated[
        bool, typer.Option("--no-monitoring", help="Log no predictions, take no feedback.")
    ] = False,
    auth: Annotated[
        bool | None,
        typer.Option(
            "--auth/--no-auth",
            help="Require API keys; default: on unless the host is a loopback address.",
        ),
    ] = None,
    keys_file: Annotated[
        Path, typer.Option("--keys", envvar="FORETELL_KEYS", help="The API key store.")
    ] = DEFAULT_DATA / "keys.json",
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate (chain): serve HTTPS and gRPC over TLS.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    max_rows: Annotated[int, typer.Option(help="The most rows one request may carry.")] = 100_000,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            help="Merge concurrent requests to a model into forward passes of up to this many "
            "rows (1: no merging); default: each model.yaml's batching (64)."
        ),
    ] = None,
    max_wait_ms: Annotated[
        float | None,
        typer.Option(
            help="Longest a request waits for others to join its batch (ms); default: each "
            "model.yaml's batching (0: a batch forms only while the model is busy)."
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Server processes sharing the ports (one core each); restarted if one dies."
        ),
    ] = 1,
    request_timeout: Annotated[
        float,
        typer.Option(help="Seconds a request may take, headers to answer (504 after); 0: none."),
    ] = 30.0,
    rate_limit: Annotated[
        float,
        typer.Option(help="Requests per second per API key (per client without keys); 0: none."),
    ] = 0.0,
    rate_burst: Annotated[
        int | None,
        typer.Option(help="Requests a caller may send at once; default: one second's worth."),
    ] = None,
) -> None:
    """Serve every model of a repository over REST and gRPC (Open Inference Protocol V2,
    KServe V1 records, health, OpenAPI docs at /docs).

    Example: `foretell serve --repository foretell-data/models --port 8080 --grpc-port 8081`,
    then `curl -s localhost:8080/v1/models`
    """
    import asyncio
    import math
    import sys

    from foretell.serving.workers import Siblings, supervise, worker_folder

    _one_math_thread()
    # the supervisor of --workers loads no model: it starts the workers as soon as it can
    supervising = workers > 1 and worker_folder() is None
    if not supervising:
        _scipy_special_first(repository or DEFAULT_DATA / "models")

    from foretell.repository import Repository

    if log_format not in ("text", "json"):
        raise typer.BadParameter(f"--log-format must be text or json; got {log_format!r}")
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter(
            f"--log-level must be debug, info, warning or error; got {log_level!r}"
        )
    from foretell.monitoring.logs import configure

    log_config = configure(log_level, log_format)
    if repository is None:
        repository = DEFAULT_DATA / "models"
        if not repository.is_dir() or not Repository(repository).names():
            from foretell.examples import build_examples

            with err.status(f"first start: building the example models into {repository}..."):
                build_examples(repository)
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("TLS needs both --tls-cert and --tls-key")
    tls = None
    if tls_cert is not None and tls_key is not None:
        for path in (tls_cert, tls_key):
            if not path.is_file():
                raise typer.BadParameter(f"TLS file '{path}' does not exist")
        tls = (tls_cert, tls_key)
    from foretell.serving.auth import auth_by_default

    if auth is None:
        auth = auth_by_default(host)
    keys = None
    if auth:
        from foretell.serving.keys import KeyStore

        keys = KeyStore(keys_file)
        if not keys.list():
            err.print(
                f"warning: API keys are required but {keys_file} holds none; create one with "
                "`foretell keys create --scope predict:*`",
                markup=False,
            )
    if not 0.0 <= log_sample_rate <= 1.0:
        raise typer.BadParameter(f"--log-sample-rate must be in [0, 1]; got {log_sample_rate}")
    batcher = None
    if max_batch_size is not None or max_wait_ms is not None:
        batcher = batcher_of(max_batch_size, max_wait_ms)
    if workers < 1:
        raise typer.BadParameter(f"--workers must be at least 1; got {workers}")
    if supervising:
        if not no_monitoring:  # create the tables once, before the workers race to
            from foretell.monitoring.store import MonitoringStore

            MonitoringStore(monitoring_db).engine.dispose()
        raise typer.Exit(supervise(workers, host, port))
    # the supervisor of --workers stops above: it loads no model, so it imports none of this
    from foretell.monitoring.metrics import ServingMetrics
    from foretell.serving.dataplane import DataPlane
    from foretell.serving.server import SWITCH_INTERVAL_S, new_event_loop
    from foretell.serving.server import serve as run_server

    metrics = ServingMetrics()
    monitor = None
    if not no_monitoring:
        from foretell.monitoring.monitor import Monitor
        from foretell.monitoring.store import MonitoringStore

        monitor = Monitor(MonitoringStore(monitoring_db), metrics.registry, log_sample_rate)
    if max_rows < 1:
        raise typer.BadParameter(f"--max-rows must be at least 1; got {max_rows}")
    plane = DataPlane(Repository(repository), metrics, monitor)
    plane.max_rows = max_rows
    if batcher is not None:
        plane.batcher = batcher
    from foretell.serving.limits import Limits, RateLimiter

    if request_timeout < 0 or rate_limit < 0 or (rate_burst is not None and rate_burst < 1):
        raise typer.BadParameter(
            "--request-timeout and --rate-limit must be 0 (off) or positive, --rate-burst at "
            f"least 1; got {request_timeout}, {rate_limit}, {rate_burst}"
        )
    burst = rate_burst or max(1, math.ceil(rate_limit))
    limits = Limits(request_timeout or None, RateLimiter(rate_limit, burst) if rate_limit else None)
    plane.load_all()
    folder = worker_folder()
    if folder is not None:  # the other workers' loads and unloads, before serving
        plane.siblings = Siblings(folder, plane.change)
        plane.siblings.catch_up()
    for entry in plane.catalogue():
        status = "ready" if entry["ready"] else f"NOT READY: {entry.get('reason')}"
        version = f" v{entry['version']}" if entry["version"] else ""
        err.print(f"{entry['name']}{version}: {status}", markup=False, highlight=False)
    _freeze_loaded()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(
                run_server(
                    plane,
                    host,
                    port,
                    grpc_port or None,
                    log_level,
                    log_config=log_config,
                    keys=keys,
                    tls=tls,
                    limits=limits,
                )
            )
    finally:
        if monitor is not None:
            monitor.close()  # every answered prediction reaches the log


def _one_math_thread() -> None:
    """One math-library thread per process (``OMP_NUM_THREADS=1``) unless the user set
    ``OMP_NUM_THREADS``: parallelism comes from processes and batching, and a BLAS thread pool
    per process only competes with them for the cores. numpy may have loaded its BLAS before
    the command runs, so the limit is applied to the loaded libraries too; the processes a
    command starts inherit the variable."""
    import os

    if "OMP_NUM_THREADS" in os.environ:
        return
    os.environ["OMP_NUM_THREADS"] = "1"
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _scipy_special_first(repository: Path) -> None:
    """Imports scipy.special before the server when ``repository`` holds skops files (or is
    the examples' repository, not built yet). Importing skops.io finds the module of each
    SciPy ufunc by scanning the loaded modules in import order; with scipy.special among the
    first, each scan ends early: the examples start about 0.9 s sooner on 2 cores. A
    repository without skops files does not import it."""
    if not repository.is_dir() or any(repository.glob("*/*/*.skops")):
        import scipy.special  # noqa: F401


def _freeze_loaded() -> None:
    """Keeps what is loaded for good (libraries, models) out of the garbage collector's full
    passes, which otherwise walk it all and pause a server or stream for ~100 ms a few times
    a minute; and gives the memory that loading freed back to the system (glibc keeps it)."""
    import ctypes
    import gc

    gc.collect()
    gc.freeze()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's; elsewhere nothing to do
    if trim is not None:
        trim(0)


def batcher_of(max_batch_size: int | None, max_wait_ms: float | None) -> Batcher:
    """A Batcher from ``serve``'s batching flags: each one given overrides that field of every
    model's ``batching``."""
    from foretell.repository.spec import Batching
    from foretell.serving.batching import Batcher

    given = {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms}
    try:
        Batching.model_validate({k: v for k, v in given.items() if v is not None})
    except ValueError:
        raise typer.BadParameter(
            "--max-batch-size must be at least 1 and --max-wait-ms in [0, 10000]; got "
            f"{max_batch_size} and {max_wait_ms}"
        ) from None
    return Batcher(max_batch_size, max_wait_ms)


causal_app = typer.Typer(
    help="Causal effects of a treatment from data, and uplift models that serve them.",
    no_args_is_help=True,
)
app.add_typer(causal_app, name="causal")


def _names(values: list[str] | str | None) -> list[str]:
    """Comma-separated (and, for lists, repeated) option values as one list."""
    items = [values] if isinstance(values, str) else values or []
    return [name.strip() for item in items for name in item.split(",") if name.strip()]


@causal_app.command("estimate")
@user_errors
def causal_estimate(
    source: Annotated[str, typer.Option(help="The data: a CSV, JSONL or Parquet file, or SQL.")],
    treatment: Annotated[str, typer.Option(help="Treatment column: 0/1, or a dose.")],
    outcome: Annotated[str, typer.Option(help="Outcome column, a number.")],
    confounders: Annotated[
        str | None, typer.Option(help="Common causes of treatment and outcome: A,B,C.")
    ] = None,
    graph: Annotated[
        Path | None, typer.Option(help="A causal graph (.dot or .yaml) instead of --confounders.")
    ] = None,
    instrument: Annotated[str | None, typer.Option(help="Instrument column (2SLS).")] = None,
    method: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            "-m",
            help="difference, regression, matching, weighting, aipw or iv; repeat or "
            "comma-separate. Default: every method that applies.",
        ),
    ] = None,
    effect: Annotated[
        str, typer.Option(help="ate, att (on the treated) or atc (on the controls).")
    ] = "ate",
    interval: Annotated[
        str, typer.Option(help="auto (analytic where the method has one), analytic, bootstrap.")
    ] = "auto",
    level: Annotated[float, typer.Option(help="Confidence level of the intervals.")] = 0.95,
    resamples: Annotated[int, typer.Option(help="Resamples of a bootstrap interval.")] = 200,
    refute: Annotated[
        bool, typer.Option(help="Run the placebo, random-cause and subset checks.")
    ] = True,
    report: Annotated[
        Path | None, typer.Option(help="Also write an HTML report with plots to this file.")
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the results as JSON here.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of resampling and cross-fitting.")] = 0,
) -> None:
    """Estimate the effect of a treatment on an outcome, with intervals, balance and overlap
    diagnostics and refutation checks.

    Examples:

    * `foretell causal estimate --source visits.parquet --treatment coupon --outcome spend
      --confounders age,visits_last_year,region`
    * `foretell causal estimate --source visits.parquet --treatment coupon --outcome spend
      --graph causes.dot --effect att --report effect.html`
    * `foretell causal estimate --source trial.csv --treatment dose --outcome recovery
      --confounders age --instrument distance_to_clinic --method iv,regression`
    """
    import json
    import sys
    import warnings

    _one_math_thread()
    from foretell.insight.causal import CausalWarning, estimate_effect
    from foretell.insight.causal.report import print_report, write_html

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CausalWarning)  # the report lists them
        with err.status("estimating..."):
            analysis = estimate_effect(
                source,
                treatment=treatment,
                outcome=outcome,
                confounders=_names(confounders),
                instrument=instrument,
                graph=graph,
                methods=_names(method) or None,
                effect=effect,  # type: ignore[arg-type]
                interval=interval,
                level=level,
                resamples=resamples,
                refutations=refute,
                seed=seed,
            )
    print_report(analysis, Console(width=120, soft_wrap=True))
    sys.stdout.flush()  # the report before the file names on stderr
    if report is not None:
        write_html(analysis, report)
        err.print(f"report -> {report}", markup=False, highlight=False)
    if json_file is not None:
        json_file.write_text(json.dumps(analysis.to_dict(), indent=2), encoding="utf-8")
        err.print(f"results -> {json_file}", markup=False, highlight=False)


@causal_app.command("train")
@user_errors
def causal_train(
    source: Annotated[str, typer.Option(help="Training data: a file or SQL URI.")],
    treatment: Annotated[str, typer.Option(help="Treatment column, 0/1.")],
    outcome: Annotated[str, typer.Option(help="Outcome column, a number.")],
    features: Annotated[str, typer.Option(help="Model inputs: A,B,C (include every confounder).")],
    name: Annotated[str, typer.Option(help="Model name in the repository.")],
    repository: Repo = DEFAULT_DATA / "models",
    learner: Annotated[str, typer.Option(help="boosting or linear outcome models.")] = ("boosting"),
    bags: Annotated[int, typer.Option(help="Bootstrap bags: more give steadier intervals.")] = 25,
    level: Annotated[float, typer.Option(help="Level of the effect's interval.")] = 0.9,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
) -> None:
    """Train an uplift (CATE) model and write it as a new version in the model repository;
    served like any model, it answers each row's outcome under treatment and under control
    and its individual effect with an interval.

    Example: `foretell causal train --source visits.parquet --treatment coupon --outcome spend
    --features age,visits_last_year,region --repository foretell-data/models --name coupon-uplift`,
    then `foretell serve` and `POST /v1/models/coupon-uplift:predict`
    """
    _one_math_thread()
    from foretell.insight.causal.uplift import train_uplift

    with err.status(f"training {bags} bags of {learner} outcome models..."):
        spec = train_uplift(
            source,
            treatment=treatment,
            outcome=outcome,
            features=_names(features),
            repository=repository,
            name=name,
            learner=learner,
            bags=bags,
            level=level,
            seed=seed,
        )
    err.print(
        f"trained {spec.name} v{spec.version} (uplift: effect of {treatment} on {outcome}) -> "
        f"{repository / spec.name / spec.version}",
        markup=False,
        highlight=False,
    )


def main() -> Any:
    """Entry point of the ``foretell`` command."""
    return app()
