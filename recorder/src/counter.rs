//! Instruction-counter sources (DESIGN.md section 3), behind one trait.
//!
//! * [`KvmInsnEmulation`]: KVM's per-vCPU `insn_emulation` statistic, an exact ring-0
//!   instruction counter on hosts whose KVM emulates guest ring-0 code. Detected by
//!   running a calibration loop and checking the count.
//! * [`PerfGuestKernel`]: a hardware counter of retired guest-kernel branches
//!   (perf_event_open with exclude_host/exclude_user) for VT-x hosts with a PMU.
//! * [`NoCounter`]: nothing; the recorder then injects kernel-mode interrupts only at
//!   deterministic exits, or by signature.
//!
//! A source returns raw, monotonically increasing readings; how a raw reading relates to
//! the replay icount is defined once, in `krr_engine::icount`.

use crate::RecorderError;
use crate::vm::Vm;
use krr_engine::state::CounterSourceKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A source of instruction (or branch) counts for the vCPU.
pub trait CounterSource: Send {
    fn kind(&self) -> CounterSourceKind;
    /// The raw count now. Called only while the vCPU is stopped.
    fn read(&mut self) -> Result<u64, RecorderError>;
}

/// No counter at all.
#[derive(Debug, Default)]
pub struct NoCounter;

impl CounterSource for NoCounter {
    fn kind(&self) -> CounterSourceKind {
        CounterSourceKind::None
    }
    fn read(&mut self) -> Result<u64, RecorderError> {
        Ok(0)
    }
}

/// One statistic of a KVM binary statistics file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatDescriptor {
    pub name: String,
    /// Absolute file offset of the statistic's first u64.
    pub offset: u64,
    pub size: u16,
}

/// Largest statistics header we accept (names, descriptors): the file is the kernel's,
/// but the parser still bounds what it allocates.
const MAX_STATS_NAME: u32 = 256;
const MAX_STATS_DESCS: u32 = 4096;

/// Parses the header and descriptors of a KVM binary statistics file (the layout of
/// `struct kvm_stats_header` and `struct kvm_stats_desc`).
pub fn parse_stats(read_at: &dyn Fn(u64, &mut [u8]) -> bool) -> Option<Vec<StatDescriptor>> {
    let mut h = [0u8; 24];
    if !read_at(0, &mut h) {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes(h[i * 4..i * 4 + 4].try_into().unwrap_or_default());
    let (name_size, num_desc, desc_offset, data_offset) = (word(1), word(2), word(4), word(5));
    if name_size == 0 || name_size > MAX_STATS_NAME || num_desc > MAX_STATS_DESCS {
        return None;
    }
    let desc_size = 16 + name_size as usize;
    let mut descs = vec![0u8; desc_size * num_desc as usize];
    if !read_at(desc_offset as u64, &mut descs) {
        return None;
    }
    let mut out = Vec::with_capacity(num_desc as usize);
    for d in descs.chunks_exact(desc_size) {
        let size = u16::from_le_bytes([d[6], d[7]]);
        let offset = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default());
        let name = &d[16..];
        let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        out.push(StatDescriptor {
            name: String::from_utf8_lossy(&name[..len]).into_owned(),
            offset: data_offset as u64 + offset as u64,
            size,
        });
    }
    Some(out)
}

fn pread(fd: &OwnedFd, offset: u64, buf: &mut [u8]) -> bool {
    // SAFETY: `buf` is valid for `buf.len()` bytes of writes; the fd is open.
    let n = unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    };
    n == buf.len() as isize
}

/// KVM's `insn_emulation` statistic.
pub struct KvmInsnEmulation {
    fd: OwnedFd,
    offset: u64,
}

/// Instructions the calibration loop executes at ring 0: `mov ecx, N`, N x (`dec ecx`,
/// `jnz`), and the final `out` that stops it.
const CALIBRATION_ITERATIONS: u32 = 1000;
const CALIBRATION_INSTRUCTIONS: u64 = 1 + 2 * CALIBRATION_ITERATIONS as u64 + 1;

impl KvmInsnEmulation {
    /// Opens the statistic of `vm`'s vCPU, if it exists.
    pub fn open(vm: &Vm) -> Option<KvmInsnEmulation> {
        let fd = vm.stats_fd()?;
        let descs = parse_stats(&|off, buf| pread(&fd, off, buf))?;
        let d = descs.into_iter().find(|d| d.name == "insn_emulation")?;
        if d.size != 1 {
            return None;
        }
        Some(KvmInsnEmulation {
            fd,
            offset: d.offset,
        })
    }

    /// Whether this host's `insn_emulation` counts every ring-0 instruction: runs a
    /// calibration loop in a scratch VM and compares the count with the exact number of
    /// instructions it executed. On hosts that run ring-0 code natively (VT-x) the
    /// statistic stays near zero and this returns false.
    pub fn host_counts_ring0() -> Result<bool, RecorderError> {
        let mut vm = Vm::new(2 << 20)?;
        let Some(mut counter) = KvmInsnEmulation::open(&vm) else {
            return Ok(false);
        };
        let n = CALIBRATION_ITERATIONS.to_le_bytes();
        let code = [
            0xb9, n[0], n[1], n[2], n[3], // mov ecx, N
            0xff, 0xc9, // dec ecx
            0x75, 0xfc, // jnz -4
            0xe6, 0x80, // out 0x80, al
        ];
        crate::loader::load_flat_code(&mut vm, &code)?;
        let before = counter.read()?;
        vm.run_until_out(0x80, "calibration loop")?;
        let delta = counter.read()? - before;
        tracing::debug!(
            delta,
            expected = CALIBRATION_INSTRUCTIONS,
            "insn_emulation calibration"
        );
        Ok(delta == CALIBRATION_INSTRUCTIONS)
    }
}

impl CounterSource for KvmInsnEmulation {
    fn kind(&self) -> CounterSourceKind {
        CounterSourceKind::KvmInsnEmulation
    }
    fn read(&mut self) -> Result<u64, RecorderError> {
        let mut b = [0u8; 8];
        if !pread(&self.fd, self.offset, &mut b) {
            return Err(RecorderError::Counter(
                "reading insn_emulation from the KVM statistics file failed".into(),
            ));
        }
        Ok(u64::from_le_bytes(b))
    }
}

/// Extends a hardware counter of `width` bits to 64 bits across wraps, given that it is
/// read at least once per wrap period (perf counters are 48 bits wide on x86).
#[derive(Debug, Clone)]
pub struct WrapExtender {
    width: u32,
    last_raw: u64,
    high: u64,
}

impl WrapExtender {
    pub fn new(width: u32, first_raw: u64) -> Self {
        let mask = Self::mask_for(width);
        WrapExtender {
            width,
            last_raw: first_raw & mask,
            high: 0,
        }
    }

    fn mask_for(width: u32) -> u64 {
        if width >= 64 {
            u64::MAX
        } else {
            (1u64 << width) - 1
        }
    }

    pub fn extend(&mut self, raw: u64) -> u64 {
        let raw = raw & Self::mask_for(self.width);
        if raw < self.last_raw && self.width < 64 {
            self.high += 1u64 << self.width;
        }
        self.last_raw = raw;
        self.high | raw
    }
}

/// Retired guest-kernel branches from a hardware performance counter, for VT-x hosts
/// with a PMU (the rr approach applied to the guest kernel). The counter counts on the
/// vCPU thread while it is in guest kernel mode only.
pub struct PerfGuestKernel {
    fd: OwnedFd,
    extender: WrapExtender,
}

/// The x86 general-purpose counter width.
const PERF_COUNTER_WIDTH: u32 = 48;

impl PerfGuestKernel {
    /// Opens the counter on the calling thread (which must be the vCPU thread).
    /// Fails on hosts without a PMU.
    pub fn open_on_current_thread() -> Result<PerfGuestKernel, RecorderError> {
        // struct perf_event_attr, version 5 layout (112 bytes): type, size, config,
        // sample_period, sample_type, read_format, flag bits, ...
        let mut attr = [0u8; 112];
        const PERF_TYPE_HARDWARE: u32 = 0;
        const PERF_COUNT_HW_BRANCH_INSTRUCTIONS: u64 = 4;
        attr[0..4].copy_from_slice(&PERF_TYPE_HARDWARE.to_le_bytes());
        attr[4..8].copy_from_slice(&112u32.to_le_bytes());
        attr[8..16].copy_from_slice(&PERF_COUNT_HW_BRANCH_INSTRUCTIONS.to_le_bytes());
        // Flag bits at offset 40: pinned (1), exclude_user (4), exclude_hv (6),
        // exclude_host (19). Guest kernel mode is what remains.
        let flags: u64 = 1 << 1 | 1 << 4 | 1 << 6 | 1 << 19;
        attr[40..48].copy_from_slice(&flags.to_le_bytes());
        // SAFETY: perf_event_open reads `attr` (valid, sized as declared) and returns a
        // new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                0 as libc::pid_t,
                -1 as libc::c_int,
                -1 as libc::c_int,
                0 as libc::c_ulong,
            )
        };
        if fd < 0 {
            return Err(RecorderError::Counter(format!(
                "perf_event_open (guest kernel branches): {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: fd is a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        let first = Self::read_raw(&fd)?;
        Ok(PerfGuestKernel {
            fd,
            extender: WrapExtender::new(PERF_COUNTER_WIDTH, first),
        })
    }

    fn read_raw(fd: &OwnedFd) -> Result<u64, RecorderError> {
        let mut b = [0u8; 8];
        // SAFETY: reads 8 bytes into a valid buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
        if n != 8 {
            return Err(RecorderError::Counter(
                "reading the perf counter failed".into(),
            ));
        }
        Ok(u64::from_le_bytes(b))
    }
}

impl CounterSource for PerfGuestKernel {
    fn kind(&self) -> CounterSourceKind {
        CounterSourceKind::PerfGuestKernel
    }
    fn read(&mut self) -> Result<u64, RecorderError> {
        let raw = Self::read_raw(&self.fd)?;
        Ok(self.extender.extend(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated 48-bit hardware counter that advances by given steps.
    struct SimulatedCounter {
        value: u64,
        width: u32,
    }
    impl SimulatedCounter {
        fn advance(&mut self, n: u64) -> u64 {
            self.value = (self.value + n) & ((1u64 << self.width) - 1);
            self.value
        }
    }

    #[test]
    fn wrap_extension_follows_a_simulated_counter_across_wraps() {
        let mut hw = SimulatedCounter {
            value: (1u64 << 48) - 1000,
            width: 48,
        };
        let mut ext = WrapExtender::new(48, hw.value);
        let mut truth = hw.value;
        for step in [10, 500, 489, 1, 2, 1 << 40, (1 << 47) + 5, 3, 1 << 47] {
            let raw = hw.advance(step);
            truth += step;
            assert_eq!(ext.extend(raw), truth, "after a step of {step}");
        }
        assert!(truth > 1 << 48, "the test must cross at least one wrap");
    }

    #[test]
    fn stats_parser_finds_a_named_statistic_and_bounds_sizes() {
        // Header: flags, name_size=48, num_desc=2, id_offset=24, desc_offset=80,
        // data_offset=200.
        let mut file = vec![0u8; 256];
        for (i, v) in [0u32, 48, 2, 24, 80, 200].iter().enumerate() {
            file[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        let desc = |file: &mut Vec<u8>, at: usize, offset: u32, name: &str| {
            file[at + 6..at + 8].copy_from_slice(&1u16.to_le_bytes());
            file[at + 8..at + 12].copy_from_slice(&offset.to_le_bytes());
            file[at + 16..at + 16 + name.len()].copy_from_slice(name.as_bytes());
        };
        desc(&mut file, 80, 0, "exits");
        desc(&mut file, 80 + 64, 8, "insn_emulation");
        file[208..216].copy_from_slice(&12345u64.to_le_bytes());
        let read = |off: u64, buf: &mut [u8]| {
            let Some(src) = file.get(off as usize..off as usize + buf.len()) else {
                return false;
            };
            buf.copy_from_slice(src);
            true
        };
        let descs = parse_stats(&read).unwrap();
        let d = descs.iter().find(|d| d.name == "insn_emulation").unwrap();
        assert_eq!(d.offset, 208);

        // A header claiming four billion descriptors is rejected without allocating.
        let mut bad = file.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let read_bad = |off: u64, buf: &mut [u8]| {
            let Some(src) = bad.get(off as usize..off as usize + buf.len()) else {
                return false;
            };
            buf.copy_from_slice(src);
            true
        };
        assert!(parse_stats(&read_bad).is_none());
    }
}
