"""Benchmark: tree-ensemble counterfactuals and margins in a time limit, against DiCE (issue 15).

Run by hand (not by pytest; dice-ml from the bench extra)::

    .venv/bin/python benchmarks/trees_anytime.py [--rows 20] [--n-dice 20] [--time-limit S[,S2...]]
                                                 [--jobs N] [--no-dice] [--no-cli] [--no-influence]

Models, fitted on 1,500 rows of ``make_classification`` (30 features, 10 informative, binary):
a RandomForest of 100 trees of depth 8 and a HistGradientBoosting of 200 rounds (the issue's
targets), and a RandomForest of 10 trees of depth 4 (the exactness target). For each, on the
same test rows, it prints:

- ``counterfactual`` (target: the other class) and ``margin`` through the library calls the CLI
  makes (``invaudit.parallel.counterfactuals_with_extras`` / ``invaudit.parallel.margins``, with
  ``--train``; ``--jobs`` as the CLI's, default 1 = serial, ``auto`` = the CLI's default) at the
  default time limit, or at each of ``--time-limit`` (comma-separated; the first is the
  reference the others' distances are compared with, row by row): wall-clock and CPU seconds
  per row (CPU of the process and of any workers it started), the share of rows whose answer
  the estimator's own ``predict`` confirms (validity), the share answered ``exact: true``, the
  median L2 distance and the peak resident memory of the process that ran it (a fresh forked
  process per measurement);
- the same two commands through the CLI itself (``invaudit counterfactual|margin MODEL rows.npy
  --train train.npy --out answers.npy``, default options, its default ``--jobs``): wall and
  CPU per row of the whole command (start-up and model loading included), validity of the
  written rows, and whether they are the library call's answers;
- DiCE 0.12 ``random`` and ``genetic`` (``backend="sklearn"``, one counterfactual a row,
  ``desired_class="opposite"``, ``posthoc_sparsity_algorithm="binary"``) on the first
  ``--n-dice`` rows, in the same run: time per row, validity, and the L2 distance ratio
  ``invaudit / DiCE`` per row (median, max, and the share of rows where invaudit is at most as
  far). The metric is the one invaudit minimises, plain L2 in input units;
- the influence of training rows (leaf refit) against real leave-one-out refits: Pearson and
  Spearman (:func:`_influence_lines`).

The machine these figures come from may be shared: CPU time next to wall time, and the load
average at the start and end, show how much. On a loaded machine the wall figures inflate (and
the MILP, whose limit is wall-clock, gets less done).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")
os.environ.setdefault("TQDM_DISABLE", "1")  # DiCE's per-query progress bars


def _models(seed=0):
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from threadpoolctl import threadpool_limits

    X, y = make_classification(n_samples=2000, n_features=30, n_informative=10, random_state=seed)
    Xtr, ytr = X[:1500], y[:1500]
    with threadpool_limits(limits=1, user_api="openmp"):
        models = {
            "RandomForest(100 trees, depth 8)": RandomForestClassifier(
                n_estimators=100, max_depth=8, random_state=0, n_jobs=1).fit(Xtr, ytr),
            "HistGradientBoosting(200 rounds)": HistGradientBoostingClassifier(
                max_iter=200, early_stopping=False, random_state=0).fit(Xtr, ytr),
            "RandomForest(10 trees, depth 4)": RandomForestClassifier(
                n_estimators=10, max_depth=4, random_state=0, n_jobs=1).fit(Xtr, ytr),
        }
    return models, Xtr, ytr, X[1500:]


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (forked workers)."""
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _child(conn, job, est, Xq, Xtr, ytr, time_limit, jobs):
    from threadpoolctl import threadpool_limits

    # one OpenMP thread for every method alike (HistGradientBoosting's predict spins otherwise)
    threadpool_limits(limits=1, user_api="openmp")
    out = {}
    if job in ("counterfactual", "margin"):
        from invaudit import parallel
        from invaudit.models import adapt

        form = adapt(est)
        kw = {} if time_limit is None else {"time_limit": time_limit}
        t, c = time.perf_counter(), _cpu()
        if job == "counterfactual":  # what cli/counterfactual.py calls (a .npy --train: no labels)
            b, _ = parallel.counterfactuals_with_extras(form, Xq, target="other", X_train=Xtr,
                                                        y_train_index=None, jobs=jobs, **kw)
            pts = np.where((b.status == "found")[:, None], b.x_cf, np.nan)
        else:  # what cli/margin.py calls
            b = parallel.margins(form, Xq, X_train=Xtr, jobs=jobs, **kw)
            pts = Xq + b.perturbation
        out["exact"] = np.asarray(b.exact, dtype=bool)
    else:
        import dice_ml
        import pandas as pd

        cols = [f"x{j}" for j in range(Xq.shape[1])]
        frame = pd.DataFrame(Xtr, columns=cols)
        frame["y"] = ytr
        d = dice_ml.Data(dataframe=frame, continuous_features=cols, outcome_name="y")
        m = dice_ml.Model(model=est, backend="sklearn")
        exp = dice_ml.Dice(d, m, method=job.split("-", 1)[1])
        np.random.seed(0)
        pts = np.full(Xq.shape, np.nan)
        t, c = time.perf_counter(), _cpu()
        for i in range(len(Xq)):  # DiCE answers one query frame at a time
            extra = {"posthoc_sparsity_algorithm": "binary"}
            if job == "dice-random":
                extra["random_seed"] = 0
            try:
                r = exp.generate_counterfactuals(pd.DataFrame(Xq[i:i + 1], columns=cols), total_CFs=1,
                                                 desired_class="opposite", verbose=False, **extra)
                cf = r.cf_examples_list[0].final_cfs_df
                if cf is not None and len(cf):
                    pts[i] = cf[cols].to_numpy(dtype=np.float64)[0]
            except Exception:  # noqa: BLE001 - DiCE raises when it finds nothing
                pass
    out["wall"] = time.perf_counter() - t
    out["cpu"] = _cpu() - c
    out["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.update(_check(est, Xq, pts))
    conn.send(out)
    conn.close()


def _check(est, Xq, pts) -> dict:
    """Validity by the estimator's own predict, and the L2 distance of each valid answer."""
    have = np.all(np.isfinite(pts), axis=1)
    valid = np.zeros(len(Xq), dtype=bool)
    if have.any():
        valid[have] = est.predict(pts[have]) != est.predict(Xq[have])
    return {"valid": valid,
            "dist": np.where(valid, np.linalg.norm(np.nan_to_num(pts) - Xq, axis=1), np.nan)}


def _run(job, est, Xq, Xtr, ytr, time_limit, jobs=1):
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(b, job, est, Xq, Xtr, ytr, time_limit, jobs))
    p.start()
    out = a.recv()
    p.join()
    return out


def _cli(job, est, Xq, Xtr, time_limit, tmp) -> dict:
    """The command a user runs, timed as a whole (start-up and model loading included)."""
    import joblib

    model, rows, train, ans = (os.path.join(tmp, f) for f in ("model.joblib", "rows.npy", "train.npy", "ans.npy"))
    joblib.dump(est, model)
    np.save(rows, Xq)
    np.save(train, Xtr)
    if os.path.exists(ans):
        os.remove(ans)
    exe = os.path.join(os.path.dirname(sys.executable), "invaudit")
    cmd = [exe, job, model, rows, "--train", train, "--out", ans, "--format", "table"]
    if time_limit is not None:
        cmd += ["--time-limit", str(time_limit)]
    env = dict(os.environ, INVAUDIT_NO_PROGRESS="1")
    t, c = time.perf_counter(), _cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    out = {"wall": time.perf_counter() - t, "cpu": _cpu() - c, "rc": proc.returncode,
           "err": proc.stderr.strip().splitlines()[-1:] if proc.returncode else []}
    pts = np.load(ans) if os.path.exists(ans) else np.full(Xq.shape, np.nan)
    if pts.shape != Xq.shape:  # rows without an answer are left out: match by position if so
        pts = np.full(Xq.shape, np.nan)
    out.update(_check(est, Xq, pts))
    return out


def _line(label, r, n) -> str:
    ex = f", exact {np.mean(r['exact']):6.1%}" if "exact" in r else ""
    peak = f", peak {r['rss']:.0f} MiB" if "rss" in r else ""
    return (f"  {label:30s} {r['wall'] / n:6.3f} s/row wall, {r['cpu'] / n:6.3f} s/row cpu, "
            f"valid {r['valid'].mean():6.1%}{ex}, median L2 {np.nanmedian(r['dist']):.4g}{peak}")


def _influence_lines() -> None:
    """Leaf-refit influence against real leave-one-out refits (same parameters and random_state):
    150 training rows (8 labels flipped), 4 test rows, the union of each one's top 4 rows
    refitted; Pearson and Spearman over all (test row, refitted row) pairs."""
    from sklearn.ensemble import (ExtraTreesClassifier, GradientBoostingClassifier,
                                  HistGradientBoostingClassifier, RandomForestClassifier)
    from threadpoolctl import threadpool_limits

    from invaudit.influence import build_tree_objective, influence, verify_loo
    from invaudit.models import adapt

    rng = np.random.default_rng(0)
    n = 150
    X = rng.normal(size=(n + 20, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 + 0.3 * rng.normal(size=n + 20) > 0.4).astype(int)
    flip = rng.choice(n, 8, replace=False)
    y[flip] = 1 - y[flip]
    Xtr, ytr, Xte, yte = X[:n], y[:n], X[n:n + 4], y[n:n + 4]
    print("== influence of training rows (leaf refit, never exact) against leave-one-out refits")
    for name, est in (("RandomForest(50, depth 4)", RandomForestClassifier(n_estimators=50, max_depth=4, random_state=0)),
                      ("ExtraTrees(50, depth 4)", ExtraTreesClassifier(n_estimators=50, max_depth=4, random_state=0)),
                      ("GradientBoosting(30, depth 2)", GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0)),
                      ("HistGradientBoosting(30, depth 3)", HistGradientBoostingClassifier(max_iter=30, max_depth=3, random_state=0))):
        with threadpool_limits(limits=1, user_api="openmp"):
            est.fit(Xtr, ytr)
            t = time.perf_counter()
            obj = build_tree_objective(adapt(est), Xtr, ytr)
            res = influence(obj, Xte, yte, top=4)
            t_est = time.perf_counter() - t
            chk = verify_loo(obj, Xte, yte, res.top_rows(4))
        print(f"  {name:34s} pearson {chk.pearson:.3f}, spearman {chk.spearman:.3f} over {chk.predicted.size} pairs "
              f"({chk.n_retrained} refits); estimate {t_est:.3f} s for all {n} rows")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--n-dice", type=int, default=20)
    ap.add_argument("--time-limit", default=None,
                    help="seconds per row, comma-separated to compare several (default: invaudit's)")
    ap.add_argument("--jobs", default="1", help="the library call's --jobs: N, or 'auto' (the CLI's default)")
    ap.add_argument("--no-dice", action="store_true")
    ap.add_argument("--no-cli", action="store_true")
    ap.add_argument("--no-influence", action="store_true")
    args = ap.parse_args()
    from invaudit.margins._trees import DEFAULT_TIME_LIMIT

    jobs = None if args.jobs == "auto" else int(args.jobs)
    limits = [None] if args.time_limit is None else [float(v) for v in args.time_limit.split(",")]
    models, Xtr, ytr, Xte = _models()
    Xq = Xte[:args.rows]
    n = len(Xq)
    shown = ", ".join(f"{DEFAULT_TIME_LIMIT if v is None else v:g}" for v in limits)
    print(f"tree ensembles, anytime: {n} rows, 30 features, time limit {shown} s/row "
          f"(default {DEFAULT_TIME_LIMIT:g}), library --jobs {args.jobs}; DiCE on the first "
          f"{min(args.n_dice, n)}; load average {os.getloadavg()[0]:.1f}")
    tmp = tempfile.mkdtemp(prefix="trees_anytime_")
    for name, est in models.items():
        small = name.endswith("depth 4)")
        print(f"== {name}")
        ours = {}
        for job in ("counterfactual", "margin"):
            for tl in limits:
                r = _run(job, est, Xq, Xtr, ytr, tl, jobs)
                ours.setdefault(job, r)
                label = f"invaudit {job}" + ("" if len(limits) == 1 else f" @{DEFAULT_TIME_LIMIT if tl is None else tl:g}s")
                print(_line(label, r, n))
                if r is not ours[job]:
                    ref = ours[job]["dist"]
                    both = np.isfinite(ref) & np.isfinite(r["dist"])
                    ratio = r["dist"][both] / np.maximum(ref[both], 1e-300)
                    if both.any():
                        print(f"    distance / first limit's, row by row: median {np.median(ratio):.3f}, "
                              f"max {ratio.max():.3f}, equal on {np.mean(np.abs(ratio - 1) <= 1e-9):.0%}, "
                              f"farther on {np.mean(ratio > 1 + 1e-9):.0%} of {both.sum()} rows")
            if not args.no_cli:
                r = _cli(job, est, Xq, Xtr, limits[0], tmp)
                if r["rc"]:
                    print(f"  CLI {job}: exit {r['rc']}: {' '.join(r['err'])}")
                else:
                    lib = ours[job]["dist"]
                    same = np.allclose(np.nan_to_num(r["dist"], nan=-1.0), np.nan_to_num(lib, nan=-1.0),
                                       rtol=1e-12, atol=0.0)
                    print(_line(f"CLI {job}", r, n) + f", same answers as the library call: {'yes' if same else 'no'}")
        if small or args.no_dice:
            continue
        k = min(args.n_dice, n)
        for job in ("dice-random", "dice-genetic"):
            r = _run(job, est, Xq[:k], Xtr, ytr, None)
            mine = ours["counterfactual"]["dist"][:k]
            both = np.isfinite(mine) & np.isfinite(r["dist"])
            ratio = mine[both] / np.maximum(r["dist"][both], 1e-300)
            print(_line(job, r, k))
            if both.any():
                print(f"    distance ratio invaudit/{job}: median {np.median(ratio):.3f}, max {ratio.max():.3f}, "
                      f"invaudit no farther on {np.mean(ratio <= 1 + 1e-9):.0%} of {both.sum()} rows "
                      f"(DiCE valid on {r['valid'].sum()} of {k})")
    if not args.no_influence:
        _influence_lines()
    print("load average (1, 5, 15 min):", " ".join(f"{v:.1f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
