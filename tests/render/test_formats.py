import io
import json

import pytest
from rich.console import Console

from invaudit.io import envelope
from invaudit.render import VIEWS, Format, render
from invaudit.render.markdown import to_markdown

MODEL = {"path": "m.joblib", "sha256": "0" * 64, "estimator": "LogisticRegression", "form": "linear",
         "classes": [0, 1], "n_features": 2, "feature_names": ["a", "b"], "preprocessing": []}

RESULTS = {
    "info": [{"command": "margin", "available": "yes", "exact": "yes", "method": "m"}],
    "counterfactual": [{"row": 0, "original_class": 0, "target_class": 1, "status": "found",
                        "counterfactual": [1.0, 2.0], "delta": [0.5, 0.0], "distance": 0.5, "norm": "l2",
                        "target_probability": 0.5, "predicted_class": 1, "exact": True, "method": "m",
                        "changed_features": ["a"]}],
    "margin": [{"row": 0, "predicted_class": 0, "margin": 0.2, "norm": "l2", "nearest_class": 1,
                "perturbation": [0.1, 0.1], "exact": True, "lower_bound": 0.2, "method": "m"}],
    "influence": [{"test_row": 0, "helpful": [{"train_row": 3, "loss_change_if_removed": 0.1}],
                   "harmful": [{"train_row": 4, "loss_change_if_removed": -0.1}]}],
    "mislabel": [{"train_row": 3, "score": 2.0, "given_label": 0, "suggested_label": 1}],
    "explain": [{"row": 0, "predicted_class": 1, "explanations": [{"features": [0], "size": 1,
                 "confidence": 0.9, "sufficient": True}], "responsibility": [1.0, 0.0]}],
    "audit": [{"name": "m", "kind": "margin", "passed": True, "value": 0.9, "threshold": ">= 0.8",
               "details": {}}],
}


def report(command):
    return envelope(command, model=MODEL, data=None, params={"baseline": [0, 0]}, results=RESULTS[command],
                    summary={"median_margin": 0.2}, elapsed_s=0.0)


@pytest.mark.parametrize("fmt", list(Format))
@pytest.mark.parametrize("command", sorted(VIEWS))
def test_every_format_renders_every_command(fmt, command):
    buf = io.StringIO()
    render(report(command), fmt, Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    assert text.strip()
    if fmt is Format.json:
        assert json.loads(text)["command"] == command
    else:
        # the first result's row/rank value appears in the human output
        first = RESULTS[command][0]
        key = next(k for k in ("row", "test_row", "train_row", "name", "command") if k in first)
        assert str(first[key]) in text


def test_markdown_table_is_well_formed():
    md = to_markdown(report("counterfactual"))
    rows = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(rows) == 3 and len({r.count("|") for r in rows}) == 1


def test_values_are_never_read_as_markup():
    rep = report("margin")
    rep["summary"] = {"robust_accuracy": {"0.5": {"lower": 0.25, "upper": 0.75}}}
    buf = io.StringIO()
    render(rep, Format.table, Console(file=buf, width=200, color_system=None))
    assert "[lower 0.25, upper 0.75]" in buf.getvalue()
