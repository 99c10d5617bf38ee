//! Write watchpoints over the timeline, forwards and backwards.
//!
//! The replay CPU has no write-watch hook, so a watched range is compared after every
//! instruction on a clone of the replay (checkpoints make the clone cheap); the
//! timeline is then moved to the hit. A watchpoint fires when the bytes change, which
//! is what gdb reports for `watch` anyway.

use krr_engine::event::Icount;
use krr_engine::replay::{Replay, Stop, Target};
use krr_engine::timeline::{Moved, Timeline};
use std::sync::atomic::{AtomicBool, Ordering};

/// How far back one backward scan reaches before trying the stretch before it.
const BACKWARD_STRETCH: Icount = 200_000;

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
    loop {
        if cancel.load(Ordering::Relaxed) {
            tl.goto_icount(r.icount());
            return WatchMoved::Moved(Moved::Interrupted);
        }
        match r.run(Target::Icount(r.icount() + 1)) {
            Stop::Reached(_) => {}
            // Standing on a breakpoint when the move began: the next run passes it.
            Stop::Breakpoint(_) if r.icount() == start => continue,
            Stop::Breakpoint(addr) => {
                tl.goto_icount(r.icount());
                return WatchMoved::Moved(Moved::Breakpoint(addr));
            }
            Stop::Finished(end) => {
                tl.goto_icount(r.icount());
                return WatchMoved::Moved(Moved::End(end));
            }
            Stop::Diverged(d) => return WatchMoved::Moved(Moved::Diverged(d)),
        }
        let now = read_watched(&r, watches);
        if let Some(addr) = changed(&values, &now, watches) {
            tl.goto_icount(r.icount());
            return WatchMoved::Watch(addr);
        }
        values = now;
    }
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
            Moved::Diverged(d) => return WatchMoved::Moved(Moved::Diverged(d)),
            other => return WatchMoved::Moved(other),
        }
        let mut r = tl.replay().clone();
        r.set_user_breakpoints(breakpoints.to_vec());
        let mut values = read_watched(&r, watches);
        let mut last: Option<(Icount, Hit)> = None;
        while r.icount() < upper {
            if cancel.load(Ordering::Relaxed) {
                return WatchMoved::Moved(Moved::Interrupted);
            }
            let before = r.icount();
            match r.run(Target::Icount(before + 1)) {
                Stop::Reached(_) => {}
                Stop::Breakpoint(addr) => {
                    if r.icount() < here {
                        last = Some((r.icount(), Hit::Breakpoint(addr)));
                    }
                    // The next run executes the instruction under the breakpoint.
                    match r.run(Target::Icount(r.icount() + 1)) {
                        Stop::Diverged(d) => return WatchMoved::Moved(Moved::Diverged(d)),
                        Stop::Finished(_) => break,
                        _ => {}
                    }
                }
                Stop::Finished(_) => break,
                Stop::Diverged(d) => return WatchMoved::Moved(Moved::Diverged(d)),
            }
            if r.icount() > here {
                break;
            }
            let now = read_watched(&r, watches);
            if let Some(addr) = changed(&values, &now, watches) {
                last = Some((before, Hit::Watch(addr)));
            }
            values = now;
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
