#!/usr/bin/env python3
"""Prediction log benchmark: the CPU it costs per logged row, by batch size, in process.

The prediction log is foretell's own (the peers keep no log), so this compares foretell with
itself: run it on two commits to see what a change to ``monitoring/predlog.py`` does::

    .venv/bin/python bench/predlog.py                          # batches of 1, 7 and 32 rows
    .venv/bin/python bench/predlog.py --sizes 1,64 --rows 20000 --repeat 5

For each batch size it scores ``--rows`` rows of the ``breast-cancer`` example (ONNX) in
batches of that size beforehand, then hands every batch to a fresh ``PredictionLog`` over a
fresh SQLite store and closes it (which waits until the writer has stored every row), and
reports per logged row:

- **serving side**: this process's CPU from the first batch handed over to the end of
  ``close()``: queueing, and the shipping thread packing and pickling the batches for the
  writer; in a server that CPU is taken from serving;
- **writer**: the writer process's CPU (unpickling, the rows' JSON, the SQLite insert and
  commit), less its start-up, measured apart with a log of one row. On a 2-core machine it
  shares the cores with serving.

Each figure is the median of ``--repeat`` runs. Everything lives in a temporary folder that is
deleted at the end.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer

from foretell.examples import build_examples
from foretell.monitoring.predlog import PredictionLog
from foretell.monitoring.store import MonitoringStore
from foretell.pipeline.model import Batch, Model
from foretell.repository import Repository


def cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def logged(batches: list[Batch], path: Path) -> tuple[float, float, int]:
    """Logs ``batches`` into a new store at ``path``: (serving CPU s, writer CPU s, rows)."""
    store = MonitoringStore(f"sqlite:///{path}")
    log = PredictionLog(store)
    mine, children = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    for batch in batches:
        log.observe(batch)
    log.close()  # joins the writer, so its CPU counts among this process's children
    serving = cpu(resource.RUSAGE_SELF) - mine
    writer = cpu(resource.RUSAGE_CHILDREN) - children
    store.dispose()
    return serving, writer, log.written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,7,32", help="rows per batch, comma-separated")
    parser.add_argument("--rows", type=int, default=50_000, help="rows logged per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (median)")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes must be whole numbers separated by commas; got {args.sizes!r}")
    if min(sizes) < 1 or args.rows < 1 or args.repeat < 1:
        parser.error(
            f"--sizes, --rows and --repeat must be at least 1; got {args.sizes!r}, "
            f"{args.rows} and {args.repeat}"
        )
    data = load_breast_cancer().data
    with tempfile.TemporaryDirectory(prefix="foretell-bench-predlog-") as folder:
        work = Path(folder)
        build_examples(work / "models", only=["breast-cancer"])
        model: Model = Repository(work / "models").load("breast-cancer")
        print(f"model: breast-cancer v{model.version} ({model.spec.format})")
        print("| rows per batch | serving side, us/row | writer, us/row | rows |")
        print("|---:|---:|---:|---:|")
        runs = 0
        for size in sizes:
            batches = [
                model.run(np.take(data, range(i, i + size), axis=0, mode="wrap"))
                for i in range(0, args.rows, size)
            ]
            rows = sum(len(b.usable) for b in batches)
            serving, writer = [], []
            for _ in range(args.repeat):
                runs += 1
                _, start_up, _ = logged(batches[:1], work / f"start-{runs}.db")
                spent, wrote, stored = logged(batches, work / f"log-{runs}.db")
                if stored != rows:
                    raise SystemExit(f"the log stored {stored} rows of {rows}")
                serving.append(spent / rows * 1e6)
                writer.append((wrote - start_up) / rows * 1e6)
            print(
                f"| {size} | {statistics.median(serving):.1f} | "
                f"{statistics.median(writer):.1f} | {rows:,} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
