#!/usr/bin/env bash
# Run HERE, before the GPU call (not on the lent machine, which cannot reach a registry): fetch into .whl/ the Python
# packages its image lacks or has at other versions (it has torch 2.11, transformers 5.17 and no diffusers or open_clip;
# puma_nb needs transformers 5.24's `cache=` API). About 23 MB; .whl/ is ignored through .git/info/exclude.
# Then: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=590)
set -euo pipefail
cd "$(dirname "$0")/.."
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")" .whl
grep -qxF '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >> "$EXCLUDE"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  transformers==5.24.0 diffusers==0.42.1 open_clip_torch==3.3.0 importlib_metadata==10.2.0 ftfy==6.3.1 wcwidth==0.9.4 \
  regex==2026.11.19 webdataset==1.0.2 braceexpand==0.1.7
ls -la .whl
