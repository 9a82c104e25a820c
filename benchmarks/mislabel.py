"""Mislabel triage benchmark (issue 7): which ranking finds flipped labels first?

On each bundled data set (breast cancer, wine, digits from sklearn.datasets, the sample models'
train split), 10% of the training labels are flipped at random to another class (5 seeds), a
StandardScaler + LogisticRegression pipeline is refitted on the noisy labels, and each ranking's
recall within the top 10% is printed: invaudit's methods, cleanlab's ``find_label_issues`` on
5-fold out-of-sample probabilities (ranked by self-confidence, padded with the remaining rows in
self-confidence order), in-sample loss and random. Also times invaudit's default ranking of the
whole digits training set.

cleanlab is a peer, never a dependency: it is imported here if available, or run in another
interpreter given by ``--peer-python`` (a venv with cleanlab, numpy, scikit-learn)::

    PYTHONPATH=. python benchmarks/mislabel.py --peer-python /tmp/infl-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from invaudit.models.base import BlackBoxForm  # noqa: E402
from invaudit.triage import DEFAULT_METHOD, METHODS, rank_mislabels, recall_at  # noqa: E402

DATASETS = ("breast_cancer", "wine", "digits")
SEEDS = (0, 1, 2, 3, 4)
FRACTION = 0.10

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
    sys.path.insert(0, str(ROOT / "sample_models"))
    from build import split  # the sample models' fixed split

    _, Xtr, _, ytr, _ = split(name)
    return Xtr, ytr


def make_model():
    return Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=5000))])


def flip(y, K, rng):
    n = y.size
    rows = rng.choice(n, size=int(round(FRACTION * n)), replace=False)
    noisy = y.copy()
    noisy[rows] = (y[rows] + rng.integers(1, K, size=rows.size)) % K  # another class, uniformly
    return noisy, np.isin(np.arange(n), rows)


def form_of(est, D):
    return BlackBoxForm(estimator=est, classes=est.classes_, n_features=D)


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-python", help="an interpreter with cleanlab installed")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")

    results = {}  # (dataset, method) -> list of recalls
    jobs, truths = {}, {}
    for name in DATASETS:
        X, y = load(name)
        K = int(y.max()) + 1
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            noisy, wrong = flip(y, K, rng)
            est = make_model().fit(X, noisy)
            form = form_of(est, X.shape[1])
            from invaudit.influence import build_objective

            objective = build_objective(form, X, noisy)
            for m in METHODS:
                r = rank_mislabels(form, X, noisy, method=m, objective=objective, seed=seed)
                results.setdefault((name, m), []).append(recall_at(r.order, wrong, (FRACTION,))[FRACTION])
            order = rng.permutation(y.size)
            results.setdefault((name, "random"), []).append(recall_at(order, wrong, (FRACTION,))[FRACTION])
            oof = cross_val_predict(make_model(), X, noisy, method="predict_proba",
                                    cv=StratifiedKFold(5, shuffle=True, random_state=seed))
            tag = f"{name}_{seed}"
            jobs[tag] = (oof, noisy)
            truths[tag] = (name, wrong)

    cl = cleanlab_rankings(jobs, args.peer_python)
    if cl is not None:
        for tag, issues in cl.items():
            name, wrong = truths[tag]
            oof, noisy = jobs[tag]
            order = pad(issues, oof, noisy)
            results.setdefault((name, "cleanlab"), []).append(recall_at(order, wrong, (FRACTION,))[FRACTION])

    columns = list(METHODS) + (["cleanlab"] if cl is not None else []) + ["random"]
    print(f"recall of flipped labels within the top {FRACTION:.0%} "
          f"(mean over {len(SEEDS)} seeds; StandardScaler + LogisticRegression)")
    print(f"{'data set':15s}" + "".join(f"{c:>16s}" for c in columns))
    means = {c: [] for c in columns}
    for name in DATASETS:
        row = f"{name:15s}"
        for c in columns:
            v = float(np.mean(results[(name, c)]))
            means[c].append(v)
            row += f"{v:16.3f}"
        print(row)
    print(f"{'mean':15s}" + "".join(f"{np.mean(means[c]):16.3f}" for c in columns))
    print(f"default method: {DEFAULT_METHOD}")
    if cl is None:
        print("(cleanlab not available: pass --peer-python)")

    # speed: the default ranking of the whole digits training set, objective build included
    X, y = load("digits")
    est = make_model().fit(X, y)
    form = form_of(est, X.shape[1])
    best = np.inf
    for _ in range(3):  # best of 3: the machine may be shared
        t = time.perf_counter()
        rank_mislabels(form, X, y, method="auto")
        best = min(best, time.perf_counter() - t)
    print(f"digits ({X.shape[0]} rows): whole training set ranked by {DEFAULT_METHOD} in "
          f"{best:.2f} s (target < 2 s, objective build and refit included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
