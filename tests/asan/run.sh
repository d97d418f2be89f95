# tests/asan/run.sh ROOT TEST... — `make test-asan`'s runner (mk/asan.mk).
# Runs the TESTs (paths relative to the repository, as `make test` lists
# them) through prove inside ROOT, the shadow root holding the sanitized
# ./fmseg, build/libfmseg.so and build/tests/; fails on a failing test or on
# any sanitizer report, wherever it came from (a ./fmseg started by a test
# that expects it to fail included): every report goes to a file in
# build/asan/reports/, never only to a stderr that a test may swallow.
set -u
root=$1
shift
repo=$(pwd)
reports=$repo/build/asan/reports
rm -rf "$reports" && mkdir -p "$reports" || exit 1

# The sanitized binaries must be the ones that run, each loading the ASan
# runtime and its libfmseg.so in ROOT (mk/asan.mk says why there are two).
uses() {   # BIN LIB
  deps=$(ldd "$1") || exit 1
  got=$(printf '%s\n' "$deps" | sed -n 's/^[[:space:]]*libfmseg\.so => \([^ ]*\) .*/\1/p')
  if [ "$(readlink -f "$got")" != "$(readlink -f "$2")" ] || ! printf '%s\n' "$deps" | grep -q libasan; then
    echo "test-asan: $1 does not run the sanitized $2:"; printf '%s\n' "$deps"; exit 1
  fi
}
uses "$root/fmseg" "$root/build/libfmseg.so"
for t in "$@"; do
  case $t in build/tests/*) uses "$root/$t" "$root/build/tests/libfmseg.so" ;; esac
done

# make exports FMSEG_FIXTURES relative to the repository; the tests run in ROOT.
case ${FMSEG_FIXTURES:=../shared/fixtures} in
  /*) ;;
  *) FMSEG_FIXTURES=$repo/$FMSEG_FIXTURES ;;
esac
export FMSEG_FIXTURES

# Options (tests/asan/README.md says why each one). Every report goes to a
# file in $reports: ASan's and LSan's through log_path. UBSan's own text
# only reaches stderr: libubsan's call to __sanitizer_set_report_path binds
# to libasan's copy (loaded first), so its log_path re-points ASan's report
# file, never its own. Hence the same prefix for both, and UBSan halts with
# abort(), whose SIGABRT ASan's handler reports to that file, with the stack
# through the __ubsan_handle_* that fired. LeakSanitizer is on
# (exit_closes.lua makes it meaningful for Lua tests); suppressions only
# for third-party code.
# Options the caller set come last and win.
log=$reports/sanitizer
export ASAN_OPTIONS="log_path=$log:handle_abort=1:detect_leaks=1:verify_asan_link_order=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$repo/tests/asan/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export UBSAN_OPTIONS="log_path=$log:halt_on_error=1:abort_on_error=1:print_stacktrace=1:suppressions=$repo/tests/asan/ubsan.supp${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
# Two threads: the OpenMP loops' per-thread scratch (attention.c, sam_*.c,
# indexed by omp_get_thread_num()) and range splits are only exercised with
# more than one; more than two would oversubscribe a 2-core machine.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# Set for the tests: one that cannot run under ASan skips, saying so (ASan
# reserves terabytes of address space for its shadow memory at start, so
# `ulimit -v` in tests/lua/test_limits.lua stops every process before main).
export FMSEG_ASAN=1

start=$(date +%s)
out=$repo/build/asan/prove.log
{ (cd "$root" && prove --timer --exec 'sh tests/asan/run1' "$@"); echo $? > "$out.rc"; } 2>&1 | tee "$out"
rc=$(cat "$out.rc")
secs=$(( $(date +%s) - start ))

# Each report in full for the first one, then one line each.
n=0
for f in "$reports"/*; do
  [ -e "$f" ] || continue
  n=$((n + 1))
  if [ $n = 1 ]; then
    echo "== $f"; cat "$f"
  else
    echo "== $f: $(grep -m1 -h 'SUMMARY:\|runtime error:' "$f")"
  fi
done
tests=$(sed -n 's/^Files=\([0-9]*\), Tests=\([0-9]*\),.*/\1 files, \2 tests/p' "$out")
slow=$(sed -n 's/^\[[0-9:]*\] \([^ ]*\) .* \([0-9][0-9]*\) ms .*/\2 \1/p' "$out" | sort -rn | head -5 |
       awk '{ printf "%s%s %.0fs", (NR > 1 ? ", " : ""), $2, $1 / 1000 }')
where=
[ "$n" = 0 ] || where=" in build/asan/reports/"
echo "test-asan: slowest: ${slow:-?}"
echo "test-asan: ${tests:-no tests counted} under ASan+UBSan+LSan in ${secs}s;" \
     "prove exit $rc; $n sanitizer report(s)$where"
[ "$rc" = 0 ] && [ "$n" = 0 ]
