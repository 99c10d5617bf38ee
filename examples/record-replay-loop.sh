#!/usr/bin/env bash
# Records the demo guest N times (default 10) and replays each recording with --verify,
# checking that the replay reports no divergence and that the replayed console equals the
# console printed while recording. --no-counter is passed to `krr-tui record`.
# A recording that fails is kept, with what record and replay printed, under
# $KEEP_FAILED/<date>-<i>/ (default: failed/ in the repository root).
# Ends with one line: recordings, divergences, console mismatches, other failures;
# exits non-zero if any of the last three is not 0.
# Usage: examples/record-replay-loop.sh [--no-counter] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: $0 [--no-counter] [N]" >&2; exit 2; }
n=10
record_args=()
for arg in "$@"; do
    case "$arg" in
        --no-counter) record_args+=(--no-counter) ;;
        *[!0-9]* | '') usage ;;
        *) n=$arg ;;
    esac
done
keep=${KEEP_FAILED:-failed}
cargo build --release -q
bin=target/release/krr-tui
[ -n "${CARGO_TARGET_DIR:-}" ] && bin="$CARGO_TARGET_DIR/release/krr-tui"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
diverged=0 mismatched=0 failed=0
for i in $(seq 1 "$n"); do
    bad=
    if ! "$bin" record --headless "${record_args[@]}" -o "$dir/r$i.krr" \
        >"$dir/rec$i.out" 2>"$dir/rec$i.err"; then
        echo "recording $i: record FAILED"; tail -5 "$dir/rec$i.err"
        failed=$((failed + 1)); bad=1
    else
        "$bin" replay "$dir/r$i.krr" --headless --verify >"$dir/rep$i.out" 2>"$dir/rep$i.err" \
            && status=0 || status=$?
        # The replay prints the console, then its summary line.
        summary=$(tail -1 "$dir/rep$i.out")
        if [[ "$summary" =~ divergences:\ ([0-9]+) ]]; then
            head -n -1 "$dir/rep$i.out" | cmp -s - "$dir/rec$i.out" && same=yes || same=no
            echo "recording $i: $summary; console identical: $same"
            if [ "${BASH_REMATCH[1]}" != 0 ]; then
                diverged=$((diverged + 1)); bad=1
            elif [ "$status" != 0 ]; then
                failed=$((failed + 1)); bad=1
            fi
            [ "$same" = yes ] || { mismatched=$((mismatched + 1)); bad=1; }
        else
            echo "recording $i: replay FAILED (exit status $status)"
            failed=$((failed + 1)); bad=1
        fi
        [ "$status" = 0 ] || cat "$dir/rep$i.err"
    fi
    if [ -n "$bad" ]; then
        kept="$keep/$(date +%Y%m%d-%H%M%S)-$i"
        mkdir -p "$kept"
        for f in "r$i.krr" "rec$i.out" "rec$i.err" "rep$i.out" "rep$i.err"; do
            [ -e "$dir/$f" ] && mv "$dir/$f" "$kept/"
        done
        echo "recording $i: kept in $kept"
    fi
done
echo "recordings: $n${record_args[*]:+ (${record_args[*]})}, divergences: $diverged," \
    "console mismatches: $mismatched, other failures: $failed"
[ $((diverged + mismatched + failed)) -eq 0 ]
