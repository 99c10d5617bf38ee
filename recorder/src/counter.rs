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

use krr_engine::state::CounterSourceKind;
use krr_kvm::stats::{StatDescriptor, Stats};
use krr_kvm::{Vm, long_mode};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Why a counter could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("running the insn_emulation calibration loop")]
    Calibration(#[source] krr_kvm::Error),
    #[error("insn_emulation vanished after calibration")]
    Vanished,
    #[error("reading insn_emulation")]
    ReadStat(#[source] krr_kvm::Error),
    #[error("perf_event_open (guest kernel branches)")]
    PerfOpen(#[source] std::io::Error),
    #[error("reading the perf counter")]
    PerfRead(#[source] std::io::Error),
}

/// A source of instruction (or branch) counts for the vCPU.
pub trait CounterSource: Send {
    fn kind(&self) -> CounterSourceKind;
    /// The raw count now. Called only while the vCPU is stopped.
    fn read(&mut self) -> Result<u64, CounterError>;
}

/// No counter at all.
#[derive(Debug, Default)]
pub struct NoCounter;

impl CounterSource for NoCounter {
    fn kind(&self) -> CounterSourceKind {
        CounterSourceKind::None
    }
    fn read(&mut self) -> Result<u64, CounterError> {
        Ok(0)
    }
}

/// KVM's `insn_emulation` statistic.
pub struct KvmInsnEmulation {
    stats: Stats,
    stat: StatDescriptor,
}

/// Instructions the calibration loop executes at ring 0: `mov ecx, N`, N x (`dec ecx`,
/// `jnz`), and the final `out` that stops it.
const CALIBRATION_ITERATIONS: u32 = 1000;
const CALIBRATION_INSTRUCTIONS: u64 = 1 + 2 * CALIBRATION_ITERATIONS as u64 + 1;

impl KvmInsnEmulation {
    /// Opens the statistic of `vm`'s vCPU, if it exists.
    pub fn open(vm: &Vm) -> Option<KvmInsnEmulation> {
        let stats = Stats::open(vm).ok()?;
        let stat = stats.find("insn_emulation")?.clone();
        if stat.size != 1 {
            return None;
        }
        Some(KvmInsnEmulation { stats, stat })
    }

    /// Whether this host's `insn_emulation` counts every ring-0 instruction: runs a
    /// calibration loop in a scratch VM and compares the count with the exact number of
    /// instructions it executed. On hosts that run ring-0 code natively (VT-x) the
    /// statistic stays near zero and this returns false.
    pub fn host_counts_ring0() -> Result<bool, CounterError> {
        let mut vm = Vm::with_ram(2 << 20).map_err(CounterError::Calibration)?;
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
        long_mode::load_flat_code(&mut vm, &code).map_err(CounterError::Calibration)?;
        let before = counter.read()?;
        vm.run_to_port(0x80, "calibration loop")
            .map_err(CounterError::Calibration)?;
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
    fn read(&mut self) -> Result<u64, CounterError> {
        self.stats.read(&self.stat).map_err(CounterError::ReadStat)
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
    pub fn open_on_current_thread() -> Result<PerfGuestKernel, CounterError> {
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
            return Err(CounterError::PerfOpen(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        let first = Self::read_raw(&fd)?;
        Ok(PerfGuestKernel {
            fd,
            extender: WrapExtender::new(PERF_COUNTER_WIDTH, first),
        })
    }

    fn read_raw(fd: &OwnedFd) -> Result<u64, CounterError> {
        let mut b = [0u8; 8];
        // SAFETY: reads 8 bytes into a valid buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
        if n != 8 {
            return Err(CounterError::PerfRead(if n < 0 {
                std::io::Error::last_os_error()
            } else {
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof)
            }));
        }
        Ok(u64::from_le_bytes(b))
    }
}

impl CounterSource for PerfGuestKernel {
    fn kind(&self) -> CounterSourceKind {
        CounterSourceKind::PerfGuestKernel
    }
    fn read(&mut self) -> Result<u64, CounterError> {
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
}
