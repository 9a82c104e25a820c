#!/usr/bin/env bash
# `make demo`: invaudit's main job on the bundled sample models — the audit suite a CI step runs —
# then a short look at what it read in each model file. Headings go to stderr, reports to stdout.
set -uo pipefail
INV=${1:-invaudit}
S=$(dirname "$0")
step() { printf '\n\033[1m$ %s\033[0m\n' "$*" >&2; "$@"; rc=$?; [ $rc -eq 0 ] || { echo "demo step failed (exit $rc): $*" >&2; exit $rc; }; }

step "$INV" audit "$S/audit.yaml"
step "$INV" info "$S/breast_cancer_logreg.joblib"
step "$INV" counterfactual "$S/breast_cancer_logreg.joblib" "$S/breast_cancer_test.csv" --label-column target \
  --target 1 --confidence 0.9 --scale std --train "$S/breast_cancer_train.csv" --rows 0-5
step "$INV" margin "$S/digits_logreg.joblib" "$S/digits_test.npz" --eps 1,2,4
step "$INV" counterfactual "$S/credit_logreg.joblib" "$S/credit_test.csv" --label-column approved \
  --id-column customer --target 1 --train "$S/credit_train.csv" --scale std --norm l1 --immutable age --rows 0-7
echo >&2
echo "More: README.md has a tour of every command (influence, mislabel, explain, ...)." >&2
