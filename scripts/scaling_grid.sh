#!/bin/bash
# The calls that produced docs/scaling.md's tables (needs the aot extras; each call resumes from the rows
# already in OUT_DIR, so the order only decides which rows come first). Rows asked with attention=xla ran
# the reference attention; the first ones were planned before models/attention.py existed, on the same
# reference path. Here the calls after the first block ran as streams side by side (A, B, C).
set -e
export JAX_PLATFORMS=cpu
OUT_DIR=${1:-runs/scaling}
PY="nice -n 10 python -m xlit_jax.perf.scaling --out_dir=$OUT_DIR"
$PY --kinds=train --targets=v5p-8 --models=llama2-7b --methods=ft --single= --attention=xla
$PY --kinds=train --targets=8xh100,8xa100 --models=llama2-7b,llama2-13b --attention=xla
$PY --kinds=train --targets=8xh100 --models=llama2-7b,llama2-13b
$PY --kinds=decode --attention=auto,xla --decode_targets=1xh100
$PY --kinds=decode --decode_targets=v5e-1
$PY --kinds=train --targets=v5p-8 --models=llama2-7b --methods=ft --single=
$PY --kinds=train --targets=8xa100 --models=llama2-7b,llama2-13b --single=
# stream A
$PY --kinds=train --targets=v5p-8 --models=llama2-13b --methods=ft --single=
$PY --kinds=train --targets=v5e-16 --models=llama2-7b,llama2-13b --methods=ft --single=
$PY --kinds=train --targets=v5p-8,v5e-16 --models=llama2-7b,llama2-13b --methods=lora --single=
# stream B
$PY --kinds=train --targets=v6e-8 --models=llama2-7b,llama2-13b --methods=ft --single=
$PY --kinds=train --targets=v6e-8 --models=llama2-7b,llama2-13b --methods=lora --single=
$PY --kinds=train --models=tower-7b --single=
# stream C (v4 in megacore mode)
$PY --kinds=train --targets=v4-8 --models=llama2-13b,llama2-7b --methods=ft --single=
# 2026-12-06: today's bases (issue 33) and the LoRA cells on a quantized base (issue 34). Each row ran in its
# own process (--targets= --single=TARGET:MODEL:METHOD, nice -n 5) to time it; these calls plan the same rows.
$PY --kinds=train --targets=8xh100,v5p-8 --models=qwen2.5-0.5b,llama3.2-1b,llama3.2-3b,mistral-7b,llama3.1-8b,qwen2.5-7b --single=
$PY --kinds=train --targets=1xh100 --models=llama3.1-8b,qwen2.5-7b,mistral-7b --methods=lora \
  --single=1xh100:qwen2.5-0.5b:ft,1xh100:llama3.2-1b:ft,1xh100:llama3.2-3b:ft
$PY --kinds=train --targets=v5e-1,1xl4 --models=llama2-7b,llama2-13b --methods=lora,lora-int8,lora-nf4 \
  --single=1xl4:llama3.1-8b:lora-int8,1xl4:llama3.1-8b:lora-nf4
# the tables in docs/scaling.md, from the rows that finished:
python -m xlit_jax.perf.scaling --out_dir=$OUT_DIR --report_only --attention=auto,xla \
  --targets=v5p-8,v5e-16,v6e-8,v4-8,8xh100,8xa100 --models=llama2-7b,llama2-13b,tower-7b
