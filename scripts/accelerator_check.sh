#!/usr/bin/env bash
# The GPU check in one command, for a short lease of one NVIDIA GPU (docs/performance.md, "On a GPU"):
# the attention kernels on the GPU, the throughput, the plans against the device, in at most 8 minutes.
#
#   scripts/accelerator_check.sh [--out=DIR] [--dry_run]
#
# DIR defaults to $OUT, else runs/accelerator_check. The GPU machine has JAX, flax, optax, orbax,
# transformers, peft and torch but not every dependency, and no package index: the project is installed
# with --no-deps beside the pure-Python wheels carried in .whl/ (ml-collections, for the plans). Download
# them here first:  python -m pip download --no-deps -d .whl ml-collections==1.1.0
# --dry_run (or XLIT_ACCELERATOR_DRY_RUN=1): the same parts on JAX's CPU platform with tiny shapes, here.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
dry=${XLIT_ACCELERATOR_DRY_RUN:-0}
out=${OUT:-runs/accelerator_check}
for arg in "$@"; do
  case $arg in
    --dry_run) dry=1 ;;
    --out=*) out=${arg#--out=} ;;
    *) echo "usage: $0 [--out=DIR] [--dry_run]" >&2; exit 2 ;;
  esac
done

if [ "$dry" = 1 ]; then
  exec env JAX_PLATFORMS=cpu "$python" -m xlit_jax.perf.accelerator_check --out_dir="$out" --dry_run
fi

platform=$(XLA_PYTHON_CLIENT_PREALLOCATE=false "$python" -c 'import jax; print(jax.devices()[0].platform)' 2>/dev/null)
if [ "$platform" != gpu ]; then
  echo "accelerator_check: no NVIDIA GPU attached (jax sees ${platform:-no device}); for the CPU dry run: $0 --dry_run" >&2
  exit 2
fi
site=/tmp/xlit_site
wheels=(.whl/*.whl)
if [ ! -e "${wheels[0]}" ]; then
  echo "accelerator_check: no wheels in .whl/: download them (see the head of $0) and carry .whl" >&2
  exit 2
fi
pip_install() { "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$@"; }
pip_install "${wheels[@]}" || exit 2
# the project itself; it runs from this checkout all the same (the working directory comes first on sys.path)
pip_install --no-build-isolation . || echo "accelerator_check: pip could not build the project offline; running it from the checkout" >&2
export PYTHONPATH=$site
exec "$python" -m xlit_jax.perf.accelerator_check --out_dir="$out"
