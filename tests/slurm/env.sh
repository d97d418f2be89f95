#!/bin/sh
# tests/slurm/env.sh TMP CMD [ARG...] — runs a Slurm client (sbatch,
# scontrol, ...) against the private cluster of tests/lua/test_slurm.lua
# whose files are in TMP: SLURM_CONF points at TMP/slurm.conf, the Slurm
# variables of the caller's environment are dropped (a suite run inside a
# Slurm job, or a user's SBATCH_PARTITION, would otherwise steer the
# client), and FMSEG_SLURM_TMP=TMP marks every process started this way,
# jobs included (sbatch passes its environment on), so that
# tests/slurm/sweep.sh can find them.
tmp=$1
shift
for v in $(env | sed -n 's/^\(S[A-Z]*_[A-Za-z0-9_]*\)=.*/\1/p'); do
  case $v in SLURM_* | SBATCH_* | SALLOC_* | SRUN_* | SQUEUE_* | SINFO_* | SCONTROL_* | SCANCEL_*) unset "$v" ;; esac
done
export SLURM_CONF="$tmp/slurm.conf" FMSEG_SLURM_TMP="$tmp" PATH="/usr/sbin:/sbin:$PATH"
exec "$@"
