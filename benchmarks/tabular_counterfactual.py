"""Counterfactuals on typed rows (categories, blanks, whole numbers): invaudit against DiCE (issue 13).

Run by hand (not by pytest), from the repository root, with the bench extra installed
(``pip install -e '.[bench]'``; dice-ml is only imported here, never by the package):

    python benchmarks/tabular_counterfactual.py [--n 30] [--n-dice 20] [--n-forest 20]
    python benchmarks/tabular_counterfactual.py --speed [--n-speed 8]   # typed search: before/after

Three models, each a ``Pipeline(ColumnTransformer([SimpleImputer + StandardScaler on the numeric
columns; SimpleImputer + OneHotEncoder on the categorical ones]), classifier)``:

1. ``credit-logreg``: ``sample_models/credit_logreg.joblib`` on ``credit_test.csv`` (an ID column,
   string categories, blank cells), target ``approved = 1``;
2. ``credit-forest``: the same preprocessing with a RandomForestClassifier, fitted here on
   ``credit_train.csv`` (seed 0), target 1;
3. ``penguins-logreg``: a synthetic penguins-like table built here (seed 0): species 0/1/2
   (Adelie/Chinstrap/Gentoo-like) from bill length/depth, flipper length, body mass (whole
   numbers for the last two), island and sex (some blank), multinomial LogisticRegression;
   rows predicted 0 go to class 1.

For the first N test rows the model predicts 0:

- ``invaudit``: ``tabular_counterfactuals`` in-process (split_tabular + solve, timed together);
- ``invaudit CLI``: ``invaudit counterfactual ... --format json`` as a subprocess; wall time
  including start-up, model loading (allowlist scan) and CSV reading;
- ``DiCE random / genetic / kdtree``: ``dice_ml`` with ``backend="sklearn"`` on the same pipeline,
  ``total_CFs=1``, ``desired_class=1``, ``posthoc_sparsity_algorithm="binary"`` (genetic's
  default; with the "linear" default random and kdtree step income by 0.01 up to 10,000 times
  per feature: over 9 minutes for 3 credit rows), timed including ``Data``/``Model``/``Dice`` set-up.

``--speed`` runs only the typed-row search timing (no DiCE needed): counterfactuals (target 1 /
the second class, L1, ``--scale mad``, ``--bounds data``, whole-number columns) and margins of the
first ``--n-speed`` rows for random forest (100 trees, depth 8), HistGradientBoosting (100 rounds),
MLP (16 units) and SVC (``probability=True``) final estimators behind the same ColumnTransformer, on
the credit sample and the real palmerpenguins table (when the ``palmerpenguins`` package is
installed; else the synthetic table below). *before*: every search call asks the whole pipeline
about a DataFrame (``invaudit.counterfactual.tabular.BATCHED = False``); *after*: the pipeline split
at its ColumnTransformer, the final estimator asked about encoded arrays (the default). Each run
is a worker process of its own: CPU seconds per row (``time.process_time``, all threads; read
these on a shared machine), peak MB (``ru_maxrss``), and whether the answers (status, distance,
exact, method, the rows) are identical.

Both tools get the same problem: the L1 metric (each numeric column ``|dx| / scale`` with scale
= 1.4826 * MAD on the training rows, the CLI's ``--scale mad``; +1 per changed categorical
column, ``--categorical-cost 1``), the training ranges as bounds (DiCE's default
``permitted_range``; ``--bounds data`` for invaudit), whole-number columns kept whole (invaudit:
the columns whole in every training row, as the CLI infers; DiCE keeps a column's decimal
precision from the data), and blanks frozen (invaudit freezes them; for DiCE see below).

DiCE refuses blanks (random: "The query instance(s) should not have any missing values";
genetic and kdtree: "Input contains NaN" already on the training frame), so the frames given to
DiCE only (training frame and query rows) have blanks filled with the pipeline's own imputer
statistics (the model sees exactly the same row), and each row's blank columns are left out of
``features_to_vary``, so DiCE may not move them either; a value DiCE leaves at the fill value is
written back as a blank before scoring.

Every answer is scored by this script, not by the tool: *valid* means the pipeline's own
``predict`` gives the target class AND the row is a valid row of the schema (categorical values
among the encoder's categories, whole-number columns whole, numeric values finite, blanks only
where the input had them). ``dist`` is the metric above for valid answers. Peak memory: each
in-process method runs in its own Python process (``--worker``); ``peak MB`` is that process's
``ru_maxrss`` (the CLI's from ``os.wait4``), ``+MB`` its ``ru_maxrss`` minus the resident size at the
start of the timed part (after imports and data loading): the peak growth while solving.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
BIN = Path(sys.executable).parent
MAD_C = 1.4826

warnings.filterwarnings("ignore")


def _maxrss_mb(which=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(which).ru_maxrss / 1024.0   # KiB on Linux


def _rss_mb() -> float:
    """The current resident set size (Linux /proc), for the growth during the timed part."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return _maxrss_mb()


# ------------------------------------------------------------------------------------------------
# the data sets and models
# ------------------------------------------------------------------------------------------------

def _pipeline(num, cat, clf):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pre = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), num),
        ("cat", Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                          ("onehot", OneHotEncoder(handle_unknown="ignore"))]), cat),
    ])
    return Pipeline([("pre", pre), ("clf", clf)])


def _penguins(seed=0, n=900):
    """A penguins-like table: three species, four numeric columns (two whole), island, sex."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    species = rng.choice(3, size=n, p=[0.44, 0.20, 0.36])
    islands = np.array(["Biscoe", "Dream", "Torgersen"], dtype=object)
    p_island = np.array([[0.30, 0.40, 0.30], [0.10, 0.85, 0.05], [0.90, 0.05, 0.05]])
    island = np.array([rng.choice(islands, p=p_island[s]) for s in species], dtype=object)
    male = rng.random(n) < 0.5
    sex = np.where(male, "male", "female").astype(object)
    mean = np.array([[38.8, 18.3, 190.0, 3700.0], [48.8, 18.4, 196.0, 3733.0], [47.5, 15.0, 217.0, 5076.0]])
    sd = np.array([2.6, 1.2, 6.5, 420.0])
    sex_shift = np.array([1.6, 0.7, 3.5, 380.0])
    X = mean[species] + rng.normal(size=(n, 4)) * sd + np.where(male, 0.5, -0.5)[:, None] * sex_shift
    frame = pd.DataFrame({
        "bird": [f"P{i:04d}" for i in range(n)],
        "island": island,
        "bill_length_mm": np.round(X[:, 0], 1),
        "bill_depth_mm": np.round(X[:, 1], 1),
        "flipper_length_mm": np.round(X[:, 2]).astype(np.int64),
        "body_mass_g": (np.round(X[:, 3] / 25) * 25).astype(np.int64),
        "sex": sex,
        "species": species.astype(np.int64),
    })
    # blanks, as in the real penguins table: some sex and bill length values missing
    frame.loc[rng.random(n) < 0.04, "sex"] = np.nan
    frame.loc[rng.random(n) < 0.02, "bill_length_mm"] = np.nan
    return frame.iloc[:600].reset_index(drop=True), frame.iloc[600:].reset_index(drop=True)


def build_cases(tmp: Path, n: int, n_dice: int, n_forest: int) -> list:
    import joblib
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    cases = []
    train = pd.read_csv(SAMPLES / "credit_train.csv")
    test = pd.read_csv(SAMPLES / "credit_test.csv")
    num, cat = ["income", "age", "n_loans"], ["employment", "housing"]
    logreg = joblib.load(SAMPLES / "credit_logreg.joblib")
    common = dict(id_col="customer", label="approved", num=num, cat=cat, train=train, test=test, target=1)
    cases.append(dict(name="credit-logreg", model=logreg, model_path=str(SAMPLES / "credit_logreg.joblib"),
                      train_path=str(SAMPLES / "credit_train.csv"), test_path=str(SAMPLES / "credit_test.csv"),
                      n=n, n_dice=n_dice, **common))
    forest = _pipeline(num, cat, RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0, n_jobs=1))
    forest.fit(train[num + cat], train["approved"])
    fpath = tmp / "credit_forest.joblib"
    joblib.dump(forest, fpath)
    cases.append(dict(name="credit-forest", model=forest, model_path=str(fpath),
                      train_path=str(SAMPLES / "credit_train.csv"), test_path=str(SAMPLES / "credit_test.csv"),
                      n=n_forest, n_dice=min(n_dice, n_forest), **common))
    ptrain, ptest = _penguins(seed=0)
    pnum = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    pcat = ["island", "sex"]
    peng = _pipeline(pnum, pcat, LogisticRegression(max_iter=5000))
    peng.fit(ptrain[pnum + pcat], ptrain["species"])
    ppath, trp, tep = tmp / "penguins_logreg.joblib", tmp / "penguins_train.csv", tmp / "penguins_test.csv"
    joblib.dump(peng, ppath)
    ptrain.to_csv(trp, index=False)
    ptest.to_csv(tep, index=False)
    cases.append(dict(name="penguins-logreg", model=peng, model_path=str(ppath), train_path=str(trp),
                      test_path=str(tep), id_col="bird", label="species", num=pnum, cat=pcat,
                      train=ptrain, test=ptest, target=1, n=n, n_dice=n_dice))

    for c in cases:
        m = c["model"]
        cols = list(m.feature_names_in_)
        c["columns"] = cols
        pred = m.predict(c["test"][cols])
        c["rows"] = np.flatnonzero(pred == 0)[: c["n"]]
        tr = c["train"]
        c["scale"], c["bounds"], c["integer"] = {}, {}, []
        for col in c["num"]:
            v = tr[col].to_numpy(dtype=np.float64)
            v = v[np.isfinite(v)]
            s = MAD_C * float(np.median(np.abs(v - np.median(v))))
            c["scale"][col] = s if s > 0 and np.isfinite(s) else 1.0
            c["bounds"][col] = (float(v.min()), float(v.max()))
            if np.all(v == np.round(v)):
                c["integer"].append(col)
        ct = m.named_steps["pre"]
        c["fill"] = {}
        for name, trans, tcols in ct.transformers_:
            if name in ("num", "cat"):
                stats = trans.named_steps["impute"].statistics_
                c["fill"].update(dict(zip(tcols, stats)))
        enc = ct.named_transformers_["cat"].named_steps["onehot"]
        c["categories"] = {col: set(cats) for col, cats in zip(c["cat"], enc.categories_)}
        c["test_cols"] = c["test"][cols].reset_index(drop=True)
    return cases


# ------------------------------------------------------------------------------------------------
# the workers (one process each, for a clean peak-memory figure)
# ------------------------------------------------------------------------------------------------

def worker(payload_path: str, method: str, out_path: str) -> None:
    with open(payload_path, "rb") as fh:
        c = pickle.load(fh)
    import pandas as pd

    if method == "invaudit":
        from invaudit.counterfactual.tabular import tabular_counterfactuals
        from invaudit.models.tabular import split_tabular
    else:
        import dice_ml
    frame = c["test_cols"].iloc[c["rows"]].reset_index(drop=True)
    n = len(frame)
    out = {"answers": [None] * n, "info": {}}
    base = _rss_mb()
    t0 = time.perf_counter()
    if method == "invaudit":
        tm = split_tabular(c["model"], integer_columns=c["integer"])
        tgt = int(np.flatnonzero(np.asarray(tm.classes) == c["target"])[0])
        res = tabular_counterfactuals(tm, frame, target=tgt, norm="l1", integer=c["integer"],
                                      bounds=c["bounds"], scale=c["scale"], categorical_cost=1.0, seed=0)
        elapsed = time.perf_counter() - t0
        for i in range(n):
            if res.status[i] in ("found", "already-target"):
                out["answers"][i] = {k: res.points.iloc[i][k] for k in c["columns"]}
        out["info"] = {"status": [str(s) for s in res.status], "exact": [bool(e) for e in res.exact],
                       "distance": [float(d) for d in res.distance], "method": [str(m) for m in res.method]}
    else:
        kind = method.split("-", 1)[1]
        n = min(n, c["n_dice"])
        out["answers"] = out["answers"][:n]
        cols, fill = c["columns"], c["fill"]
        train = c["train"][cols + [c["label"]]].copy()
        query = frame.iloc[:n].copy()
        blank = query.isna()
        for col in cols:
            if col in fill:
                train[col] = train[col].fillna(fill[col])
                query[col] = query[col].fillna(fill[col])
        d = dice_ml.Data(dataframe=train, continuous_features=c["num"], outcome_name=c["label"])
        m = dice_ml.Model(model=c["model"], backend="sklearn")
        exp = dice_ml.Dice(d, m, method=kind)
        # "binary" post-hoc sparsity for every method (genetic's default): the "linear" default of
        # random and kdtree steps income by 0.01 up to 10,000 times per feature (minutes a row)
        extra = {"posthoc_sparsity_algorithm": "binary"}
        if kind == "random":
            extra["random_seed"] = 0
        np.random.seed(0)   # genetic and kdtree draw from numpy's global generator
        errors = []
        for i in range(n):
            vary = [col for col in cols if not blank.iloc[i][col]]
            try:
                r = exp.generate_counterfactuals(query.iloc[[i]], total_CFs=1, desired_class=c["target"],
                                                 features_to_vary=vary, verbose=False, **extra)
                cf = r.cf_examples_list[0].final_cfs_df
            except Exception as exc:   # DiCE raises when it finds nothing for some methods
                errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
                cf = None
            if cf is not None and len(cf):
                row = cf.iloc[0]
                ans = {}
                for col in cols:
                    v = row[col]
                    if blank.iloc[i][col] and _same(v, fill[col], col in c["num"]):
                        v = np.nan   # left at the fill value: the blank it was
                    ans[col] = v
                out["answers"][i] = ans
        elapsed = time.perf_counter() - t0
        out["info"] = {"errors": errors}
    out["elapsed"] = elapsed
    out["n"] = n
    out["peak_mb"] = _maxrss_mb()
    out["plus_mb"] = max(0.0, out["peak_mb"] - base)
    with open(out_path, "wb") as fh:
        pickle.dump(out, fh)


def _same(v, fill, numeric):
    if numeric:
        try:
            return abs(float(v) - float(fill)) <= 1e-6 * max(1.0, abs(float(fill)))
        except (TypeError, ValueError):
            return False
    return v == fill


def run_worker(case_name: str, payload: Path, method: str, tmp: Path) -> dict:
    out = tmp / f"{case_name}.{method}.out.pkl"
    proc = subprocess.Popen([sys.executable, __file__, "--worker", str(payload), method, str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT))
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    with open(out, "rb") as fh:
        return pickle.load(fh)


def run_cli(c: dict) -> dict:
    rows = ",".join(str(int(r)) for r in c["rows"])
    cmd = [str(BIN / "invaudit"), "counterfactual", c["model_path"], c["test_path"],
           "--label-column", c["label"], "--id-column", c["id_col"], "--train", c["train_path"],
           "--target", str(c["target"]), "--norm", "l1", "--scale", "mad", "--bounds", "data",
           "--categorical-cost", "1", "--rows", rows, "--format", "json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT))
    stdout, stderr = b"", b""
    # os.wait4 gives this one child's own ru_maxrss
    import threading

    chunks = {"out": [], "err": []}

    def pump(stream, key):
        for block in iter(lambda: stream.read(65536), b""):
            chunks[key].append(block)

    th = [threading.Thread(target=pump, args=(proc.stdout, "out")),
          threading.Thread(target=pump, args=(proc.stderr, "err"))]
    for t in th:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    for t in th:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = b"".join(chunks["out"]), b"".join(chunks["err"])
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {stderr.decode(errors='replace').strip()[-300:]}"}
    report = json.loads(stdout)
    cols = report["model"]["feature_names"]
    answers, exact, status_l = [], [], []
    for r in report["results"]:
        status_l.append(r["status"])
        exact.append(bool(r["exact"]))
        if r["status"] in ("found", "already-target") and r["counterfactual"] is not None:
            answers.append({k: (np.nan if v is None else v) for k, v in zip(cols, r["counterfactual"])})
        else:
            answers.append(None)
    return {"answers": answers, "elapsed": elapsed, "n": len(answers), "peak_mb": usage.ru_maxrss / 1024.0,
            "plus_mb": None, "info": {"status": status_l, "exact": exact,
                                      "distance": [r["distance"] for r in report["results"]],
                                      "stderr": stderr.decode(errors="replace").strip()}}


# ------------------------------------------------------------------------------------------------
# scoring: the same checks and the same metric for every tool
# ------------------------------------------------------------------------------------------------

def _blank(v) -> bool:
    if v is None:
        return True
    try:
        return bool(v != v)
    except (TypeError, ValueError):
        return False


def score(c: dict, answers: list) -> tuple:
    """Per row: (valid, distance or nan, why-invalid or None)."""
    import pandas as pd

    frame = c["test_cols"].iloc[c["rows"]].reset_index(drop=True)
    cols, num = c["columns"], set(c["num"])
    out = []
    ok_rows, ok_idx = [], []
    for i, ans in enumerate(answers):
        if ans is None:
            out.append([False, np.nan, "no answer"])
            continue
        orig = frame.iloc[i]
        why = None
        dist = 0.0
        row = {}
        for col in cols:
            v, o = ans[col], orig[col]
            if col in num:
                if _blank(v):
                    if not _blank(o):
                        why = why or f"{col} blank"
                    row[col] = np.nan
                    continue
                try:
                    fv = float(v)
                except (TypeError, ValueError):
                    why = why or f"{col}={v!r} not a number"
                    continue
                if not np.isfinite(fv):
                    why = why or f"{col} not finite"
                    continue
                if col in c["integer"] and fv != round(fv):
                    why = why or f"{col}={fv} not whole"
                ref = float(c["fill"][col]) if _blank(o) else float(o)
                dist += abs(fv - ref) / c["scale"][col]
                row[col] = fv
            else:
                if _blank(v):
                    if not _blank(o):
                        why = why or f"{col} blank"
                    row[col] = np.nan
                    continue
                if v not in c["categories"][col]:
                    why = why or f"{col}={v!r} unknown category"
                changed = _blank(o) or v != o
                dist += 1.0 if changed else 0.0
                row[col] = v
        out.append([why is None, dist, why])
        if why is None:
            ok_rows.append(row)
            ok_idx.append(i)
    if ok_rows:
        X = pd.DataFrame(ok_rows, columns=cols)
        for col in c["num"]:
            X[col] = X[col].astype(np.float64)
        for col in c["cat"]:
            X[col] = X[col].astype(object)
        pred = c["model"].predict(X)
        for j, i in enumerate(ok_idx):
            if pred[j] != c["target"]:
                out[i][0] = False
                out[i][2] = "model does not predict the target"
    for r in out:
        if not r[0]:
            r[1] = np.nan
    return out


def _fmt(v, spec):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return format(v, spec)


def report(c: dict, results: dict) -> None:
    base = "invaudit"
    scored = {m: (score(c, r["answers"]) if "answers" in r else None) for m, r in results.items()}
    ref = scored.get(base)
    ref_t = results[base].get("elapsed", np.nan) / max(results[base].get("n", 1), 1) if ref else np.nan
    print(f"\n== {c['name']}: {type(c['model'].named_steps['clf']).__name__}, target class {c['target']}, "
          f"{len(c['rows'])} test rows predicted 0 (DiCE: first {min(len(c['rows']), c['n_dice'])}) ==")
    print(f"   integer columns: {', '.join(c['integer']) or 'none'}; scale (1.4826*MAD): "
          + ", ".join(f"{k}={v:.4g}" for k, v in c["scale"].items()))
    head = f"{'method':<16}{'rows':>5}{'valid':>7}{'invalid':>8}{'median dist':>12}{'dist ratio':>11}" \
           f"{'ms/row':>10}{'peak MB':>9}{'+MB':>7}"
    print(head)
    print("-" * len(head))
    summary = {}
    for m, r in results.items():
        if "error" in r:
            print(f"{m:<16}  failed: {r['error'][:160]}")
            continue
        s = scored[m]
        n = len(s)
        valid = np.array([x[0] for x in s], dtype=bool)
        dist = np.array([x[1] for x in s], dtype=np.float64)
        answered = np.array([a is not None for a in r["answers"]], dtype=bool)
        invalid = int((answered & ~valid).sum())
        med = float(np.median(dist[valid])) if valid.any() else np.nan
        ratio = np.nan
        if ref is not None and m != base:
            rd = np.array([x[1] for x in ref[:n]], dtype=np.float64)
            both = valid & np.isfinite(rd) & (rd > 0)
            if both.any():
                ratio = float(np.median(dist[both] / rd[both]))
            r["_both"] = int(both.sum())
        t = r["elapsed"] / max(n, 1)
        summary[m] = (t, ratio, valid.mean() if n else np.nan)
        plus = r.get("plus_mb")
        print(f"{m:<16}{n:>5}{valid.mean():>7.2f}{invalid:>8}{_fmt(med, '.4g'):>12}{_fmt(ratio, '.3g'):>11}"
              f"{t * 1e3:>10.1f}{r['peak_mb']:>9.0f}{_fmt(plus, '.0f'):>7}")
    # invaudit's own claims
    for m in (base, "invaudit CLI"):
        r = results.get(m)
        if not r or "error" in r:
            continue
        st = r["info"]["status"]
        ex = r["info"]["exact"]
        s = scored[m]
        found = [i for i, x in enumerate(st) if x in ("found", "already-target")]
        bad = [i for i in found if not s[i][0]]
        rep = np.array(r["info"]["distance"], dtype=np.float64)
        mine = np.array([x[1] for x in s], dtype=np.float64)
        agree = np.isfinite(rep) & np.isfinite(mine)
        err = float(np.max(np.abs(rep[agree] - mine[agree]))) if agree.any() else np.nan
        statuses = {k: st.count(k) for k in sorted(set(st))}
        print(f"   {m}: {statuses}; marked exact {sum(ex[i] for i in found)}/{len(found)}; "
              f"invalid answers {len(bad)}"
              + (f" ({'; '.join(str(s[i][2]) for i in bad[:3])})" if bad else "")
              + f"; max |reported - rescored distance| {_fmt(err, '.2g')}")
    if "invaudit" in results and "invaudit CLI" in results and "answers" in results["invaudit CLI"]:
        a = np.array([x[1] for x in scored["invaudit"]])
        b = np.array([x[1] for x in scored["invaudit CLI"]])
        same = np.isfinite(a) & np.isfinite(b)
        print(f"   in-process vs CLI distance, max difference: {_fmt(float(np.max(np.abs(a[same] - b[same]))) if same.any() else np.nan, '.2g')}")
    for m, r in results.items():
        errs = r.get("info", {}).get("errors") if "error" not in r else None
        if errs:
            print(f"   {m}: {len(errs)} row(s) raised in DiCE, e.g. {errs[0]}")
    # the ratio line
    if base in summary:
        t0 = summary[base][0]
        for m, (t, ratio, val) in summary.items():
            if m == base:
                continue
            p = f"invaudit is {t / t0:.3g}x faster" if t >= t0 else f"invaudit is {t0 / t:.3g}x slower"
            if np.isfinite(ratio):
                p += (f", {m}'s answers are {ratio:.3g}x farther (median per-row ratio, "
                      f"{results[m]['_both']} rows both answered)")
            p += f"; validity {val:.2f} vs invaudit's {summary[base][2]:.2f}"
            print(f"   ratio vs {m}: {p}")


# ------------------------------------------------------------------------------------------------
# --speed: the typed-row search on the whole pipeline (before) and on encoded arrays (after)
# ------------------------------------------------------------------------------------------------

def _real_penguins():
    """The palmerpenguins table as (train, test) halves, or None without the package."""
    try:
        from importlib.resources import files

        import pandas as pd

        text = (files("palmerpenguins") / "data" / "penguins.csv").read_text()
    except (ImportError, FileNotFoundError, ModuleNotFoundError):
        return None
    import io

    raw = pd.read_csv(io.StringIO(text))
    raw = raw.sample(frac=1.0, random_state=0).reset_index(drop=True)
    raw["species"] = raw["species"].map({"Adelie": 0, "Chinstrap": 1, "Gentoo": 2})
    return raw.iloc[:240].reset_index(drop=True), raw.iloc[240:].reset_index(drop=True)


def speed_cases(n: int, only=None) -> list:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    finals = {
        "forest": lambda: RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0, n_jobs=1),
        "hgb": lambda: HistGradientBoostingClassifier(max_iter=100, random_state=0),
        "mlp": lambda: MLPClassifier((16,), max_iter=2000, random_state=0),
        "svc": lambda: SVC(probability=True, random_state=0),
    }
    import pandas as pd

    data = [("credit", pd.read_csv(SAMPLES / "credit_train.csv"), pd.read_csv(SAMPLES / "credit_test.csv"),
             "approved", ["income", "age", "n_loans"], ["employment", "housing"], 1)]
    peng = _real_penguins()
    pname = "penguins"
    if peng is None:
        peng, pname = _penguins(seed=0), "penguins-synthetic"
    data.append((pname, peng[0], peng[1], "species", ["bill_length_mm", "bill_depth_mm", "flipper_length_mm",
                                                     "body_mass_g"], ["island", "sex"], 1))
    cases = []
    for dname, train, test, label, num, cat, target in data:
        cols = num + cat
        train = train.astype({c: object for c in cat})
        test = test.astype({c: object for c in cat})
        for fname, make in finals.items():
            if only and f"{dname}-{fname}" not in only:
                continue
            model = _pipeline(num, cat, make())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(train[cols], train[label])
            pred = model.predict(test[cols])
            rows = np.flatnonzero(pred != target)[:n]
            scale, bounds, integer = {}, {}, []
            for col in num:
                v = train[col].to_numpy(dtype=np.float64)
                v = v[np.isfinite(v)]
                sd = MAD_C * float(np.median(np.abs(v - np.median(v))))
                scale[col] = sd if sd > 0 and np.isfinite(sd) else 1.0
                bounds[col] = (float(v.min()), float(v.max()))
                if np.all(v == np.round(v)):
                    integer.append(col)
            frame = test[cols].iloc[rows].reset_index(drop=True)
            for col in cat:
                frame[col] = frame[col].where(frame[col].notna(), np.nan)
            cases.append(dict(name=f"{dname}-{fname}", model=model, frame=frame, target=target, scale=scale,
                              bounds=bounds, integer=integer))
    return cases


def speed_worker(payload_path: str, mode: str, out_path: str) -> None:
    """One typed counterfactual + margin run, ``mode`` "before" (whole pipeline per call) or "after"."""
    with open(payload_path, "rb") as fh:
        c = pickle.load(fh)
    from threadpoolctl import threadpool_limits

    import invaudit.counterfactual.tabular as typed_cf
    from invaudit.margins._tabular import tabular_margins
    from invaudit.models.tabular import split_tabular

    typed_cf.BATCHED = mode == "after"
    tm = split_tabular(c["model"], integer_columns=c["integer"])
    tgt = int(np.flatnonzero(np.asarray(tm.classes) == c["target"])[0])
    kw = dict(norm="l1", bounds=c["bounds"], scale=c["scale"], seed=0)

    def key(r):
        return (r.status.tolist(), np.nan_to_num(r.distance, nan=-1.0).tolist(), r.exact.tolist(),
                r.method.tolist(), r.points.astype(str).values.tolist())

    base = _rss_mb()
    with threadpool_limits(limits=1):   # one core per worker: CPU seconds comparable on a loaded machine
        c0, w0 = time.process_time(), time.perf_counter()
        cf = typed_cf.tabular_counterfactuals(tm, c["frame"], target=tgt, **kw)
        c1, w1 = time.process_time(), time.perf_counter()
        mg = tabular_margins(tm, c["frame"], **kw)
        c2, w2 = time.process_time(), time.perf_counter()
    out = {"cf_cpu": c1 - c0, "cf_wall": w1 - w0, "mg_cpu": c2 - c1, "mg_wall": w2 - w1,
           "key": (key(cf), key(mg.counterfactuals)), "found": int((cf.status == "found").sum()),
           "margins": int(np.isfinite(mg.margin).sum()), "n": len(c["frame"]),
           "peak_mb": _maxrss_mb(), "plus_mb": max(0.0, _maxrss_mb() - base)}
    with open(out_path, "wb") as fh:
        pickle.dump(out, fh)


def run_speed(n: int, only=None) -> None:
    import sklearn

    print(f"typed-row searches, before (whole pipeline per call) / after (encoded arrays): scikit-learn "
          f"{sklearn.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    print("per row: counterfactual (target 1, L1, scale mad, bounds data, whole numbers) and margin (any other "
          "class); CPU seconds in a worker process with BLAS/OpenMP on one thread; peak MB = ru_maxrss")
    head = (f"{'case':<22}{'rows':>5}{'cf CPU s/row':>17}{'x':>6}{'margin CPU s/row':>19}{'x':>6}"
            f"{'peak MB':>13}{'identical':>11}{'found':>7}")
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory(prefix="invaudit-speed-") as td:
        tmp = Path(td)
        for c in speed_cases(n, only):
            payload = tmp / f"{c['name']}.pkl"
            with open(payload, "wb") as fh:
                pickle.dump(c, fh)
            res = {}
            for mode in ("before", "after"):
                out = tmp / f"{c['name']}.{mode}.out"
                proc = subprocess.run([sys.executable, __file__, "--speed-worker", str(payload), mode, str(out)],
                                      capture_output=True, cwd=str(ROOT))
                if proc.returncode != 0:
                    res[mode] = {"error": proc.stderr.decode(errors="replace").strip().splitlines()[-1:]}
                    continue
                with open(out, "rb") as fh:
                    res[mode] = pickle.load(fh)
            b, a = res["before"], res["after"]
            if "error" in b or "error" in a:
                print(f"{c['name']:<22} failed: {b.get('error') or a.get('error')}")
                continue
            k = max(a["n"], 1)
            print(f"{c['name']:<22}{a['n']:>5}{b['cf_cpu'] / k:>8.3f} ->{a['cf_cpu'] / k:>6.3f}"
                  f"{b['cf_cpu'] / max(a['cf_cpu'], 1e-9):>6.1f}{b['mg_cpu'] / k:>9.3f} ->{a['mg_cpu'] / k:>7.3f}"
                  f"{b['mg_cpu'] / max(a['mg_cpu'], 1e-9):>6.1f}{b['peak_mb']:>7.0f} ->{a['peak_mb']:>4.0f}"
                  f"{'yes' if a['key'] == b['key'] else 'NO':>11}{a['found']:>4}/{a['n']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=30, help="test rows predicted 0 per linear data set")
    ap.add_argument("--n-forest", type=int, default=10, help="rows for the random forest")
    ap.add_argument("--n-dice", type=int, default=20, help="of those, rows given to DiCE (it is slow)")
    ap.add_argument("--methods", default="invaudit,invaudit CLI,dice-random,dice-genetic,dice-kdtree")
    ap.add_argument("--cases", default="credit-logreg,credit-forest,penguins-logreg")
    ap.add_argument("--worker", nargs=3, metavar=("PAYLOAD", "METHOD", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--speed", action="store_true", help="only the typed-row search timing, before/after")
    ap.add_argument("--n-speed", type=int, default=8, help="rows per --speed case")
    ap.add_argument("--speed-cases", default="", help="--speed: only these cases (e.g. credit-forest,penguins-mlp)")
    ap.add_argument("--speed-worker", nargs=3, metavar=("PAYLOAD", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    if args.speed_worker:
        speed_worker(*args.speed_worker)
        return
    if args.speed:
        run_speed(args.n_speed, {s.strip() for s in args.speed_cases.split(",") if s.strip()})
        return
    import dice_ml  # noqa: F401  (fail early when the bench extra is missing)
    import sklearn

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    wanted = [s.strip() for s in args.cases.split(",")]
    t_all = time.perf_counter()
    print(f"tabular counterfactuals: invaudit vs DiCE {getattr(dice_ml, '__version__', '0.12')} "
          f"(scikit-learn {sklearn.__version__}, {os.cpu_count()} cores)")
    print("metric: L1, numeric |dx|/(1.4826*MAD of train), +1 per changed categorical column; bounds = train "
          "ranges; integer columns kept whole; blanks frozen.")
    print(f"rows: first {args.n} test rows predicted 0 (forest: {args.n_forest}); DiCE gets the first "
          f"{args.n_dice} of them (forest: {min(args.n_dice, args.n_forest)})")
    print("DiCE: total_CFs=1, desired_class=1, posthoc_sparsity_algorithm='binary' for all methods (the 'linear' "
          "default of random/kdtree took >9 min for 3 credit rows), otherwise defaults (random: sample_size=1000, "
          "random_seed=0; genetic: maxiterations=500; posthoc_sparsity_param=0.1); blanks filled with the "
          "pipeline's imputer values for DiCE only (it refuses NaN) and frozen via features_to_vary.")
    with tempfile.TemporaryDirectory(prefix="invaudit-bench-") as td:
        tmp = Path(td)
        cases = [c for c in build_cases(tmp, args.n, args.n_dice, args.n_forest) if c["name"] in wanted]
        for c in cases:
            payload = tmp / f"{c['name']}.payload.pkl"
            with open(payload, "wb") as fh:
                pickle.dump({k: v for k, v in c.items() if k not in ("test",)}, fh)
            results = {}
            for m in methods:
                if m == "invaudit CLI":
                    results[m] = run_cli(c)
                else:
                    results[m] = run_worker(c["name"], payload, m, tmp)
            report(c, results)
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
