"""``invaudit info MODEL``: what invaudit sees in a model file and which answers are exact."""

from __future__ import annotations

from invaudit.models.capabilities import capabilities
from invaudit.render import Format

from ._common import FormatOpt, JsonOut, ModelArg, Quiet, ReportSchemaOne, Run, Sha256, Trust


def info(model: ModelArg, trust: Trust = False, sha256: Sha256 = None,
         format: FormatOpt = Format.table, json: JsonOut = None, schema: ReportSchemaOne = None,
         quiet: Quiet = False) -> None:
    """Say what the model is, which form invaudit reads it as, and which answers are exact."""
    run = Run("info", model, trust=trust, sha256=sha256)
    if run.tabular is not None:
        from invaudit.models.capabilities import tabular_capabilities

        results = [c.as_dict() for c in tabular_capabilities(run.tabular)]
    else:
        results = [c.as_dict() for c in capabilities(run.form)]
        from ._common import NUMERIC_ANSWER_COMMANDS

        from invaudit.models._light_linear import is_light

        # the same refusal as the commands' (Run); a light-loaded linear model has no such splits
        if not is_light(run.form) and _has_categorical_splits(run.loaded.estimator):
            for r in results:
                if r["command"] in NUMERIC_ANSWER_COMMANDS:
                    r.update(available="no", exact="-", method="the model splits on categories that invaudit cannot "
                             "read as typed columns here; answers would move category codes as numbers")
    summary = {"form": run.form.kind, "trusted": run.loaded.trusted}
    if run.form.kind == "black-box" and run.tabular is None:
        from invaudit.models.blackbox import PREDICT_ONLY, is_predict_only

        if is_predict_only(run.form):  # hard voting, OutputCodeClassifier, ...: say why answers are coarse
            summary["black_box"] = PREDICT_ONLY
    run.emit(params={"trust": trust}, results=results, summary=summary, fmt=format, json_path=json)


def _has_categorical_splits(estimator) -> bool:
    from invaudit.models.tabular import has_categorical_splits  # read only when the model was fully loaded

    return has_categorical_splits(estimator)


def register(app) -> None:
    app.command("info")(info)
