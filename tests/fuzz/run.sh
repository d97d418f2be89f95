#!/bin/sh
# run.sh TARGET SECONDS MAXLEN — one libFuzzer run of build/fuzz/fuzz_TARGET
# from a scratch copy of tests/fuzz/corpus/TARGET (the committed corpus is
# never written), one job, one line of results appended to
# build/fuzz/summary.txt. Exits 1 on a finding (crash, leak, timeout, OOM).
# Environment: FUZZ_TIMEOUT (s per input, 10), FUZZ_RSS_MB (2048);
# FMSEG_FUZZ_STRICT=1 makes Lua runtime errors findings (fuzz_lua.c).
t=$1 secs=$2 maxlen=$3
bin=build/fuzz/fuzz_$t
dir=build/fuzz/run/$t
rm -rf "$dir" && mkdir -p "$dir/corpus" || exit 1
seeds=$(ls tests/fuzz/corpus/$t 2>/dev/null | wc -l)
[ "$seeds" -gt 0 ] && cp tests/fuzz/corpus/$t/* "$dir/corpus/"
# one thread for OpenBLAS/OpenMP; fm_last_error messages are not printed
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
FUZZ_TMPDIR="$PWD/$dir/tmp" OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 FMSEG_CACHE=off \
  "$bin" "$dir/corpus" -max_total_time="$secs" -max_len="$maxlen" \
  -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
  -artifact_prefix="$dir/" -print_final_stats=1 -close_fd_mask=1 \
  >"$dir/log" 2>&1
rc=$?
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log")
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log")
files=$(ls "$dir/corpus" | wc -l)
found=$(cd "$dir" && ls | grep -E '^(crash|leak|timeout|oom)-' | tr '\n' ' ')
[ $rc -ne 0 ] && [ -z "$found" ] && found="exit status $rc, see $dir/log"
line=$(printf '%-16s %12s execs %8s/s  corpus %4s -> %5s files  findings: %s' \
  "$t" "${execs:-?}" "${rate:-?}" "$seeds" "$files" "${found:-none}")
echo "$line" | tee -a build/fuzz/summary.txt
if [ -n "$found" ]; then
  grep -m1 -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|contract broken' "$dir/log"
  exit 1
fi
exit 0
