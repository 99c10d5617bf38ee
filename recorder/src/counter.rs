//! Instruction-counter sources (DESIGN.md section 3), behind one trait.
//!
//! * [`KvmInsnEmulation`]: KVM's per-vCPU `insn_emulation` statistic, an exact ring-0
//!   instruction counter on hosts whose KVM emulates guest ring-0 code. Detected by
//!   running a calibration loop and checking the count.
//! * [`NoCounter`]: nothing; the recorder then injects kernel-mode interrupts only at
//!   deterministic exits, or by signature.
//!
//! A hardware counter of retired guest-kernel branches for VT-x hosts with a PMU
//! (DESIGN.md section 3, option 2) is not implemented: these hosts have no PMU to test
//! it on, and replay places events by instruction count, not by branch count (it refuses
//! a recording whose header claims `CounterSourceKind::PerfGuestKernel`).
//!
//! A source returns raw, monotonically increasing readings; how a raw reading relates to
//! the replay icount is defined once, in `krr_engine::icount`.

use krr_engine::state::CounterSourceKind;
use krr_kvm::stats::{StatDescriptor, Stats};
use krr_kvm::{Vm, long_mode};

/// Why a counter could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("running the insn_emulation calibration loop")]
    Calibration(#[source] krr_kvm::Error),
    #[error("insn_emulation vanished after calibration")]
    Vanished,
    #[error("reading insn_emulation")]
    ReadStat(#[source] krr_kvm::Error),
}

/// A source of the vCPU's ring-0 instruction counts.
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
