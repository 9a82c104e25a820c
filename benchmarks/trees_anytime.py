"""Benchmark: tree-ensemble counterfactuals and margins in a time limit, against DiCE (issue 15).

Run by hand (not by pytest; dice-ml from the bench extra)::

    .venv/bin/python benchmarks/trees_anytime.py [--rows 20] [--n-dice 10] [--time-limit SECONDS]

Models, fitted on 1,500 rows of ``make_classification`` (30 features, 10 informative, binary):
a RandomForest of 100 trees of depth 8 and a HistGradientBoosting of 200 rounds (the issue's
targets), and a RandomForest of 10 trees of depth 4 (the exactness target). For each, on the
same test rows, it prints:

- ``invaudit counterfactual`` (target: the other class) and ``invaudit margin`` at the default
  time limit (or ``--time-limit``), with ``--train``: wall-clock and CPU seconds per row, the
  share of rows whose answer the estimator's own ``predict`` confirms (validity), the share
  answered ``exact: true``, and the peak resident memory of the process that ran it (a fresh
  forked process per measurement);
- the influence of training rows (leaf refit) against real leave-one-out refits: Pearson and
  Spearman (:func:`_influence_lines`);
- DiCE 0.12 ``random`` and ``genetic`` (``backend="sklearn"``, one counterfactual a row,
  ``desired_class="opposite"``, ``posthoc_sparsity_algorithm="binary"``) on the first
  ``--n-dice`` rows, in the same run: time per row, validity, and the L2 distance ratio
  ``invaudit / DiCE`` per row (median, max, and the share of rows where invaudit is at most as
  far). The metric is the one invaudit minimises, plain L2 in input units.

The machine these figures come from may be shared; CPU time next to wall time shows how much.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")


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


def _child(conn, job, est, Xq, Xtr, ytr, time_limit):
    from threadpoolctl import threadpool_limits

    # one OpenMP thread for every method alike (HistGradientBoosting's predict spins otherwise)
    threadpool_limits(limits=1, user_api="openmp")
    t, c = time.perf_counter(), time.process_time()
    out = {}
    if job in ("counterfactual", "margin"):
        from invaudit.counterfactual.nonlinear import counterfactuals_nonlinear
        from invaudit.margins import margins
        from invaudit.models import adapt

        form = adapt(est)
        kw = {} if time_limit is None else {"time_limit": time_limit}
        if job == "counterfactual":
            b = counterfactuals_nonlinear(form, Xq, target="other", X_train=Xtr, **kw)
            pts = np.where((b.status == "found")[:, None], b.x_cf, np.nan)
            out["exact"] = b.exact
        else:
            b = margins(form, Xq, X_train=Xtr, **kw)
            pts = Xq + b.perturbation
            out["exact"] = b.exact
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
    out["cpu"] = time.process_time() - c
    out["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    have = np.all(np.isfinite(pts), axis=1)
    valid = np.zeros(len(Xq), dtype=bool)
    if have.any():
        valid[have] = est.predict(pts[have]) != est.predict(Xq[have])
    out["valid"] = valid
    out["dist"] = np.where(valid, np.linalg.norm(np.nan_to_num(pts) - Xq, axis=1), np.nan)
    conn.send(out)
    conn.close()


def _run(job, est, Xq, Xtr, ytr, time_limit):
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(b, job, est, Xq, Xtr, ytr, time_limit))
    p.start()
    out = a.recv()
    p.join()
    return out


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
    ap.add_argument("--n-dice", type=int, default=10)
    ap.add_argument("--time-limit", type=float, default=None, help="seconds per row (default: invaudit's)")
    ap.add_argument("--no-dice", action="store_true")
    args = ap.parse_args()
    from invaudit.margins._trees import DEFAULT_TIME_LIMIT

    models, Xtr, ytr, Xte = _models()
    Xq = Xte[:args.rows]
    tl = args.time_limit if args.time_limit is not None else DEFAULT_TIME_LIMIT
    print(f"tree ensembles, anytime: {args.rows} rows, 30 features, time limit {tl:g} s/row "
          f"(DiCE on the first {args.n_dice})")
    for name, est in models.items():
        small = name.endswith("depth 4)")
        print(f"== {name}")
        ours = {}
        for job in ("counterfactual", "margin"):
            r = _run(job, est, Xq, Xtr, ytr, args.time_limit)
            ours[job] = r
            n = len(Xq)
            print(f"  invaudit {job:14s} {r['wall'] / n:6.3f} s/row wall, {r['cpu'] / n:6.3f} s/row cpu, "
                  f"valid {r['valid'].mean():6.1%}, exact {np.mean(r['exact']):6.1%}, "
                  f"median L2 {np.nanmedian(r['dist']):.4g}, peak {r['rss']:.0f} MiB")
        if small or args.no_dice:
            continue
        k = min(args.n_dice, len(Xq))
        for job in ("dice-random", "dice-genetic"):
            r = _run(job, est, Xq[:k], Xtr, ytr, None)
            mine = ours["counterfactual"]["dist"][:k]
            both = np.isfinite(mine) & np.isfinite(r["dist"])
            ratio = mine[both] / np.maximum(r["dist"][both], 1e-300)
            print(f"  {job:23s} {r['wall'] / k:6.3f} s/row wall, {r['cpu'] / k:6.3f} s/row cpu, "
                  f"valid {r['valid'].mean():6.1%}, median L2 {np.nanmedian(r['dist']):.4g}, peak {r['rss']:.0f} MiB")
            if both.any():
                print(f"    distance ratio invaudit/{job}: median {np.median(ratio):.3f}, max {ratio.max():.3f}, "
                      f"invaudit no farther on {np.mean(ratio <= 1 + 1e-9):.0%} of {both.sum()} rows")
    _influence_lines()
    print("load average (1, 5, 15 min):", " ".join(f"{v:.1f}" for v in __import__("os").getloadavg()))


if __name__ == "__main__":
    main()
