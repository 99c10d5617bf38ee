#!/usr/bin/env bash
# Builds krr-tui's Linux guest: Debian's linux-source-6.1 with krr-linux-6.1.patch,
# configured as tinyconfig + krr.config, and its busybox initramfs.
#
#   guest-agent/linux/build.sh OUTDIR [--builtin-initramfs]
#
# Leaves OUTDIR/vmlinux (with DWARF), OUTDIR/bzImage and OUTDIR/initramfs.cpio (for
# --initrd). --builtin-initramfs also leaves OUTDIR/vmlinux-initramfs and
# OUTDIR/bzImage-initramfs, the same kernel with the initramfs built in (for a
# recorder that cannot load an initrd; a second object tree, so its first build is a
# clean one). The source tree (OUTDIR/linux-VERSION) and the object trees
# (OUTDIR/build, OUTDIR/build-initramfs) stay in OUTDIR, so a second run rebuilds only
# what changed. Installs what it needs with apt-get when absent.
set -euo pipefail

# The kernel the patch was made for: Debian bookworm's linux-source-6.1, 6.1.192.
LINUX_VERSION=6.1.192
SOURCE_PACKAGE=linux-source-6.1
TARBALL=/usr/src/linux-source-6.1.tar.xz
PACKAGES=(linux-source-6.1 flex bison bc libelf-dev cpio busybox-static lz4 xz-utils make gcc libc6-dev)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
agent_include=$(cd "$here/../include" && pwd) # krr_agent_abi.h: the ring layout
patch_file=$here/krr-linux-6.1.patch

usage() {
	echo "usage: $0 OUTDIR [--builtin-initramfs]" >&2
	exit 2
}
[ $# -ge 1 ] || usage
out=$1
shift
builtin=0
for arg; do
	case $arg in
	--builtin-initramfs) builtin=1 ;;
	*) usage ;;
	esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
src=$out/linux-$LINUX_VERSION
obj=$out/build
jobs=$(($(nproc) + 1))
start=$SECONDS

say() { echo "build.sh: $*"; }
die() {
	echo "build.sh: $*" >&2
	exit 1
}

say "krr-tui Linux guest for Linux $LINUX_VERSION (Debian $SOURCE_PACKAGE) into $out"

# --- Packages ---------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	say "installing ${missing[*]}"
	sudo=
	[ "$(id -u)" = 0 ] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- Source tree, refused unless it is the version the patch was made for -----------
makefile_version() {
	awk '/^VERSION =/ {v=$3} /^PATCHLEVEL =/ {p=$3} /^SUBLEVEL =/ {s=$3} END {print v "." p "." s}' "$1"
}
refuse() {
	die "this patch was made for Linux $LINUX_VERSION, but $1 is Linux $2.
  Install Debian's $SOURCE_PACKAGE of Linux $LINUX_VERSION (apt-get install $SOURCE_PACKAGE=$LINUX_VERSION-<revision>),
  or port guest-agent/linux/krr-linux-6.1.patch to $2 and change LINUX_VERSION in $0."
}
if [ ! -f "$src/.krr-source" ]; then
	package_version=$(dpkg-query -W -f='${Version}' "$SOURCE_PACKAGE")
	[ "${package_version%%-*}" = "$LINUX_VERSION" ] || refuse "$SOURCE_PACKAGE $package_version" "${package_version%%-*}"
	say "unpacking $TARBALL ($SOURCE_PACKAGE $package_version)"
	rm -rf "$src" "$src.unpack"
	mkdir -p "$src.unpack"
	tar -xf "$TARBALL" -C "$src.unpack"
	mv "$src.unpack/linux-source-6.1" "$src"
	rmdir "$src.unpack"
	echo "$package_version" >"$src/.krr-source"
fi
tree_version=$(makefile_version "$src/Makefile")
[ "$tree_version" = "$LINUX_VERSION" ] || refuse "$src" "$tree_version"

# --- The patch ----------------------------------------------------------------------
# A changed patch is swapped for the applied one; files whose content ends up the same
# keep their time stamps, so make rebuilds only what the change touched.
applied=$src/.krr-applied.patch
if ! cmp -s "$patch_file" "$applied" 2>/dev/null; then
	say "applying $(basename "$patch_file")"
	saved=$(mktemp -d)
	trap 'rm -rf "$saved"' EXIT
	files=$(sed -n 's|^+++ [^/]*/\([^[:space:]]*\).*|\1|p' "$patch_file" $([ -f "$applied" ] && echo "$applied") | sort -u)
	for f in $files; do
		if [ -f "$src/$f" ]; then
			mkdir -p "$saved/$(dirname "$f")"
			cp -p "$src/$f" "$saved/$f"
		fi
	done
	if [ -f "$applied" ]; then
		patch -d "$src" -p1 -R -s -f --dry-run <"$applied" >/dev/null ||
			die "$src no longer matches the patch applied to it: remove $src and run again"
		patch -d "$src" -p1 -R -s --no-backup-if-mismatch <"$applied"
		rm "$applied"
	fi
	patch -d "$src" -p1 -s -f --dry-run <"$patch_file" >/dev/null ||
		die "$(basename "$patch_file") does not apply to $src"
	patch -d "$src" -p1 -s --no-backup-if-mismatch <"$patch_file"
	cp "$patch_file" "$applied"
	for f in $files; do
		if [ -f "$saved/$f" ] && cmp -s "$saved/$f" "$src/$f"; then
			touch -r "$saved/$f" "$src/$f"
		fi
	done
fi

# --- Configuration: tinyconfig + krr.config, again whenever either input changed ---
# The same vmlinux, bit for bit, from any OUTDIR on any machine with the same compiler
# (the tests open a checked-in recording with a vmlinux built here): the build's
# identity is fixed (the kernel's reproducible-build variables) and the DWARF's paths
# are relative to OUTDIR (compilation directory build/, sources build/../linux-VERSION/),
# so the sources are found beside the vmlinux; krr_agent_abi.h is named
# krr-tui/guest-agent/include/. The C macros' paths keep the kernel's own mapping.
kmake() {
	local maps="-fdebug-prefix-map=$1=$(basename "$1") -fdebug-prefix-map=$src=../$(basename "$src")"
	maps+=" -fdebug-prefix-map=$agent_include=krr-tui/guest-agent/include"
	make -C "$src" O="$1" -j"$jobs" KRR_AGENT_INCLUDE="$agent_include" \
		KBUILD_BUILD_TIMESTAMP="Thu Jan  1 00:00:00 UTC 2026" KBUILD_BUILD_USER=krr \
		KBUILD_BUILD_HOST=krr-tui KBUILD_BUILD_VERSION=1 KCFLAGS="$maps" KAFLAGS="$maps" "${@:2}"
}

# Checks that every option krr.config sets (or unsets) has that value in $1/.config.
check_config() {
	local line name bad=0
	while IFS= read -r line; do
		case $line in
		CONFIG_*=*) name=${line%%=*} ;;
		"# CONFIG_"*" is not set") name=${line#\# } name=${name%% *} ;;
		*) continue ;;
		esac
		if ! grep -qxF "$line" "$1/.config"; then
			[ "$line" = "# $name is not set" ] && ! grep -q "^$name=" "$1/.config" && continue
			echo "build.sh: krr.config asks for '$line', .config has '$(grep "^$name=\|^# $name is not set" "$1/.config" || echo "nothing")'" >&2
			bad=1
		fi
	done <"$here/krr.config"
	return $bad
}

config_stamp=$(cat "$here/krr.config" "$patch_file" | sha256sum | cut -d' ' -f1)
if [ ! -f "$obj/.config" ] || [ "$(cat "$obj/.krr-config" 2>/dev/null)" != "$config_stamp" ]; then
	say "configuring $obj: tinyconfig + krr.config"
	mkdir -p "$obj"
	log=$obj/.krr-config.log
	{
		kmake "$obj" tinyconfig &&
			"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$here/krr.config" &&
			kmake "$obj" olddefconfig
	} >"$log" 2>&1 || die "configuration failed: see $log"
	check_config "$obj" || die "the configuration does not hold what krr.config asks (see $log)"
	echo "$config_stamp" >"$obj/.krr-config"
fi

# Copies a build product to OUTDIR unless it is already there.
publish() {
	cmp -s "$1" "$2" 2>/dev/null || cp "$1" "$2"
}

# --- The kernel ---------------------------------------------------------------------
say "building $obj"
kmake "$obj" -s all
publish "$obj/vmlinux" "$out/vmlinux"
publish "$obj/arch/x86/boot/bzImage" "$out/bzImage"

# --- mmap-check, the stress workload's program that busybox has no applet for --------
# Built every time (a tenth of a second) and dated 1970 like the rest of the initramfs
# (gen_init_cpio takes a file's own time), so the initramfs is reproducible too.
mmap_check=$out/mmap-check
gcc -static -nostdlib -ffreestanding -fno-stack-protector -fno-pie -no-pie -O2 -Wall -Wextra \
	-Werror -o "$mmap_check" "$here/mmap-check.c"
touch -d @0 "$mmap_check"

# --- The initramfs: gen_init_cpio (built with the kernel) over initramfs.list -------
cpio=$out/initramfs.cpio
if [ ! -f "$cpio" ] || [ "$here/initramfs.list" -nt "$cpio" ] || [ "$here/init.sh" -nt "$cpio" ] ||
	[ "$here/stress.sh" -nt "$cpio" ] || [ "$here/mmap-check.c" -nt "$cpio" ] ||
	[ /bin/busybox -nt "$cpio" ]; then
	say "writing $cpio"
	(cd "$here" && KRR_GUEST_OUT=$out "$obj/usr/gen_init_cpio" -t 0 initramfs.list) >"$cpio.tmp"
	mv "$cpio.tmp" "$cpio"
fi

# --- Optionally the same kernel with the initramfs built in -------------------------
if [ $builtin = 1 ]; then
	obj2=$out/build-initramfs
	mkdir -p "$obj2"
	if [ "$(cat "$obj2/.krr-config" 2>/dev/null)" != "$config_stamp" ] ||
		! grep -qxF "CONFIG_INITRAMFS_SOURCE=\"$cpio\"" "$obj2/.config"; then
		cp "$obj/.config" "$obj2/.config"
		"$src/scripts/config" --file "$obj2/.config" --set-str INITRAMFS_SOURCE "$cpio" \
			--enable INITRAMFS_COMPRESSION_NONE
		kmake "$obj2" -s olddefconfig
		echo "$config_stamp" >"$obj2/.krr-config"
	fi
	say "building $obj2 (initramfs built in)"
	kmake "$obj2" -s all
	publish "$obj2/vmlinux" "$out/vmlinux-initramfs"
	publish "$obj2/arch/x86/boot/bzImage" "$out/bzImage-initramfs"
fi

say "done in $((SECONDS - start)) s: $out/vmlinux, $out/bzImage, $out/initramfs.cpio$([ $builtin = 1 ] && echo ", $out/vmlinux-initramfs, $out/bzImage-initramfs")"
