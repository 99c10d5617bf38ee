//! The gdbstub target: one replay timeline seen by gdb as a single-threaded machine
//! that runs forwards and backwards.

use super::arch::{KernelRegs, KernelX86_64};
use gdbstub::common::{Pid, Signal};
use gdbstub::stub::SingleThreadStopReason;
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::reverse_exec::{
    ReplayLogPosition, ReverseCont, ReverseContOps, ReverseStep, ReverseStepOps,
};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::exec_file::{ExecFile, ExecFileOps};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use krr_engine::event::Icount;
use krr_engine::timeline::{MAX_WATCH_LEN, Moved, Timeline, Watchpoint};
use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;

/// EFAULT: what gdb gets for a read of unmapped memory.
const EFAULT: u8 = 14;
/// EROFS: memory of a recording cannot be changed.
const EROFS: u8 = 30;

/// A move gdb asked for, carried out when the stub enters its running state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    Continue,
    Step,
    ReverseStep,
    ReverseContinue,
}

impl Resume {
    /// Moves that may take long and can be interrupted from gdb.
    pub fn interruptible(self) -> bool {
        matches!(self, Resume::Continue | Resume::ReverseContinue)
    }
}

pub type StopReason = SingleThreadStopReason<u64>;

/// A replay served to gdb.
pub struct ReplayTarget {
    pub(super) tl: Timeline,
    sw_breaks: BTreeSet<u64>,
    hw_breaks: BTreeSet<u64>,
    pending: Option<Resume>,
    /// Registers gdb wrote at the current position. A replay follows its recording, so
    /// writes are shown until the next move and then dropped.
    overlay: Option<KernelRegs>,
    /// The last divergence replay reported, for `monitor when`.
    pub(super) divergence: Option<String>,
    /// Where the kernel ELF was written, offered to gdb as the executable.
    exec_file: Option<Vec<u8>>,
}

impl ReplayTarget {
    pub fn new(tl: Timeline) -> ReplayTarget {
        ReplayTarget {
            tl,
            sw_breaks: BTreeSet::new(),
            hw_breaks: BTreeSet::new(),
            pending: None,
            overlay: None,
            divergence: None,
            exec_file: None,
        }
    }

    /// Offers this file to gdb as the executable (gdb loads its symbols on connect).
    pub fn set_exec_file(&mut self, path: &std::path::Path) {
        self.exec_file = Some(path.as_os_str().as_encoded_bytes().to_vec());
    }

    /// The move gdb asked for last, if it has not been carried out yet.
    pub fn pending(&self) -> Option<Resume> {
        self.pending
    }

    /// Carries out the pending move and says why it stopped.
    pub fn execute(&mut self, cancel: &AtomicBool) -> StopReason {
        self.overlay = None;
        let Some(resume) = self.pending.take() else {
            return StopReason::DoneStep;
        };
        let moved = match resume {
            Resume::Step => self.tl.stepi(),
            Resume::ReverseStep => self.tl.reverse_stepi(),
            Resume::Continue => self.tl.continue_forward(Some(cancel)),
            Resume::ReverseContinue => self.tl.reverse_continue(Some(cancel), &mut |_| {}),
        };
        self.moved_reason(moved)
    }

    pub(super) fn moved_reason(&mut self, moved: Moved) -> StopReason {
        match moved {
            Moved::Arrived => StopReason::DoneStep,
            Moved::Breakpoint(addr) => {
                if self.hw_breaks.contains(&addr) && !self.sw_breaks.contains(&addr) {
                    StopReason::HwBreak(())
                } else {
                    StopReason::SwBreak(())
                }
            }
            Moved::Start => StopReason::ReplayLog {
                tid: None,
                pos: ReplayLogPosition::Begin,
            },
            Moved::End(_) => StopReason::ReplayLog {
                tid: None,
                pos: ReplayLogPosition::End,
            },
            Moved::Watchpoint(w) => StopReason::Watch {
                tid: (),
                kind: WatchKind::Write,
                addr: w.addr,
            },
            Moved::Interrupted => StopReason::Signal(Signal::SIGINT),
            Moved::Diverged(d) => {
                let text = d.to_string();
                eprintln!("krr-tui: replay diverged:\n{text}");
                self.divergence = Some(text);
                StopReason::Signal(Signal::SIGABRT)
            }
        }
    }

    /// Drops register writes after a move made outside a resume (monitor commands).
    pub(super) fn moved_elsewhere(&mut self) {
        self.overlay = None;
    }

    pub(super) fn icount(&self) -> Icount {
        self.tl.icount()
    }

    fn sync_breakpoints(&mut self, addr: u64) {
        if self.sw_breaks.contains(&addr) || self.hw_breaks.contains(&addr) {
            self.tl.add_breakpoint(addr);
        } else {
            self.tl.remove_breakpoint(addr);
        }
    }
}

impl Target for ReplayTarget {
    type Arch = KernelX86_64;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }

    fn support_exec_file(&mut self) -> Option<ExecFileOps<'_, Self>> {
        self.exec_file.is_some().then_some(self)
    }
}

impl ExecFile for ReplayTarget {
    fn get_exec_file(
        &self,
        _pid: Option<Pid>,
        offset: u64,
        length: usize,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        let name = self.exec_file.as_deref().unwrap_or_default();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(name.len());
        let n = length.min(buf.len()).min(name.len() - start);
        buf[..n].copy_from_slice(&name[start..start + n]);
        Ok(n)
    }
}

impl SingleThreadBase for ReplayTarget {
    fn read_registers(&mut self, regs: &mut KernelRegs) -> TargetResult<(), Self> {
        *regs = match &self.overlay {
            Some(r) => r.clone(),
            None => KernelRegs::from_state(self.tl.regs()),
        };
        Ok(())
    }

    fn write_registers(&mut self, regs: &KernelRegs) -> TargetResult<(), Self> {
        self.overlay = Some(regs.clone());
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        // A read that runs into an unmapped page returns what precedes it.
        let done = self.tl.read_available(start, data);
        if done == 0 && !data.is_empty() {
            return Err(TargetError::Errno(EFAULT));
        }
        Ok(done)
    }

    fn write_addrs(&mut self, _start: u64, _data: &[u8]) -> TargetResult<(), Self> {
        Err(TargetError::Errno(EROFS))
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for ReplayTarget {
    fn resume(&mut self, signal: Option<Signal>) -> Result<(), Self::Error> {
        // A replay cannot deliver signals: the recording decides what the kernel sees.
        let _ = signal;
        self.pending = Some(Resume::Continue);
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_reverse_step(&mut self) -> Option<ReverseStepOps<'_, (), Self>> {
        Some(self)
    }

    fn support_reverse_cont(&mut self) -> Option<ReverseContOps<'_, (), Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for ReplayTarget {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.pending = Some(Resume::Step);
        Ok(())
    }
}

impl ReverseStep<()> for ReplayTarget {
    fn reverse_step(&mut self, _tid: ()) -> Result<(), Self::Error> {
        self.pending = Some(Resume::ReverseStep);
        Ok(())
    }
}

impl ReverseCont<()> for ReplayTarget {
    fn reverse_cont(&mut self) -> Result<(), Self::Error> {
        self.pending = Some(Resume::ReverseContinue);
        Ok(())
    }
}

impl Breakpoints for ReplayTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for ReplayTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.sw_breaks.insert(addr);
        self.sync_breakpoints(addr);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let had = self.sw_breaks.remove(&addr);
        self.sync_breakpoints(addr);
        Ok(had)
    }
}

impl HwBreakpoint for ReplayTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.hw_breaks.insert(addr);
        self.sync_breakpoints(addr);
        Ok(true)
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let had = self.hw_breaks.remove(&addr);
        self.sync_breakpoints(addr);
        Ok(had)
    }
}

impl HwWatchpoint for ReplayTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        // Only writes change what the kernel does next; read watchpoints are not offered.
        if kind != WatchKind::Write || len == 0 || len > MAX_WATCH_LEN {
            return Ok(false);
        }
        self.tl.add_watchpoint(addr, len);
        Ok(true)
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        if kind != WatchKind::Write {
            return Ok(false);
        }
        Ok(self.tl.delete_watchpoint(Watchpoint { addr, len }))
    }
}

impl MonitorCmd for ReplayTarget {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), Self::Error> {
        let cmd = String::from_utf8_lossy(cmd);
        let text = super::monitor::run(self, &cmd);
        gdbstub::outputln!(out, "{}", text.trim_end());
        Ok(())
    }
}
