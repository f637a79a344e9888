#!/bin/bash
# The calls that produced docs/scaling.md's tables (needs the aot extras; rows resume from out_dir).
# Rows whose attention is "xla: xla" and were planned before models/attention.py existed ran the same
# reference attention that --attention=xla asks for now.
set -e
export JAX_PLATFORMS=cpu
PY="nice -n 10 python -m xlit_jax.bench.scaling --out_dir=${1:-runs/scaling}"
$PY --kinds=train --targets=v5p-8 --models=llama2-7b --methods=ft --single= --attention=xla
$PY --kinds=train --targets=8xh100,8xa100 --models=llama2-7b,llama2-13b --attention=xla
$PY --kinds=train --targets=8xh100 --models=llama2-7b,llama2-13b
$PY --kinds=decode --attention=auto,xla --decode_targets=1xh100
$PY --kinds=decode --decode_targets=v5e-1
$PY --kinds=train --targets=v5p-8,v5e-16 --models=llama2-7b,llama2-13b --single=
$PY --kinds=train --targets=v6e-8,v4-8 --models=llama2-7b,llama2-13b --single=
$PY --kinds=train --targets=8xa100 --models=llama2-7b,llama2-13b --single=
$PY --kinds=train --models=tower-7b --single=
