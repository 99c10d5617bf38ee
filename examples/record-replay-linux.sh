#!/usr/bin/env bash
# Builds the Linux guest (guest-agent/linux/build.sh OUTDIR, incremental), records its
# boot N times (default 5) with fresh recordings and replays each with --verify, checking
# that the replay reports no divergence and that the replayed console equals the console
# printed while recording. Prints, per recording: record time, kernel instructions,
# events, file size and replay MIPS; then one closing line; exits non-zero on any
# divergence, console mismatch or failure.
#
#   --workload   record the busybox /init workload (guest-agent/linux/init.sh) to
#                power-off instead of the boot only (without `krr.boot_only`)
#   --stress     record the second workload (guest-agent/linux/stress.sh, with
#                `krr.workload=stress`) to power-off
#   --keep DIR   keep the recordings and their logs in DIR (default: a temporary directory)
#
# Usage: examples/record-replay-linux.sh [--workload|--stress] [--keep DIR] OUTDIR [N]
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: $0 [--workload|--stress] [--keep DIR] OUTDIR [N]" >&2; exit 2; }
cmdline=krr.boot_only
keep=
out=
n=5
while [ $# -gt 0 ]; do
    case "$1" in
        --workload) cmdline= ;;
        --stress) cmdline=krr.workload=stress ;;
        --keep) [ $# -ge 2 ] || usage; keep=$2; shift ;;
        -*) usage ;;
        *) if [ -z "$out" ]; then out=$1; else
               [[ "$1" =~ ^[0-9]+$ ]] || usage; n=$1; fi ;;
    esac
    shift
done
[ -n "$out" ] || usage

guest-agent/linux/build.sh "$out"
cargo build --release -q --bin krr-tui
bin=target/release/krr-tui
[ -n "${CARGO_TARGET_DIR:-}" ] && bin="$CARGO_TARGET_DIR/release/krr-tui"

if [ -n "$keep" ]; then
    mkdir -p "$keep"
    dir=$keep
else
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
fi
diverged=0 mismatched=0 failed=0
printf '%-4s %9s %14s %9s %11s %10s %s\n' run record_s instructions events file_bytes replay_MIPS result
for i in $(seq 1 "$n"); do
    rec="$dir/linux$i.krr"
    start=$(date +%s%N)
    if ! "$bin" record --headless --kernel "$out/vmlinux" --initrd "$out/initramfs.cpio" \
        ${cmdline:+--cmdline "$cmdline"} -o "$rec" --force \
        >"$dir/rec$i.out" 2>"$dir/rec$i.err"; then
        echo "recording $i: record FAILED"; tail -5 "$dir/rec$i.err"
        failed=$((failed + 1))
        continue
    fi
    record_s=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    "$bin" info "$rec" >"$dir/info$i.out"
    instructions=$(sed -n 's/^kernel instructions: //p' "$dir/info$i.out")
    events=$(awk '$1 == "total" { print $2 }' "$dir/info$i.out")
    bytes=$(stat -c %s "$rec")
    "$bin" replay "$rec" --headless --verify >"$dir/rep$i.out" 2>"$dir/rep$i.err" \
        && status=0 || status=$?
    # The replay prints the console, then its summary line.
    summary=$(tail -1 "$dir/rep$i.out")
    if [[ "$summary" =~ divergences:\ ([0-9]+) ]]; then
        divergences=${BASH_REMATCH[1]}
        mips=$(sed -n 's/.*(\([0-9.]*\) MIPS).*/\1/p' <<<"$summary")
        head -n -1 "$dir/rep$i.out" | cmp -s - "$dir/rec$i.out" && same=yes || same=no
        printf '%-4s %9.1f %14s %9s %11s %10s %s\n' "$i" "$record_s" "$instructions" \
            "$events" "$bytes" "$mips" "divergences $divergences, console identical: $same"
        if [ "$divergences" != 0 ]; then
            diverged=$((diverged + 1))
        elif [ "$status" != 0 ]; then
            failed=$((failed + 1))
        fi
        [ "$same" = yes ] || mismatched=$((mismatched + 1))
    else
        echo "recording $i: replay FAILED (exit status $status)"
        failed=$((failed + 1))
    fi
    [ "$status" = 0 ] || tail -5 "$dir/rep$i.err"
done
echo "recordings: $n, diverged: $diverged, console mismatches: $mismatched, failed: $failed"
[ "$diverged" = 0 ] && [ "$mismatched" = 0 ] && [ "$failed" = 0 ]
