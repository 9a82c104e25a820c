#!/usr/bin/env bash
# `make demo`: a short tour of invaudit on the bundled sample models.
# Every command's own stdout is the report; the tour's headings go to stderr like invaudit's notes.
set -uo pipefail
INV=${1:-invaudit}
S=$(dirname "$0")
step() { printf '\n\033[1m$ %s\033[0m\n' "$*" >&2; "$@"; rc=$?; [ $rc -eq 0 ] || { echo "demo step failed (exit $rc): $*" >&2; exit $rc; }; }

for m in breast_cancer_logreg breast_cancer_power breast_cancer_tree digits_logreg digits_mlp wine_forest; do
  step "$INV" info "$S/$m.joblib"
done
