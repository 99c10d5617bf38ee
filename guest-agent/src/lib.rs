//! krr-tui guest code, built from C and assembly by `build.rs` with the system gcc.
//!
//! * [`DEMO_KERNEL`]: the demo kernel ELF (PVH-bootable, DWARF included) with its agent.
//! * [`demo_disk`]: the disk image its `disk` program reads (fw_cfg file `opt/krr/disk`).
//! * [`HOSTILE_GUESTS`]: small kernels that abuse the agent ring and the doorbell, for the
//!   recorder's robustness tests.
//! * [`BENCH_LOOP_KERNEL`]: the replay-speed benchmark kernel (a ring-0 loop of known length).
//! * [`ABI_HEADER`] and [`INCLUDE_DIR`]: the agent ring ABI (`krr_agent_abi.h`).
//!
//! The machine the kernels expect: an ELF64 loaded by the `p_paddr` of its PT_LOAD segments
//! (at physical 1 MiB), entered at `e_entry` (a virtual address in the top 2 GiB) in
//! 64-bit mode at CPL0 with interrupts off and page tables mapping `0xffffffff80000000` to
//! physical 0; at least [`MIN_RAM`] bytes of RAM at guest-physical 0. Power-off is an `out`
//! to port 0xf4 (value 0 after a clean run, 1 after a kernel panic).

mod disk;

pub use disk::{DEMO_DISK_SEED, DEMO_DISK_SIZE, demo_disk, fnv1a64};

/// The demo kernel ELF image.
pub const DEMO_KERNEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/demo.elf"));

/// A test build of the demo kernel whose agent writes into a small ring in kernel memory
/// that the kernel consumes and checks itself (no recorder needed); it prints a line
/// `krr-demo: agent selftest: ...` with its counts before powering off.
pub const AGENT_SELFTEST_KERNEL: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/demo-agent-selftest.elf"));

/// Where the build left the demo kernel ELF (for scripts and external tools).
pub const DEMO_KERNEL_PATH: &str = concat!(env!("OUT_DIR"), "/demo.elf");

/// Where the build left a copy of [`demo_disk`] as a file.
pub const DEMO_DISK_PATH: &str = concat!(env!("OUT_DIR"), "/disk.img");

/// The agent ring ABI header (C).
pub const ABI_HEADER: &str = include_str!("../include/krr_agent_abi.h");

/// The directory holding `krr_agent_abi.h`, for compiling against it.
pub const INCLUDE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include");

/// RAM the demo kernel needs at guest-physical 0 (its frame pools end at 48 MiB).
pub const MIN_RAM: u64 = 64 << 20;

/// Guest-physical address where the demo kernel is loaded (`p_paddr` of its first segment).
pub const LOAD_PADDR: u64 = 0x10_0000;

/// Virtual base that maps physical 0 in the demo kernel (`-mcmodel=kernel`).
pub const KERNEL_VMA: u64 = 0xffff_ffff_8000_0000;

/// Symbol names of the agent hooks, global functions in every kernel image here.
pub mod hooks {
    /// `void krr_agent_user_entry(unsigned entry_kind, const struct trapframe *tf, unsigned long cr2)`
    pub const USER_ENTRY: &str = "krr_agent_user_entry";
    /// `void krr_agent_user_read(void *dst, const void *src, unsigned long len)`, called after the copy.
    pub const USER_READ: &str = "krr_agent_user_read";
    /// `unsigned long krr_agent_rdtsc(void)`
    pub const RDTSC: &str = "krr_agent_rdtsc";
    /// The `syscall` entry stub; LSTAR holds its address.
    pub const SYSCALL_ENTRY: &str = "syscall_entry";
}

/// System call numbers of the demo kernel (RAX; arguments in RDI, RSI, RDX).
pub mod syscalls {
    /// `write(buf, len) -> len`
    pub const WRITE: u64 = 0;
    /// `read_disk(offset, buf, len) -> bytes read (at most 16 KiB), 0 at the end`
    pub const READ_DISK: u64 = 1;
    /// `sleep(ticks) -> 0`, 100 ticks a second
    pub const SLEEP: u64 = 2;
    /// `getpid() -> pid`
    pub const GETPID: u64 = 3;
    /// `uptime() -> microseconds since boot (TSC)`
    pub const UPTIME: u64 = 4;
    /// `exit(code)`
    pub const EXIT: u64 = 5;
    /// `spawn(program) -> pid`
    pub const SPAWN: u64 = 6;
    /// `wait(pid) -> exit code (128 + vector for a process killed by an exception)`
    pub const WAIT: u64 = 7;
}

/// Console lines of the demo kernel that tests look for.
pub mod console {
    /// The last line before power-off.
    pub const POWER_OFF: &str = "krr-demo: all processes exited, powering off";
    /// The disk program's checksum line starts with this, followed by 16 hex digits.
    pub const CHECKSUM_PREFIX: &str = "fnv1a64 ";
    /// The user programs' names, in pid order of the demo run (prefix `[name:pid] `).
    pub const PROGRAMS: [&str; 6] = ["primes", "disk", "clock", "pager", "crash-ud", "crash-pf"];

    /// Where the demo kernel takes random numbers from (it follows the CPUID it sees).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RandomSources {
        /// `SYS_RANDOM` executes rdrand (else a xorshift generator).
        pub rdrand: bool,
        /// The generator's seed came from rdseed (else from the TSC).
        pub rdseed: bool,
    }

    /// The random sources the demo's boot line names
    /// (`krr-demo: random numbers from rdrand|xorshift, seed from rdseed|the TSC`, written
    /// by demo/random.c), or None where the console has no such line.
    pub fn random_sources(console: &str) -> Option<RandomSources> {
        let rest = console
            .lines()
            .find_map(|l| l.strip_prefix("krr-demo: random numbers from "))?;
        let (numbers, seed) = rest.split_once(", seed from ")?;
        let rdrand = match numbers {
            "rdrand" => true,
            "xorshift" => false,
            _ => return None,
        };
        let rdseed = match seed.trim_end() {
            "rdseed" => true,
            "the TSC" => false,
            _ => return None,
        };
        Some(RandomSources { rdrand, rdseed })
    }
}

/// The hostile test guests, by name. Each prints one line to the UART first.
///
/// * `ring-garbage`: a valid ring header, then records with garbage kinds and sizes (size
///   0, odd sizes, a record claiming 4 GiB), rung with FULL and FLUSH; then powers off.
/// * `ring-header`: absurd header values (head = 2^63, head past capacity, misaligned head,
///   capacity and header_size near 2^32, a wiped magic), each followed by a doorbell.
/// * `doorbell-nonsense`: 1000 doorbells with pseudo-random codes, then 8- and 16-bit
///   writes and reads at the doorbell port and its neighbours; then powers off.
/// * `no-poweroff`: prints, then runs forever in kernel mode with interrupts enabled: bursts
///   of spinning, each followed by `hlt` until the next timer interrupt.
/// * `triple-fault`: prints, loads an empty IDT and executes `ud2`.
/// * `partial-line`: prints, then `no newline yet` without a line end, then runs as
///   `no-poweroff` (a stop finds a console line pending, and timer ticks whose EOI is a
///   port write).
/// * `partial-line-silent`: prints, then `never ended` without a line end, then spins
///   with interrupts off and no timer: it never exits again by itself.
/// * `port-input`: reads ports in a loop with a 1 kHz timer interrupting it (interrupts
///   injected at `in` exits), then string input (`insb`, `rep insb`, `rep insw`, up and
///   down, across pages and KVM's 1 KiB read-ahead) from fw_cfg and the PIT; prints
///   checksums of what it read; then transmits a line from the UART's THRE interrupt
///   (IRQ4), one byte per interrupt, and powers off.
pub const HOSTILE_GUESTS: &[(&str, &[u8])] = &[
    (
        "ring-garbage",
        include_bytes!(concat!(env!("OUT_DIR"), "/hostile-ring-garbage.elf")),
    ),
    (
        "ring-header",
        include_bytes!(concat!(env!("OUT_DIR"), "/hostile-ring-header.elf")),
    ),
    (
        "doorbell-nonsense",
        include_bytes!(concat!(env!("OUT_DIR"), "/hostile-doorbell-nonsense.elf")),
    ),
    (
        "no-poweroff",
        include_bytes!(concat!(env!("OUT_DIR"), "/hostile-no-poweroff.elf")),
    ),
    (
        "triple-fault",
        include_bytes!(concat!(env!("OUT_DIR"), "/hostile-triple-fault.elf")),
    ),
    (
        "partial-line",
        include_bytes!(concat!(env!("OUT_DIR"), "/hostile-partial-line.elf")),
    ),
    (
        "partial-line-silent",
        include_bytes!(concat!(env!("OUT_DIR"), "/hostile-partial-line-silent.elf")),
    ),
    (
        "port-input",
        include_bytes!(concat!(env!("OUT_DIR"), "/hostile-port-input.elf")),
    ),
];

/// The replay-speed benchmark kernel: boots like the demo kernel, then runs a ring-0 loop of
/// ordinary integer code (`bench/bench_loop.S`: loads, stores, ALU, shifts, a multiply, a
/// data-dependent branch, a call) for [`BENCH_LOOP_ITERATIONS`] iterations of
/// [`BENCH_LOOP_INSTRUCTIONS_PER_ITERATION`] instructions with interrupts off, prints
/// `bench-loop: checksum <16 hex digits> after <N> iterations of <K> instructions` (see
/// [`bench_loop_checksum`]) and powers off with 0. No agent ring, no devices but the UART.
pub const BENCH_LOOP_KERNEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bench-loop.elf"));

/// [`BENCH_LOOP_KERNEL`] built with 0 iterations: its run time is the boot and power-off
/// that a benchmark subtracts.
pub const BENCH_LOOP_BOOT_KERNEL: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/bench-loop-boot.elf"));

/// Where the build left [`BENCH_LOOP_KERNEL`] as a file.
pub const BENCH_LOOP_KERNEL_PATH: &str = concat!(env!("OUT_DIR"), "/bench-loop.elf");

/// Where the build left [`BENCH_LOOP_BOOT_KERNEL`] as a file.
pub const BENCH_LOOP_BOOT_KERNEL_PATH: &str = concat!(env!("OUT_DIR"), "/bench-loop-boot.elf");

/// Iterations of the loop in [`BENCH_LOOP_KERNEL`] (set in `build.rs`).
pub const BENCH_LOOP_ITERATIONS: u64 = parse_u64(env!("KRR_BENCH_LOOP_ITERATIONS"));

/// Instructions one iteration executes, the call and the callee included (`bench/bench.h`).
pub const BENCH_LOOP_INSTRUCTIONS_PER_ITERATION: u64 = 26;

/// Console line prefix of the benchmark kernel's result.
pub const BENCH_LOOP_CHECKSUM_PREFIX: &str = "bench-loop: checksum ";

const fn parse_u64(s: &str) -> u64 {
    let bytes = s.as_bytes();
    let mut value = 0u64;
    let mut i = 0;
    while i < bytes.len() {
        value = value * 10 + (bytes[i] - b'0') as u64;
        i += 1;
    }
    value
}

/// The checksum `bench_loop` computes in `iterations` iterations over a table initialised
/// to `table[i] = i`: the same arithmetic in Rust, for tests.
pub fn bench_loop_checksum(iterations: u64) -> u64 {
    const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
    const MUL: u64 = 0x2545_f491;
    let mut table: [u64; 256] = std::array::from_fn(|i| i as u64);
    let mut x = SEED;
    let mut sum = 0u64;
    let mut left = iterations;
    while left != 0 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let index = (x & 0xff) as usize;
        let word = table[index].wrapping_add(x).rotate_left(5);
        table[index] = word;
        if x & 0x100 != 0 {
            sum = sum.wrapping_sub(index as u64);
        } else {
            sum = sum.wrapping_add(word) ^ left;
        }
        sum ^= sum.wrapping_mul(MUL) >> 29;
        left -= 1;
    }
    sum
}

/// The hostile guest of that name, if there is one.
pub fn hostile_guest(name: &str) -> Option<&'static [u8]> {
    HOSTILE_GUESTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, elf)| *elf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_sources_read_the_boot_line_and_nothing_else() {
        use console::{RandomSources, random_sources};
        let line = |n, s| {
            format!("krr-demo: tsc 1 kHz\nkrr-demo: random numbers from {n}, seed from {s}\n")
        };
        assert_eq!(
            random_sources(&line("rdrand", "rdseed")),
            Some(RandomSources {
                rdrand: true,
                rdseed: true
            })
        );
        assert_eq!(
            random_sources(&line("xorshift", "the TSC")),
            Some(RandomSources {
                rdrand: false,
                rdseed: false
            })
        );
        assert_eq!(random_sources(&line("magic", "rdseed")), None);
        assert_eq!(random_sources("krr-demo: booting\n"), None);
    }

    #[test]
    fn demo_disk_is_deterministic_and_sized() {
        let disk = demo_disk();
        assert_eq!(disk.len(), DEMO_DISK_SIZE);
        assert_eq!(disk, demo_disk());
        // Not constant: every 8-byte word differs from the next.
        assert!(
            disk.chunks(8)
                .zip(disk.chunks(8).skip(1))
                .all(|(a, b)| a != b)
        );
    }

    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn built_disk_file_matches_demo_disk() {
        let file = std::fs::read(DEMO_DISK_PATH).expect("disk.img written by build.rs");
        assert_eq!(file, demo_disk());
    }

    #[test]
    fn hostile_guests_are_elf_and_distinct() {
        assert_eq!(HOSTILE_GUESTS.len(), 8);
        for (name, elf) in HOSTILE_GUESTS {
            assert_eq!(&elf[..4], b"\x7fELF", "{name}");
            assert_eq!(hostile_guest(name), Some(*elf));
        }
        assert!(hostile_guest("nonexistent").is_none());
        for (i, (_, a)) in HOSTILE_GUESTS.iter().enumerate() {
            for (_, b) in &HOSTILE_GUESTS[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn bench_loop_kernels_are_built_and_sized() {
        for elf in [BENCH_LOOP_KERNEL, BENCH_LOOP_BOOT_KERNEL] {
            assert_eq!(&elf[..4], b"\x7fELF");
        }
        assert_ne!(BENCH_LOOP_KERNEL, BENCH_LOOP_BOOT_KERNEL);
        let loop_instructions = BENCH_LOOP_ITERATIONS * BENCH_LOOP_INSTRUCTIONS_PER_ITERATION;
        assert!((50_000_000..=100_000_000).contains(&loop_instructions));
        let header = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/bench.h"),
        )
        .unwrap();
        assert!(header.contains(&format!(
            "#define BENCH_INSNS_PER_ITERATION {BENCH_LOOP_INSTRUCTIONS_PER_ITERATION}\n"
        )));
    }

    #[test]
    fn bench_loop_checksum_depends_on_every_iteration() {
        assert_eq!(bench_loop_checksum(0), 0);
        let sums: Vec<u64> = (1..=64).map(bench_loop_checksum).collect();
        for (i, a) in sums.iter().enumerate() {
            for b in &sums[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn abi_header_is_the_contract() {
        assert!(ABI_HEADER.contains("KRR_RING_MAGIC"));
        assert!(
            std::path::Path::new(INCLUDE_DIR)
                .join("krr_agent_abi.h")
                .is_file()
        );
    }
}
