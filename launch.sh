#!/usr/bin/env bash
# One entry point for people and CI: creates .venv on first use, then runs a subcommand.
#   ./launch.sh train --config=configs/resnet34.py --workdir=runs/resnet34 [--config.x=y ...]
#   ./launch.sh evaluate --workdir=runs/resnet34
#   ./launch.sh test [pytest args]
#   ./launch.sh test-zoo [pytest args]   (tests marked zoo_full: the zoo entries and smoke runs
#       the suite leaves out; CI's 2nd stage)
#   ./launch.sh bench [--models=a,b] [--mode=train|eval|both] [--batch=N] [--json]
#   ./launch.sh bench-ops [--boxes=1000,6000] [--json] [--out=FILE]   (NMS, RoIAlign, RoI pool)
#   ./launch.sh bench-depthwise [--layers=32x112x112x32:3:1] [--json]  (one depthwise layer)
#   ./launch.sh bench-detection [--image_size=64] [--batch=16] [--json]  (Faster R-CNN)
#   ./launch.sh bench-input [--config=configs/X.py[:args]] [--config.x=y] [--workers=0,2]
#       (the trainer's input path, host and device stages, against the train step)
#   ./launch.sh chaos [--kills=N]   (a smoke run under N random kill -9s ends bitwise equal)
#   ./launch.sh sweep experiments/NAME/sweep.py [--parallel=N] [--dry-run] [--point-index=I]
#       [--slurm [--wait] [--cpus-per-task=C] [--mem=M] [--time=T] [--slurm-arg=OPT ...]]
#   ./launch.sh report experiments/NAME/sweep.py|SWEEP_DIR [--out=DIR] [--readme]
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=${CNNJAX_VENV:-.venv}

# malloc on transparent huge pages for everything started here (cnnjax/runtime/malloc.py: XLA
# allocates each CPU step's buffers afresh; 4 KB page faults were a quarter of a step).
# glibc reads this once, at process start. CNNJAX_NO_HUGEPAGES=1 leaves it out.
if [[ -z "${CNNJAX_NO_HUGEPAGES:-}" ]] && grep -qs -e '\[always\]' -e '\[madvise\]' \
    /sys/kernel/mm/transparent_hugepage/enabled; then
  case ":${GLIBC_TUNABLES:-}:" in
    *:glibc.malloc.hugetlb=1:*) ;;
    *) export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1" ;;
  esac
fi

# True if every extra in comma list $2 is in comma list $1.
has_extras() {
  local e
  for e in ${2//,/ }; do [[ ",$1," == *",$e,"* ]] || return 1; done
}

# Installs cnnjax with extras $1 (default: dev) unless the stamp says that pyproject.toml
# is unchanged since an install with those extras (or more). Stamp: "<sha1> <extras>".
bootstrap() {
  local extras=${1:-dev}
  local stamp="$VENV/.cnnjax-installed"
  local want have=""
  want=$(cat pyproject.toml | sha1sum | cut -d' ' -f1)
  [[ -f "$stamp" ]] && have=$(cat "$stamp")
  if [[ "${have%% *}" == "$want" && "$have" == *" "* ]] && has_extras "${have#* }" "$extras"; then
    return
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[launch] creating $VENV with $($PY --version 2>&1)" >&2
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  fi
  echo "[launch] installing cnnjax[$extras] and its dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install -q -e ".[$extras]" >&2
  # The XLA:CPU recompute barrier (cnnjax/runtime/materialize.py); without a C++ compiler
  # this prints why and training runs without it.
  "$VENV/bin/python" -m cnnjax.runtime.materialize >&2 || true
  # oneDNN's CPU convolutions (cnnjax/ops/onednn.py); without them XLA's are used.
  "$VENV/bin/python" -m cnnjax.ops.onednn >&2 || true
  echo "$want $extras" >"$stamp"
}

usage() {
  cat >&2 <<USAGE
usage: ./launch.sh COMMAND [ARGS...]
commands:
  train     python -m cnnjax.train ARGS      (train from a config; resumes by itself)
  evaluate  python -m cnnjax.evaluate ARGS   (test metrics of a workdir as JSON)
  test      ruff + the pytest suite          (what CI runs; installs the torch extra)
  test-zoo  two train steps of each registry entry that 'test' leaves out for time
            (pytest -m zoo_full; CI runs it after 'test')
  bench     python -m cnnjax.tools.bench ARGS  (img/s against PyTorch; installs the torch extra)
  bench-ops python -m cnnjax.tools.bench_ops ARGS  (NMS / RoIAlign / RoI pooling against
            torchvision.ops at 1k and 6k boxes)
  bench-detection  python -m cnnjax.tools.bench_detection ARGS  (Faster R-CNN training and
            inference img/s against torchvision's FasterRCNN of the same design)
  bench-input  python -m cnnjax.tools.bench_input ARGS  (the trainer's input path: host
            pipeline, device stage and train loop against the train step, img/s)
  bench-depthwise  python -m cnnjax.tools.bench_depthwise ARGS  (one depthwise layer, forward
            and each gradient: XLA, cnnjax's shifted multiplies, PyTorch)
  chaos     python -m cnnjax.tools.chaos ARGS  (--kills=N random kill -9s + restarts of a smoke
            run; exit 0 only if it ends bitwise equal to an uninterrupted one)
  sweep     python -m cnnjax.tools.sweep ARGS  (every point of experiments/NAME/sweep.py in its
            own workdir under runs/sweeps/NAME; --parallel=N, --dry-run; rerun resumes;
            --slurm [--wait]: the points not done as a SLURM array job, see --help)
  report    python -m cnnjax.tools.report ARGS  (report.md/.csv and plots of a sweep; prints
            the table: mean ± std over seeds per group)
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
    bootstrap dev,torch  # torch/torchvision: the weight-conversion parity tests
    "$VENV/bin/ruff" check cnnjax configs tests experiments notebooks
    # Two pytest-xdist workers: the suite is mostly XLA compiles and subprocess runs
    # (14 min on 2 cores with -n 2; CNNJAX_TEST_WORKERS=0 runs it in one process).
    exec "$VENV/bin/python" -m pytest -n "${CNNJAX_TEST_WORKERS:-2}" "$@" ;;
  test-zoo)
    bootstrap dev
    exec "$VENV/bin/python" -m pytest -n "${CNNJAX_TEST_WORKERS:-2}" -m zoo_full "$@" ;;
  chaos) bootstrap; exec "$VENV/bin/python" -m cnnjax.tools.chaos "$@" ;;
  sweep) bootstrap; exec "$VENV/bin/python" -m cnnjax.tools.sweep "$@" ;;
  report) bootstrap; exec "$VENV/bin/python" -m cnnjax.tools.report "$@" ;;
  bench) bootstrap dev,torch; exec "$VENV/bin/python" -m cnnjax.tools.bench "$@" ;;
  bench-ops) bootstrap dev,torch; exec "$VENV/bin/python" -m cnnjax.tools.bench_ops "$@" ;;
  bench-depthwise) bootstrap dev,torch; exec "$VENV/bin/python" -m cnnjax.tools.bench_depthwise "$@" ;;
  bench-input) bootstrap; exec "$VENV/bin/python" -m cnnjax.tools.bench_input "$@" ;;
  bench-detection) bootstrap dev,torch; exec "$VENV/bin/python" -m cnnjax.tools.bench_detection "$@" ;;
  python) bootstrap; exec "$VENV/bin/python" "$@" ;;
  -h|--help|help) usage ;;
  *) echo "launch.sh: unknown command '$cmd'" >&2; usage; exit 2 ;;
esac
