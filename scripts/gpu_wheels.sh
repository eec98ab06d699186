#!/usr/bin/env bash
# Downloads the wheels the GPU image lacks (scripts/gpu_wheels.txt: exact pins) for Python
# 3.12 on manylinux x86_64 into .whl/ (ignored by git), then prints each wheel's name,
# version and size, the total, and the size of everything that travels to the GPU machine
# (tracked and untracked-not-ignored files plus .whl; the limit is 64 MiB), and stamps the
# commit into .whl/provenance.json (the GPU machine gets no .git; rerun
# `python -m benchmarks.provenance` after a later commit). docs/gpu.md says how they are
# installed there.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.whl
rm -rf "$dest"
mkdir -p "$dest"
grep -v '^\s*#' scripts/gpu_wheels.txt | grep -v '^\s*$' | while read -r pin; do
  # A pure-Python package published only as a source archive (promise) is built into a
  # py3-none-any wheel here; anything else must come as a cp312 manylinux wheel.
  if ! python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$dest" "$pin" 2>/dev/null; then
    python3 -m pip wheel -q --disable-pip-version-check --no-deps -w "$dest" "$pin"
    built=$(ls -t "$dest"/*.whl | head -1)
    case "$built" in
      *-none-any.whl) ;;
      *) echo "$pin: no cp312 manylinux wheel, and it is not pure Python ($built)" >&2; exit 1;;
    esac
  fi
done
echo "| wheel | version | KiB |"
echo "|---|---|---:|"
total=0
for f in "$dest"/*.whl; do
  name=$(basename "$f")
  size=$(stat -c %s "$f")
  total=$((total + size))
  echo "| ${name%%-*} | $(echo "$name" | cut -d- -f2) | $((size / 1024)) |"
done
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r stat -c %s 2>/dev/null \
  | awk '{s += $1} END {print s + 0}')
echo "wheels: $(ls "$dest"/*.whl | wc -l) files, $((total / 1024)) KiB"
echo "what travels (tree + wheels): $(( (tree + total) / 1024 )) KiB of 65536 KiB"
if [ $((tree + total)) -gt $((64 * 1024 * 1024)) ]; then
  echo "over 64 MiB: the GPU machine would refuse the tree" >&2
  exit 1
fi
python3 -m benchmarks.provenance >/dev/null
echo "stamped: .whl/provenance.json ($(git rev-parse --short HEAD))"
