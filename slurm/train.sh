#!/usr/bin/env bash
# Train CycleGAN on a Slurm cluster, on one node or many, surviving preemption.
#
#   sbatch slurm/train.sh data.root=/data/shards/h2z
#   CONFIG=configs/x.yaml sbatch --nodes=4 slurm/train.sh data.root=/data/h2z train.lr=1e-4
#   GPUS_PER_NODE=0 PROCS_PER_NODE=2 sbatch slurm/train.sh ...     # CPU-only nodes (gloo)
#
# Arguments are config overrides (key=value). Environment variables, all optional:
#   CONFIG           config file                              (configs/default.yaml)
#   GPUS_PER_NODE    GPUs per node; 0 for CPU-only nodes       (8; keep in step with --gres)
#   PROCS_PER_NODE   training processes per node               (GPUS_PER_NODE, or 1 without GPUs)
#   MIXED_PRECISION  no | bf16 | fp16, passed to accelerate    (no; train.mixed_precision rules)
#   MASTER_PORT      rendezvous port on the first node         (29500 + job id % 1000)
#   VENV             virtual environment to activate           (.venv in the submit folder)
#
# Preemption: Slurm sends USR1 to this script 180 s before the time limit (or on preemption,
# where the cluster signals first). The trap touches a flag file; every rank sees it, all
# stop after the same step, write one complete checkpoint and exit 0; the script then
# requeues the job, and the requeued job continues with resume=auto. A job killed without
# warning still has its last periodic checkpoint.
#
#SBATCH --job-name=cyclegan
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

set -uo pipefail

cd "${SLURM_SUBMIT_DIR:-.}"
CONFIG=${CONFIG:-configs/default.yaml}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
if [ "$GPUS_PER_NODE" -gt 0 ]; then
    PROCS_PER_NODE=${PROCS_PER_NODE:-$GPUS_PER_NODE}
else
    PROCS_PER_NODE=${PROCS_PER_NODE:-1}
    export ACCELERATE_USE_CPU=true
fi
MIXED_PRECISION=${MIXED_PRECISION:-no}
VENV=${VENV:-.venv}
[ -f "$VENV/bin/activate" ] && source "$VENV/bin/activate"

NNODES=${SLURM_NNODES:-1}
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-$((29500 + SLURM_JOB_ID % 1000))}
export CYCLEGAN_STOP_FILE="$PWD/.cyclegan-stop-$SLURM_JOB_ID"
rm -f "$CYCLEGAN_STOP_FILE"

preempted=0
on_usr1() {
    echo "$(date -Is) USR1: asking every rank to checkpoint and stop"
    preempted=1
    touch "$CYCLEGAN_STOP_FILE"
}
trap on_usr1 USR1

echo "$(date -Is) job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $NNODES node(s) x" \
     "$PROCS_PER_NODE process(es); head $MASTER_ADDR:$MASTER_PORT; config $CONFIG $*"

# One task per node; the single quotes keep $SLURM_NODEID for each task to expand itself.
srun --kill-on-bad-exit=1 bash -c '
    multi=$([ $(($0 * $1)) -gt 1 ] && echo --multi_gpu)
    exec accelerate launch $multi \
        --num_machines "$0" --num_processes "$(($0 * $1))" --machine_rank "$SLURM_NODEID" \
        --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
        --mixed_precision "$2" --dynamo_backend no \
        scripts/train.py --config "$3" resume=auto "${@:4}"
' "$NNODES" "$PROCS_PER_NODE" "$MIXED_PRECISION" "$CONFIG" "$@" &
pid=$!
# A trapped signal interrupts `wait`; wait again until srun has really finished.
status=0
while true; do
    wait "$pid"
    status=$?
    kill -0 "$pid" 2>/dev/null || break
done
rm -f "$CYCLEGAN_STOP_FILE"

if [ "$preempted" = 1 ] && [ "$status" = 0 ]; then
    echo "$(date -Is) checkpoint written; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
echo "$(date -Is) training exited with status $status"
exit "$status"
