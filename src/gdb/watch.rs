//! Write watchpoints over the timeline, forwards and backwards.
//!
//! The replay CPU has no write-watch hook. Replay runs on a clone in stretches; memory
//! pages are shared copy-on-write with the clone taken at the start of each stretch, so
//! a write to a watched page shows as a new page. Only a stretch in which a watched
//! page was written (or the page tables changed) is replayed again one instruction at a
//! time, comparing the watched bytes after each. The timeline is then moved to the hit.
//! A watchpoint fires when the bytes change, which is what gdb reports for `watch`.

use krr_engine::cpu::Access;
use krr_engine::event::Icount;
use krr_engine::replay::{Divergence, End, Replay, Stop, Target};
use krr_engine::timeline::{Moved, Timeline};
use std::sync::atomic::{AtomicBool, Ordering};

/// How far back one backward scan reaches before trying the stretch before it.
const BACKWARD_STRETCH: Icount = 200_000;
/// Instructions replayed between two checks of the watched pages.
const CHUNK: Icount = 16_384;

/// Where a move with watchpoints ended.
#[derive(Debug)]
pub enum WatchMoved {
    Moved(Moved),
    /// The write watchpoint at this address fired.
    Watch(u64),
}

fn read_watched(r: &Replay, watches: &[(u64, u64)]) -> Vec<Option<Vec<u8>>> {
    watches
        .iter()
        .map(|&(addr, len)| {
            let mut buf = vec![0u8; len as usize];
            r.cpu.read_virtual(&r.mem, addr, &mut buf).ok().map(|_| buf)
        })
        .collect()
}

fn changed(
    before: &[Option<Vec<u8>>],
    after: &[Option<Vec<u8>>],
    watches: &[(u64, u64)],
) -> Option<u64> {
    before
        .iter()
        .zip(after)
        .zip(watches)
        .find(|((b, a), _)| b != a)
        .map(|(_, w)| w.0)
}

/// What [`advance`] ran into first.
enum Advance {
    /// The goal icount.
    Reached,
    /// A breakpoint (the replay stands on it).
    Breakpoint(u64),
    /// The instruction at icount `at` changed the watched bytes at `addr` (the replay
    /// stands after it).
    Watch {
        at: Icount,
        addr: u64,
    },
    Finished(End),
    Diverged(Box<Divergence>),
    Interrupted,
}

/// Identity of the pages under the watched ranges, and of the mappings that lead there.
#[derive(PartialEq, Eq)]
struct PageSignature {
    pages: Vec<Option<usize>>,
    pt_generation: u64,
    cr3: u64,
}

fn page_signature(r: &Replay, watches: &[(u64, u64)]) -> PageSignature {
    let mut pages = Vec::new();
    for &(addr, len) in watches {
        let first = addr & !0xfff;
        let last = addr.wrapping_add(len.saturating_sub(1)) & !0xfff;
        let mut page = first;
        loop {
            let id =
                r.cpu
                    .translate(&r.mem, page, Access::Read)
                    .ok()
                    .map(|gpa| match r.mem.page(gpa) {
                        Some(Some(p)) => p.as_ptr() as usize,
                        Some(None) => 1,
                        None => 2,
                    });
            pages.push(id);
            if page == last {
                break;
            }
            page = page.wrapping_add(0x1000);
        }
    }
    PageSignature {
        pages,
        pt_generation: r.mem.pt_generation(),
        cr3: r.cpu.state().cr3,
    }
}

/// `Replay::run`, passing a breakpoint the move started on.
fn run_from(r: &mut Replay, target: Target, skip_at: Option<Icount>) -> Stop {
    loop {
        match r.run(target) {
            Stop::Breakpoint(_) if Some(r.icount()) == skip_at => continue,
            stop => return stop,
        }
    }
}

/// Replays `r` towards `goal`, stopping at the first breakpoint, watched write, end or
/// divergence. `values` holds the watched bytes at the current position.
fn advance(
    r: &mut Replay,
    goal: Icount,
    skip_at: Option<Icount>,
    watches: &[(u64, u64)],
    values: &mut Vec<Option<Vec<u8>>>,
    cancel: &AtomicBool,
) -> Advance {
    loop {
        if r.icount() >= goal {
            return Advance::Reached;
        }
        if cancel.load(Ordering::Relaxed) {
            return Advance::Interrupted;
        }
        let stretch_end = goal.min(r.icount().saturating_add(CHUNK));
        // Holding `base` keeps every page shared, so any write replaces the page.
        let base = r.clone();
        let signature = page_signature(r, watches);
        let stop = run_from(r, Target::Icount(stretch_end), skip_at);
        if page_signature(r, watches) == signature {
            match stop {
                Stop::Reached(_) => continue,
                Stop::Breakpoint(addr) => return Advance::Breakpoint(addr),
                Stop::Finished(end) => return Advance::Finished(end),
                Stop::Diverged(d) => return Advance::Diverged(d),
            }
        }
        // A watched page was written in this stretch: find the instruction.
        *r = base;
        while r.icount() < stretch_end {
            let at = r.icount();
            match run_from(r, Target::Icount(at + 1), skip_at) {
                Stop::Reached(_) => {}
                Stop::Breakpoint(addr) => return Advance::Breakpoint(addr),
                Stop::Finished(end) => return Advance::Finished(end),
                Stop::Diverged(d) => return Advance::Diverged(d),
            }
            let now = read_watched(r, watches);
            if let Some(addr) = changed(values, &now, watches) {
                *values = now;
                return Advance::Watch { at, addr };
            }
        }
    }
}

/// Runs forward to the first watched write, breakpoint, or the end. Stops after the
/// writing instruction, as hardware watchpoints do.
pub fn forward(
    tl: &mut Timeline,
    breakpoints: &[u64],
    watches: &[(u64, u64)],
    cancel: &AtomicBool,
) -> WatchMoved {
    let start = tl.icount();
    let mut r = tl.replay().clone();
    r.set_user_breakpoints(breakpoints.to_vec());
    let mut values = read_watched(&r, watches);
    let result = advance(
        &mut r,
        Icount::MAX,
        Some(start),
        watches,
        &mut values,
        cancel,
    );
    let moved = match result {
        Advance::Diverged(d) => return WatchMoved::Moved(Moved::Diverged(d)),
        Advance::Watch { addr, .. } => WatchMoved::Watch(addr),
        Advance::Breakpoint(addr) => WatchMoved::Moved(Moved::Breakpoint(addr)),
        Advance::Finished(end) => WatchMoved::Moved(Moved::End(end)),
        Advance::Interrupted => WatchMoved::Moved(Moved::Interrupted),
        Advance::Reached => WatchMoved::Moved(Moved::End(End::EndOfRecording)),
    };
    tl.goto_icount(r.icount());
    moved
}

enum Hit {
    Breakpoint(u64),
    Watch(u64),
}

/// Runs backward to the last watched write or breakpoint before the current position,
/// or the start. A write is reported before the instruction that made it.
pub fn backward(
    tl: &mut Timeline,
    breakpoints: &[u64],
    watches: &[(u64, u64)],
    cancel: &AtomicBool,
) -> WatchMoved {
    let here = tl.icount();
    let origin = tl.checkpoints().first().map(|c| c.icount).unwrap_or(0);
    let mut upper = here;
    loop {
        if upper <= origin {
            tl.goto_icount(origin);
            return WatchMoved::Moved(Moved::Start);
        }
        let lower = upper.saturating_sub(BACKWARD_STRETCH).max(origin);
        match tl.goto_icount(lower) {
            Moved::Arrived => {}
            other => return WatchMoved::Moved(other),
        }
        let mut r = tl.replay().clone();
        r.set_user_breakpoints(breakpoints.to_vec());
        let mut values = read_watched(&r, watches);
        let mut last: Option<(Icount, Hit)> = None;
        let mut skip_at = None;
        loop {
            match advance(&mut r, upper, skip_at, watches, &mut values, cancel) {
                Advance::Reached | Advance::Finished(_) => break,
                Advance::Breakpoint(addr) => {
                    if r.icount() < here {
                        last = Some((r.icount(), Hit::Breakpoint(addr)));
                    }
                    skip_at = Some(r.icount());
                }
                Advance::Watch { at, addr } => last = Some((at, Hit::Watch(addr))),
                Advance::Diverged(d) => return WatchMoved::Moved(Moved::Diverged(d)),
                Advance::Interrupted => return WatchMoved::Moved(Moved::Interrupted),
            }
        }
        if let Some((k, hit)) = last {
            tl.goto_icount(k);
            return match hit {
                Hit::Breakpoint(addr) => WatchMoved::Moved(Moved::Breakpoint(addr)),
                Hit::Watch(addr) => WatchMoved::Watch(addr),
            };
        }
        upper = lower;
    }
}
