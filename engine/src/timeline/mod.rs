//! Time travel over a replay (DESIGN.md section 6): copy-on-write checkpoints and the
//! moves the UI and the gdb server offer — forward and backward by instruction, to an
//! icount or an event, and continue in either direction to a breakpoint.
//!
//! A checkpoint is a clone of the [`Replay`]: CPU state plus memory whose 4 KiB pages are
//! shared with the live replay and the other checkpoints, so it costs only the pages
//! written since the previous one. Checkpoints are taken every `interval` instructions as
//! replay moves forward; when their cost exceeds the budget, every other checkpoint in the
//! older half is dropped (never the first), again until the budget holds, so checkpoints
//! thin as they age while the recent stretch stays dense and the start stays reachable;
//! when only a few remain, the interval doubles instead.
//!
//! Moves that need to look at every instruction (next, finish, their reverses, and
//! anything with a watchpoint set) step one instruction at a time: forward they run one
//! `run(Target::Icount(k + 1))` per instruction; backward they rescan one checkpoint
//! interval at a time from its checkpoint, stepping likewise, and keep the last match.
//! A watched range is compared after every instruction through the guest page tables, so
//! such moves cost roughly a page-table walk and a small read per instruction on top of
//! the instruction itself (several times slower than a plain continue); reverse moves
//! cost up to one interval per interval scanned. Continue and reverse-continue without
//! watchpoints use the replay CPU's breakpoints and run at full speed.

use crate::event::Icount;
use crate::replay::{Divergence, End, Replay, Stop, Target};
use crate::state::{PAGE_SIZE, gpr};
use iced_x86::{Decoder, DecoderOptions, FlowControl};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

/// Default memory budget for checkpoints.
pub const DEFAULT_CHECKPOINT_BUDGET: u64 = 1 << 30;
/// First checkpoint interval, in instructions.
const INITIAL_INTERVAL: u64 = 250_000;

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

/// Statistics for the checkpoints pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub icount: Icount,
    pub events_consumed: u64,
    pub bytes: u64,
}

/// A memory-write watchpoint: a range of linear (guest-virtual) addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watchpoint {
    pub addr: u64,
    pub len: u64,
}

/// Longest watched range: watch ranges are read after every instruction.
pub const MAX_WATCH_LEN: u64 = 4096;

/// A replay one can move in freely.
pub struct Timeline {
    now: Replay,
    checkpoints: Vec<Checkpoint>,
    interval: Icount,
    budget: u64,
    breakpoints: BTreeSet<u64>,
    watchpoints: BTreeSet<Watchpoint>,
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
        }
    }

    /// Sets the instruction interval between checkpoints (tests use small ones).
    pub fn set_interval(&mut self, interval: Icount) {
        self.interval = interval.max(1);
    }

    /// The replay at the current position (registers, memory, console).
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

    pub fn remove_watchpoint(&mut self, addr: u64) -> bool {
        let before = self.watchpoints.len();
        self.watchpoints.retain(|w| w.addr != addr);
        self.watchpoints.len() != before
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

    /// Goes to icount `k` (forward or backward). A `k` past the end stops at the end and
    /// reports [`Moved::End`]; reaching `k`, 0 included, is [`Moved::Arrived`] (only a
    /// move that cannot go back at all reports [`Moved::Start`]).
    pub fn goto_icount(&mut self, k: Icount) -> Moved {
        if k < self.icount() {
            self.restore_before(|c| c.icount <= k);
        } else {
            self.skip_ahead(|c| c.icount <= k);
        }
        self.forward(Target::Icount(k), false, None)
    }

    /// Goes to the position right after event `n` was applied.
    pub fn goto_event(&mut self, n: u64) -> Moved {
        if n >= self.now.events().len() as u64 {
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

    /// Runs forward to the next breakpoint or the end.
    pub fn continue_forward(&mut self, cancel: Option<&AtomicBool>) -> Moved {
        if self.watchpoints.is_empty() {
            return self.forward(Target::End, true, cancel);
        }
        self.step_forward_until(cancel, |_, _| false)
    }

    /// Steps over a call: like stepi, but a `call` runs until it returns (or a
    /// breakpoint, watchpoint or the end stops it first).
    pub fn next(&mut self, cancel: Option<&AtomicBool>) -> Moved {
        let Some(ins) = current_instruction(&self.now) else {
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
        let in_frame = |r: &Replay| r.cpu.state().rip == ret && rsp(r) == sp;
        if !self.watchpoints.is_empty() {
            let first = self.stepi();
            if first != Moved::Arrived || in_frame(&self.now) {
                return first;
            }
            return self.step_forward_until(cancel, |r, _| in_frame(r));
        }
        // No watchpoints: run at full speed to a temporary breakpoint at the return
        // address, passing over hits in other frames.
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
        if let Some(frame) = caller {
            return self.run_to_frame(frame, cancel);
        }
        let sp = rsp(&self.now);
        // Stop before a return executed at or above the current stack pointer (a
        // deeper callee's returns run below it), then execute it.
        let at_return =
            |r: &Replay| current_instruction(r).is_some_and(|i| is_return(&i)) && rsp(r) >= sp;
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
        let here_rip = self.now.cpu.state().rip;
        let here_sp = rsp(&self.now);
        let m = self.reverse_stepi();
        if m != Moved::Arrived {
            return m;
        }
        let came_back = current_instruction(&self.now).is_some_and(|i| is_return(&i));
        if !came_back {
            return m;
        }
        let upper = self.icount();
        self.step_backward_until(upper, cancel, progress, &mut |r: &Replay| {
            rsp(r) == here_sp
                && current_instruction(r).is_some_and(|i| is_call(&i) && i.next_ip() == here_rip)
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
        let upper = self.icount();
        if let Some(frame) = caller {
            return self.step_backward_until(upper, cancel, progress, &mut |r: &Replay| {
                rsp(r) == frame.stack_pointer
                    && current_instruction(r)
                        .is_some_and(|i| is_call(&i) && i.next_ip() == frame.return_address)
            });
        }
        let here = self.now.clone();
        let here_sp = rsp(&here);
        self.step_backward_until(upper, cancel, progress, &mut |r: &Replay| {
            let Some(ins) = current_instruction(r) else {
                return false;
            };
            if !is_call(&ins) {
                return false;
            }
            let slot = rsp(r).wrapping_sub(8);
            let mut buf = [0u8; 8];
            slot >= here_sp
                && here.cpu.read_virtual(&here.mem, slot, &mut buf).is_ok()
                && u64::from_le_bytes(buf) == ins.next_ip()
        })
    }

    /// Runs backward to the last breakpoint hit before the current position, scanning
    /// one checkpoint interval at a time from the nearest. `progress` is told the
    /// fraction of the way back to the start that has been scanned.
    pub fn reverse_continue(
        &mut self,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
    ) -> Moved {
        let here = self.icount();
        if !self.watchpoints.is_empty() && here > 0 {
            return self.step_backward_until(here, cancel, progress, &mut |_| false);
        }
        if here == 0 || self.breakpoints.is_empty() {
            self.restore_before(|c| c.icount == 0);
            return Moved::Start;
        }
        let mut upper = here;
        loop {
            if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                return Moved::Interrupted;
            }
            progress(1.0 - upper as f64 / here as f64);
            let idx = self.latest_checkpoint(|c| c.icount < upper);
            let base_icount = self.checkpoints[idx].icount;
            // Scan [base, upper) for the last breakpoint hit.
            let mut scan = self.checkpoints[idx].replay.clone();
            let mut last_hit = None;
            scan.set_user_breakpoints(self.breakpoints.iter().copied().collect());
            loop {
                match scan.run(Target::Icount(upper)) {
                    Stop::Breakpoint(addr) => {
                        if scan.icount() < upper {
                            last_hit = Some((scan.icount(), addr));
                        }
                        // Resume past it: the next run executes the instruction.
                        if let Stop::Diverged(d) = scan.run(Target::Icount(scan.icount() + 1)) {
                            return Moved::Diverged(d);
                        }
                        if scan.icount() >= upper {
                            break;
                        }
                    }
                    Stop::Diverged(d) => return Moved::Diverged(d),
                    _ => break,
                }
            }
            if let Some((k, addr)) = last_hit {
                // Stopped before the instruction at the breakpoint, as a forward
                // continue would.
                self.goto_icount(k);
                return Moved::Breakpoint(addr);
            }
            if base_icount == 0 {
                self.now = self.checkpoints[idx].replay.clone();
                return Moved::Start;
            }
            upper = base_icount;
        }
    }

    /// Steps forward one instruction at a time until `stop` holds (the UI's source-line
    /// step uses it); breakpoints, watchpoints and the end stop it too.
    pub fn step_until(
        &mut self,
        cancel: Option<&AtomicBool>,
        mut stop: impl FnMut(&Replay) -> bool,
    ) -> Moved {
        self.step_forward_until(cancel, |r, _| stop(r))
    }

    /// Goes to the last position before the current one where `pred` holds (or a
    /// breakpoint or watchpoint stops it first, scanning backward).
    pub fn reverse_step_until(
        &mut self,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
        pred: &mut dyn FnMut(&Replay) -> bool,
    ) -> Moved {
        let upper = self.icount();
        if upper == 0 {
            return Moved::Start;
        }
        self.step_backward_until(upper, cancel, progress, pred)
    }

    /// Steps forward one instruction at a time until `stop(replay, icount)` holds at a
    /// position, a breakpoint or watchpoint is hit, or the end. The position where the
    /// move began is not tested.
    fn step_forward_until(
        &mut self,
        cancel: Option<&AtomicBool>,
        mut stop: impl FnMut(&Replay, Icount) -> bool,
    ) -> Moved {
        let watches: Vec<Watchpoint> = self.watchpoints.iter().copied().collect();
        let mut before = read_watches(&self.now, &watches);
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
            let after = read_watches(&self.now, &watches);
            if let Some(i) = changed(&before, &after) {
                return Moved::Watchpoint(watches[i]);
            }
            before = after;
            let r = &self.now;
            if self.breakpoints.contains(&r.cpu.state().rip) {
                return Moved::Breakpoint(r.cpu.state().rip);
            }
            if stop(r, r.icount()) {
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
        let watches: Vec<Watchpoint> = self.watchpoints.iter().copied().collect();
        let here = upper.max(1);
        let mut hi = upper;
        loop {
            if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                return Moved::Interrupted;
            }
            progress(1.0 - hi as f64 / here as f64);
            let idx = self.latest_checkpoint(|c| c.icount < hi);
            let base_icount = self.checkpoints[idx].icount;
            let mut scan = self.checkpoints[idx].replay.clone();
            scan.set_user_breakpoints(Vec::new());
            let mut found: Option<(Icount, Moved)> = None;
            let mut values = read_watches(&scan, &watches);
            let mut steps = 0u64;
            while scan.icount() < hi {
                steps += 1;
                if steps.is_multiple_of(4096) && cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                    return Moved::Interrupted;
                }
                let k = scan.icount();
                let rip = scan.cpu.state().rip;
                let mut hit = if self.breakpoints.contains(&rip) {
                    Some(Moved::Breakpoint(rip))
                } else if pred(&scan) {
                    Some(Moved::Arrived)
                } else {
                    None
                };
                match scan.run(Target::Icount(k + 1)) {
                    Stop::Reached(_) => {}
                    Stop::Diverged(d) => return Moved::Diverged(d),
                    // The end, or an agent hook: nothing further to scan here.
                    _ => {}
                }
                if scan.icount() == k {
                    break;
                }
                if !watches.is_empty() {
                    let after = read_watches(&scan, &watches);
                    if let Some(i) = changed(&values, &after) {
                        hit = Some(Moved::Watchpoint(watches[i]));
                    }
                    values = after;
                }
                if let Some(h) = hit {
                    found = Some((k, h));
                }
            }
            if let Some((k, how)) = found {
                let m = self.goto_icount(k);
                return match m {
                    Moved::Arrived | Moved::Start => how,
                    other => other,
                };
            }
            if base_icount == 0 {
                self.now = self.checkpoints[0].replay.clone();
                return Moved::Start;
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

    /// Runs forward to `target`, taking checkpoints on the way.
    fn forward(
        &mut self,
        target: Target,
        stop_at_breakpoints: bool,
        cancel: Option<&AtomicBool>,
    ) -> Moved {
        let bps: Vec<u64> = if stop_at_breakpoints {
            self.breakpoints.iter().copied().collect()
        } else {
            Vec::new()
        };
        self.now.set_user_breakpoints(bps);
        let start = self.icount();
        loop {
            if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                return Moved::Interrupted;
            }
            // Run in slices so checkpoints are taken at the interval.
            let cap = self.next_checkpoint_icount();
            match self.now.run_capped(target, cap) {
                Stop::Reached(reached) if reached == target => {
                    self.maybe_checkpoint();
                    return Moved::Arrived;
                }
                Stop::Reached(_) => self.maybe_checkpoint(),
                Stop::Breakpoint(addr) => {
                    if self.icount() == start && stop_at_breakpoints {
                        // Standing on it when the move began: run resumes past it.
                        continue;
                    }
                    return Moved::Breakpoint(addr);
                }
                Stop::Finished(end) => return Moved::End(end),
                Stop::Diverged(d) => return Moved::Diverged(d),
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

/// A frame to return to: where its caller resumes, and the stack pointer there (the
/// callee's canonical frame address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerFrame {
    pub return_address: u64,
    pub stack_pointer: u64,
}

fn rsp(r: &Replay) -> u64 {
    r.cpu.state().gpr[gpr::RSP]
}

/// The instruction at RIP, if its bytes are readable.
pub fn current_instruction(r: &Replay) -> Option<iced_x86::Instruction> {
    let rip = r.cpu.state().rip;
    let mut bytes = [0u8; 15];
    let mut n = 0;
    if r.cpu.read_virtual(&r.mem, rip, &mut bytes).is_ok() {
        n = 15;
    } else {
        // The instruction may end before an unmapped page.
        while n < 15
            && r.cpu
                .read_virtual(&r.mem, rip + n as u64, &mut bytes[n..n + 1])
                .is_ok()
        {
            n += 1;
        }
    }
    let ins = Decoder::with_ip(64, &bytes[..n], rip, DecoderOptions::NONE).decode();
    (!ins.is_invalid()).then_some(ins)
}

fn is_call(ins: &iced_x86::Instruction) -> bool {
    matches!(
        ins.flow_control(),
        FlowControl::Call | FlowControl::IndirectCall
    )
}

fn is_return(ins: &iced_x86::Instruction) -> bool {
    ins.flow_control() == FlowControl::Return
}

/// The watched bytes (None where unmapped).
fn read_watches(r: &Replay, watches: &[Watchpoint]) -> Vec<Option<Vec<u8>>> {
    watches
        .iter()
        .map(|w| {
            let mut buf = vec![0u8; w.len as usize];
            r.cpu
                .read_virtual(&r.mem, w.addr, &mut buf)
                .ok()
                .map(|_| buf)
        })
        .collect()
}

fn changed(before: &[Option<Vec<u8>>], after: &[Option<Vec<u8>>]) -> Option<usize> {
    before.iter().zip(after).position(|(a, b)| a != b)
}
