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
    from .registry import REGISTRY

    loaded = load_model(model_path, trust=trust)
    form = adapt(loaded.estimator)
    p = Path(model_path)
    train = _find_data(p, form, "train")
    test = _find_data(p, form, "test") or train
    label_column = next((d[1] for d in (train, test) if d and d[1]), None)
    has_proba = bool(form.has_proba)
    target = form.classes[-1]
    estimator = form.describe()["estimator"]

    lines = [
        f"# invaudit audit suite for {p.name} ({estimator}, {form.kind} form).",
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
    lines += [f"time_limit: {STARTER_TIME_LIMIT}  # seconds for the whole suite; a check still running then fails "
              "(checks take time_limit: too)",
              "checks:"]

    from ..influence import supports
    from ..triage import available_methods

    # Each test row costs a network one iterative Hessian solve (seconds on a 5k-parameter MLP).
    influence_rows = STARTER_ROWS if supports(form) == "logistic" else 3
    # Without a convex objective the methods are in-sample loss and k-fold refits (confidence):
    # the starter takes the one that does not refit the model.
    mislabel_method = [] if "pruned-loo-loss" in available_methods(form) else [
        "    method: loss              # in-sample loss; 'confidence' is sharper but refits the model 5 times"]
    test_labels = bool(test and test[2])
    train_labels = bool(train and train[2])
    blocks = {
        "margin": ["  - kind: margin              # adversarial robustness", "    norm: l2",
                   f"    rows: {STARTER_ROWS}"]
        + (["    eps: 0.5                  # robust accuracy at this epsilon ...",
            "    min_robust_accuracy: 0.5  # ... must be at least this"] if test_labels else [])
        + ["    min_margin: 0.0           # no row may sit closer to the boundary than this"],
        "counterfactual": [f"  - kind: counterfactual      # recourse: can rows reach class {yaml_scalar(target)}?",
                           f"    target: {yaml_scalar(target)}", f"    rows: {STARTER_ROWS}"]
        + (["    confidence: 0.5"] if has_proba else [])
        + ["    min_feasible: 0.5         # share of rows with a feasible counterfactual",
           "    time_limit: 300           # seconds for this check"],
        "influence": ["  - kind: influence           # no training row dominates a test prediction",
                      "    max_share: 0.5            # of a test row's total absolute influence",
                      f"    test_rows: {influence_rows}"],
        "mislabel": ["  - kind: mislabel            # suspicious training labels",
                     "    max_suspects: 10          # at most this many rows ...",
                     "    min_score: 5.0            # ... may score above this"] + mislabel_method,
        "explain": ["  - kind: explain             # several sufficient explanations per row",
                    f"    rows: {STARTER_ROWS}"]
        + (["    confidence: 0.5"] if has_proba else [])
        + ["    min_multiple: 0.5         # share of rows with two or more disjoint explanations"],
    }
    needs = {"margin": test is not None, "counterfactual": test is not None, "explain": test is not None,
             "influence": train_labels and test is not None, "mislabel": train_labels}
    left_out = []
    for kind in ("margin", "counterfactual", "influence", "mislabel", "explain"):
        why = REGISTRY[kind].unsupported(form)
        if why is None and not needs[kind]:
            why = f"{kind} needs {'labelled training' if kind in ('influence', 'mislabel') else 'test'} data"
        if why is None:
            lines += blocks[kind]
        else:
            left_out.append(f"# not included: {why}")
    return "\n".join(lines + left_out) + "\n"


def _find_data(model_path: Path, form, which: str) -> Optional[tuple]:
    """The data file next to the model most likely meant as its ``which`` ("train" or "test") set:
    a CSV or NPZ with ``which`` in its name that loads against the model, preferring the longest
    name shared with the model's. Returns ``(path, label_column or None, has_labels)``."""
    from ..errors import InvauditError
    from ..io import load_data

    folder = model_path.parent
    candidates = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in _DATA_SUFFIXES
                  and which in f.stem.lower()] if folder.is_dir() else []

    def shared(f: Path) -> int:
        n = 0
        for a, b in zip(f.stem, model_path.stem):
            if a != b:
                break
            n += 1
        return n

    for f in sorted(candidates, key=lambda f: (-shared(f), f.suffix.lower() != ".csv", f.name)):
        label_column = _label_column(f, form) if f.suffix.lower() == ".csv" else None
        try:
            ds = load_data(f, n_features=form.n_features, feature_names=form.feature_names,
                           classes=form.classes, label_column=label_column)
        except (InvauditError, ValueError, OSError):
            continue
        return f, label_column, ds.y_index is not None
    return None


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
