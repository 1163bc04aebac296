#!/usr/bin/env bash
# Run HERE (the development machine), once, before bench/gpu_check.sh on a lent GPU machine.
# That machine's image has Python 3.12 with torch, torchvision, numpy, pandas, scikit-learn, scipy,
# Pillow, opencv-python-headless, matplotlib, tqdm and pytest, but no registry: the engine's other
# imports travel as wheels in .whl/ (git-ignored through .git/info/exclude), about 25 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl duckdb==2.0.1
# grad-cam and ttach are pure Python, published as source only: build their wheels here.
python3 -m pip wheel -q --no-deps -w .whl grad-cam==1.5.7 ttach==0.0.3
ls -l .whl
