"""``invaudit audit --init MODEL``: a commented starter suite for a model."""

from __future__ import annotations

from pathlib import Path


def starter_suite(model_path, *, trust: bool = False) -> str:
    from ..io.model_file import load_model
    from ..models import adapt
    from ..models.capabilities import capabilities

    loaded = load_model(model_path, trust=trust)
    form = adapt(loaded.estimator)
    caps = {c.command: c for c in capabilities(form)}
    p = Path(model_path)
    stem = p.stem
    target = form.classes[-1]
    lines = [
        f"# invaudit audit suite for {p.name} ({form.describe()['estimator']}, {form.kind} form).",
        "# Paths are relative to this file. Run: invaudit audit THIS.yaml [--junit report.xml]",
        f"model: {p.name}",
        f"sha256: {loaded.sha256}   # pin the file; remove to accept any version",
        f"train: {stem}_train.csv    # training data (edit)",
        f"test: {stem}_test.csv      # held-out data (edit)",
        "label_column: target      # the CSV column with the labels",
        "checks:",
    ]

    def block(cmd, text):
        avail = caps[cmd].available if cmd in caps else "yes"
        prefix = "" if avail == "yes" else "  # (not available for this model form: {})\n".format(avail)
        lines.append(prefix + text.rstrip())

    block("margin", """  - kind: margin              # adversarial robustness
    norm: l2
    eps: 0.5                  # robust accuracy at this epsilon ...
    min_robust_accuracy: 0.8  # ... must be at least this
    min_margin: 0.0           # and no row may sit closer to the boundary than this""")
    block("counterfactual", f"""  - kind: counterfactual      # recourse: can rows reach class {target!r}?
    target: {target!r}
    confidence: 0.5
    min_feasible: 0.9         # share of rows with a feasible counterfactual
    max_median_distance: 10.0""")
    block("influence", """  - kind: influence           # no training row dominates a test prediction
    max_share: 0.5            # of a test row's total absolute influence
    test_rows: 20             # how many test rows to examine""")
    block("mislabel", """  - kind: mislabel            # suspicious training labels
    max_suspects: 10          # at most this many rows ...
    min_score: 5.0            # ... may score above this""")
    block("explain", """  - kind: explain             # several sufficient explanations per row
    rows: 20
    confidence: 0.5
    min_multiple: 0.5         # share of rows with two or more disjoint explanations""")
    return "\n".join(lines) + "\n"
