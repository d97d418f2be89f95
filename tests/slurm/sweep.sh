#!/bin/sh
# tests/slurm/sweep.sh TMP [PID] — the last resort of tests/lua/test_slurm.lua:
# kills (SIGKILL) every process whose environment holds FMSEG_SLURM_TMP=TMP
# (the private munged, slurmctld and slurmd, their slurmstepd and jobs; no
# other process carries that marker), then removes TMP. With PID it first
# waits for that process (the test) to end: started in the background as a
# watchdog, it tears the cluster down even when the test itself is killed.
tmp=$1
case $tmp in /tmp/fmseg_slurm_*) ;; *) echo "sweep.sh: refusing to sweep $tmp" >&2; exit 2 ;; esac
if [ -n "${2:-}" ]; then
  while kill -0 "$2" 2>/dev/null; do sleep 1; done
fi
for _ in 1 2 3; do
  found=
  for env in /proc/[0-9]*/environ; do
    pid=${env#/proc/}
    pid=${pid%/environ}
    [ "$pid" = $$ ] && continue
    if grep -qzxF "FMSEG_SLURM_TMP=$tmp" "$env" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null && found=1
    fi
  done
  [ -z "$found" ] && break
  sleep 0.2
done
rm -rf "$tmp"
