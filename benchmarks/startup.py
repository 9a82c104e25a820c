"""Benchmark (issue 16): process start, --rows on a large CSV and a million-row table, each by its floor.

What the command costs around the solver — process start, ``--rows`` on a large CSV,
``--format table`` on a million rows — each next to what no command can go below.

Run by hand (not by pytest), from the repository root::

    .venv/bin/python benchmarks/startup.py [--repeat 5] [--only start,rows,table]

1. ``start``: ``invaudit --version``, ``invaudit --help`` and ``invaudit info MODEL`` for
   ``sample_models/breast_cancer_logreg.joblib``, a LogisticRegression, a StandardScaler +
   LogisticRegression pipeline and a RandomForest (target: ``info`` <= 0.6 s at the median), each
   next to its floor in the same run: a bare Python that imports numpy and
   only the modules the pickle itself names (what no loader can avoid), and one that unpickles the
   file with ``joblib.load``. ``overhead`` = invaudit - import floor. Children run with byte-code
   caching on (``PYTHONPYCACHEPREFIX`` in the work directory, one warm-up run first), as an
   installed package would, even where the calling shell sets ``PYTHONDONTWRITEBYTECODE``.
2. ``rows``: ``margin --rows 0-9 --json`` on a 1,000,000-row CSV with an ID and a label column
   (target: <= 2 s, <= 300 MB), next to the joblib.load floor of its model.
3. ``table``: ``margin --format table`` on 1,000,000 x 50 rows, a 10-class linear model (target:
   <= solver + data read + 1 s), next to the in-process solver and the data read of the same run;
   also with ``--jobs 1`` (serial, like the in-process solver) to tell the command's own cost from
   the parallel run's, and ``--json PATH`` (the whole report; target <= 20 s, <= 1.5 GB).
4. ``cf``: ``counterfactual --json --schema 2`` on 400 x 2,000 rows of a K=50 softmax model
   (target: wall <= solver + 1.5 s) next to the in-process solver, and the command's fixed cost
   (``--rows 0``).

A linear model's file is read by the light load (invaudit.io._light: no scikit-learn import) where
it applies; section 1 says which models it applied to, and compares ``info`` on those with the
CLI's own floor (python + numpy + typer + rich) rather than the pickle's modules. ``info`` is read
without Typer's pydantic coercion (cli/_fast.py); section 1 also runs each ``info`` through Typer's
parser, as every other command is, and ends with the target's verdict per model.

Every figure is the minimum over ``--repeat`` runs (median in brackets) of wall time, CPU time
(user + system of that child: a loaded machine inflates wall time much more than CPU time) and
peak memory (``ru_maxrss`` of that one child, from ``/usr/bin/time``). The load average is printed
first; on a shared machine read the CPU column.

Inputs are generated once in ``/tmp/invaudit_report_scale`` (the same files as
``benchmarks/report_scale.py``; about 0.6 GB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

WORK = Path("/tmp/invaudit_report_scale")
_SCRIPT = Path(sys.executable).with_name("invaudit")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "invaudit.cli.app"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(INVAUDIT_NO_PROGRESS="1", PYTHONWARNINGS="ignore", PYTHONPYCACHEPREFIX=str(WORK / "pycache"))
    return env


def run(cmd, stdout=subprocess.DEVNULL) -> dict:
    """One child under ``/usr/bin/time``: wall time, CPU time (user + system), peak memory."""
    stats = WORK / "startup_time.txt"
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-o", str(stats), "-f", "%e %U %S %M", *[str(c) for c in cmd]],
                          stdout=stdout, stderr=subprocess.PIPE, env=_env())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {proc.stderr.decode().strip()}")
    _e, u, s_, m = stats.read_text().split()[-4:]
    return {"wall": wall, "cpu": float(u) + float(s_), "peak_mb": int(m) / 1024}


def repeated(cmds: dict, repeat: int) -> dict:
    """Each command of ``cmds`` (label -> argv) ``repeat`` times, interleaved so that a change of
    load hits every command alike; a warm-up run of each first (byte code, page cache)."""
    for cmd in cmds.values():
        run(cmd)
    runs = {label: [] for label in cmds}
    for _ in range(repeat):
        for label, cmd in cmds.items():
            runs[label].append(run(cmd))
    return runs


def _fmt(rs: list, key: str) -> str:
    vals = [r[key] for r in rs]
    return f"{min(vals):6.2f} ({statistics.median(vals):5.2f})"


def _row(label: str, rs: list, floor: list | None = None, target: str = "") -> None:
    over = ""
    if floor is not None:
        over = (f"{min(r['wall'] for r in rs) - min(r['wall'] for r in floor):+6.2f}/"
                f"{min(r['cpu'] for r in rs) - min(r['cpu'] for r in floor):+5.2f}")
    print(f"{label:50s} {_fmt(rs, 'wall')} {_fmt(rs, 'cpu')} {max(r['peak_mb'] for r in rs):7.0f} {over:>13s}  {target}")


def _header(first: str) -> None:
    print(f"{first:50s} {'wall s (med)':>14s} {'CPU s (med)':>14s} {'peak MB':>7s} {'over w/CPU':>13s}  target")


#: ``invaudit`` with cli/_fast.py's direct reader off: every command line goes through Typer.
_THROUGH_TYPER = ("import sys, invaudit.cli._fast as fast; fast.direct = lambda args: None; "
                  "from invaudit.cli.app import main; main(sys.argv[1:])")


# --- inputs -----------------------------------------------------------------------------------

def _models() -> dict:
    import joblib
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)) * np.logspace(-3, 3, 8)
    y = (X[:, 0] / 1e-3 + X[:, 5] / 1e2 > 0).astype(int)
    built = {
        "LogisticRegression": LogisticRegression(max_iter=2000),
        "StandardScaler + LogisticRegression": make_pipeline(StandardScaler(), LogisticRegression()),
        "RandomForest (20 trees)": RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0),
    }
    paths = {}
    for i, (label, est) in enumerate(built.items()):
        path = WORK / f"startup_model_{i}.joblib"
        if not path.exists():
            joblib.dump(est.fit(X, y), path)
        paths[label] = path
    return paths


def pickle_modules(path: Path) -> list:
    """The modules a joblib/pickle file names (what unpickling it must import)."""
    import joblib.numpy_pickle as jnp

    seen: list = []
    original = jnp.NumpyUnpickler.find_class

    def find_class(self, module, name):
        if module not in seen:
            seen.append(module)
        return original(self, module, name)

    jnp.NumpyUnpickler.find_class = find_class
    try:
        jnp.load(path)
    finally:
        jnp.NumpyUnpickler.find_class = original
    return [m for m in seen if m.split(".")[0] not in ("builtins", "copyreg", "_codecs")]


def _csv_model_and_rows() -> tuple:
    model, csv = WORK / "csv_lr.joblib", WORK / "rows_1m.csv"
    if not model.exists() or not csv.exists():
        from report_scale import write_rows_csv  # the same files report_scale.py measures

        WORK.mkdir(parents=True, exist_ok=True)
        write_rows_csv(model, csv)
    return model, csv


def _linear_and_npy(n: int) -> tuple:
    import joblib
    from sklearn.linear_model import LogisticRegression

    model, npy = WORK / "linear10.joblib", WORK / f"X_{n}x50.npy"
    if not model.exists():
        rng = np.random.default_rng(0)
        clf = LogisticRegression()
        clf.coef_ = rng.normal(size=(10, 50)) / np.sqrt(50)
        clf.intercept_ = rng.normal(size=10)
        clf.classes_ = np.arange(10)
        clf.n_features_in_ = 50
        joblib.dump(clf, model)
    if not npy.exists():
        rng = np.random.default_rng(1)
        tmp = npy.with_suffix(".part.npy")
        X = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float64, shape=(n, 50))
        for lo in range(0, n, 100_000):
            X[lo:lo + 100_000] = rng.normal(size=(min(100_000, n - lo), 50))
        X.flush()
        del X
        tmp.rename(npy)
    return model, npy


# --- sections ---------------------------------------------------------------------------------

def bench_start(repeat: int, quick: bool = False) -> None:
    """``quick``: the linear models' ``info`` and its floors only (no child imports scikit-learn)."""
    print("\n1. process start" + (" (--quick: linear models, no pickle-import floors)" if quick else ""))
    _header("command")
    base = repeated({"python -c pass": [sys.executable, "-c", "pass"],
                     "python -c 'import numpy'": [sys.executable, "-c", "import numpy"],
                     "invaudit --version": [*CLI, "--version"],
                     "invaudit --help": [*CLI, "--help"]}, repeat)
    for label, rs in base.items():
        _row(label, rs)
    from invaudit.io.model_file import load_model

    floors = repeated({"cli": [sys.executable, "-c", "import numpy, typer, rich.console"],
                       "typer": [sys.executable, "-c", "import numpy, typer, rich.console, pydantic"]}, repeat)
    cli_floor = floors["cli"]
    _row("floor: python + numpy + typer + rich", cli_floor)
    _row("  + pydantic (what Typer's coercion imports)", floors["typer"])
    models = {"sample_models/breast_cancer_logreg.joblib (the issue's case)": ROOT / "sample_models" /
              "breast_cancer_logreg.joblib", **_models()}
    if quick:
        models = {label: path for label, path in models.items() if "Forest" not in label}
    verdicts = []
    for label, path in models.items():
        mods = pickle_modules(path)
        light = load_model(path, light=True).light is not None
        imports = "import numpy" + "".join(f", {m}" for m in mods)
        floors_here = {} if quick else {"imports": [sys.executable, "-c", imports],
                                        "joblib": [sys.executable, "-c", f"import joblib; joblib.load({str(path)!r})"]}
        runs = repeated({**floors_here, "info": [*CLI, "info", path],
                         "typer": [sys.executable, "-c", _THROUGH_TYPER, "info", path]}, repeat)
        print(f"  {label}: the pickle names {', '.join(mods)}; "
              + ("light load (no scikit-learn import)" if light else "full load (scikit-learn imported)"))
        if not quick:
            _row("    python + numpy + those modules", runs["imports"])
            _row("    python + joblib.load(model)", runs["joblib"])
        floor = cli_floor if light else runs.get("imports")
        _row(f"    invaudit info MODEL (over: {'CLI' if light else 'import'} floor)", runs["info"], floor,
             "target <= 0.6 s")
        _row("    through Typer's parser (cli/_fast.py off)", runs["typer"], floor)
        verdicts.append((label, runs["info"]))
    print(f"  target: process start of `invaudit info MODEL` <= 0.6 s wall, min (median) of the runs above "
          f"(load average now {os.getloadavg()[0]:.1f}: above ~1, wall time overstates it; CPU is shown too)")
    for label, rs in verdicts:
        walls = [r["wall"] for r in rs]
        best, median = min(walls), statistics.median(walls)
        print(f"    {label}: {best:.2f} s ({median:.2f}) wall, {_fmt(rs, 'cpu').strip()} CPU: "
              + ("met" if median <= 0.6 else "met at the minimum only" if best <= 0.6 else "NOT met"))


def bench_rows(repeat: int) -> None:
    print("\n2. --rows 0-9 on a 1,000,000-row CSV")
    _header("command")
    model, csv = _csv_model_and_rows()
    out = WORK / "startup_rows.json"
    runs = repeated({"joblib": [sys.executable, "-c", f"import joblib; joblib.load({str(model)!r})"],
                     "rows": [*CLI, "margin", model, csv, "--id-column", "id", "--label-column", "target",
                              "--rows", "0-9", "--json", out]}, repeat)
    _row("floor: python + joblib.load(model)", runs["joblib"])
    _row("margin --rows 0-9 --json (over: floor)", runs["rows"], runs["joblib"], "target <= 2 s, <= 300 MB")
    out.unlink(missing_ok=True)


def bench_table(repeat: int, n: int) -> None:
    import joblib

    from invaudit.margins import margins
    from invaudit.models import adapt

    print(f"\n3. margin --format table on {n:,} x 50, K=10")
    model, npy = _linear_and_npy(n)
    form = adapt(joblib.load(model))
    reads, solves = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        X = np.array(np.load(npy, mmap_mode="r"))
        reads.append((time.perf_counter() - w, time.process_time() - c))
        w, c = time.perf_counter(), time.process_time()
        margins(form, X)
        solves.append((time.perf_counter() - w, time.process_time() - c))
        del X
    read_w, read_c = min(r[0] for r in reads), min(r[1] for r in reads)
    solve_w, solve_c = min(s[0] for s in solves), min(s[1] for s in solves)
    report = WORK / "startup_table.json"
    both = repeated({"table": [*CLI, "margin", model, npy], "serial": [*CLI, "margin", model, npy, "--jobs", "1"],
                     "json": [*CLI, "margin", model, npy, "--json", report]}, repeat)
    report.unlink(missing_ok=True)
    runs = both["table"]
    start = repeated({"floor": [sys.executable, "-c", f"import joblib; joblib.load({str(model)!r})"]},
                     repeat)["floor"]
    print(f"in-process: data read {read_w:.2f} s wall / {read_c:.2f} s CPU, solver {solve_w:.2f} s wall / "
          f"{solve_c:.2f} s CPU (minimum of {repeat})")
    _header("command")
    _row("floor: python + joblib.load(model)", start)
    _row("margin --format table", runs, None,
         f"target <= solver + read + 1 s = {solve_w + read_w + 1:.2f} s wall")
    _row("margin --format table --jobs 1", both["serial"], None, "(serial, as the in-process solver)")
    _row("margin --json PATH (the whole report, 1.3 GB)", both["json"], None, "target <= 20 s wall, <= 1.5 GB")
    best_w, best_c = min(r["wall"] for r in runs), min(r["cpu"] for r in runs)
    print(f"  beyond solver + read: {best_w - solve_w - read_w:.2f} s wall, {best_c - solve_c - read_c:.2f} s CPU "
          f"(of which process start, the floor above: {min(r['wall'] for r in start):.2f} s wall, "
          f"{min(r['cpu'] for r in start):.2f} s CPU)")


def bench_cf(repeat: int, n: int = 400) -> None:
    """The 400 x 2,000 K=50 softmax counterfactual report: CLI wall next to the in-process solver."""
    from report_scale import prepare

    from invaudit.counterfactual import counterfactuals
    from invaudit.io.model_file import load_model
    from invaudit.models import adapt

    print(f"\n4. counterfactual --json --schema 2, {n} x 2,000, K=50 (softmax)")
    files = prepare(0, n, only=("cf",))
    form = adapt(load_model(files["soft"]).estimator)
    X = np.load(files["Xcf"])
    target = np.zeros(n, dtype=np.intp)
    counterfactuals(form, X[:1], target=target[:1])  # the per-model precomputation, paid once by the CLI too
    solves = []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        counterfactuals(form, X, target=target)
        solves.append((time.perf_counter() - w, time.process_time() - c))
    solve_w, solve_c = min(s[0] for s in solves), min(s[1] for s in solves)
    base = [*CLI, "counterfactual", files["soft"], files["Xcf"], "--target", "0"]
    out, one = WORK / "startup_cf.json", WORK / "startup_cf_one.json"
    runs = repeated({"fixed": [*base, "--rows", "0", "--json", one, "--schema", "2"],
                     "cf": [*base, "--json", out, "--schema", "2"]}, repeat)
    light = load_model(files["soft"], light=True).light is not None
    print(f"in-process solver {solve_w:.2f} s wall / {solve_c:.2f} s CPU (minimum of {repeat}); model: "
          + ("light load" if light else "full load"))
    _header("command")
    _row("counterfactual --rows 0 (the fixed cost)", runs["fixed"])
    _row(f"counterfactual --json --schema 2, {n} rows", runs["cf"], None,
         f"target wall <= solver + 1.5 s = {solve_w + 1.5:.2f} s")
    best_w, best_c = min(r["wall"] for r in runs["cf"]), min(r["cpu"] for r in runs["cf"])
    print(f"  beyond the solver: {best_w - solve_w:.2f} s wall, {best_c - solve_c:.2f} s CPU")
    out.unlink(missing_ok=True)
    one.unlink(missing_ok=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs per command (minimum and median shown)")
    ap.add_argument("--only", default="start,rows,table,cf", help="comma-separated: start, rows, table, cf")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the table case's NPY")
    ap.add_argument("--quick", action="store_true",
                    help="section 1: only the linear models' info and the CLI floors (no scikit-learn import)")
    args = ap.parse_args(argv)
    WORK.mkdir(exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; minimum (median) of "
          f"{args.repeat} runs; CPU = user + system of the child; peak = its maximum resident set")
    only = set(args.only.split(","))
    if "start" in only:
        bench_start(args.repeat, quick=args.quick)
    if "rows" in only:
        bench_rows(args.repeat)
    if "table" in only:
        bench_table(args.repeat, args.rows)
    if "cf" in only:
        bench_cf(args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
