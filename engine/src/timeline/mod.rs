//! Time travel over a replay (DESIGN.md section 6), and the one debugging API the
//! terminal UI and the gdb server use, as rr's `ReplayTimeline` is: the position
//! ([`Position`]), the moves — forward and backward by instruction, to an icount or an
//! event, continue in either direction to a breakpoint or a watchpoint, next, finish and
//! their reverses —, breakpoints and write watchpoints, the registers, memory and
//! instructions at the position, and the guest's symbols.
//!
//! Copy-on-write checkpoints: a checkpoint is a clone of the [`Replay`], CPU state plus
//! memory whose 4 KiB pages are shared with the live replay and the other checkpoints,
//! so it costs only the pages written since the previous one. Checkpoints are taken
//! every `interval` instructions as replay moves forward; when their cost exceeds the
//! budget, every other checkpoint in the older half is dropped (never the first), again
//! until the budget holds, so checkpoints thin as they age while the recent stretch stays
//! dense and the start stays reachable; when only a few remain, the interval doubles
//! instead.
//!
//! Continue and reverse-continue run at full speed, with the replay CPU's breakpoints and
//! the memory path's report of writes to watched lines ([`watch`]); reverse-continue
//! replays one checkpoint interval at a time, newest first, and keeps the last hit.
//! Moves that need to look at every instruction (next and finish without call-frame
//! information, source-line steps, the reverse moves but reverse-continue) step one
//! instruction at a time: forward one `run(Target::Icount(k + 1))` per instruction;
//! backward they rescan one checkpoint interval at a time from its checkpoint, stepping
//! likewise, and keep the last match; watchpoints cost them only a comparison of a
//! counter per instruction.

mod frames;
mod step;
mod watch;
mod writes;

pub use frames::{FrameVariables, StackFrame, VariableText};
pub use step::{FrameId, LineStep};
pub use watch::{MAX_WATCH_LEN, Watchpoint};
pub use writes::{WatchWrite, Writer};

use crate::cpu::PageFault;
use crate::event::{Event, Icount};
use crate::guest_kernel::{GuestKernel, Process};
use crate::replay::{Divergence, End, Replay, Stop, Target};
use crate::state::{CpuState, PAGE_SIZE, gpr};
use crate::symbols::Symbols;
use iced_x86::{FlowControl, Instruction};
use std::cell::OnceCell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use watch::{Ran, Watcher};

/// Longest x86 instruction.
const MAX_INSTRUCTION_LEN: usize = 15;
/// Default memory budget for checkpoints.
pub const DEFAULT_CHECKPOINT_BUDGET: u64 = 1 << 30;
/// First checkpoint interval, in instructions.
const INITIAL_INTERVAL: u64 = 250_000;
/// How far ahead of the position [`Timeline::learn_events_through`] replays to learn
/// where events were applied (a few milliseconds of replay).
pub const LEARN_AHEAD: Icount = 1 << 20;
/// Longest stretch replayed at once with watchpoints set (a stretch that wrote a watched
/// line is replayed again, in halves).
const WATCH_SLICE: Icount = 1 << 20;

/// Where a move ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Moved {
    /// The requested position was reached.
    Arrived,
    /// A breakpoint at this address.
    Breakpoint(u64),
    /// A watched range changed: forward, the position right after the writing
    /// instruction; backward, the position right before it.
    Watchpoint(Watchpoint),
    /// The start of the recording (a backward move cannot go further).
    Start,
    /// The end of the recording (a forward move cannot go further).
    End(End),
    /// The user interrupted a long move.
    Interrupted,
    /// Replay disagrees with the recording here.
    Diverged(Box<Divergence>),
}

#[derive(Clone)]
struct Checkpoint {
    icount: Icount,
    events_consumed: u64,
    replay: Replay,
    /// Pages not shared with the previous checkpoint when it was taken.
    cost_pages: u64,
}

/// Where the replay stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The last event applied (None before the first).
    pub event: Option<u64>,
    pub icount: Icount,
    /// For a recording made without an instruction counter, the deterministic-exit
    /// ordinal: the axis its events are placed on (see [`crate::icount`]).
    pub exit: Option<u64>,
    pub rip: u64,
}

impl Position {
    /// The position on the axis of the recording's event positions: the icount, or the
    /// exit ordinal for a recording made without a counter.
    pub fn on_event_axis(&self) -> Icount {
        self.exit.unwrap_or(self.icount)
    }
}

/// Statistics for the checkpoints pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub icount: Icount,
    pub events_consumed: u64,
    pub bytes: u64,
}

/// Why memory could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("not mapped ({0:?})")]
    Unmapped(PageFault),
    /// User memory the recording does not have (see [`Replay::is_recorded`]).
    #[error("not recorded (user memory written only by user code)")]
    NotRecorded,
}

/// A replay one can move in freely.
pub struct Timeline {
    now: Replay,
    checkpoints: Vec<Checkpoint>,
    interval: Icount,
    budget: u64,
    breakpoints: BTreeSet<u64>,
    watchpoints: BTreeSet<Watchpoint>,
    /// Named positions (rr's checkpoints, UDB's bookmarks).
    bookmarks: std::collections::BTreeMap<String, Position>,
    /// The guest's symbols: set, or read from the recording when first asked for.
    symbols: OnceCell<Symbols>,
    /// What the debugger knows of the guest's kernel, found when first asked for.
    kernel: OnceCell<GuestKernel>,
    /// The last [`Timeline::learn_events_through`] that could not learn all it was
    /// asked: its position and event.
    learn_tried: std::cell::Cell<Option<(Icount, u64)>>,
    /// How many inlined calls the position is "before" (at their entry), where the last
    /// move settled it; otherwise every inlined call entered at pc (see [`LineStep`]).
    inline_state: Option<step::InlineState>,
}

impl Timeline {
    pub fn new(replay: Replay, budget: u64) -> Timeline {
        let start = Checkpoint {
            icount: replay.icount(),
            events_consumed: replay.events_consumed(),
            replay: replay.clone(),
            // Shares every page with the replay's own initial state, which it keeps
            // anyway (to restart and to report divergences).
            cost_pages: 0,
        };
        Timeline {
            now: replay,
            checkpoints: vec![start],
            interval: INITIAL_INTERVAL,
            budget,
            breakpoints: BTreeSet::new(),
            watchpoints: BTreeSet::new(),
            bookmarks: std::collections::BTreeMap::new(),
            symbols: OnceCell::new(),
            kernel: OnceCell::new(),
            learn_tried: std::cell::Cell::new(None),
            inline_state: None,
        }
    }

    /// Uses these symbols (from a kernel image named by the user) instead of the
    /// recording's.
    pub fn set_symbols(&mut self, symbols: Symbols) {
        self.symbols = OnceCell::from(symbols);
        self.kernel = OnceCell::new();
    }

    /// The guest's symbols and source lines: those set, else the recording's embedded
    /// kernel image or symbol list.
    pub fn symbols(&self) -> &Symbols {
        self.symbols
            .get_or_init(|| Symbols::from_header(self.now.header()))
    }

    /// Where the replay stands.
    pub fn position(&self) -> Position {
        let r = &self.now;
        Position {
            event: r.events_consumed().checked_sub(1),
            icount: r.icount(),
            exit: (!r.counted()).then(|| r.position()),
            rip: r.rip(),
        }
    }

    /// Makes sure where the events up to `n` were applied is known
    /// ([`Replay::applied_position`]): replays a copy of the current position forward
    /// until event `n` is applied, unless that is more than [`LEARN_AHEAD`]
    /// instructions ahead (their positions are then shown as recorded until replay
    /// gets there).
    pub fn learn_events_through(&self, n: u64) {
        let n = n.min(self.now.event_count().saturating_sub(1));
        if self.now.events_applied_known() > n {
            return;
        }
        // Not again from here for as much (the pane is drawn over and over).
        let attempt = (self.icount(), n);
        if self
            .learn_tried
            .get()
            .is_some_and(|(k, m)| k == attempt.0 && m >= n)
        {
            return;
        }
        self.learn_tried.set(Some(attempt));
        let mut ahead = self.now.clone();
        ahead.set_user_breakpoints(Vec::new());
        let cap = ahead.icount().saturating_add(LEARN_AHEAD);
        // Whatever stops it, what it applied on the way is learned.
        let _ = ahead.run_capped(Target::Event(n), cap);
    }

    /// What the debugger knows of the guest's kernel (system call names, its current
    /// process).
    pub fn guest_kernel(&self) -> GuestKernel {
        *self
            .kernel
            .get_or_init(|| GuestKernel::of(self.now.header(), self.symbols()))
    }

    /// Notes the task at every entry from user mode replay applies from now on (the
    /// events pane shows it, [`Timeline::entry_task`]), where the guest kernel's current
    /// task is known.
    pub fn follow_tasks(&mut self) {
        let kernel = self.guest_kernel();
        let reader: crate::replay::entry_tasks::TaskReader =
            std::sync::Arc::new(move |read| kernel.current_process(read));
        self.now.follow_tasks(reader.clone());
        for c in &mut self.checkpoints {
            c.replay.follow_tasks(reader.clone());
        }
    }

    /// The task that made entry event `n`, where replay has applied it following tasks.
    pub fn entry_task(&self, n: u64) -> Option<Process> {
        self.now.entry_task(n)
    }

    /// An event's text, with what is known of the guest kernel (its system call names).
    pub fn event_text(&self, e: &Event) -> String {
        let kernel = self.guest_kernel();
        let read = |a, buf: &mut [u8]| self.now.read_memory(a, buf).is_ok();
        e.text(&|nr| kernel.syscall_name(nr, self.symbols(), &read))
    }

    /// The process the guest kernel runs at the position, where it is known.
    pub fn current_process(&self) -> Option<Process> {
        self.guest_kernel()
            .current_process(&|a, buf| self.now.read_memory(a, buf).is_ok())
    }

    /// The kernel log (`dmesg`) at the position: Linux's printk ring (see
    /// [`GuestKernel::kernel_log`]).
    pub fn kernel_log(&self) -> Result<Vec<String>, crate::guest_kernel::KernelLogError> {
        self.guest_kernel()
            .kernel_log(self.symbols(), &|a, buf| self.read_memory(a, buf).is_ok())
    }

    /// The registers at the current position.
    pub fn regs(&self) -> &CpuState {
        self.now.regs()
    }

    /// Reads guest memory at a virtual address through the guest's page tables; fails
    /// where a page is not mapped or was not recorded ([`Replay::is_recorded`]).
    pub fn read_memory(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if self.read_available(addr, buf) == buf.len() {
            return Ok(());
        }
        match self.now.read_memory(addr, buf) {
            Err(fault) => Err(ReadError::Unmapped(fault)),
            Ok(()) => Err(ReadError::NotRecorded),
        }
    }

    /// Reads what is mapped and recorded of `buf.len()` bytes at `addr`, up to the
    /// first page that is not; returns how many bytes were read.
    pub fn read_available(&self, addr: u64, buf: &mut [u8]) -> usize {
        let mapped = self.now.read_available(addr, buf);
        let mut done = 0;
        while done < mapped {
            let a = addr.wrapping_add(done as u64);
            if !self.now.is_recorded(a) {
                break;
            }
            done += (PAGE_SIZE - (a as usize & (PAGE_SIZE - 1))).min(mapped - done);
        }
        done
    }

    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read_memory(addr, &mut b)
            .ok()
            .map(|()| u64::from_le_bytes(b))
    }

    /// The instruction at `addr`, if the bytes mapped and recorded there are one.
    pub fn instruction_at(&self, addr: u64) -> Option<Instruction> {
        self.instructions(addr, MAX_INSTRUCTION_LEN)
            .into_iter()
            .next()
            .filter(|i| !i.is_invalid())
    }

    /// The instructions in the `len` bytes from `start` (up to the first page not
    /// mapped or not recorded), decoded in sequence.
    pub fn instructions(&self, start: u64, len: usize) -> Vec<Instruction> {
        let mut bytes = vec![0u8; len];
        let n = self.read_available(start, &mut bytes);
        iced_x86::Decoder::with_ip(64, &bytes[..n], start, iced_x86::DecoderOptions::NONE)
            .into_iter()
            .collect()
    }

    /// The frame the current function returns to, from the kernel's call-frame
    /// information (None in code it does not describe, such as assembly stubs).
    pub fn caller_frame(&self) -> Option<CallerFrame> {
        let unwinder = self.symbols().unwinder()?;
        let caller = unwinder.caller(self.frame(), true, &|a: u64| self.read_u64(a))?;
        Some(CallerFrame {
            return_address: caller.rip,
            stack_pointer: caller.rsp,
        })
    }

    fn frame(&self) -> crate::symbols::Frame {
        let regs = self.regs();
        crate::symbols::Frame {
            rip: regs.rip,
            rsp: regs.gpr[gpr::RSP],
            rbp: regs.gpr[gpr::RBP],
        }
    }

    /// Up to `max` frames, RIP first, then return addresses, and how they were found:
    /// unwound through the kernel's call-frame information, or where it has none
    /// (assembly such as entry stubs) return addresses found on the stack that follow a
    /// call instruction.
    pub fn backtrace(&self, max: usize) -> (Vec<u64>, &'static str) {
        let symbols = self.symbols();
        if let Some(unwinder) = symbols.unwinder() {
            let mut frames = unwinder.backtrace(self.frame(), &|a: u64| self.read_u64(a));
            if frames.len() > 1 {
                frames.truncate(max);
                return (frames, "DWARF call-frame information");
            }
        }
        let mut frames = vec![self.regs().rip];
        let mut sp = self.regs().gpr[gpr::RSP];
        // Without call-frame information (and a kernel built without frame pointers),
        // scan the stack for values that point just after a call in a known function.
        for _ in 0..512 {
            if frames.len() >= max {
                break;
            }
            let Some(v) = self.read_u64(sp) else {
                break;
            };
            if symbols.lookup(v).is_some_and(|l| l.offset > 0) && self.follows_call(v) {
                frames.push(v);
            }
            sp = sp.wrapping_add(8);
        }
        (frames, "heuristic: return addresses on the stack")
    }

    /// Whether a call instruction ends right before `ret`.
    fn follows_call(&self, ret: u64) -> bool {
        [5u64, 2, 3, 6, 7].iter().any(|&back| {
            self.instruction_at(ret.wrapping_sub(back))
                .is_some_and(|ins| ins.len() as u64 == back && is_call(&ins))
        })
    }

    /// After a move by instructions (or to a position): the stop is not taken to be
    /// before any inlined call (gdb skips inlined calls only at the stops of runs and
    /// source-line steps).
    pub(super) fn settle_instruction(&mut self) {
        self.inline_state = Some(step::InlineState {
            icount: self.icount(),
            skipped: 0,
        });
    }

    /// Sets the instruction interval between checkpoints (tests use small ones).
    pub fn set_interval(&mut self, interval: Icount) {
        self.interval = interval.max(1);
    }

    /// The replay at the current position (its recording, events, console).
    pub fn replay(&self) -> &Replay {
        &self.now
    }

    pub fn icount(&self) -> Icount {
        self.now.icount()
    }

    pub fn checkpoints(&self) -> Vec<CheckpointInfo> {
        self.checkpoints
            .iter()
            .map(|c| CheckpointInfo {
                icount: c.icount,
                events_consumed: c.events_consumed,
                bytes: c.cost_pages * PAGE_SIZE as u64,
            })
            .collect()
    }

    /// Bytes the checkpoints hold beyond what they share.
    pub fn checkpoint_bytes(&self) -> u64 {
        self.checkpoints.iter().map(|c| c.cost_pages).sum::<u64>() * PAGE_SIZE as u64
    }

    pub fn breakpoints(&self) -> &BTreeSet<u64> {
        &self.breakpoints
    }

    pub fn add_breakpoint(&mut self, addr: u64) {
        self.breakpoints.insert(addr);
    }

    pub fn remove_breakpoint(&mut self, addr: u64) -> bool {
        self.breakpoints.remove(&addr)
    }

    pub fn watchpoints(&self) -> &BTreeSet<Watchpoint> {
        &self.watchpoints
    }

    /// Watches `len` bytes at linear address `addr` (clamped to [`MAX_WATCH_LEN`]).
    pub fn add_watchpoint(&mut self, addr: u64, len: u64) -> Watchpoint {
        let w = Watchpoint {
            addr,
            len: len.clamp(1, MAX_WATCH_LEN),
        };
        self.watchpoints.insert(w);
        w
    }

    /// Removes the watchpoints at `addr` (whatever their lengths).
    pub fn remove_watchpoint(&mut self, addr: u64) -> bool {
        let before = self.watchpoints.len();
        self.watchpoints.retain(|w| w.addr != addr);
        self.watchpoints.len() != before
    }

    /// Removes this one watchpoint.
    pub fn delete_watchpoint(&mut self, w: Watchpoint) -> bool {
        self.watchpoints.remove(&w)
    }

    /// Sets the checkpoint memory budget (thins at once if it is exceeded).
    pub fn set_budget(&mut self, budget: u64) {
        self.budget = budget;
        self.thin();
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Moves forward by one instruction.
    pub fn stepi(&mut self) -> Moved {
        let k = self.icount() + 1;
        self.goto_icount(k)
    }

    /// Moves back by one instruction.
    pub fn reverse_stepi(&mut self) -> Moved {
        match self.icount().checked_sub(1) {
            Some(k) => self.goto_icount(k),
            None => Moved::Start,
        }
    }

    /// Names the current position `name` (replacing a bookmark of that name); returns
    /// the position.
    pub fn set_bookmark(&mut self, name: &str) -> Position {
        let p = self.position();
        self.bookmarks.insert(name.to_string(), p);
        p
    }

    /// The bookmarks, by name.
    pub fn bookmarks(&self) -> &std::collections::BTreeMap<String, Position> {
        &self.bookmarks
    }

    pub fn delete_bookmark(&mut self, name: &str) -> bool {
        self.bookmarks.remove(name).is_some()
    }

    /// Goes to the bookmark `name` (None where there is none): its icount, then on to
    /// the events it had applied there (as the UI follows a gdb position).
    pub fn goto_bookmark(&mut self, name: &str) -> Option<Moved> {
        let p = *self.bookmarks.get(name)?;
        let target = p.event.map_or(0, |e| e + 1);
        let mut moved = self.goto_icount(p.icount);
        if self.now.events_consumed() < target && matches!(moved, Moved::Arrived) {
            moved = self.goto_event(target - 1);
        }
        Some(moved)
    }

    /// Goes to icount `k` (forward or backward). A `k` past the end stops at the end and
    /// reports [`Moved::End`]; reaching `k`, 0 included, is [`Moved::Arrived`] (only a
    /// move that cannot go back at all reports [`Moved::Start`]).
    pub fn goto_icount(&mut self, k: Icount) -> Moved {
        let moved = self.goto_icount_inner(k);
        self.settle_instruction();
        moved
    }

    fn goto_icount_inner(&mut self, k: Icount) -> Moved {
        if k < self.icount() {
            self.restore_before(|c| c.icount <= k);
        } else {
            self.skip_ahead(|c| c.icount <= k);
        }
        self.forward(Target::Icount(k), false, None)
    }

    /// Goes to the position right after event `n` was applied.
    pub fn goto_event(&mut self, n: u64) -> Moved {
        let moved = self.goto_event_inner(n);
        self.settle_instruction();
        moved
    }

    fn goto_event_inner(&mut self, n: u64) -> Moved {
        if n >= self.now.event_count() {
            return Moved::End(End::EndOfRecording);
        }
        if self.now.events_consumed() > n {
            self.restore_before(|c| c.events_consumed <= n);
        } else {
            self.skip_ahead(|c| c.events_consumed <= n);
        }
        self.forward(Target::Event(n), false, None)
    }

    /// For a forward move: starts from the latest checkpoint that `ok` accepts if it
    /// lies ahead of the current position, instead of replaying the stretch between.
    fn skip_ahead(&mut self, ok: impl Fn(&Checkpoint) -> bool) {
        if let Some(c) = self.checkpoints.iter().rev().find(|c| ok(c))
            && (c.icount, c.events_consumed) > (self.icount(), self.now.events_consumed())
        {
            self.now = c.replay.clone();
        }
    }

    /// Runs forward to the next breakpoint, watched write or the end.
    pub fn continue_forward(&mut self, cancel: Option<&AtomicBool>) -> Moved {
        let moved = self.continue_forward_inner(cancel);
        self.inline_state = None;
        moved
    }

    fn continue_forward_inner(&mut self, cancel: Option<&AtomicBool>) -> Moved {
        self.forward(Target::End, true, cancel)
    }

    /// Steps over a call: like stepi, but a `call` runs until it returns (or a
    /// breakpoint, watchpoint or the end stops it first).
    pub fn next(&mut self, cancel: Option<&AtomicBool>) -> Moved {
        let moved = self.next_inner(cancel);
        self.settle_instruction();
        moved
    }

    fn next_inner(&mut self, cancel: Option<&AtomicBool>) -> Moved {
        let Some(ins) = self.now.current_instruction() else {
            return self.stepi();
        };
        if !is_call(&ins) {
            return self.stepi();
        }
        let frame = CallerFrame {
            return_address: ins.next_ip(),
            stack_pointer: rsp(&self.now),
        };
        self.run_to_frame(frame, cancel)
    }

    /// Runs forward until execution is back in `frame`: at its return address with its
    /// stack pointer. The stack pointer tells this frame's return from a deeper
    /// (recursive) one and from another thread's, whose kernel stack a context switch
    /// made current, returning to the same address.
    fn run_to_frame(&mut self, frame: CallerFrame, cancel: Option<&AtomicBool>) -> Moved {
        let CallerFrame {
            return_address: ret,
            stack_pointer: sp,
        } = frame;
        let in_frame = |r: &Replay| r.rip() == ret && rsp(r) == sp;
        // Run at full speed to a temporary breakpoint at the return address, passing
        // over hits in other frames.
        let temporary = self.breakpoints.insert(ret);
        let moved = loop {
            match self.forward(Target::End, true, cancel) {
                Moved::Breakpoint(a) if a == ret && !in_frame(&self.now) => continue,
                Moved::Breakpoint(a) if a == ret => break Moved::Arrived,
                other => break other,
            }
        };
        if temporary {
            self.breakpoints.remove(&ret);
        }
        moved
    }

    /// Runs until the current function returns. Given its caller's frame (from the
    /// kernel's call-frame information: [`crate::symbols::Unwinder::caller`]), stops
    /// exactly there. Without it, stops right after the first `ret` executed at or above
    /// the current stack pointer: a deeper callee's returns run below it, but another
    /// thread's stack that lies above can stop it early.
    pub fn finish(&mut self, caller: Option<CallerFrame>, cancel: Option<&AtomicBool>) -> Moved {
        let moved = self.finish_inner(caller, cancel);
        self.inline_state = None;
        moved
    }

    fn finish_inner(&mut self, caller: Option<CallerFrame>, cancel: Option<&AtomicBool>) -> Moved {
        if let Some(frame) = caller {
            return self.run_to_frame(frame, cancel);
        }
        let sp = rsp(&self.now);
        // Stop before a return executed at or above the current stack pointer (a
        // deeper callee's returns run below it), then execute it.
        let at_return =
            |r: &Replay| r.current_instruction().is_some_and(|i| is_return(&i)) && rsp(r) >= sp;
        let mut returning = at_return(&self.now);
        self.step_forward_until(cancel, |r, _| {
            std::mem::replace(&mut returning, at_return(r))
        })
    }

    /// Back over a call: like reverse-stepi, but when the previous instruction returned
    /// from a call, goes back to that call instruction.
    pub fn reverse_next(
        &mut self,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
    ) -> Moved {
        let moved = self.reverse_next_inner(cancel, progress);
        self.settle_instruction();
        moved
    }

    fn reverse_next_inner(
        &mut self,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
    ) -> Moved {
        let here_rip = self.now.rip();
        let here_sp = rsp(&self.now);
        let m = self.reverse_stepi();
        if m != Moved::Arrived {
            return m;
        }
        let came_back = self
            .now
            .current_instruction()
            .is_some_and(|i| is_return(&i));
        if !came_back {
            return m;
        }
        let upper = self.icount();
        self.step_backward_until(upper, cancel, progress, &mut |r: &Replay| {
            rsp(r) == here_sp
                && r.current_instruction()
                    .is_some_and(|i| is_call(&i) && i.next_ip() == here_rip)
        })
    }

    /// Back to the call that entered the current function. Given its caller's frame
    /// (see [`Timeline::finish`]), the last `call` that returns to that frame's address
    /// from that frame's stack pointer. Without it, the last `call` before here whose
    /// return address is still on the stack at or above the stack pointer (which another
    /// thread's stack above this one can also hold).
    pub fn reverse_finish(
        &mut self,
        caller: Option<CallerFrame>,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
    ) -> Moved {
        let moved = self.reverse_finish_inner(caller, cancel, progress);
        self.settle_instruction();
        moved
    }

    fn reverse_finish_inner(
        &mut self,
        caller: Option<CallerFrame>,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
    ) -> Moved {
        let upper = self.icount();
        if let Some(frame) = caller {
            return self.step_backward_until(upper, cancel, progress, &mut |r: &Replay| {
                rsp(r) == frame.stack_pointer
                    && r.current_instruction()
                        .is_some_and(|i| is_call(&i) && i.next_ip() == frame.return_address)
            });
        }
        let here = self.now.clone();
        let here_sp = rsp(&here);
        self.step_backward_until(upper, cancel, progress, &mut |r: &Replay| {
            let Some(ins) = r.current_instruction() else {
                return false;
            };
            if !is_call(&ins) {
                return false;
            }
            let slot = rsp(r).wrapping_sub(8);
            slot >= here_sp && here.read_u64(slot) == Some(ins.next_ip())
        })
    }

    /// Runs backward to the last breakpoint hit or watched write before the current
    /// position, scanning one checkpoint interval at a time from the nearest. `progress`
    /// is told the fraction of the way back to the start that has been scanned.
    pub fn reverse_continue(
        &mut self,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
    ) -> Moved {
        let moved = self.reverse_continue_inner(cancel, progress);
        self.inline_state = None;
        moved
    }

    fn reverse_continue_inner(
        &mut self,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
    ) -> Moved {
        let here = self.icount();
        if here == 0 || (self.breakpoints.is_empty() && self.watchpoints.is_empty()) {
            self.restore_before(|c| c.icount == 0);
            return Moved::Start;
        }
        let cancelled = || cancel.is_some_and(|c| c.load(Ordering::SeqCst));
        let mut upper = here;
        loop {
            if cancelled() {
                return Moved::Interrupted;
            }
            progress(1.0 - upper as f64 / here as f64);
            let idx = self.latest_checkpoint(|c| c.icount < upper);
            let base_icount = self.checkpoints[idx].icount;
            // Scan [base, upper) for the last hit.
            let mut scan = self.checkpoints[idx].replay.clone();
            scan.set_user_breakpoints(self.breakpoints.iter().copied().collect());
            let mut watcher = Watcher::new(&self.watchpoints, &mut scan);
            let mut last_hit = None;
            let mut skip = None;
            while scan.icount() < upper {
                if cancelled() {
                    return Moved::Interrupted;
                }
                let cap = upper.min(scan.icount().saturating_add(WATCH_SLICE));
                match watcher.run(&mut scan, Target::Icount(upper), cap, skip) {
                    Ran::Watch(k, w) => last_hit = Some((k, Moved::Watchpoint(w))),
                    Ran::Stop(Stop::Breakpoint(addr)) => {
                        if scan.icount() < upper {
                            last_hit = Some((scan.icount(), Moved::Breakpoint(addr)));
                        }
                        // The next run resumes past it.
                        skip = Some(scan.icount());
                    }
                    Ran::Stop(Stop::Diverged(d)) => return Moved::Diverged(d),
                    Ran::Stop(Stop::Reached(_)) => {}
                    Ran::Stop(Stop::Finished(_)) => break,
                }
            }
            if let Some((k, how)) = last_hit {
                // Before the instruction at the breakpoint, as a forward continue stops;
                // before the instruction that wrote the watched range.
                return self.go_to_scanned(Scanned::Found(k, how));
            }
            if base_icount == 0 {
                return self.go_to_scanned(Scanned::Start(idx));
            }
            upper = base_icount;
        }
    }

    /// Steps forward one instruction at a time until `stop(replay, symbols)` holds (the
    /// UI's source-line step uses it); breakpoints, watchpoints and the end stop it too.
    pub fn step_until(
        &mut self,
        cancel: Option<&AtomicBool>,
        stop: impl FnMut(&Replay, &Symbols) -> bool,
    ) -> Moved {
        let moved = self.step_until_inner(cancel, stop);
        self.inline_state = None;
        moved
    }

    fn step_until_inner(
        &mut self,
        cancel: Option<&AtomicBool>,
        stop: impl FnMut(&Replay, &Symbols) -> bool,
    ) -> Moved {
        self.step_forward_until(cancel, stop)
    }

    /// Goes to the last position before the current one where `pred` holds (or a
    /// breakpoint or watchpoint stops it first, scanning backward).
    pub fn reverse_step_until(
        &mut self,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
        pred: &mut dyn FnMut(&Replay, &Symbols) -> bool,
    ) -> Moved {
        let moved = self.reverse_step_until_inner(cancel, progress, pred);
        self.inline_state = None;
        moved
    }

    fn reverse_step_until_inner(
        &mut self,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
        pred: &mut dyn FnMut(&Replay, &Symbols) -> bool,
    ) -> Moved {
        let upper = self.icount();
        if upper == 0 {
            return Moved::Start;
        }
        let symbols = self.symbols();
        let scan = self.scan_backward(upper, cancel, progress, &mut |r| pred(r, symbols));
        self.go_to_scanned(scan)
    }

    /// Steps forward one instruction at a time until `stop(replay, symbols)` holds at a
    /// position, a breakpoint or watchpoint is hit, or the end. The position where the
    /// move began is not tested.
    fn step_forward_until(
        &mut self,
        cancel: Option<&AtomicBool>,
        mut stop: impl FnMut(&Replay, &Symbols) -> bool,
    ) -> Moved {
        let mut watcher = Watcher::new(&self.watchpoints, &mut self.now);
        let mut steps = 0u64;
        loop {
            steps += 1;
            if steps.is_multiple_of(4096) && cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                return Moved::Interrupted;
            }
            let m = self.stepi();
            if m != Moved::Arrived {
                return m;
            }
            if let Some(w) = watcher.check(&mut self.now) {
                return Moved::Watchpoint(w);
            }
            let r = &self.now;
            if self.breakpoints.contains(&r.rip()) {
                return Moved::Breakpoint(r.rip());
            }
            if stop(r, self.symbols()) {
                return Moved::Arrived;
            }
        }
    }

    /// Finds the last position before `upper` where `pred` holds, a breakpoint is at
    /// RIP, or the next instruction changes a watched range; goes there. Scans one
    /// checkpoint interval at a time, newest first, one instruction at a time.
    fn step_backward_until(
        &mut self,
        upper: Icount,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
        pred: &mut dyn FnMut(&Replay) -> bool,
    ) -> Moved {
        let scan = self.scan_backward(upper, cancel, progress, pred);
        self.go_to_scanned(scan)
    }

    /// Moves to what a backward scan found.
    fn go_to_scanned(&mut self, scan: Scanned) -> Moved {
        match scan {
            Scanned::Found(k, how) => match self.goto_icount(k) {
                Moved::Arrived | Moved::Start => how,
                other => other,
            },
            Scanned::Start(idx) => {
                self.now = self.checkpoints[idx].replay.clone();
                Moved::Start
            }
            Scanned::Stopped(m) => m,
        }
    }

    /// The scan of [`Timeline::step_backward_until`], which leaves the position alone.
    fn scan_backward(
        &self,
        upper: Icount,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
        pred: &mut dyn FnMut(&Replay) -> bool,
    ) -> Scanned {
        let here = upper.max(1);
        let mut hi = upper;
        loop {
            if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                return Scanned::Stopped(Moved::Interrupted);
            }
            progress(1.0 - hi as f64 / here as f64);
            let idx = self.latest_checkpoint(|c| c.icount < hi);
            let base_icount = self.checkpoints[idx].icount;
            let mut scan = self.checkpoints[idx].replay.clone();
            scan.set_user_breakpoints(Vec::new());
            let mut watcher = Watcher::new(&self.watchpoints, &mut scan);
            let mut found: Option<(Icount, Moved)> = None;
            let mut steps = 0u64;
            while scan.icount() < hi {
                steps += 1;
                if steps.is_multiple_of(4096) && cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                    return Scanned::Stopped(Moved::Interrupted);
                }
                let k = scan.icount();
                let rip = scan.rip();
                let mut hit = if self.breakpoints.contains(&rip) {
                    Some(Moved::Breakpoint(rip))
                } else if pred(&scan) {
                    Some(Moved::Arrived)
                } else {
                    None
                };
                match scan.run(Target::Icount(k + 1)) {
                    Stop::Reached(_) => {}
                    Stop::Diverged(d) => return Scanned::Stopped(Moved::Diverged(d)),
                    // The end, or an agent hook: nothing further to scan here.
                    _ => {}
                }
                if scan.icount() == k {
                    break;
                }
                if let Some(w) = watcher.check(&mut scan) {
                    hit = Some(Moved::Watchpoint(w));
                }
                if let Some(h) = hit {
                    found = Some((k, h));
                }
            }
            if let Some((k, how)) = found {
                return Scanned::Found(k, how);
            }
            if base_icount == 0 {
                return Scanned::Start(idx);
            }
            hi = base_icount;
        }
    }

    /// The index of the latest checkpoint that satisfies `ok` (the first, at the start
    /// of the recording, when none does).
    fn latest_checkpoint(&self, ok: impl Fn(&Checkpoint) -> bool) -> usize {
        self.checkpoints.iter().rposition(ok).unwrap_or(0)
    }

    /// Makes the latest checkpoint that satisfies `ok` current.
    fn restore_before(&mut self, ok: impl Fn(&Checkpoint) -> bool) {
        let idx = self.latest_checkpoint(ok);
        self.now = self.checkpoints[idx].replay.clone();
    }

    /// Runs forward to `target`, taking checkpoints on the way; with
    /// `stop_at_breakpoints`, a breakpoint or a watched write stops it first.
    fn forward(
        &mut self,
        target: Target,
        stop_at_breakpoints: bool,
        cancel: Option<&AtomicBool>,
    ) -> Moved {
        let (bps, watches) = if stop_at_breakpoints {
            (
                self.breakpoints.iter().copied().collect(),
                self.watchpoints.clone(),
            )
        } else {
            (Vec::new(), BTreeSet::new())
        };
        self.now.set_user_breakpoints(bps);
        let mut watcher = Watcher::new(&watches, &mut self.now);
        // Standing on a breakpoint when the move began: run resumes past it.
        let skip = stop_at_breakpoints.then_some(self.icount());
        loop {
            if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                return Moved::Interrupted;
            }
            // Run in slices so checkpoints are taken at the interval.
            let mut cap = self.next_checkpoint_icount();
            if !watcher.is_empty() {
                cap = cap.min(self.icount().saturating_add(WATCH_SLICE));
            }
            match watcher.run(&mut self.now, target, cap, skip) {
                Ran::Watch(_, w) => return Moved::Watchpoint(w),
                Ran::Stop(Stop::Reached(reached)) if reached == target => {
                    self.maybe_checkpoint();
                    return Moved::Arrived;
                }
                Ran::Stop(Stop::Reached(_)) => self.maybe_checkpoint(),
                Ran::Stop(Stop::Breakpoint(addr)) => return Moved::Breakpoint(addr),
                Ran::Stop(Stop::Finished(end)) => return Moved::End(end),
                Ran::Stop(Stop::Diverged(d)) => return Moved::Diverged(d),
            }
        }
    }

    fn next_checkpoint_icount(&self) -> Icount {
        let last = self.checkpoints.last().map(|c| c.icount).unwrap_or(0);
        (last + self.interval).max(self.icount() + 1)
    }

    fn maybe_checkpoint(&mut self) {
        let last = self.checkpoints.last().map(|c| c.icount).unwrap_or(0);
        if self.icount() < last + self.interval {
            return;
        }
        let prev = &self
            .checkpoints
            .last()
            .expect("the start checkpoint")
            .replay
            .mem;
        let cost_pages = self
            .now
            .mem
            .diff_pages(prev)
            .map(|d| d.len() as u64)
            .unwrap_or_else(|| self.now.mem.stats().allocated_pages);
        self.checkpoints.push(Checkpoint {
            icount: self.icount(),
            events_consumed: self.now.events_consumed(),
            replay: self.now.clone(),
            cost_pages,
        });
        self.thin();
    }

    /// Keeps the checkpoints within the budget: doubles the interval and drops every
    /// other checkpoint after the first, so older stretches keep a coarser density.
    fn thin(&mut self) {
        while self.checkpoint_bytes() > self.budget && self.checkpoints.len() > 2 {
            // Older checkpoints go first: every other one in the older half is dropped,
            // so density falls off with age while the newest half and the start stay.
            // With too few to choose from, the interval doubles and every other one goes.
            let n = self.checkpoints.len();
            let older = if n >= 6 { n / 2 } else { n };
            if older == n {
                self.interval *= 2;
            }
            let mut keep = Vec::with_capacity(n);
            for (i, c) in std::mem::take(&mut self.checkpoints)
                .into_iter()
                .enumerate()
            {
                if i == 0 || i >= older || i % 2 == 0 {
                    keep.push(c);
                }
            }
            // A kept checkpoint now owns the pages written since its new predecessor.
            for i in 1..keep.len() {
                let (before, after) = keep.split_at_mut(i);
                let prev = &before[i - 1].replay.mem;
                let c = &mut after[0];
                c.cost_pages = c
                    .replay
                    .mem
                    .diff_pages(prev)
                    .map(|d| d.len() as u64)
                    .unwrap_or(c.cost_pages);
            }
            self.checkpoints = keep;
        }
    }
}

/// What a backward scan found.
enum Scanned {
    /// A position to go to (icount), and how the move ends there.
    Found(Icount, Moved),
    /// Nothing before: the start (the checkpoint at this index).
    Start(usize),
    /// The scan itself stopped the move.
    Stopped(Moved),
}

/// A frame to return to: where its caller resumes, and the stack pointer there (the
/// callee's canonical frame address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerFrame {
    pub return_address: u64,
    pub stack_pointer: u64,
}

fn rsp(r: &Replay) -> u64 {
    r.regs().gpr[gpr::RSP]
}

fn is_call(ins: &Instruction) -> bool {
    matches!(
        ins.flow_control(),
        FlowControl::Call | FlowControl::IndirectCall
    )
}

fn is_return(ins: &Instruction) -> bool {
    ins.flow_control() == FlowControl::Return
}
