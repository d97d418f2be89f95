#!/bin/bash
# One shard of an fmseg evaluation per Slurm array task.
#
#   sbatch --array=1-8 configs/cluster/slurm_eval.sh CONFIG [DATA_ROOT] [RUN_DIR]
#   ./fmseg merge RUN_DIR          # once every task has finished
#
# RUN_DIR (default runs/<config name>) must be on a filesystem every node
# sees: the shards share it, each image's result lands there as soon as it
# is computed, and a requeued or resubmitted task resumes where it stopped.
# Chain the merge after the array:
#   jid=$(sbatch --parsable --array=1-8 configs/cluster/slurm_eval.sh CONFIG)
#   sbatch --dependency=afterok:$jid --wrap "./fmseg merge runs/<config name>"
# Smaller nodes: override the #SBATCH lines below, e.g.
#   sbatch --cpus-per-task=2 --mem=4G --array=1-8 configs/cluster/slurm_eval.sh CONFIG
# A task requeued after it failed resumes, but Slurm then never satisfies
# afterok on the array: run the merge by hand once no task is left.
#SBATCH --job-name=fmseg-eval
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=24:00:00
#SBATCH --requeue
set -euo pipefail

CONFIG=${1:?usage: sbatch --array=1-N configs/cluster/slurm_eval.sh CONFIG [DATA_ROOT] [RUN_DIR]}
DATA_ROOT=${2:-}
RUN_DIR=${3:-runs/$(basename "$CONFIG" .yaml)}

: "${SLURM_ARRAY_TASK_ID:?submit as a job array: sbatch --array=1-N ...}"
# Shards count from 1 whatever the array's first index (--array=0-7 works too).
MIN=${SLURM_ARRAY_TASK_MIN:-1}
N=${SLURM_ARRAY_TASK_COUNT:-$((SLURM_ARRAY_TASK_MAX - MIN + 1))}
I=$((SLURM_ARRAY_TASK_ID - MIN + 1))

cd "${SLURM_SUBMIT_DIR:-.}"
export FMSEG_THREADS=${SLURM_CPUS_PER_TASK:-1}
ARGS=(eval "$CONFIG" --shard "$I/$N" -o "$RUN_DIR" --quiet)
if [ -n "$DATA_ROOT" ]; then ARGS+=(--data "$DATA_ROOT"); fi
echo "fmseg eval shard $I/$N of $CONFIG into $RUN_DIR on $(hostname)"
exec ./fmseg "${ARGS[@]}"
