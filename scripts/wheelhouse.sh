#!/usr/bin/env bash
# Build ./.whl: pure-Python wheels of the dependencies a GPU machine without a package index lacks (it has
# torch, transformers, numpy, pandas, matplotlib, nvidia-ml-py, pytest, tqdm already).
# Usage (repository root): bash scripts/wheelhouse.sh [EXTRA==VERSION ...]
# On that machine, begin the command with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD || exit 1
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/optional/*.whl
# (the second line may fail on a Python the optional wheels do not fit; only the evaluation step needs them)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl/src
pkgs=(fvcore==0.1.5.post20221221 iopath==0.1.10 yacs==0.1.8 termcolor==3.3.0
      antlr4-python3-runtime==4.9.3 omegaconf==2.3.0 hydra-core==1.3.8 ptflops==0.7.5
      submitit==1.5.4 hydra-submitit-launcher==1.2.0 "$@")
python3 -m pip download -q --no-deps -d .whl/src "${pkgs[@]}"
shopt -s nullglob
sdists=(.whl/src/*.tar.gz .whl/src/*.zip)
if ((${#sdists[@]})); then python3 -m pip wheel -q --no-deps -w .whl "${sdists[@]}"; fi
mv .whl/src/*.whl .whl/ 2>/dev/null || true
rm -rf .whl/src
# binary wheels that fit only some Pythons (pycocotools: CPython >= 3.12 on x86_64, for the evaluation step):
# installed by a separate pip call that may fail without stopping the command
mkdir -p .whl/optional
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    -d .whl/optional "pycocotools==$(sed -n 's/^pycocotools==//p' constraints.txt)"
ls .whl .whl/optional
