//! Time travel over a replay (DESIGN.md section 6): copy-on-write checkpoints and the
//! moves the UI and the gdb server offer — forward and backward by instruction, to an
//! icount or an event, and continue in either direction to a breakpoint.
//!
//! A checkpoint is a clone of the [`Replay`]: CPU state plus memory whose 4 KiB pages are
//! shared with the live replay and the other checkpoints, so it costs only the pages
//! written since the previous one. Checkpoints are taken every `interval` instructions as
//! replay moves forward; when their cost exceeds the budget, the interval doubles and
//! every other checkpoint (never the first) is dropped, so density thins as the
//! recording grows while the start always stays reachable.

use crate::event::Icount;
use crate::replay::{Divergence, End, Replay, Stop, Target};
use crate::state::PAGE_SIZE;
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

/// A replay one can move in freely.
pub struct Timeline {
    now: Replay,
    checkpoints: Vec<Checkpoint>,
    interval: Icount,
    budget: u64,
    breakpoints: BTreeSet<u64>,
    /// Icount of the end of the recording, once known.
    end: Option<Icount>,
}

impl Timeline {
    pub fn new(replay: Replay, budget: u64) -> Timeline {
        let start = Checkpoint {
            icount: replay.icount(),
            events_consumed: replay.events_consumed(),
            replay: replay.clone(),
            cost_pages: replay.mem.stats().allocated_pages,
        };
        Timeline {
            now: replay,
            checkpoints: vec![start],
            interval: INITIAL_INTERVAL,
            budget,
            breakpoints: BTreeSet::new(),
            end: None,
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

    /// The end of the recording, once replay has reached it.
    pub fn end_icount(&self) -> Option<Icount> {
        self.end
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

    /// Goes to icount `k` (forward or backward).
    pub fn goto_icount(&mut self, k: Icount) -> Moved {
        if k < self.icount() {
            self.restore_before(|c| c.icount <= k);
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
        }
        self.forward(Target::Event(n), false, None)
    }

    /// Runs forward to the next breakpoint or the end.
    pub fn continue_forward(&mut self, cancel: Option<&AtomicBool>) -> Moved {
        self.forward(Target::End, true, cancel)
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
            let idx = self
                .checkpoints
                .iter()
                .rposition(|c| c.icount < upper)
                .unwrap_or(0);
            let base = self.checkpoints[idx].clone();
            // Scan [base, upper) for the last breakpoint hit.
            let mut scan = base.replay.clone();
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
                self.goto_icount(k);
                // Stopped before the instruction at the breakpoint, as a forward
                // continue would.
                let _ = self.stop_at_breakpoint_before(k, addr);
                return Moved::Breakpoint(addr);
            }
            if base.icount == 0 {
                self.now = base.replay;
                return Moved::Start;
            }
            upper = base.icount;
        }
    }

    /// After `goto_icount(k)` the CPU is at the instruction; nothing else to do. Kept as a
    /// hook for breakpoint bookkeeping.
    fn stop_at_breakpoint_before(&mut self, _k: Icount, _addr: u64) -> Option<()> {
        Some(())
    }

    /// Makes the latest checkpoint that satisfies `ok` current.
    fn restore_before(&mut self, ok: impl Fn(&Checkpoint) -> bool) {
        let idx = self.checkpoints.iter().rposition(ok).unwrap_or(0);
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
                Stop::Finished(end) => {
                    self.end = Some(self.icount());
                    return Moved::End(end);
                }
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
            self.interval *= 2;
            let mut keep = Vec::with_capacity(self.checkpoints.len() / 2 + 1);
            for (i, c) in std::mem::take(&mut self.checkpoints)
                .into_iter()
                .enumerate()
            {
                if i == 0 || i % 2 == 0 {
                    keep.push(c);
                } else if let Some(last) = keep.last_mut() {
                    // The dropped checkpoint's unique pages now belong to the next one
                    // at worst; account them to the kept predecessor conservatively.
                    last.cost_pages += c.cost_pages;
                }
            }
            self.checkpoints = keep;
        }
    }
}
