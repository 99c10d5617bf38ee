#!/usr/bin/env bash
# Replay speed of krr-tui against QEMU's TCG, in one run: against one instruction per
# block (-singlestep, as KRR's replayer runs QEMU) and against plain TCG (block chaining:
# the JIT's upper bound).
#
#   examples/bench-replay-vs-qemu.sh          # RUNS=3 by default; medians are reported
#   RUNS=5 examples/bench-replay-vs-qemu.sh
#   KRR_BENCH_RECORDING=file.krr examples/bench-replay-vs-qemu.sh   # reuse a bench-loop recording
#
# Workload: the bench-loop kernel (krr_guest::BENCH_LOOP_KERNEL), a ring-0 loop of ordinary
# integer code with a known instruction count, printed by the guest itself
# ("... after N iterations of K instructions").
#
# * krr-tui: records bench-loop once under KVM (recording speed is not measured here), then
#   per run replays it with `replay --headless --verify --quiet` and takes the MIPS that
#   replay prints (every instruction it executed, boot included, over its replay time).
#   It also replays the checked-in demo recording tests/fixtures/demo.krr.
# * QEMU: boots the same ELF with `-accel tcg -singlestep` and with plain `-accel tcg`
#   (PVH -kernel boot), wall time of the whole process; the same for the bench-loop-boot
#   kernel (0 iterations: QEMU's start-up, firmware and the guest's boot and power-off).
#   QEMU's rate is N*K / (time(bench-loop) - time(bench-loop-boot)): loop instructions
#   only. The guest masks the PIC before its loop (interrupts are off anyway), so no
#   interrupt line is pending while QEMU runs it. Plain TCG runs the 52 M-instruction loop
#   in well under a second, so its figure is the noisiest.
# * Both also as CPU time (user + system of the processes, /usr/bin/time), which depends
#   less on what else the machine is running.
#
# Needs /dev/kvm (to record) unless KRR_BENCH_RECORDING is set, qemu-system-x86_64 and
# /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
QEMU=${QEMU:-qemu-system-x86_64}
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/krr-tui
demo=tests/fixtures/demo.krr

command -v "$QEMU" >/dev/null || {
	echo "error: $QEMU not found (apt-get install qemu-system-x86)" >&2
	exit 2
}

[ -x /usr/bin/time ] || {
	echo "error: /usr/bin/time not found (apt-get install time)" >&2
	exit 2
}

echo "building (release) ..." >&2
cargo build --release -q
# build.rs leaves the kernels in krr-guest's OUT_DIR; cargo names it in its JSON messages.
out_dir=$(cargo build --release -p krr-guest --message-format=json 2>/dev/null |
	grep '"reason":"build-script-executed"' | grep '"package_id":"[^"]*krr-guest' |
	sed -n 's/.*"out_dir":"\([^"]*\)".*/\1/p' | tail -n 1)
kernel=$out_dir/bench-loop.elf
boot_kernel=$out_dir/bench-loop-boot.elf
[ -f "$kernel" ] && [ -f "$boot_kernel" ] || {
	echo "error: bench-loop kernels not found in '$out_dir'" >&2
	exit 2
}

# QEMU 8.1 replaced -singlestep with the one-insn-per-tb accelerator property.
qemu_version=$("$QEMU" --version | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -n 1)
read -r qmajor qminor <<<"$qemu_version"
qmajor=${qmajor:-0} qminor=${qminor:-0}
if [ "$qmajor" -gt 8 ] || { [ "$qmajor" -eq 8 ] && [ "$qminor" -ge 1 ]; }; then
	singlestep=(-accel tcg,one-insn-per-tb=on)
else
	singlestep=(-accel tcg -singlestep)
fi

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

now() { echo "$EPOCHREALTIME"; }
# CPU seconds (user + system) of the last command run under `timed`.
timed() { /usr/bin/time -f '%U %S' -o "$dir/cpu" "$@"; }
cpu_seconds() { awk '{ s = $1 + $2 } END { printf "%.3f", s }' "$dir/cpu"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

recording=${KRR_BENCH_RECORDING:-}
if [ -z "$recording" ]; then
	[ -e /dev/kvm ] || {
		echo "error: /dev/kvm not available to record (set KRR_BENCH_RECORDING=file.krr)" >&2
		exit 2
	}
	recording=$dir/bench-loop.krr
	echo "recording $kernel under KVM ..." >&2
	t0=$(now)
	"$bin" record --headless --quiet --kernel "$kernel" -o "$recording" >"$dir/record.out" 2>&1 || {
		cat "$dir/record.out" >&2
		exit 1
	}
	echo "recorded in $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s" >&2
fi

# replay FILE: prints "instructions seconds mips cpu_seconds" (the first three from replay's
# summary line; CPU time of the whole process); fails on a divergence.
replay() {
	local line
	timed "$bin" replay "$1" --headless --verify --quiet >"$dir/replay.out" 2>&1 || {
		echo "error: replay of $1 failed:" >&2
		tail -n 20 "$dir/replay.out" >&2
		exit 1
	}
	line=$(grep '^replayed ' "$dir/replay.out" | tail -n 1)
	# replayed N events, M instructions in T s (X MIPS), divergences: D
	awk -v cpu="$(cpu_seconds)" '{ gsub(/[(,]/, ""); print $4, $7, $9, cpu; if ($12 != 0) exit 1 }' <<<"$line" || {
		echo "error: divergences in $1: $line" >&2
		exit 1
	}
}

# qemu_run KERNEL ACCEL...: prints "seconds iterations per_iteration checksum cpu_seconds"; fails unless
# the guest printed its checksum line and powered off (isa-debug-exit: status 1).
qemu_run() {
	local kernel=$1 t0 t1 status line
	shift
	t0=$(now)
	set +e
	timed "$QEMU" "$@" -machine pc -m 128 -nographic -no-reboot -nic none \
		-device isa-debug-exit,iobase=0xf4,iosize=4 -kernel "$kernel" </dev/null >"$dir/qemu.out" 2>&1
	status=$?
	set -e
	t1=$(now)
	line=$(tr -d '\r' <"$dir/qemu.out" | grep '^bench-loop: checksum ' | tail -n 1)
	if [ "$status" -ne 1 ] || [ -z "$line" ]; then
		echo "error: $QEMU $* -kernel $kernel: status $status" >&2
		tail -n 20 "$dir/qemu.out" >&2
		exit 1
	fi
	# bench-loop: checksum C after N iterations of K instructions
	awk -v a="$t0" -v b="$t1" -v cpu="$(cpu_seconds)" '{ printf "%.6f %s %s %s %s\n", b - a, $5, $8, $3, cpu }' <<<"$line"
}

declare -a ours demo_mips qemu_mips ours_cpu qemu_cpu tcg_mips
for run in $(seq 1 "$RUNS"); do
	# Assignments, so that set -e stops the script when a step fails.
	r=$(replay "$recording")
	read -r ours_insns ours_s ours_mips ours_cpu_s <<<"$r"
	r=$(replay "$demo")
	read -r demo_insns _ demo_run_mips _ <<<"$r"
	r=$(qemu_run "$kernel" "${singlestep[@]}")
	read -r q_full iterations per_iteration checksum q_full_cpu <<<"$r"
	r=$(qemu_run "$boot_kernel" "${singlestep[@]}")
	read -r q_boot _ _ _ q_boot_cpu <<<"$r"
	loop_insns=$((iterations * per_iteration))
	q_mips=$(awk -v n="$loop_insns" -v f="$q_full" -v b="$q_boot" 'BEGIN { printf "%.2f", n / (f - b) / 1e6 }')
	r=$(qemu_run "$kernel" -accel tcg)
	read -r t_full _ _ _ _ <<<"$r"
	r=$(qemu_run "$boot_kernel" -accel tcg)
	read -r t_boot _ _ _ _ <<<"$r"
	t_mips=$(awk -v n="$loop_insns" -v f="$t_full" -v b="$t_boot" 'BEGIN { d = f - b; if (d <= 0.001) d = 0.001; printf "%.1f", n / d / 1e6 }')
	tcg_mips+=("$t_mips")
	ours+=("$ours_mips")
	ours_cpu+=("$(awk -v n="$ours_insns" -v c="$ours_cpu_s" 'BEGIN { printf "%.1f", n / c / 1e6 }')")
	qemu_cpu+=("$(awk -v n="$loop_insns" -v f="$q_full_cpu" -v b="$q_boot_cpu" 'BEGIN { printf "%.2f", n / (f - b) / 1e6 }')")
	demo_mips+=("$demo_run_mips")
	qemu_mips+=("$q_mips")
	printf 'run %d: krr-tui bench-loop %s MIPS (%s instructions in %s s), demo %s MIPS (%s instructions); ' \
		"$run" "$ours_mips" "$ours_insns" "$ours_s" "$demo_run_mips" "$demo_insns"
	printf 'QEMU one-insn-per-block %.2f s - %.2f s boot = %s MIPS; plain TCG %.2f s - %.2f s = %s MIPS; CPU time: krr-tui %s s, QEMU %s s - %s s\n' \
		"$q_full" "$q_boot" "$q_mips" "$t_full" "$t_boot" "$t_mips" "$ours_cpu_s" "$q_full_cpu" "$q_boot_cpu"
done

m_ours=$(printf '%s\n' "${ours[@]}" | median)
m_demo=$(printf '%s\n' "${demo_mips[@]}" | median)
m_qemu=$(printf '%s\n' "${qemu_mips[@]}" | median)
m_ours_cpu=$(printf '%s\n' "${ours_cpu[@]}" | median)
m_qemu_cpu=$(printf '%s\n' "${qemu_cpu[@]}" | median)
m_tcg=$(printf '%s\n' "${tcg_mips[@]}" | median)
ratio=$(awk -v a="$m_ours" -v b="$m_qemu" 'BEGIN { printf "%.2f", a / b }')
tcg_ratio=$(awk -v a="$m_ours" -v b="$m_tcg" 'BEGIN { printf "%.3f", a / b }')

echo
echo "bench-loop: $iterations iterations of $per_iteration instructions = $loop_insns loop instructions, checksum $checksum"
echo "medians of $RUNS runs ($(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $("$QEMU" --version | head -n 1)):"
echo
echo "| what | MIPS (wall time) | MIPS (CPU time) |"
echo "|---|---|---|"
echo "| krr-tui replay, bench-loop ($ours_insns instructions) | $m_ours | $m_ours_cpu |"
echo "| krr-tui replay, tests/fixtures/demo.krr ($demo_insns instructions) | $m_demo | |"
echo "| QEMU TCG ${singlestep[*]}, bench-loop (loop only) | $m_qemu | $m_qemu_cpu |"
echo "| QEMU TCG -accel tcg (block chaining), bench-loop (loop only) | $m_tcg | |"
echo
echo "ratio krr-tui replay / QEMU one-instruction-per-block on bench-loop: $ratio (CPU time: $(awk -v a="$m_ours_cpu" -v b="$m_qemu_cpu" 'BEGIN { printf "%.2f", a / b }'))"
echo "ratio krr-tui replay / plain QEMU TCG on bench-loop: $tcg_ratio"
