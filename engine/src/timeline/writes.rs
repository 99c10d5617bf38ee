//! Who wrote memory: the instruction or the event (a device's DMA, the VMM, a user-memory
//! read the agent recorded) that changed a watched range, with the bytes before and
//! after; and UDB's `last`, the last change of a range before the position.

use super::{Moved, Timeline, Watchpoint};
use crate::cpu::Access;
use crate::event::{Event, EventKind, Icount};
use crate::replay::{Replay, Target};

/// What wrote a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writer {
    /// The instruction at `rip`, the `icount`-th of the recording (counting from 0).
    Instruction { rip: u64, icount: Icount },
    /// Event `n` applied by replay (after the instruction that caused it, such as the
    /// `out` that started a device's DMA).
    Event { n: u64, kind: EventKind },
}

/// A change of a watched range: its bytes before and after (None where unmapped), and
/// what changed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchWrite {
    pub watch: Watchpoint,
    pub old: Option<Vec<u8>>,
    pub new: Option<Vec<u8>>,
    pub by: Writer,
}

impl WatchWrite {
    /// The bytes as a little-endian number where they fit one (1, 2, 4 or 8 bytes).
    pub fn value(bytes: &[u8]) -> Option<u64> {
        matches!(bytes.len(), 1 | 2 | 4 | 8).then(|| {
            let mut b = [0u8; 8];
            b[..bytes.len()].copy_from_slice(bytes);
            u64::from_le_bytes(b)
        })
    }
}

fn read(r: &Replay, w: Watchpoint) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; w.len as usize];
    r.read_memory(w.addr, &mut buf).ok().map(|()| buf)
}

impl Timeline {
    /// A replay copy standing at icount `k` (no breakpoints set in it).
    fn replay_at(&self, k: Icount) -> Replay {
        let idx = self.latest_checkpoint(|c| c.icount <= k);
        let mut r = self.checkpoints[idx].replay.clone();
        r.set_user_breakpoints(Vec::new());
        r.run(Target::Icount(k));
        r
    }

    /// What the one-instruction step from `before` did to `w`: the bytes either side and
    /// the writer (an event applied in that step that wrote the range, else the
    /// instruction).
    fn step_write(&self, before: &Replay, w: Watchpoint) -> WatchWrite {
        let mut after = before.clone();
        after.set_user_breakpoints(Vec::new());
        after.run(Target::Icount(before.icount() + 1));
        let by = before
            .events(before.events_consumed()..after.events_consumed())
            .find(|(_, e)| event_writes(before, e, w))
            .map(|(n, e)| Writer::Event { n, kind: e.kind() })
            .unwrap_or(Writer::Instruction {
                rip: before.rip(),
                icount: before.icount(),
            });
        WatchWrite {
            watch: w,
            old: read(before, w),
            new: read(&after, w),
            by,
        }
    }

    /// The change of `w` a watchpoint stop just reported: `forward`, the position is
    /// right after it; backward, right before it.
    pub fn watch_write(&self, w: Watchpoint, forward: bool) -> WatchWrite {
        if forward && self.icount() > 0 {
            self.step_write(&self.replay_at(self.icount() - 1), w)
        } else {
            self.step_write(&self.now, w)
        }
    }

    /// UDB's `last`: goes back to right before the last change of the `len` bytes at
    /// `addr` before the position (breakpoints and other watchpoints do not stop it),
    /// and says what changed them. None, having gone to the start, where they did not
    /// change since then (or the move was interrupted or diverged: the `Moved` says).
    pub fn last_write(
        &mut self,
        addr: u64,
        len: u64,
        cancel: Option<&std::sync::atomic::AtomicBool>,
        progress: &mut dyn FnMut(f64),
    ) -> (Moved, Option<WatchWrite>) {
        let breakpoints = std::mem::take(&mut self.breakpoints);
        let watchpoints = std::mem::take(&mut self.watchpoints);
        let w = self.add_watchpoint(addr, len);
        let moved = self.reverse_continue(cancel, progress);
        self.breakpoints = breakpoints;
        self.watchpoints = watchpoints;
        match moved {
            Moved::Watchpoint(hit) => {
                let write = self.watch_write(hit, false);
                (Moved::Watchpoint(w), Some(write))
            }
            other => (other, None),
        }
    }
}

/// Whether event `e`, applied to `r`'s memory, writes bytes of `w`.
fn event_writes(r: &Replay, e: &Event, w: Watchpoint) -> bool {
    let overlaps =
        |a: u64, n: u64, b: u64, m: u64| a < b.saturating_add(m) && b < a.saturating_add(n);
    match e {
        Event::MemoryWrite(m) => (0..w.len).any(|i| {
            r.cpu
                .translate(&r.mem, w.addr.wrapping_add(i), Access::Read)
                .is_ok_and(|gpa| overlaps(gpa, 1, m.gpa, m.data.len() as u64))
        }),
        Event::UserRead(u) => overlaps(w.addr, w.len, u.dst, u.data.len() as u64),
        _ => false,
    }
}
