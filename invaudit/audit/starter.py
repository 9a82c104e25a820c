"""``invaudit audit --init MODEL``: a commented starter suite for a model.

The suite must pass its own first run's gate (exit 0 or 1, never a broken suite): it names data
files it found next to the model and could load against it, writes class labels as the YAML
scalars they are, and contains only the checks this model supports (the answer ``info`` gives).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

#: Rows each starter check looks at: enough to mean something, few enough for a first CI run.
STARTER_ROWS = 10
#: Seconds for the whole starter suite (``time_limit:``); a check still running then fails.
STARTER_TIME_LIMIT = 900
_DATA_SUFFIXES = (".csv", ".npz")
_LABEL_NAMES = ("target", "label", "labels", "y", "class")


def yaml_scalar(value) -> str:
    """``value`` (a class label: numpy scalar, int, float, bool or str) as a YAML scalar that reads
    back as the same value: ``1``, ``1.5``, ``true``, ``cat``; strings YAML would read as something
    else are quoted (``'yes'``, ``'1.0'``, ``'null'``)."""
    if isinstance(value, np.generic):
        value = value.item()
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
    text = text[:-3].strip() if text.endswith("\n...") else text
    if "\n" in text or yaml.safe_load(text) != value:  # pragma: no cover - defensive
        text = yaml.safe_dump(str(value), default_style='"').strip()
    return text


def starter_suite(model_path, *, trust: bool = False) -> str:
    from ..io.model_file import load_model
    from ..models import adapt
    from ..models.tabular import split_tabular
    from .registry import REGISTRY

    loaded = load_model(model_path, trust=trust)
    form = adapt(loaded.estimator)
    tm = split_tabular(loaded.estimator)  # a model that reads typed rows (None: numeric arrays)
    p = Path(model_path)
    train = _find_data(p, form, "train", tm)
    test = _find_data(p, form, "test", tm) or train
    label_column = next((d[1] for d in (train, test) if d and d[1]), None)
    id_column = next((d[3] for d in (train, test) if d and d[3]), None)
    has_proba = bool(form.has_proba if tm is None else tm.has_proba)
    target = form.classes[-1]
    estimator = form.describe()["estimator"]
    shown_form = (f"{form.kind} form" if tm is None else
                  f"reads typed rows, final estimator {getattr(tm.final_form, 'kind', None) or 'not separable'}")

    lines = [
        f"# invaudit audit suite for {p.name} ({estimator}, {shown_form}).",
        "# Paths are relative to this file. Run: invaudit audit THIS.yaml --junit invaudit.xml --json invaudit.json",
        f"model: {yaml_scalar(p.name)}",
        f"sha256: \"{loaded.sha256}\"  # pin: any other version of the file is refused (update it after retraining)",
        ("trust: true   # you vouch for this file: it is loaded without the allowlist (a pickle can run code)"
         if trust else
         "# trust: true  # only for a file you vouch for that the allowlist refuses (a pickle can run code)"),
    ]
    for which, found in (("train", train), ("test", test)):
        if found is None:
            lines.append(f"{which}: {yaml_scalar(p.stem + '_' + which + '.csv')}  # edit: no {which} data next to the "
                         "model could be read against it")
        else:
            lines.append(f"{which}: {yaml_scalar(found[0].name)}")
    if label_column is not None:
        lines.append(f"label_column: {yaml_scalar(label_column)}  # the CSV column with the labels")
    if id_column is not None:
        lines.append(f"id_column: {yaml_scalar(id_column)}  # the CSV column naming the rows (not a feature)")
    lines += [f"time_limit: {STARTER_TIME_LIMIT}  # seconds for the whole suite; a check still running then fails "
              "(checks take time_limit: too)",
              "checks:"]

    from ..influence import supports
    from ..triage import available_methods

    # Each test row costs a network one iterative Hessian solve (seconds on a 5k-parameter MLP).
    # (a model that reads typed rows: influence is on its final estimator, behind the ColumnTransformer)
    influence_form = form if tm is None else tm.final_form
    influence_rows = STARTER_ROWS if influence_form is not None and supports(influence_form) == "logistic" else 3
    # Without a convex objective the methods are in-sample loss and k-fold refits (confidence):
    # the starter takes the one that does not refit the model.
    # mislabel's default, combined, scores -log P(the given label is right); where its model source
    # would refit the model 5 times (no convex loss), the starter takes in-sample loss instead.
    cheap = tm is not None or "pruned-loo-loss" in available_methods(form) or not getattr(form, "has_proba", True)
    mislabel_method = ([
        "    min_score: 2.3            # ... may score above this (-log P(label right): P < 10%)",
        "    method: combined          # the model, neighbours, a forest, a kernel model, Gaussian mixtures"]
        if cheap else [
        "    min_score: 5.0            # ... may score above this",
        "    method: loss              # in-sample loss; 'combined' is sharper but refits the model 5 times"])
    test_labels = bool(test and test[2])
    train_labels = bool(train and train[2])
    # Typed rows: numeric columns in their own units (income next to age) make one epsilon
    # meaningless; measured in standard deviations of the training rows, they share one scale.
    typed_scale = (["    scale: std                # numeric columns in standard deviations of the train file"]
                   if tm is not None and train is not None else [])
    # Typed rows' explanations are against the typical training row of the other classes.
    typed_baseline = (["    baseline: zero            # no train file: numeric 0, each category column its first category"]
                      if tm is not None and train is None else [])
    blocks = {
        "margin": ["  - kind: margin              # adversarial robustness", "    norm: l2",
                   f"    rows: {STARTER_ROWS}"] + typed_scale
        + (["    eps: 0.5                  # robust accuracy at this epsilon ...",
            "    min_robust_accuracy: 0.5  # ... must be at least this"] if test_labels else [])
        + ["    min_margin: 0.0           # no row may sit closer to the boundary than this"],
        "counterfactual": [f"  - kind: counterfactual      # recourse: can rows reach class {yaml_scalar(target)}?",
                           f"    target: {yaml_scalar(target)}", f"    rows: {STARTER_ROWS}"] + typed_scale
        + (["    confidence: 0.5"] if has_proba else [])
        + ["    min_feasible: 0.5         # share of rows with a feasible counterfactual",
           "    time_limit: 300           # seconds for this check"],
        "influence": ["  - kind: influence           # no training row dominates a test prediction",
                      "    max_share: 0.5            # of a test row's total absolute influence",
                      f"    test_rows: {influence_rows}"],
        "mislabel": ["  - kind: mislabel            # suspicious training labels",
                     "    max_suspects: 10          # at most this many rows ..."] + mislabel_method,
        "explain": ["  - kind: explain             # several sufficient explanations per row",
                    f"    rows: {STARTER_ROWS}"] + typed_baseline
        + (["    confidence: 0.5"] if has_proba else [])
        + ["    min_multiple: 0.5         # share of rows with two or more disjoint explanations"],
    }
    needs = {"margin": test is not None, "counterfactual": test is not None, "explain": test is not None,
             "influence": train_labels and test is not None, "mislabel": train_labels}
    left_out = []
    for kind in ("margin", "counterfactual", "influence", "mislabel", "explain"):
        why = REGISTRY[kind].unsupported(form, tm)
        if why is None and not needs[kind]:
            why = f"{kind} needs {'labelled training' if kind in ('influence', 'mislabel') else 'test'} data"
        if why is None:
            lines += blocks[kind]
        else:
            left_out.append(f"# not included: {why}")
    return "\n".join(lines + left_out) + "\n"


def _find_data(model_path: Path, form, which: str, tm=None) -> Optional[tuple]:
    """The data file next to the model most likely meant as its ``which`` ("train" or "test") set:
    a CSV or NPZ with ``which`` in its name that loads against the model (with its typed input
    schema when ``tm``, its :func:`~invaudit.models.tabular.split_tabular` view, is given),
    preferring the longest name shared with the model's. Returns ``(path, label_column or None,
    has_labels, id_column or None)``."""
    from ..errors import InvauditError
    from ..io import load_data

    folder = model_path.parent
    candidates = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in _DATA_SUFFIXES
                  and which in f.stem.lower()] if folder.is_dir() else []
    schema = None if tm is None else [(c.name, c.kind, c.categories) for c in tm.columns]
    names = form.feature_names if tm is None else [c.name for c in tm.columns]

    def shared(f: Path) -> int:
        n = 0
        for a, b in zip(f.stem, model_path.stem):
            if a != b:
                break
            n += 1
        return n

    for f in sorted(candidates, key=lambda f: (-shared(f), f.suffix.lower() != ".csv", f.name)):
        splits = _label_and_id(f, form, names) if f.suffix.lower() == ".csv" else [(None, None)]
        for label_column, id_column in splits:
            try:
                ds = load_data(f, n_features=None if schema is not None else form.n_features,
                               feature_names=form.feature_names, classes=form.classes,
                               label_column=label_column, id_column=id_column, schema=schema)
            except (InvauditError, ValueError, OSError):
                continue
            return f, label_column, ds.y_index is not None, id_column
    return None


def _label_and_id(path: Path, form, names) -> list:
    """The ways to read a CSV's columns beyond the features, most likely first, as
    ``(label_column, id_column)`` pairs (either None): for a model that knows its feature names,
    one extra column is the labels (or, failing that, row names), two are the labels and an ID
    column (the label one a conventional name, else the later one); otherwise
    :func:`_label_column`'s guess."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = [h.strip() for h in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return [(None, None)]
    if names is None:
        return [(_label_column(path, form), None)]
    known = {str(n) for n in names}
    extra = [c for c in header if c not in known]
    if len(extra) == 1:
        return [(extra[0], None), (None, extra[0])]
    if len(extra) == 2:
        a, b = sorted(extra, key=lambda c: (c.lower() not in _LABEL_NAMES, -header.index(c)))
        return [(a, b), (b, a)]
    return [(None, None)]


def _label_column(path: Path, form) -> Optional[str]:
    """The CSV column that holds the labels: the one column that is not a feature of a model that
    knows its feature names, else a conventional name, else the last of n_features + 1 columns."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError):
        return None
    if form.feature_names is not None:
        extra = [c for c in header if c not in set(form.feature_names)]
        return extra[0] if len(extra) == 1 else None
    named = [c for c in header if c.strip().lower() in _LABEL_NAMES]
    if len(named) == 1:
        return named[0]
    if len(header) == form.n_features + 1:
        return header[-1]
    return None
