#!/usr/bin/env bash
# One entry point for people and CI: creates .venv on first use, then runs a subcommand.
#   ./launch.sh train --config=configs/resnet34.py --workdir=runs/resnet34 [--config.x=y ...]
#   ./launch.sh evaluate --workdir=runs/resnet34
#   ./launch.sh test [pytest args]
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=${CNNJAX_VENV:-.venv}

bootstrap() {
  local stamp="$VENV/.cnnjax-installed"
  local want
  want=$(cat pyproject.toml | sha1sum | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[launch] creating $VENV with $($PY --version 2>&1)" >&2
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  fi
  echo "[launch] installing cnnjax and its dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install -q -e '.[dev]' >&2
  echo "$want" >"$stamp"
}

usage() {
  cat >&2 <<USAGE
usage: ./launch.sh COMMAND [ARGS...]
commands:
  train     python -m cnnjax.train ARGS      (train from a config; resumes by itself)
  evaluate  python -m cnnjax.evaluate ARGS   (test metrics of a workdir as JSON)
  test      ruff + the pytest suite          (what CI runs)
  python    run the project's Python with ARGS
USAGE
}

cmd=${1:-}
[[ -n "$cmd" ]] || { usage; exit 2; }
shift
case "$cmd" in
  train) bootstrap; exec "$VENV/bin/python" -m cnnjax.train "$@" ;;
  evaluate) bootstrap; exec "$VENV/bin/python" -m cnnjax.evaluate "$@" ;;
  test)
    bootstrap
    "$VENV/bin/ruff" check cnnjax configs tests experiments
    exec "$VENV/bin/python" -m pytest "$@" ;;
  python) bootstrap; exec "$VENV/bin/python" "$@" ;;
  -h|--help|help) usage ;;
  *) echo "launch.sh: unknown command '$cmd'" >&2; usage; exit 2 ;;
esac
