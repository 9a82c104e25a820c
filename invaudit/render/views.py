"""What each command's report shows to a person: a title, summary lines, one table of results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np


def fmt_num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return ", ".join(f"{k.replace('_', ' ')} {fmt_num(x, digits)}" for k, x in v.items())
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)


def fmt_list(v: Any, limit: int = 6) -> str:
    if v is None:
        return "-"
    items = v if isinstance(v, (list, tuple)) else list(v)
    more = f" +{len(items) - limit}" if len(items) > limit else ""
    return ", ".join(str(x) for x in items[:limit]) + more if items else "none"


@dataclass(frozen=True)
class Column:
    header: str
    get: Callable[[dict], Any]
    justify: str = "right"


def _all_rows(report: dict) -> list:
    return list(report.get("results", []))


@dataclass(frozen=True)
class View:
    title: Callable[[dict], str]
    columns: list
    summary: Callable[[dict], list] = lambda report: []
    rows: Callable[[dict], list] = _all_rows
    max_rows: Optional[int] = 200
    extras: list = field(default_factory=list)  # callables report -> list of (heading, text) blocks
    # (report, limit, fields) -> (rows to show, how many rows there are): what a table prints,
    # without turning every result into a dict (results held as columns stay columns)
    select: Optional[Callable[..., tuple]] = None
    # the result fields the columns read (None: every field): rows held as columns become dicts
    # of these alone, never of a row's long vectors
    fields: Optional[frozenset] = None

    def shown(self, report: dict) -> tuple:
        """``(rows, total)``: the rows a table or Markdown shows (at most ``max_rows``), and how
        many there are in all."""
        from invaudit.io.report import Columns

        results = report.get("results", [])
        if self.select is not None:
            shown, total = self.select(report, self.max_rows, self.fields)
        elif isinstance(results, Columns) and self.rows is _all_rows:
            k = len(results) if self.max_rows is None else min(len(results), self.max_rows)
            shown, total = results.rows(range(k), self.fields), len(results)
        else:
            rows = self.rows(report)
            shown, total = (rows if self.max_rows is None else rows[: self.max_rows]), len(rows)
        # a streamed run keeps only the rows it could show, and says how many there were
        return shown, getattr(results, "n_total", total)


def _row(x: dict):
    """A row as the user names it: its --id-column value when there is one, else its number."""
    return x.get("row_id", x["row"])


def _schema_line(schema: list) -> str:
    """``income (numeric), employment (categorical: retired, salaried +2)``."""
    parts = []
    for c in schema:
        if c["kind"] == "categorical":
            parts.append(f"{c['name']} (categorical: {fmt_list(c.get('categories') or [], 3)})")
        else:
            parts.append(f"{c['name']} ({c['kind']})")
    return "; ".join(parts)


def _model_line(report: dict) -> str:
    m = report.get("model") or {}
    if m.get("input_schema"):
        return f"{m.get('estimator', '?')} (typed rows, {m.get('final_form') or 'black-box'} final estimator)"
    return f"{m.get('estimator', '?')} ({m.get('form', '?')} form)"


def _scalar(v) -> bool:
    return v is None or isinstance(v, (int, float, str, bool))


def _fmt_value(v) -> str:
    if isinstance(v, dict):
        return "[" + fmt_num({k: x for k, x in v.items() if _scalar(x)}) + "]"
    return fmt_num(v)


def _summary_items(report: dict) -> list:
    """Scalar summary entries, and dicts of scalars flattened one level. Lists of records and
    notes (already printed on stderr) stay in the JSON report."""
    s = report.get("summary") or {}
    items = []
    for k, v in s.items():
        if k == "notes":
            continue
        if isinstance(v, list) and v and isinstance(v[0], dict):
            continue
        if isinstance(v, list) and v and isinstance(v[0], (list, tuple)):
            # a matrix (mislabel's noise_transition): its shape here, its numbers in the JSON report
            items.append((k.replace("_", " "), f"{len(v)} x {len(v[0])} (in the JSON report)"))
            continue
        if isinstance(v, dict):
            prefix = "eps " if k == "robust_accuracy" else ""
            v = ", ".join(f"{prefix}{kk}: {_fmt_value(vv)}" for kk, vv in v.items()
                          if _scalar(vv) or isinstance(vv, dict))
        elif isinstance(v, list):
            v = fmt_list(v)
        else:
            v = fmt_num(v)
        items.append((k.replace("_", " "), v))
    return items


INFO = View(
    title=lambda r: f"{r['model']['path']}: {_model_line(r)}",
    summary=lambda r: [
        ("classes", fmt_list(r["model"]["classes"], 12)),
        ("features", f"{r['model']['n_features']}"
         + (f" ({fmt_list(r['model']['feature_names'], 8)})" if r["model"].get("feature_names") else " (unnamed)")),
        ("preprocessing", fmt_list(r["model"].get("preprocessing")) if r["model"].get("preprocessing") else "none"),
        *([("input", _schema_line(r["model"]["input_schema"]))] if r["model"].get("input_schema") else []),
        ("sha256", r["model"]["sha256"]),
    ],
    columns=[
        Column("command", lambda x: x["command"], "left"),
        Column("available", lambda x: x["available"], "left"),
        Column("exact", lambda x: x["exact"], "left"),
        Column("how", lambda x: x["method"], "left"),
    ],
)

COUNTERFACTUAL = View(
    title=lambda r: f"counterfactuals: {_model_line(r)}, target {r['params'].get('target')}"
    + (f", p >= {r['params']['confidence']}" if r["params"].get("confidence") is not None else ""),
    summary=_summary_items,
    fields=frozenset({"row", "row_id", "original_class", "target_class", "status", "distance",
                      "target_probability", "exact", "changes", "changed_features"}),
    columns=[
        Column("row", _row),
        Column("from", lambda x: x["original_class"]),
        Column("to", lambda x: x["target_class"]),
        Column("status", lambda x: x["status"], "left"),
        Column("distance", lambda x: x["distance"]),
        Column("p(target)", lambda x: x["target_probability"]),
        Column("exact", lambda x: x["exact"], "left"),
        Column("changed", lambda x: fmt_list(x["changes"], 3) if x.get("changes") is not None
               else fmt_list(x["changed_features"], 4), "left"),
    ],
)

def _smallest_margins(report: dict, limit: Optional[int], fields=None) -> tuple:
    """The rows with the smallest margins first (no margin: last); from columns, only the rows
    shown become dicts."""
    from invaudit.io.report import Columns, smallest_first

    results = report["results"]
    if not isinstance(results, Columns):
        rows = sorted(results, key=lambda x: (x["margin"] is None, x["margin"] or 0.0))
        return (rows if limit is None else rows[:limit]), len(rows)
    m = np.asarray(results.column("margin"), dtype=np.float64)
    key = np.where(np.isfinite(m), m, np.inf)
    return results.rows(smallest_first(key, limit).tolist(), fields), len(results)


MARGIN = View(
    title=lambda r: f"margins ({r['params'].get('norm')}): {_model_line(r)}",
    summary=_summary_items,
    rows=lambda r: _smallest_margins(r, None)[0],
    select=_smallest_margins,
    max_rows=20,
    fields=frozenset({"row", "row_id", "label", "predicted_class", "margin", "lower_bound", "nearest_class",
                      "exact"}),
    columns=[
        Column("row", _row),
        Column("label", lambda x: x.get("label")),
        Column("predicted", lambda x: x["predicted_class"]),
        Column("margin", lambda x: x["margin"]),
        Column("lower bound", lambda x: x["lower_bound"]),
        Column("nearest", lambda x: x["nearest_class"]),
        Column("exact", lambda x: x["exact"], "left"),
    ],
)

INFLUENCE = View(
    title=lambda r: f"influence: {_model_line(r)}",
    summary=_summary_items,
    rows=lambda r: [
        {"test_row": x["test_row"], **({"test_row_id": x["test_row_id"]} if "test_row_id" in x else {}),
         "kind": kind, **t}
        for x in r["results"] for kind in ("helpful", "harmful") for t in x[kind]
    ],
    columns=[
        Column("test row", lambda x: x.get("test_row_id", x["test_row"])),
        Column("", lambda x: x["kind"], "left"),
        Column("train row", lambda x: x.get("train_row_id", x["train_row"])),
        Column("loss change if removed", lambda x: x["loss_change_if_removed"]),
    ],
)

MISLABEL = View(
    title=lambda r: f"suspect labels ({r['params'].get('method')}): {_model_line(r)}",
    summary=_summary_items,
    max_rows=50,
    columns=[
        Column("rank", lambda x: x.get("rank")),
        Column("train row", lambda x: x.get("train_row_id", x["train_row"])),
        Column("score", lambda x: x["score"]),
        Column("given", lambda x: x["given_label"]),
        Column("suggested", lambda x: x["suggested_label"]),
    ],
)

SHADES = "·░▒▓█"


def _grid(values, shape, chars) -> str:
    h, w = shape
    return "\n".join("".join(chars(values[r * w + c]) * 2 for c in range(w)) for r in range(h))


def explain_images(report: dict, limit: int = 4) -> list:
    """For image rows (``--shape``): the responsibility heat map and each explanation as grids."""
    shape = report["params"].get("shape")
    if not shape:
        return []
    blocks = []
    results = report["results"]
    for res in (results[i] for i in range(min(limit, len(results)))):
        resp = res["responsibility"]
        top = max(resp) or 1.0
        heat = _grid(resp, shape, lambda v: SHADES[min(4, int(round(4 * v / top)))])
        grids = [heat]
        for e in res["explanations"]:
            keep = set(e["features"])
            grids.append(_grid([i in keep for i in range(len(resp))], shape, lambda v: "█" if v else "·"))
        lines = [g.split("\n") for g in grids]
        joined = "\n".join("   ".join(parts) for parts in zip(*lines))
        blocks.append((f"row {res['row']}: responsibility, then {len(res['explanations'])} explanation(s)", joined))
    return blocks


EXPLAIN = View(
    title=lambda r: f"explanations: {_model_line(r)}",
    summary=_summary_items,
    rows=lambda r: [
        {"row": x["row"], **({"row_id": x["row_id"]} if "row_id" in x else {}),
         "predicted_class": x["predicted_class"], "k": k, **e}
        for x in r["results"] for k, e in enumerate(x["explanations"])
    ],
    columns=[
        Column("row", _row),
        Column("class", lambda x: x["predicted_class"]),
        Column("#", lambda x: x["k"] + 1),
        Column("size", lambda x: x["size"]),
        Column("confidence", lambda x: x["confidence"]),
        Column("sufficient", lambda x: x["sufficient"], "left"),
        Column("features", lambda x: fmt_list(x.get("columns") or x["features"], 10), "left"),
    ],
    extras=[explain_images],
)

AUDIT = View(
    title=lambda r: f"audit {r['params'].get('suite')}: {_model_line(r)}",
    summary=_summary_items,
    columns=[
        Column("check", lambda x: x["name"], "left"),
        Column("kind", lambda x: x.get("kind"), "left"),
        Column("model", lambda x: x.get("model"), "left"),
        Column("passed", lambda x: {True: "PASS", False: "FAIL", None: "not run"}[x["passed"]], "left"),
        Column("value", lambda x: x["value"]),
        Column("threshold", lambda x: x["threshold"], "left"),
    ],
)

VIEWS = {
    "info": INFO, "counterfactual": COUNTERFACTUAL, "margin": MARGIN, "influence": INFLUENCE,
    "mislabel": MISLABEL, "explain": EXPLAIN, "audit": AUDIT,
}


def view_for(report: dict) -> View:
    return VIEWS[report["command"]]
