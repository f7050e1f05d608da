#!/usr/bin/env bash
# Creates (or refreshes) .venv at the repository root with the pinned stack.
#
# Idempotent: a stamp file records the hash of the pins and the package metadata, and a
# matching stamp makes this a no-op. mmcv is compiled from source against the pinned torch
# once per machine; the wheel is kept in a cache folder named after the exact torch build,
# so a later fresh .venv on the same machine installs it in seconds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
py="${PYTHON:-python3.11}"
stamp="$venv/.parax-bench-stamp"
want="$(cat constraints.txt pyproject.toml scripts/setup-venv.sh | sha256sum | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

log() { printf '[setup-venv %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
start=$SECONDS

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating $venv with $("$py" --version)"
  "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"
pip_install() { "$vpy" -m pip install --disable-pip-version-check -q -c "$root/constraints.txt" "$@"; }

log "build tools"
pip_install --upgrade pip wheel setuptools

log "torch + torchvision (PyPI builds; the first download is a few GB)"
pip_install torch torchvision

torch_tag="$("$vpy" -c 'import torch; print(torch.__version__)')"
# mmcv compiles its CUDA ops when a GPU is visible or FORCE_CUDA=1, else CPU ops only.
ops="$("$vpy" -c 'import os, torch; print("cuda" if torch.cuda.is_available() or os.environ.get("FORCE_CUDA") == "1" else "cpu")')"
mmcv_version="$(sed -n 's/^mmcv==//p' constraints.txt)"
wheel_dir="${PARAX_BENCH_WHEEL_CACHE:-$HOME/.cache/parax-bench/wheels}/mmcv-$mmcv_version-torch-$torch_tag-$ops"
if ! ls "$wheel_dir"/mmcv-*.whl >/dev/null 2>&1; then
  log "compiling mmcv $mmcv_version with its $ops ops against torch $torch_tag (about 3 minutes on 2 cores)"
  pip_install "mmengine" "opencv-python" "addict" "yapf" "packaging" "Pillow" "pyyaml" "ninja"
  tmp="$(mktemp -d)"
  # CPU ops: scripts/pch-cxx precompiles the torch headers most op sources start with (5.5 ->
  # 3 min on 2 cores, same machine code). CUDA builds keep the plain compiler: untried with nvcc.
  real_cxx="${CXX:-c++}"
  cxx="$real_cxx"
  [[ "$ops" == cpu ]] && cxx="$root/scripts/pch-cxx"
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" CFLAGS="-DNDEBUG -fwrapv -O3 -g0" \
    CXX="$cxx" PARAX_BENCH_REAL_CXX="$real_cxx" \
    "$vpy" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir --no-binary mmcv \
    -c "$root/constraints.txt" -w "$tmp" "mmcv==$mmcv_version"
  mkdir -p "$wheel_dir"
  mv "$tmp"/mmcv-*.whl "$wheel_dir"/
  rm -rf "$tmp"
fi
log "mmcv from $wheel_dir"
pip_install --no-deps "$wheel_dir"/mmcv-*.whl

log "source-only dependencies of mmpose (chumpy, xtcocotools against numpy 2)"
pip_install --no-build-isolation chumpy
pip_install cython
pip_install --no-build-isolation --no-binary xtcocotools xtcocotools

log "parax-bench and the rest of the stack"
pip_install -e "$root[dev]"

"$vpy" -c 'import mmcv.ops, mmseg.models, mmdet.models, mmpose.models, timm, torchvision' \
  || { log "stack check failed: mmcv ops or an OpenMMLab package does not import"; exit 1; }
echo "$want" > "$stamp"
log "done in $((SECONDS - start)) s"
