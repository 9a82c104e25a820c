"""Benchmark (issue 16, parts 1, 2 and 5): the command around the solver, at scale.

Run by hand (not by pytest), from the repository root::

    .venv/bin/python benchmarks/report_scale.py [--quick] [--only margin,cf,rows,info]

Inputs are generated once in ``/tmp/invaudit_report_scale`` (about 0.8 GB). For each target it
prints the CLI's wall time, its CPU time (user + system: on a loaded machine wall time is
inflated by waiting for a core, CPU time much less), its peak memory (``ru_maxrss`` of that one
child, from ``/usr/bin/time``), the report's size, and, measured in-process in the same run, the
solver's time and the data read's (``invaudit.io.load_data`` and the rows taken as the command
takes them), so the CLI's overhead (wall - solver - read) sits next to them; ``target s`` is the
case's budget in seconds built from those same-run figures (e.g. solver + 1.5 s) and ``ratio w/c``
is CLI wall / target and CLI CPU / (the same budget with the solver's and the read's CPU time):
at most 1 meets the target.

1. ``margin --json`` on 1,000,000 x 50 rows, a 10-class linear model (target: <= 20 s wall,
   <= 1.5 GB peak), and the same with ``--format table`` (target: <= solver + data read + 1 s),
   also with ``--jobs 1`` (serial, as the in-process solver runs); ``--quick``: 100,000 rows.
2. ``counterfactual --json`` on 400 x 2,000 rows, softmax with K = 50 classes, target class 0
   for every row (target: CLI wall <= solver + 1.5 s, report <= 20 MB); ``--quick``: 100 rows.
   Printed for the default report (``invaudit.counterfactual/1``) and the compact one
   (``--schema 2``), each checked against the other (``expand_report`` of /2 gives /1's floats
   bit for bit), and for one row (``--rows 0``: the command's fixed cost, start-up, imports,
   model and data loading, with almost no solver work). Also the same rows as a CSV (a wide
   numeric file: 2,000 columns), ``--schema 2``, next to its own read time.
3. ``margin --rows 0-9`` on a 1,000,000-row CSV with an ID and a label column (target: <= 2 s,
   <= 300 MB).
4. Process start for ``invaudit info MODEL`` (target: <= 0.6 s), next to the floor: a bare
   Python that only unpickles the same model with joblib.
"""

from __future__ import annotations

import argparse
import os
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
CLI = [sys.executable, "-m", "invaudit.cli.app"]


def run(cmd, stdout=subprocess.DEVNULL) -> dict:
    """Run one child under ``/usr/bin/time``: its wall time, CPU time and peak memory. (Not
    ``os.wait4`` here: a child forked from this process inherits its high-water mark.)"""
    env = dict(os.environ, INVAUDIT_NO_PROGRESS="1", PYTHONWARNINGS="ignore")
    stats = WORK / "time.txt"
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-o", str(stats), "-f", "%e %U %S %M", *[str(c) for c in cmd]],
                          stdout=stdout, stderr=subprocess.PIPE, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {proc.stderr.decode().strip()}")
    e, u, s_, m = stats.read_text().split()[-4:]
    return {"wall": wall, "cpu": float(u) + float(s_), "peak_mb": int(m) / 1024}


def _linear_model(path: Path, D: int, K: int, seed: int):
    import joblib
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    clf = LogisticRegression()
    clf.coef_ = rng.normal(size=(K, D)) / np.sqrt(D)
    clf.intercept_ = rng.normal(size=K)
    clf.classes_ = np.arange(K)
    clf.n_features_in_ = D
    joblib.dump(clf, path)
    return clf


def write_rows_csv(model: Path, csv: Path) -> None:
    """A LogisticRegression on 20 named features and a 1,000,000-row CSV it reads (an ``id``
    column first, ``target`` last), written to a temporary and renamed when complete."""
    import joblib
    import orjson
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    names = [f"f{j}" for j in range(20)]
    Xt = rng.normal(size=(2000, 20))
    clf = LogisticRegression().fit(pd.DataFrame(Xt, columns=names), (Xt[:, 0] + Xt[:, 1] > 0).astype(int))
    joblib.dump(clf, model)
    tmp = csv.with_suffix(".part")
    with open(tmp, "wb") as fh:
        fh.write((",".join(["id", *names, "target"]) + "\n").encode())
        for lo in range(0, 1_000_000, 50_000):
            X = np.round(rng.normal(size=(50_000, 20)), 6)
            y = (X[:, 0] + X[:, 1] > 0).astype(int)
            body = orjson.dumps(X, option=orjson.OPT_SERIALIZE_NUMPY)[2:-2].split(b"],[")
            fh.write(b"".join(b"r%d,%b,%d\n" % (lo + i, line, y[i]) for i, line in enumerate(body)))
    tmp.rename(csv)


def prepare(n_margin: int, n_cf: int, only=("margin", "cf", "rows", "info")) -> dict:
    """The inputs the chosen targets need (files already there are kept)."""
    WORK.mkdir(exist_ok=True)
    files = {"lin": WORK / "linear10.joblib", "X": WORK / f"X_{n_margin}x50.npy",
             "soft": WORK / "softmax50.joblib", "Xcf": WORK / f"Xcf_{n_cf}x2000.npy",
             "csv_model": WORK / "csv_lr.joblib", "csv": WORK / "rows_1m.csv"}
    if not files["lin"].exists() and {"margin", "info"} & set(only):
        _linear_model(files["lin"], 50, 10, 0)
    if not files["X"].exists() and "margin" in only:
        rng = np.random.default_rng(1)
        X = np.lib.format.open_memmap(files["X"], mode="w+", dtype=np.float64, shape=(n_margin, 50))
        for lo in range(0, n_margin, 100_000):
            X[lo:lo + 100_000] = rng.normal(size=(min(100_000, n_margin - lo), 50))
        X.flush()
        del X
    if not files["soft"].exists() and "cf" in only:
        _linear_model(files["soft"], 2000, 50, 2)
    if not files["Xcf"].exists() and "cf" in only:
        np.save(files["Xcf"], np.random.default_rng(3).normal(size=(n_cf, 2000)))
    if not (files["csv"].exists() and files["csv_model"].exists()) and "rows" in only:
        write_rows_csv(files["csv_model"], files["csv"])
    return files


def _row(label, r, solver=None, size=None, target="", read=None, budget=None):
    """``solver`` / ``read``: (wall, CPU) seconds of the same work in-process; overhead = CLI -
    solver - read, in wall and in CPU time (the CPU figure is the one a loaded machine does not
    inflate). ``budget``: (seconds allowed, (wall, CPU) of the in-process work inside them) ->
    ``target s`` and the ratios wall / target and CPU / (the target with the work's CPU time in
    place of its wall time)."""
    sw = rw = over = tg = ratio = ""
    sol = solver or (0.0, 0.0)
    rd = read or (0.0, 0.0)
    if solver is not None:
        sw = f"{solver[0]:.2f}/{solver[1]:.2f}"
    if read is not None:
        rw = f"{read[0]:.2f}/{read[1]:.2f}"
    if solver is not None or read is not None:
        over = f"{r['wall'] - sol[0] - rd[0]:.2f}/{r['cpu'] - sol[1] - rd[1]:.2f}"
    if budget is not None:
        allowed, work = budget
        cpu_allowed = allowed - work[0] + work[1]
        tg = f"{allowed:.2f}"
        ratio = f"{r['wall'] / allowed:.2f}/{r['cpu'] / cpu_allowed:.2f}"
    print(f"{label:44s} {r['wall']:7.2f} {r['cpu']:7.2f} {r['peak_mb']:7.0f} {sw:>11s} {rw:>11s} {over:>11s} "
          f"{'' if size is None else f'{size / 1e6:7.1f}':>7s} {tg:>8s} {ratio:>9s}  {target}")


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return (time.perf_counter() - w, time.process_time() - c), out


def _best(fn, repeat: int = 2):
    """The fastest of ``repeat`` runs, (wall, CPU), and the last run's result."""
    times, out = [], None
    for _ in range(repeat):
        t, out = _timed(fn)
        times.append(t)
    return min(times), out


def _read(path, rows=None, chunk_rows=None, **kw):
    """The command's data read: ``load_data`` (file checks, finite check, hashing) and the rows
    taken as the command takes them (``Dataset.take`` chunk by chunk for a streamed margin run)."""
    from invaudit.io import load_data, parse_rows

    ds = load_data(path, rows=rows, **kw)
    idx = parse_rows(rows, ds.n_rows)
    if chunk_rows is None:
        return np.asarray(ds.X[idx], dtype=np.float64)
    for lo in range(0, idx.size, chunk_rows):
        ds.take(idx[lo:lo + chunk_rows])
    return None


def _sum(a, b):
    return (a[0] + b[0], a[1] + b[1])


def bench_margin(files, n):
    import joblib

    from invaudit.cli._common import margin_chunk_rows
    from invaudit.margins import margins
    from invaudit.models import adapt

    form = adapt(joblib.load(files["lin"]))
    read, _ = _best(lambda: _read(files["X"], n_features=50, chunk_rows=margin_chunk_rows(form, n)))
    X = np.array(np.load(files["X"], mmap_mode="r"))
    solver, batch = _timed(lambda: margins(form, X))
    assert batch.exact.all()
    del X, batch
    out = WORK / "margin.json"
    r = run([*CLI, "margin", files["lin"], files["X"], "--json", out])
    _row(f"margin --json, {n:,} x 50, K=10", r, solver, out.stat().st_size, "target <= 20 s, <= 1536 MB",
         read=read, budget=(20.0, (0.0, 0.0)))
    r = run([*CLI, "margin", files["lin"], files["X"], "--json", out, "--schema", "2"])
    _row("  the same, --schema 2 (L2: dense, as /1)", r, solver, out.stat().st_size, "", read=read)
    r = run([*CLI, "margin", files["lin"], files["X"], "--format", "jsonl"])
    _row("margin --format jsonl (to /dev/null)", r, solver, None, "", read=read)
    table = (solver[0] + read[0] + 1.0, _sum(solver, read))
    r = run([*CLI, "margin", files["lin"], files["X"]])
    _row("margin --format table", r, solver, None, "target <= solver + read + 1 s", read=read, budget=table)
    r = run([*CLI, "margin", files["lin"], files["X"], "--jobs", "1"])
    _row("  the same, --jobs 1 (serial, as the solver)", r, solver, None, "target <= solver + read + 1 s",
         read=read, budget=table)
    pts = WORK / "adv.npy"
    r = run([*CLI, "margin", files["lin"], files["X"], "--out", pts])
    _row("margin --out adv.npy (table on stdout)", r, solver, pts.stat().st_size, "", read=read)
    out.unlink(missing_ok=True)
    pts.unlink(missing_ok=True)


def bench_counterfactual(files, n):
    import joblib

    from invaudit.counterfactual import counterfactuals
    from invaudit.models import adapt

    form = adapt(joblib.load(files["soft"]))
    X = np.load(files["Xcf"])
    target = np.zeros(n, dtype=np.intp)
    counterfactuals(form, X[:1], target=target[:1])  # per-model precomputation, as the CLI pays it once
    solver, _ = _best(lambda: counterfactuals(form, X, target=target))
    read, _ = _best(lambda: _read(files["Xcf"], n_features=2000))
    read_one, _ = _best(lambda: _read(files["Xcf"], rows="0", n_features=2000))
    budget = (solver[0] + 1.5, solver)
    base = [*CLI, "counterfactual", files["soft"], files["Xcf"], "--target", "0"]
    one = WORK / "cf_one.json"
    fixed = run([*base, "--rows", "0", "--json", one])
    _row("counterfactual --json --rows 0 (fixed cost)", fixed, None, one.stat().st_size, "", read=read_one)
    out1, out2 = WORK / "cf.json", WORK / "cf2.json"
    r = run([*base, "--json", out1])
    _row(f"counterfactual --json, {n} x 2000, K=50", r, solver, out1.stat().st_size,
         "target wall <= solver + 1.5 s, <= 20 MB", read=read, budget=budget)
    r = run([*base, "--json", out2, "--schema", "2"])
    _row("  the same, --schema 2 (compact)", r, solver, out2.stat().st_size,
         "target wall <= solver + 1.5 s, <= 20 MB", read=read, budget=budget)
    print(f"  --schema 2 beyond the fixed cost (--rows 0): {r['wall'] - fixed['wall']:.2f} s wall, "
          f"{r['cpu'] - fixed['cpu']:.2f} s CPU, for a {solver[0]:.2f} s ({solver[1]:.2f} s CPU) solver")
    print(f"  /2 read back (expand_report) equals /1 bit for bit: {_same_floats(out1, out2, X)}")
    csv = WORK / f"Xcf_{n}x2000.csv"
    if not csv.exists():
        _write_csv(csv, X)
    read_csv, _ = _best(lambda: _read(csv, n_features=2000))
    out3 = WORK / "cf3.json"
    r = run([*CLI, "counterfactual", files["soft"], csv, "--target", "0", "--json", out3, "--schema", "2"])
    _row("  the same rows from a CSV, --schema 2", r, solver, out3.stat().st_size,
         "target wall <= solver + 1.5 s", read=read_csv, budget=budget)
    print(f"  the CSV run's results equal the NPY run's: {_results(out3) == _results(out2)}")
    for f in (one, out1, out2, out3):
        f.unlink(missing_ok=True)


def _results(path: Path):
    import orjson

    return orjson.loads(path.read_bytes())["results"]


def _write_csv(path: Path, X) -> None:
    """The rows as a CSV with a header (x0..x1999: the model has no names), numbers in their
    shortest round-trip form; written to a temporary and renamed when complete."""
    import orjson

    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as fh:
        fh.write((",".join(f"x{j}" for j in range(X.shape[1])) + "\n").encode())
        for row in X:
            fh.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1] + b"\n")
    tmp.rename(path)


def _same_floats(path1: Path, path2: Path, X) -> bool:
    """Every value of the /1 report's results equals the /2 report's, expanded, bit for bit."""
    import orjson

    from invaudit.io.report import expand_report

    r1 = orjson.loads(path1.read_bytes())["results"]
    r2 = expand_report(orjson.loads(path2.read_bytes()), X)["results"]

    def bits(v):
        return np.array([np.nan if x is None else x for x in v], dtype=np.float64).view(np.uint64)

    for a, b in zip(r1, r2):
        if set(a) != set(b):
            return False
        for k, v in a.items():
            if isinstance(v, list) and v and isinstance(v[0], float):
                if not np.array_equal(bits(v), bits(b[k])):
                    return False
            elif v != b[k]:
                return False
    return len(r1) == len(r2)


def bench_rows(files):
    read, _ = _best(lambda: _read(files["csv"], rows="0-9", id_column="id", label_column="target",
                                  feature_names=[f"f{j}" for j in range(20)]))
    out = WORK / "rows.json"
    r = run([*CLI, "margin", files["csv_model"], files["csv"], "--id-column", "id", "--label-column", "target",
             "--rows", "0-9", "--json", out])
    _row("margin --rows 0-9 on a 1,000,000-row CSV", r, None, out.stat().st_size, "target <= 2 s, <= 300 MB",
         read=read, budget=(2.0, (0.0, 0.0)))


def bench_info(files):
    floor = [run([sys.executable, "-c", f"import joblib; joblib.load({str(files['lin'])!r})"]) for _ in range(3)]
    info = [run([*CLI, "info", files["lin"]]) for _ in range(3)]
    best = lambda rs: min(rs, key=lambda r: r["wall"])  # noqa: E731
    _row("python: joblib.load(model) only (the floor)", best(floor))
    _row("invaudit info MODEL", best(info), None, None, "target <= 0.6 s", budget=(0.6, (0.0, 0.0)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 margin rows, 100 counterfactual rows")
    ap.add_argument("--only", default="margin,cf,rows,info")
    args = ap.parse_args(argv)
    n_margin = 100_000 if args.quick else 1_000_000
    n_cf = 100 if args.quick else 400
    only = set(args.only.split(","))
    files = prepare(n_margin, n_cf, only)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall times wait for a core; "
          "CPU = user + system of the CLI process; peak = its maximum resident set)")
    print(f"{'case':44s} {'wall s':>7s} {'CPU s':>7s} {'peak MB':>7s} {'solver w/c':>11s} {'read w/c':>11s} "
          f"{'overhd w/c':>11s} {'out MB':>7s} {'target s':>8s} {'ratio w/c':>9s}")
    if "margin" in only:
        bench_margin(files, n_margin)
    if "cf" in only:
        bench_counterfactual(files, n_cf)
    if "rows" in only:
        bench_rows(files)
    if "info" in only:
        bench_info(files)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
