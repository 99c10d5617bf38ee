//! Write watchpoints: one engine for every move, forward and backward, in the UI and in
//! the gdb server.
//!
//! The memory path reports the hits: the 64-byte lines under the watched linear ranges,
//! translated through the guest's page tables, are named to the replay's memory
//! ([`crate::memory::GuestMemory::watch_ranges`]), which counts every write to them, by
//! the CPU or by the driver applying an event. Replay runs at full speed in stretches; a
//! stretch after which the count, the page tables ([`GuestMemory::pt_generation`]) and
//! CR3 are unchanged wrote nothing watched. Otherwise the stretch is replayed again from
//! a copy taken at its start, halving it until the first write is within a few
//! instructions, which are then stepped one at a time, comparing the watched bytes after
//! each. A watchpoint fires when its bytes change (what gdb reports for `watch`); a
//! write of the same value, or a change of mappings that leaves the bytes alone, is
//! passed over and the stretch goes on.
//!
//! The watched bytes are compared only where the memory path says they may differ. A
//! stretch that switches to another address space and back (CR3 as before, no
//! page-table write) is taken as quiet: a write there to other physical pages that that
//! address space maps at the watched linear addresses goes unseen (kernel addresses map
//! alike in every address space).
//!
//! [`GuestMemory::pt_generation`]: crate::memory::GuestMemory::pt_generation

use crate::cpu::Access;
use crate::event::Icount;
use crate::replay::{Replay, Stop, Target};
use crate::state::PAGE_SIZE;
use std::collections::BTreeSet;

/// A memory-write watchpoint: a range of linear (guest-virtual) addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watchpoint {
    pub addr: u64,
    pub len: u64,
}

/// Longest watched range (gdb splits larger ones itself).
pub const MAX_WATCH_LEN: u64 = 4096;

/// Below this many instructions, a stretch that wrote a watched line is stepped one
/// instruction at a time rather than halved again.
const STEP_BELOW: Icount = 64;

/// What [`Watcher::run`] ran into first.
#[derive(Debug)]
pub(crate) enum Ran {
    /// What the replay would have stopped at without watchpoints.
    Stop(Stop),
    /// The instruction at this icount changed the watched range (the replay stands
    /// right after it).
    Watch(Icount, Watchpoint),
}

/// The watched ranges as one replay sees them: their bytes, and the memory path's state
/// when they were last compared.
pub(crate) struct Watcher {
    watches: Vec<Watchpoint>,
    values: Vec<Option<Vec<u8>>>,
    hits: u64,
    pt_generation: u64,
    cr3: u64,
    /// The memory object those counters belong to (a clone, such as a checkpoint,
    /// counts on its own).
    memory: u64,
}

impl Watcher {
    /// Watches `watches` on `r` (with none, leaves `r` alone).
    pub fn new(watches: &BTreeSet<Watchpoint>, r: &mut Replay) -> Watcher {
        let mut w = Watcher {
            watches: watches.iter().copied().collect(),
            values: Vec::new(),
            hits: 0,
            pt_generation: 0,
            cr3: 0,
            memory: 0,
        };
        if !w.is_empty() {
            w.arm(r);
        }
        w
    }

    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    /// Names the lines under the watched ranges to `r`'s memory as they are mapped
    /// now, and reads the watched bytes.
    fn arm(&mut self, r: &mut Replay) {
        let mut ranges = Vec::new();
        for w in &self.watches {
            let end = w.addr.wrapping_add(w.len);
            let mut a = w.addr;
            while a != end {
                let n = (PAGE_SIZE as u64 - (a & (PAGE_SIZE as u64 - 1))).min(end.wrapping_sub(a));
                if let Ok(gpa) = r.cpu.translate(&r.mem, a, Access::Read) {
                    ranges.push((gpa, n as usize));
                }
                a = a.wrapping_add(n);
            }
        }
        r.mem.watch_ranges(ranges);
        self.values = self.read(r);
        self.sync(r);
    }

    fn sync(&mut self, r: &Replay) {
        self.hits = r.mem.watch_hits();
        self.pt_generation = r.mem.pt_generation();
        self.cr3 = r.cpu.state().cr3;
        self.memory = r.mem.instance_id();
    }

    /// Takes `r` for the replay last compared: a copy of it, taken then, restored.
    fn adopt(&mut self, r: &Replay) {
        self.memory = r.mem.instance_id();
    }

    /// Whether the watched ranges may now lie on other pages than when armed.
    fn remapped(&self, r: &Replay) -> bool {
        r.mem.instance_id() != self.memory
            || r.mem.pt_generation() != self.pt_generation
            || r.cpu.state().cr3 != self.cr3
    }

    /// The watched bytes (None where unmapped).
    fn read(&self, r: &Replay) -> Vec<Option<Vec<u8>>> {
        self.watches
            .iter()
            .map(|w| {
                let mut buf = vec![0u8; w.len as usize];
                r.read_memory(w.addr, &mut buf).ok().map(|()| buf)
            })
            .collect()
    }

    /// Whether nothing watched can have changed since the last comparison: no write to
    /// a watched line, no page-table write, the same address space.
    pub fn quiet(&self, r: &Replay) -> bool {
        r.mem.watch_hits() == self.hits && !self.remapped(r)
    }

    /// Compares the watched bytes with those seen last (only where the memory path
    /// says they may differ): the first watchpoint whose bytes changed.
    pub fn check(&mut self, r: &mut Replay) -> Option<Watchpoint> {
        if self.watches.is_empty() || self.quiet(r) {
            return None;
        }
        let remap = self.remapped(r);
        let now = self.read(r);
        let hit = self
            .values
            .iter()
            .zip(&now)
            .position(|(a, b)| a != b)
            .map(|i| self.watches[i]);
        if remap {
            self.arm(r);
        } else {
            self.values = now;
            self.sync(r);
        }
        hit
    }

    /// Runs `r` as [`Replay::run_capped`] does, passing a breakpoint it stands on at
    /// icount `skip`, but stops right after an instruction that changes a watched range.
    pub fn run(
        &mut self,
        r: &mut Replay,
        target: Target,
        cap: Icount,
        skip: Option<Icount>,
    ) -> Ran {
        if self.watches.is_empty() {
            return Ran::Stop(run_past(r, skip, |r| r.run_capped(target, cap)));
        }
        let start = r.clone();
        let stop = run_past(r, skip, |r| r.run_capped(target, cap));
        if self.quiet(r) {
            return Ran::Stop(stop);
        }
        let after = std::mem::replace(r, start);
        self.adopt(r);
        match self.first_change(r, after.icount(), skip) {
            Some((at, w)) => Ran::Watch(at, w),
            None => {
                // Nothing watched changed: back to where the stretch ended.
                *r = after;
                self.arm(r);
                Ran::Stop(stop)
            }
        }
    }

    /// From a position whose watched bytes are `self.values`, finds the first
    /// instruction before icount `end` that changes them: halves the stretch while the
    /// memory path reports a write in its first half, then steps. Leaves `r` after that
    /// instruction, or anywhere up to `end` when there is none.
    fn first_change(
        &mut self,
        r: &mut Replay,
        end: Icount,
        skip: Option<Icount>,
    ) -> Option<(Icount, Watchpoint)> {
        // Somewhere before `hi` the memory path reported a write.
        let mut hi = end;
        while r.icount() < end {
            let lo = r.icount();
            if hi <= lo {
                hi = end;
            }
            if hi - lo <= STEP_BELOW {
                let t = Target::Icount(lo + 1);
                run_past(r, skip, |r| r.run(t));
                if r.icount() == lo {
                    return None;
                }
                if let Some(w) = self.check(r) {
                    return Some((lo, w));
                }
                continue;
            }
            let mid = lo + (hi - lo) / 2;
            let before = r.clone();
            let t = Target::Icount(mid);
            run_past(r, skip, |r| r.run(t));
            if r.icount() == lo {
                return None;
            }
            if !self.quiet(r) {
                *r = before;
                self.adopt(r);
                hi = mid;
            }
        }
        None
    }
}

/// Runs `r` with `run`, passing a breakpoint it stands on at icount `skip` (where a move
/// began, or a breakpoint already reported).
pub(crate) fn run_past(
    r: &mut Replay,
    skip: Option<Icount>,
    run: impl Fn(&mut Replay) -> Stop,
) -> Stop {
    loop {
        match run(r) {
            Stop::Breakpoint(_) if Some(r.icount()) == skip => continue,
            stop => return stop,
        }
    }
}
