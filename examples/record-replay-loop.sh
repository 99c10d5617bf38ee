#!/usr/bin/env bash
# Records the demo guest N times (default 10) and replays each recording with --verify,
# checking that the replayed console equals the console printed while recording.
# Usage: examples/record-replay-loop.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}
cargo build --release -q
bin=target/release/krr-tui
[ -n "${CARGO_TARGET_DIR:-}" ] && bin="$CARGO_TARGET_DIR/release/krr-tui"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
ok=0
for i in $(seq 1 "$n"); do
    "$bin" record --headless -o "$dir/r$i.krr" >"$dir/rec$i.out" 2>"$dir/rec$i.err"
    if "$bin" replay "$dir/r$i.krr" --headless --verify >"$dir/rep$i.out" 2>"$dir/rep$i.err"; then
        # The replay prints the console, then its summary line.
        head -n -1 "$dir/rep$i.out" | cmp -s - "$dir/rec$i.out" && same=yes || same=no
        echo "recording $i: $(tail -1 "$dir/rep$i.out"); console identical: $same"
        [ "$same" = yes ] && ok=$((ok + 1))
    else
        echo "recording $i: FAILED"; cat "$dir/rep$i.err"
    fi
done
echo "$ok of $n recordings replayed without divergence with identical console output"
[ "$ok" -eq "$n" ]
