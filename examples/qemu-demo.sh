#!/usr/bin/env bash
# Build the demo kernel and boot it under QEMU (PVH -kernel boot, TCG by default).
#
#   examples/qemu-demo.sh            # TCG
#   ACCEL=kvm examples/qemu-demo.sh  # KVM (on PVM hosts: user syscalls arrive as #PF at LSTAR)
#
# Needs qemu-system-x86_64 (Debian: apt-get install qemu-system-x86). The demo prints its
# console to stdout and powers off through isa-debug-exit: QEMU then exits with status 1.
set -euo pipefail

cd "$(dirname "$0")/.."
ACCEL="${ACCEL:-tcg}"
QEMU="${QEMU:-qemu-system-x86_64}"

if ! command -v "$QEMU" >/dev/null; then
	echo "error: $QEMU not found (apt-get install qemu-system-x86)" >&2
	exit 2
fi

# build.rs leaves demo.elf and disk.img in the crate's OUT_DIR; cargo names it in its JSON messages.
out_dir=$(cargo build -p krr-guest --message-format=json 2>/dev/null |
	grep '"reason":"build-script-executed"' | grep '"package_id":"[^"]*krr-guest' |
	sed -n 's/.*"out_dir":"\([^"]*\)".*/\1/p' | tail -n 1)
if [ -z "$out_dir" ] || [ ! -f "$out_dir/demo.elf" ]; then
	echo "error: could not find the built demo kernel (cargo build -p krr-guest)" >&2
	exit 2
fi

cpu=()
if [ "$ACCEL" = kvm ]; then
	cpu=(-cpu qemu64)
fi

echo "booting $out_dir/demo.elf with $ACCEL" >&2
set +e
"$QEMU" -accel "$ACCEL" "${cpu[@]}" -machine pc -m 128 -nographic -no-reboot \
	-device isa-debug-exit,iobase=0xf4,iosize=4 \
	-kernel "$out_dir/demo.elf" \
	-fw_cfg "name=opt/krr/disk,file=$out_dir/disk.img"
status=$?
set -e
if [ "$status" -eq 1 ]; then
	echo "demo powered off cleanly" >&2
	exit 0
fi
echo "QEMU exited with status $status" >&2
exit "$status"
