"""Mislabel triage benchmark (issues 7 and 18): which ranking finds flipped labels first?

Seven data sets, 5 seeds each (seed s flips the labels with ``numpy.random.default_rng(s)`` and
seeds the folds), 10% of the training labels flipped, a StandardScaler + LogisticRegression
pipeline (the audited model) fitted on the noisy labels, recall of the flipped rows within the
top 10% of each ranking:

- breast cancer, wine, digits (sklearn.datasets, the sample models' train split);
- ``clustered``: 4 classes that are unions of 3 clusters each (make_classification, 1,200 rows,
  20 features), where the linear model is wrong about the data;
- ``quantiles``: 3 concentric Gaussian shells (make_gaussian_quantiles, 1,000 rows, 6 features),
  a non-linear boundary no linear model can draw;
- ``imbalanced``: 1:9 binary classes (make_classification, 2,000 rows, 10 features);
- ``asymmetric``: 5 classes where every flipped label goes to the next class (c -> c+1), the
  structured noise of confusable neighbours (make_classification, 1,500 rows, 12 features).

Peers: cleanlab's ``find_label_issues`` (ranked by self-confidence, padded with the remaining
rows in self-confidence order) on 5-fold out-of-fold probabilities of the audited model's class
and on the probabilities of the same reference invaudit uses (the default: out-of-bag
probabilities of a 100-tree random forest, each tree on half the rows), in-sample loss, and the
previous default ``pruned-loo-loss``. invaudit's columns: ``combined`` (the default: five sources
-- model, knn, reference, kernel, mixture -- calibrated by one temperature each, mixed by
likelihood, rows scored by the posterior that the given label is right under a class-conditional
noise model), ``knn``, ``reference``, ``mixture`` alone (as inside ``combined``) and ``--method
boosting`` (the bounded HistGradientBoosting, out of fold; not part of ``combined``). ``ok`` says
whether ``combined`` is at least the best peer within one flipped row (the issue's bar).
Then the cost of the whole ranking on 10,000 rows x 50 features x 10 classes for ``pruned-loo-loss``
and the default ``combined`` (wall seconds, CPU seconds of every thread, peak RSS, the machine's load average;
``--cost-only``), and ``--method confidence`` with ``--jobs 1`` and ``--jobs 2`` on the same rows
(issue 16; ``--jobs-only``). ``--large``: ``combined`` on 100,000 rows x 100 features x 10 classes
(wall, CPU-s, peak RSS, recall of combined and each source); ``--large-quality``: the bounded
``knn`` / ``kernel`` sources against exact ones on 30,000 of such rows.

cleanlab is a peer, never a dependency: ``pip install -e '.[bench]'``, or ``--peer-python`` an
interpreter that has it::

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/mislabel.py [--seeds 5] [--datasets a,b]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sklearn.datasets import make_classification, make_gaussian_quantiles  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from invaudit.models import adapt  # noqa: E402
from invaudit.triage import (DEFAULT_METHOD, default_reference, fold_splits, rank_mislabels,  # noqa: E402
                             recall_at, reference_proba)

DATASETS = ("breast_cancer", "wine", "digits", "clustered", "quantiles", "imbalanced", "asymmetric")
FRACTION = 0.10
PEERS = ("cleanlab-model", "cleanlab-reference", "loss", "pruned-loo-loss")
OURS = ("combined", "knn", "reference", "mixture", "boosting")

_PEER = r"""
import json, sys
import numpy as np
from cleanlab.filter import find_label_issues
d = np.load(sys.argv[1])
out = {}
for key in sorted(k for k in d.files if k.startswith("proba_")):
    tag = key[len("proba_"):]
    idx = find_label_issues(d["labels_" + tag], d[key], return_indices_ranked_by="self_confidence")
    out[tag] = [int(i) for i in idx]
print(json.dumps(out))
"""


def load(name):
    if name in ("breast_cancer", "wine", "digits"):
        sys.path.insert(0, str(ROOT / "sample_models"))
        from build import split  # the sample models' fixed split

        _, Xtr, _, ytr, _ = split(name)
        return Xtr, ytr
    if name == "clustered":
        return make_classification(n_samples=1200, n_features=20, n_informative=8, n_redundant=4,
                                   n_classes=4, n_clusters_per_class=3, class_sep=1.0, random_state=0)
    if name == "quantiles":
        return make_gaussian_quantiles(n_samples=1000, n_features=6, n_classes=3, random_state=0)
    if name == "imbalanced":
        return make_classification(n_samples=2000, n_features=10, n_informative=5, n_redundant=2,
                                   n_classes=2, weights=[0.9, 0.1], random_state=0)
    if name == "asymmetric":
        return make_classification(n_samples=1500, n_features=12, n_informative=6, n_redundant=2,
                                   n_classes=5, n_clusters_per_class=1, class_sep=1.5, random_state=0)
    raise ValueError(name)


def make_model():
    return Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=5000))])


def flip(y, K, rng, asymmetric=False):
    n = y.size
    rows = rng.choice(n, size=int(round(FRACTION * n)), replace=False)
    noisy = y.copy()
    step = 1 if asymmetric else rng.integers(1, K, size=rows.size)  # another class, uniformly
    noisy[rows] = (y[rows] + step) % K
    return noisy, np.isin(np.arange(n), rows)


def cleanlab_rankings(jobs, peer_python):
    """``{tag: ranked issue indices}`` from cleanlab (here or in ``peer_python``)."""
    try:
        from cleanlab.filter import find_label_issues  # type: ignore

        return {tag: [int(i) for i in find_label_issues(lab, p, return_indices_ranked_by="self_confidence")]
                for tag, (p, lab) in jobs.items()}
    except ImportError:
        pass
    if peer_python is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.npz"
        arrays = {}
        for tag, (p, lab) in jobs.items():
            arrays["proba_" + tag] = p
            arrays["labels_" + tag] = lab
        np.savez(path, **arrays)
        res = subprocess.run([peer_python, "-c", _PEER, str(path)], capture_output=True, text=True,
                             check=True)
    return json.loads(res.stdout)


def pad(issues, proba, labels):
    """cleanlab returns only the flagged rows: append the rest by self-confidence."""
    n = labels.size
    issues = np.asarray(issues, dtype=np.intp)
    rest = np.setdiff1d(np.arange(n), issues)
    sc = proba[rest, labels[rest]]
    return np.concatenate([issues, rest[np.argsort(sc, kind="stable")]])


def order_of(score):
    return np.lexsort((np.arange(score.size), -score))


def _load() -> str:
    """The load averages, as the timing lines print them."""
    import os

    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


def _timed_rank(form, X, y, **kw):
    """``(ranking, wall s, CPU s of this process, peak RSS MiB so far)`` of one ``rank_mislabels``.
    No tracemalloc while timing: it costs this workload ~50% more CPU (the trees allocate per
    node); peak memory is the process's peak RSS so far (it only grows)."""
    t, c = time.perf_counter(), time.process_time()
    r = rank_mislabels(form, X, y, **kw)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return r, wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cost(n=10_000, d=50, k=10, methods=(("pruned-loo-loss", None), ("combined", 1), ("auto", None))):
    """The whole ranking of ``n`` rows: wall and CPU seconds, peak RSS.
    ``combined`` twice: ``jobs=1`` (every source in turn in this process, so its CPU seconds are
    the whole work, comparable on a loaded machine) and the default (``auto``: the forest and the
    mixture on threads of their own beside the other sources; every source runs in this process,
    so its CPU seconds count all threads: on a loaded machine read CPU, on a quiet one wall).
    Then the default through the CLI, as a user runs it (start-up, reading an NPZ, the report)."""
    import os

    X, y = make_classification(n_samples=n, n_features=d, n_informative=20, n_classes=k,
                               random_state=0)
    rng = np.random.default_rng(0)
    noisy, _ = flip(y, k, rng)
    form = adapt(make_model().fit(X, noisy))
    for method, jobs in methods:
        r, wall, cpu, rss = _timed_rank(form, X, noisy, method=method, seed=0, jobs=jobs)
        load = _load()
        print(f"cost: {r.method} (jobs {jobs or 'default'}) on {n:,} rows x {d} features x {k} classes: "
              f"{wall:.1f} s wall, {cpu:.1f} CPU-s (all threads of this process), peak RSS so far "
              f"{rss:.0f} MiB ({'target <= 10 s wall on 2 cores; ' if n <= 10_000 else ''}"
              f"load average {load} on {os.cpu_count()} cores)", flush=True)
    import joblib

    with tempfile.TemporaryDirectory() as tmp:
        model, train = Path(tmp) / "model.joblib", Path(tmp) / "train.npz"
        joblib.dump(make_model().fit(X, noisy), model)
        np.savez(train, X=X, y=noisy)
        exe = Path(sys.executable).with_name("invaudit")  # the console script beside this python
        cmd = [str(exe), "mislabel", str(model), str(train), "--format", "json", "--top", "20", "--quiet"]
        # as a user's second run: modules compiled once into a bytecode cache (an untimed first run
        # on 300 rows), whatever PYTHONDONTWRITEBYTECODE this shell sets
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        small = Path(tmp) / "small.npz"
        np.savez(small, X=X[:300], y=noisy[:300])
        subprocess.run(cmd[:3] + [str(small)] + cmd[4:], capture_output=True, cwd=ROOT, env=env)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"the CLI run failed: {done.stderr.strip()}")
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        method = json.loads(done.stdout)["summary"]["method"]
        load = _load()
        print(f"cost through the CLI: invaudit mislabel (default: {method}) on {n:,} rows x {d} features x "
              f"{k} classes (NPZ): {wall:.1f} s wall, {cpu:.1f} CPU-s, peak RSS {after.ru_maxrss / 1024:.0f} MiB "
              f"(target <= 10 s wall on 2 cores; load average {load})", flush=True)


def jobs_speed(n=10_000, d=50, k=10, folds=5):
    """``--jobs`` on the out-of-fold refits (issue 16): ``--method confidence`` (five refits of the
    audited pipeline) serially and on two processes, wall and CPU seconds of this process, the
    ratio, and whether the rankings are identical."""
    import os

    from invaudit import parallel

    X, y = make_classification(n_samples=n, n_features=d, n_informative=20, n_classes=k,
                               random_state=0)
    noisy, _ = flip(y, k, np.random.default_rng(0))
    form = adapt(make_model().fit(X, noisy))
    runs = {}
    for jobs in (1, 2):
        t, c = time.perf_counter(), time.process_time()
        r = rank_mislabels(form, X, noisy, method="confidence", n_folds=folds, seed=0, jobs=jobs)
        runs[jobs] = (r, time.perf_counter() - t, time.process_time() - c, dict(parallel.last_run))
    (r1, w1, c1, _), (r2, w2, c2, who) = runs[1], runs[2]
    same = np.array_equal(r1.order, r2.order) and np.array_equal(r1.score, r2.score)
    load = _load()
    print(f"jobs: confidence ({folds} refits) on {n:,} rows x {d} x {k}: --jobs 1 {w1:.1f} s wall "
          f"({c1:.1f} s CPU here), --jobs 2 {w2:.1f} s wall ({c2:.1f} s CPU here; folds: {who['here']} here, "
          f"{who['pool']} in the worker), speed-up {w1 / w2:.2f}x, identical rankings: {same} "
          f"(load average {load} on {os.cpu_count()} cores)", flush=True)


def large(n=100_000, d=100, k=10, jobs=None):
    """``combined`` on 100,000 rows x 100 features x 10 classes, 10% of the labels flipped (issue 18:
    a default must finish in reasonable time at that size; target <= 60 s wall on 2 cores): wall
    and CPU seconds (every thread of this process), peak RSS, the load average, then the recall of
    the flipped rows in the top 10% for ``combined`` and for each source alone. Past
    ``KNN_ROWS`` / ``KERNEL_ROWS`` rows the ``knn`` and ``kernel`` sources are bounded (a random
    reference subset, reweighted random fits); ``--large-quality`` measures what that costs."""
    import os

    from invaudit.triage import _sources as S

    X, y = make_classification(n_samples=n, n_features=d, n_informative=20, n_classes=k,
                               random_state=0)
    noisy, wrong = flip(y, k, np.random.default_rng(0))
    t = time.perf_counter()
    form = adapt(make_model().fit(X, noisy))
    print(f"[audited model fitted in {time.perf_counter() - t:.0f} s; not timed]", file=sys.stderr,
          flush=True)
    load0 = _load()
    r, wall, cpu, rss = _timed_rank(form, X, noisy, method="combined", seed=0, jobs=jobs)
    load = _load()
    print(f"large: combined (jobs {jobs or 'default'}) on {n:,} rows x {d} features x {k} classes: "
          f"{wall:.1f} s wall, {cpu:.1f} CPU-s (all threads of this process), peak RSS {rss:.0f} MiB "
          f"(target <= 60 s wall on 2 cores; knn among {S.KNN_ROWS:,} reference rows past {S.KNN_ROWS:,}, "
          f"kernel folds fitted on ~{S.KERNEL_ROWS:,} rows past {S.KERNEL_ROWS:,}; load average "
          f"{load0} before, {load} after, on {os.cpu_count()} cores)", flush=True)
    rec = {"combined": recall_at(r.order, wrong, (FRACTION,))[FRACTION]}
    for src, sc in r.sources.items():
        rec[src] = recall_at(order_of(sc), wrong, (FRACTION,))[FRACTION]
    print(f"large: recall of the flipped rows in the top {FRACTION:.0%}: "
          + ", ".join(f"{s} {v:.3f}" for s, v in rec.items())
          + "; weights " + ", ".join(f"{s} {v:.2f}" for s, v in r.weights.items()), flush=True)


def large_quality(n_sub=30_000, seeds=(0, 1)):
    """What the bounds cost in recall (top 10%, 10% flips): the ``knn`` and ``kernel`` sources
    alone, exact (``max_rows=None``: all rows) against bounded, on a random 30,000-row subset of
    two 100,000-row synthetic sets (the ``--large`` rows; classes that are unions of clusters,
    the issue's hard case), where the exact sources are affordable. Two bounds: the shipped one
    (``KNN_ROWS`` / ``KERNEL_ROWS`` of 30,000 rows) and one scaled to 30,000 rows as the shipped
    one is to 100,000 (the share of rows the bounded source reads at 100,000 rows)."""
    import os

    from sklearn.preprocessing import StandardScaler

    from invaudit.triage import _sources as S

    sets = {
        "--large rows (100 features, 10 classes)": dict(n_features=100, n_informative=20, n_classes=10),
        "clustered (20 features, 4 classes of 3 clusters)": dict(
            n_features=20, n_informative=8, n_redundant=4, n_classes=4, n_clusters_per_class=3,
            class_sep=1.0),
    }
    for name, kw in sets.items():
        X, y = make_classification(n_samples=100_000, random_state=0, **kw)
        sub = np.sort(np.random.default_rng(0).choice(y.size, n_sub, replace=False))
        X, y = X[sub], y[sub]
        K = int(y.max()) + 1
        Z = StandardScaler().fit_transform(X)  # the audited pipeline's scaling (the model's own space)
        for src, bound in (("knn", S.KNN_ROWS), ("kernel", S.KERNEL_ROWS)):
            scaled = int(round(bound * n_sub / 100_000))
            out = {}
            for label, m in (("exact", None), (f"bound {bound:,}", bound), (f"bound {scaled:,}", scaled)):
                recs, cpu = [], 0.0
                for seed in seeds:
                    noisy, wrong = flip(y, K, np.random.default_rng(seed))
                    splits = fold_splits(noisy, K, 5, seed)
                    c = time.process_time()
                    P = (S.knn_proba(Z, noisy, K, splits, seed=seed, max_rows=m) if src == "knn" else
                         S.kernel_proba(Z, noisy, K, splits, seed=seed, max_rows=m))
                    cpu += time.process_time() - c
                    sc = -np.log(np.clip(P[np.arange(noisy.size), noisy], 1e-300, 1.0))
                    recs.append(recall_at(order_of(sc), wrong, (FRACTION,))[FRACTION])
                out[label] = (float(np.mean(recs)), cpu / len(seeds))
            ex = out["exact"][0]
            print(f"large-quality: {name}, {src} on {n_sub:,} rows (seeds {', '.join(map(str, seeds))}): "
                  + "; ".join(f"{lab} recall {v:.3f} ({v - ex:+.3f}), {c:.1f} CPU-s"
                              for lab, (v, c) in out.items())
                  + f" (load average {os.getloadavg()[0]:.1f})", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-python", help="an interpreter with cleanlab installed")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--no-cost", action="store_true", help="skip the 10,000-row timing")
    ap.add_argument("--cost-only", action="store_true", help="only the 10,000-row timing")
    ap.add_argument("--jobs-only", action="store_true", help="only the --jobs 1 / --jobs 2 timing")
    ap.add_argument("--large", action="store_true",
                    help="only combined on 100,000 rows x 100 features x 10 classes (minutes)")
    ap.add_argument("--large-quality", action="store_true",
                    help="only the bounded knn/kernel sources against exact ones on 30,000 rows (minutes)")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    names = [s for s in args.datasets.split(",") if s]
    seeds = tuple(range(args.seeds))
    if args.cost_only:
        cost()
        return 0
    if args.large:
        large()
        return 0
    if args.large_quality:
        large_quality()
        return 0
    if args.jobs_only:
        jobs_speed()
        return 0

    results = {}  # (dataset, column) -> list of recalls
    jobs, truths = {}, {}

    def add(name, col, order, wrong):
        results.setdefault((name, col), []).append(recall_at(order, wrong, (FRACTION,))[FRACTION])

    for name in names:
        X, y = load(name)
        K = int(y.max()) + 1
        t0 = time.perf_counter()
        for seed in seeds:
            rng = np.random.default_rng(seed)
            noisy, wrong = flip(y, K, rng, asymmetric=(name == "asymmetric"))
            form = adapt(make_model().fit(X, noisy))
            from invaudit.influence import build_objective

            objective = build_objective(form, X, noisy)
            for m in ("loss", "pruned-loo-loss"):
                add(name, m, rank_mislabels(form, X, noisy, method=m, objective=objective).order, wrong)
            comb = rank_mislabels(form, X, noisy, method="combined", objective=objective, seed=seed)
            add(name, "combined", comb.order, wrong)
            # the sources alone (same folds and seed as `--method knn` / `--method reference`)
            for src in ("knn", "reference", "mixture"):
                p = comb.source_proba[src]
                add(name, src, order_of(-np.log(np.clip(p[np.arange(y.size), noisy], 1e-300, 1))), wrong)
            add(name, "boosting", rank_mislabels(form, X, noisy, method="boosting", seed=seed).order, wrong)
            splits = fold_splits(noisy, K, 5, seed)
            oof = reference_proba(make_model(), X, noisy, np.arange(K), splits)
            jobs[f"{name}_{seed}_model"] = (oof, noisy)
            jobs[f"{name}_{seed}_reference"] = (comb.source_proba["reference"], noisy)
            truths[f"{name}_{seed}_model"] = (name, "cleanlab-model", wrong)
            truths[f"{name}_{seed}_reference"] = (name, "cleanlab-reference", wrong)
        print(f"[{name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)

    cl = cleanlab_rankings(jobs, args.peer_python)
    if cl is not None:
        for tag, issues in cl.items():
            name, col, wrong = truths[tag]
            p, noisy = jobs[tag]
            add(name, col, pad(issues, p, noisy), wrong)

    peers = [c for c in PEERS if (names[0], c) in results]
    columns = list(OURS) + peers
    print(f"recall of flipped labels within the top {FRACTION:.0%} (mean over seeds "
          f"{', '.join(map(str, seeds))}; audited model StandardScaler + LogisticRegression; "
          f"reference: out-of-bag {type(default_reference(100)).__name__}, "
          f"{default_reference(100).n_estimators} trees on half the rows)")
    print(f"{'data set':14s}" + "".join(f"{c:>19s}" for c in columns)
          + f"{'best peer':>11s}{'ahead':>8s}{'flips':>7s}{'ok':>5s}")
    means = {c: [] for c in columns + ["best", "ahead"]}
    for name in names:
        row = {c: float(np.mean(results[(name, c)])) for c in columns}
        best = max(row[c] for c in peers)
        flips = int(round(FRACTION * load(name)[1].size))
        for c in columns:
            means[c].append(row[c])
        means["best"].append(best)
        means["ahead"].append(row["combined"] - best)
        ok = row["combined"] >= best - 1.0 / flips - 1e-12  # at least the best peer, within one flipped row
        print(f"{name:14s}" + "".join(f"{row[c]:19.3f}" for c in columns)
              + f"{best:11.3f}{row['combined'] - best:+8.3f}{flips:7d}{'yes' if ok else 'no':>5s}")
    print(f"{'mean':14s}" + "".join(f"{np.mean(means[c]):19.3f}" for c in columns)
          + f"{np.mean(means['best']):11.3f}{np.mean(means['ahead']):+8.3f}")
    lead = float(np.mean(means["ahead"]))
    print(f"combined ahead of the best peer by {lead:+.4f} recall on average (target >= +0.05: "
          f"{'met' if lead >= 0.05 else 'NOT met'}); clustered: "
          + (f"{np.mean(results[('clustered', 'combined')]):.4f} (target >= 0.50)" if "clustered" in names
             else "not run"))
    print(f"default method: {DEFAULT_METHOD}")
    try:
        import cleanlab  # type: ignore

        print(f"peer: cleanlab {cleanlab.__version__}")
    except ImportError:
        pass
    if cl is None:
        print("(cleanlab not available: pip install -e '.[bench]' or pass --peer-python)")
    if not args.no_cost:
        cost()
        jobs_speed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
