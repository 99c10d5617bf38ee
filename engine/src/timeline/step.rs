//! Source-line steps (`step`, `next` and their reverses) taken the way gdb takes them, so
//! that the terminal UI lands where gdb attached to the same recording lands.
//!
//! gdb steps one instruction at a time while the program counter stays in the range of
//! the current line (a row of the line table, [`crate::symbols::LineTable`]) and, at
//! each stop outside it, decides from the frames (identified by canonical frame address
//! and function entry) and the line table what to do: stop at the start of another
//! statement, step over a call (forward: run to the return address in the caller's
//! frame; backward: run back to the callee's entry, then one more instruction), step
//! into one (stop at its first line), follow a line entered in its middle, or enter an
//! inlined call. This module is that decision ([`Control::decide`]) driven forward by
//! single instructions and full-speed runs to a temporary breakpoint, and backward over
//! a trail of the positions before the current one ([`Trail`]), replayed from the
//! checkpoints one interval at a time.
//!
//! Frames come from the kernel's DWARF call-frame information. Where there is none
//! (assembly such as the entry stubs), they come from gdb's fallback for x86-64: the
//! return address is taken to be at the top of the stack (`CFA = RSP + 8`), or one
//! slot lower after a `push %rbp` at the function's entry (RBP-based after a
//! following `mov %rsp, %rbp`); at a `ret`, always at the top of the stack. This is
//! wrong inside an interrupt or exception entry (the return address there is the
//! interrupted RIP, pushed with the CPU's frame), which is what makes a kernel entry or
//! a return to user a line boundary: the entry's frame is neither the stepping frame
//! nor one called from it, so a step stops at the entry stub's first line, as gdb does.

use super::watch::Watcher;
use super::{Moved, Scanned, Timeline};
use crate::event::Icount;
use crate::replay::{Replay, Stop, Target};
use crate::state::gpr;
use crate::symbols::{BlockKind, CfaBase, Frame, FrameRule, SavedRbp, Symbols};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Which source-line step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStep {
    /// Into calls (gdb's `step`).
    Step,
    /// Over calls (gdb's `next`).
    Next,
}

/// A frame as gdb identifies it: its canonical frame address, the entry of its
/// function (or of its inlined call) and, for an inlined call, how deep it is inlined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameId {
    pub stack: u64,
    pub code: u64,
    pub depth: u32,
}

/// What a step needs of one position: the registers its frames are computed from and
/// the caller's registers read from the stack there.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    icount: Icount,
    regs: Frame,
    /// The caller's frame (return address, stack pointer, RBP), if the stack could be
    /// read.
    caller: Option<Frame>,
}

/// A stop as gdb's stepping logic sees it.
#[derive(Debug, Clone)]
struct Facts {
    pc: u64,
    /// The frame the stop is in: the innermost inlined call not skipped, else the
    /// function's frame.
    frame: Option<FrameId>,
    /// The function's frame (not an inlined call).
    stack_frame: Option<FrameId>,
    caller: Option<FrameId>,
    caller_pc: Option<u64>,
    /// gdb's `stop_func_start`: the start of the function's address range holding pc.
    func_start: Option<u64>,
    /// The inlined calls around pc, innermost first (block indices), and how many of
    /// them (from the innermost) the stop is taken to be before (at their entry).
    inlined: Vec<usize>,
    skipped: usize,
}

/// The source position a frame shows: a file and line (line 0: none).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sal {
    file: Option<Arc<Path>>,
    line: u32,
}

/// gdb's stepping state (`step_range_*`, `step_frame_id`, `current_line`...).
#[derive(Debug, Clone)]
struct Control {
    how: LineStep,
    forward: bool,
    range: (u64, u64),
    step_frame: Option<FrameId>,
    step_stack_frame: Option<FrameId>,
    current: Sal,
}

/// What to do after a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Stop,
    /// One more instruction in the step's direction.
    Step,
    /// Run (in the step's direction) to this address, in this frame if one is given.
    Resume {
        addr: u64,
        frame: Option<FrameId>,
    },
}

/// The stop where a step begins: the inlined calls the UI or gdb is "before" there (a
/// `step` at an inlined call's entry goes into it without moving).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct InlineState {
    pub icount: Icount,
    pub skipped: usize,
}

impl Timeline {
    /// A source-line step in either direction, as gdb's `step`, `next`,
    /// `reverse-step` and `reverse-next` take it (see the module documentation).
    /// Breakpoints and watchpoints stop it; without line information it moves by one
    /// instruction (over calls for `next`).
    pub fn line_step(
        &mut self,
        how: LineStep,
        forward: bool,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
    ) -> Moved {
        if self.symbols().line_table().is_none() {
            return match (how, forward) {
                (LineStep::Step, true) => self.stepi(),
                (LineStep::Step, false) => self.reverse_stepi(),
                (LineStep::Next, true) => self.next(cancel),
                (LineStep::Next, false) => self.reverse_next(cancel, progress),
            };
        }
        let start = self.snapshot_now();
        let mut facts = self.facts(&start);
        if let Some(s) = self.inline_state
            && s.icount == start.icount
        {
            facts.skipped = s.skipped.min(facts.inlined.len());
            facts.frame = facts.frame_at(self.symbols(), 0);
        }
        // `step` (either way) at an inlined call's entry goes into the call without
        // moving.
        if how == LineStep::Step && facts.skipped > 0 {
            let skipped = facts.skipped - 1;
            self.inline_state = Some(InlineState {
                icount: start.icount,
                skipped,
            });
            return Moved::Arrived;
        }
        let Some(line) = self.symbols().line_range(facts.pc) else {
            // No line here: one instruction, as gdb's `stepi`.
            return if forward {
                self.stepi()
            } else {
                self.reverse_stepi()
            };
        };
        let mut ctl = Control {
            how,
            forward,
            range: (line.start, line.end),
            step_frame: facts.frame,
            step_stack_frame: facts.stack_frame,
            current: self.frame_sal(&facts),
        };
        // `next` at an inlined call's entry steps over the whole call.
        if facts.skipped > 0 {
            let outer = facts.inlined[facts.skipped - 1];
            if let Some(blocks) = self.symbols().blocks() {
                ctl.range.1 = ctl.range.1.min(blocks.get(outer).end());
            }
        }
        let moved = if forward {
            self.line_step_forward(&mut ctl, cancel)
        } else {
            self.line_step_backward(&mut ctl, start.icount, cancel, progress)
        };
        self.inline_state = None;
        moved
    }

    /// The source line the position shows, as gdb shows it: at the entry of an inlined
    /// call the position is taken to be before (after a run or a source-line step
    /// stopped there), the line of the call; otherwise the line at RIP.
    pub fn source_line(&self) -> Option<crate::symbols::SourceLine> {
        let symbols = self.symbols();
        symbols.line_table()?;
        let snap = self.snapshot_now();
        let mut facts = self.facts(&snap);
        if let Some(s) = self.inline_state
            && s.icount == snap.icount
        {
            facts.skipped = s.skipped.min(facts.inlined.len());
        }
        let sal = frame_sal(symbols, &facts);
        Some(crate::symbols::SourceLine {
            file: sal.file?.to_path_buf(),
            line: sal.line,
        })
        .filter(|l| l.line != 0)
    }

    /// Runs until the current function returns, as gdb's `finish`: out of an inlined
    /// call, to the first stop outside it in the frame that made it (stepping over
    /// calls); otherwise to the return address in the caller's frame
    /// ([`Timeline::finish`] with [`Timeline::caller_frame`]).
    pub fn finish_frame(&mut self, cancel: Option<&AtomicBool>) -> Moved {
        if let Some(mut ctl) = self.out_of_inlined(true) {
            let moved = self.line_step_forward(&mut ctl, cancel);
            self.inline_state = None;
            return moved;
        }
        let caller = self.caller_frame();
        self.finish(caller, cancel)
    }

    /// Back to where the current function was entered, as gdb's `reverse-finish`: out of
    /// an inlined call, back to the last stop before it in the frame that made it;
    /// otherwise to the instruction before the function's entry (the call, or the jump
    /// of a tail call). Where the call-frame information describes the function, that
    /// entry is this frame's own (its canonical frame address), so a recursive call or
    /// another thread entering the same function meanwhile is passed over; elsewhere
    /// (assembly) it is the function's last entry, as gdb takes it.
    pub fn reverse_finish_frame(
        &mut self,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
    ) -> Moved {
        let upper = self.icount();
        if let Some(mut ctl) = self.out_of_inlined(false) {
            let moved = self.line_step_backward(&mut ctl, upper, cancel, progress);
            self.inline_state = None;
            return moved;
        }
        let here = self.snapshot_now();
        let symbols = self.symbols();
        let pc = here.regs.rip;
        let Some(entry) =
            function_range_start(symbols, pc).map(|f| symbols.line_range(f).map_or(f, |l| l.start))
        else {
            return self.reverse_stepi();
        };
        if entry == pc {
            return self.reverse_stepi();
        }
        // The frame to find at the entry: this one, where the tables describe it.
        let read_code = |a: u64| -> Option<u8> {
            let mut b = [0u8; 1];
            self.now.read_memory(a, &mut b).ok().map(|()| b[0])
        };
        let cfa = symbols
            .unwinder()
            .filter(|u| u.covers(pc))
            .and_then(|_| frame_rule(symbols, pc, pc, true, &read_code))
            .map(|r| r.cfa(here.regs));
        let mut trail = Trail::new(upper);
        loop {
            let rec = match trail.back(self, cancel, progress) {
                Ok(Some(r)) => r,
                Ok(None) => return self.go_to_scanned(Scanned::Start(0)),
                Err(m) => return m,
            };
            if let Some(w) = rec.wrote {
                return self.go_to_scanned(Scanned::Found(rec.snap.icount, Moved::Watchpoint(w)));
            }
            let rip = rec.snap.regs.rip;
            if self.breakpoints.contains(&rip) {
                return self.go_to_scanned(Scanned::Found(rec.snap.icount, Moved::Breakpoint(rip)));
            }
            if rip != entry {
                continue;
            }
            let at_entry = cfa.is_none_or(|c| {
                frame_rule(symbols, rip, rip, true, &read_code).map(|r| r.cfa(rec.snap.regs))
                    == Some(c)
            });
            if at_entry {
                break;
            }
        }
        // One more instruction back: the call (or jump) that entered it.
        let moved = match trail.back(self, cancel, progress) {
            Ok(Some(r)) => self.go_to_scanned(Scanned::Found(r.snap.icount, Moved::Arrived)),
            Ok(None) => self.go_to_scanned(Scanned::Start(0)),
            Err(m) => m,
        };
        self.settle_instruction();
        moved
    }

    /// Stepping out of the inlined call the position is in, if it is in one: gdb steps
    /// "in the frame that made the call" from an empty range, over calls.
    fn out_of_inlined(&self, forward: bool) -> Option<Control> {
        self.symbols().line_table()?;
        let snap = self.snapshot_now();
        let mut facts = self.facts(&snap);
        if let Some(s) = self.inline_state
            && s.icount == snap.icount
        {
            facts.skipped = s.skipped.min(facts.inlined.len());
        }
        if !facts.in_inlined() {
            return None;
        }
        Some(Control {
            how: LineStep::Next,
            forward,
            range: (facts.pc, facts.pc),
            step_frame: facts.frame_at(self.symbols(), 1),
            step_stack_frame: facts.stack_frame,
            current: Sal {
                file: None,
                line: 0,
            },
        })
    }

    fn line_step_forward(&mut self, ctl: &mut Control, cancel: Option<&AtomicBool>) -> Moved {
        let mut watcher = Watcher::new(&self.watchpoints, &mut self.now);
        let mut action = Action::Step;
        let mut steps = 0u64;
        loop {
            steps += 1;
            if steps.is_multiple_of(4096) && cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                return Moved::Interrupted;
            }
            match action {
                Action::Stop => return Moved::Arrived,
                Action::Step => {
                    let m = self.stepi();
                    if m != Moved::Arrived {
                        return m;
                    }
                    if let Some(w) = watcher.check(&mut self.now) {
                        return Moved::Watchpoint(w);
                    }
                    if self.breakpoints.contains(&self.now.rip()) {
                        return Moved::Breakpoint(self.now.rip());
                    }
                }
                Action::Resume { addr, frame } => {
                    let m = self.run_to(addr, frame, cancel);
                    if m != Moved::Arrived {
                        return m;
                    }
                    // The full-speed run compared the watched ranges itself.
                    watcher = Watcher::new(&self.watchpoints, &mut self.now);
                }
            }
            let snap = self.snapshot_now();
            let facts = self.facts(&snap);
            action = ctl.decide(self.symbols(), &facts);
            tracing::trace!(
                icount = snap.icount,
                ?facts,
                ?action,
                ?ctl,
                "line step forward"
            );
        }
    }

    /// Runs forward to `addr` (in the function frame `frame`, when given: other hits
    /// are passed over), or a breakpoint, watchpoint or the end.
    fn run_to(&mut self, addr: u64, frame: Option<FrameId>, cancel: Option<&AtomicBool>) -> Moved {
        let temporary = self.breakpoints.insert(addr);
        let moved = loop {
            match self.forward(Target::End, true, cancel) {
                Moved::Breakpoint(a) if a == addr => {
                    let snap = self.snapshot_now();
                    let here = self.facts(&snap).stack_frame;
                    if frame.is_none() || (here.is_some() && here == frame) {
                        break if temporary {
                            Moved::Arrived
                        } else {
                            Moved::Breakpoint(a)
                        };
                    }
                }
                other => break other,
            }
        };
        if temporary {
            self.breakpoints.remove(&addr);
        }
        moved
    }

    fn line_step_backward(
        &mut self,
        ctl: &mut Control,
        upper: Icount,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
    ) -> Moved {
        if upper == 0 {
            return Moved::Start;
        }
        let mut trail = Trail::new(upper);
        let mut action = Action::Step;
        loop {
            if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                return Moved::Interrupted;
            }
            // The position to decide at: one instruction back, or the last position
            // before this one at the address resumed to.
            let target = match action {
                Action::Stop => {
                    let k = trail.current().map_or(upper, |r| r.snap.icount);
                    return self.go_to_scanned(Scanned::Found(k, Moved::Arrived));
                }
                Action::Step => None,
                Action::Resume { addr, frame } => Some((addr, frame)),
            };
            let rec = loop {
                let rec = match trail.back(self, cancel, progress) {
                    Ok(Some(r)) => r,
                    Ok(None) => return self.go_to_scanned(Scanned::Start(0)),
                    Err(m) => return m,
                };
                // A watched write by this instruction, or a breakpoint here, stops the
                // step first.
                if let Some(w) = rec.wrote {
                    return self
                        .go_to_scanned(Scanned::Found(rec.snap.icount, Moved::Watchpoint(w)));
                }
                if self.breakpoints.contains(&rec.snap.regs.rip) {
                    return self.go_to_scanned(Scanned::Found(
                        rec.snap.icount,
                        Moved::Breakpoint(rec.snap.regs.rip),
                    ));
                }
                match target {
                    None => break rec,
                    Some((addr, frame)) if rec.snap.regs.rip == addr => {
                        let f = self.facts(&rec.snap);
                        if frame.is_none() || (f.stack_frame.is_some() && f.stack_frame == frame) {
                            break rec;
                        }
                    }
                    Some(_) => {}
                }
            };
            let facts = self.facts(&rec.snap);
            action = match target {
                // Back at the entry of the function stepped over: one more instruction
                // takes the step back to the call.
                Some(_) if Some(facts.pc) == facts.func_start => Action::Step,
                _ => ctl.decide(self.symbols(), &facts),
            };
            tracing::trace!(
                icount = rec.snap.icount,
                ?facts,
                ?action,
                ?ctl,
                "line step backward"
            );
        }
    }

    /// The current position as a step sees it.
    fn snapshot_now(&self) -> Snapshot {
        snapshot(self.symbols(), &self.now)
    }

    /// The frames and inlined calls at a position.
    fn facts(&self, snap: &Snapshot) -> Facts {
        let symbols = self.symbols();
        let pc = snap.regs.rip;
        let read_code = |a: u64| -> Option<u8> {
            let mut b = [0u8; 1];
            self.now.read_memory(a, &mut b).ok().map(|()| b[0])
        };
        let stack_frame = frame_rule(symbols, pc, pc, true, &read_code).map(|rule| FrameId {
            stack: rule.cfa(snap.regs),
            code: function_entry(symbols, pc).unwrap_or(0),
            depth: 0,
        });
        let (caller, caller_pc) = match snap.caller {
            Some(c) if c.rip != 0 => {
                let lookup = c.rip.wrapping_sub(1);
                let id =
                    frame_rule(symbols, lookup, c.rip, false, &read_code).map(|rule| FrameId {
                        stack: rule.cfa(c),
                        code: function_entry(symbols, lookup).unwrap_or(0),
                        depth: 0,
                    });
                (id, Some(c.rip))
            }
            _ => (None, None),
        };
        let (inlined, skipped) = match symbols.blocks() {
            Some(blocks) => {
                let inlined = blocks.inlined_at(pc);
                let skipped = inlined
                    .iter()
                    .take_while(|&&b| blocks.enters(b, pc))
                    .count();
                (inlined, skipped)
            }
            None => (Vec::new(), 0),
        };
        let mut facts = Facts {
            pc,
            frame: None,
            stack_frame,
            caller,
            caller_pc,
            func_start: function_range_start(symbols, pc),
            inlined,
            skipped,
        };
        facts.frame = facts.frame_at(symbols, 0);
        facts
    }

    /// The source position of the stop's frame: the call site of an inlined call the
    /// stop is before, else the line at pc.
    fn frame_sal(&self, facts: &Facts) -> Sal {
        frame_sal(self.symbols(), facts)
    }
}

fn frame_sal(symbols: &Symbols, facts: &Facts) -> Sal {
    if facts.skipped > 0
        && let Some(blocks) = symbols.blocks()
        && let BlockKind::Inlined {
            call_file,
            call_line,
        } = &blocks.get(facts.inlined[facts.skipped - 1]).kind
    {
        return Sal {
            file: call_file.clone(),
            line: *call_line,
        };
    }
    match symbols.line_range(facts.pc) {
        Some(l) => Sal {
            file: Some(l.file),
            line: l.line,
        },
        None => Sal {
            file: None,
            line: 0,
        },
    }
}

impl Facts {
    /// The id of the frame `outward` levels out from the stop's frame, counting inlined
    /// calls (not skipped ones) and ending with the function's frame.
    fn frame_at(&self, symbols: &Symbols, outward: usize) -> Option<FrameId> {
        let stack = self.stack_frame?;
        let visible = &self.inlined[self.skipped..];
        match visible.get(outward) {
            Some(&b) => {
                let block = symbols.blocks()?.get(b);
                Some(FrameId {
                    stack: stack.stack,
                    code: block.entry(),
                    depth: block.depth,
                })
            }
            None if outward == visible.len() => Some(stack),
            None => None,
        }
    }

    /// Whether the stop's frame is an inlined call.
    fn in_inlined(&self) -> bool {
        self.inlined.len() > self.skipped
    }
}

impl Control {
    /// gdb's decision at a stop while stepping (`process_event_stop_test`).
    fn decide(&mut self, symbols: &Symbols, s: &Facts) -> Action {
        let same = |a: Option<FrameId>, b: Option<FrameId>| a.is_some() && a == b;
        // Still in the line: keep stepping (backward, only in the same frame, and not
        // past the line's start unless that is the function's entry).
        if self.range.0 <= s.pc
            && s.pc < self.range.1
            && (self.forward || same(s.frame, self.step_frame))
        {
            if !self.forward && s.pc == self.range.0 && Some(s.pc) != s.func_start {
                return Action::Stop;
            }
            return Action::Step;
        }
        // Stepped into a function called from the stepping frame.
        if !same(s.stack_frame, self.step_stack_frame) && same(s.caller, self.step_stack_frame) {
            return self.at_call(symbols, s);
        }
        let Some(line) = symbols.line_range(s.pc) else {
            return Action::Stop;
        };
        // Entered an inlined call from the stepping frame.
        if same(s.frame, self.step_frame) && s.skipped > 0 {
            let call = frame_sal(symbols, s);
            return match self.how {
                // Into the call if it was made from the line stepped; stop either way.
                LineStep::Step => Action::Stop,
                LineStep::Next if call == self.current => Action::Step,
                LineStep::Next => Action::Stop,
            };
        }
        // Deeper in an inlined call made from the stepping frame.
        if s.in_inlined() && !same(s.frame, self.step_frame) && self.stepped_in_from(symbols, s) {
            return match self.how {
                LineStep::Next => Action::Step,
                LineStep::Step => Action::Stop,
            };
        }
        let mut sal = Sal {
            file: Some(line.file.clone()),
            line: line.line,
        };
        let mut refresh = true;
        if s.pc == line.start && self.current != sal {
            if line.is_stmt {
                return Action::Stop;
            }
            if same(s.frame, self.step_frame) {
                refresh = false;
            } else {
                sal.line = 0;
            }
        }
        // In the middle of a line (or at a non-statement row): follow it.
        self.range = (line.start, line.end);
        if refresh {
            self.step_frame = s.frame;
            self.step_stack_frame = s.stack_frame;
            self.current = sal;
        }
        Action::Step
    }

    /// A call from the stepping frame: over it for `next`, into it for `step`.
    fn at_call(&mut self, symbols: &Symbols, s: &Facts) -> Action {
        match (self.how, self.forward) {
            (LineStep::Next, true) => match s.caller_pc {
                Some(addr) => Action::Resume {
                    addr,
                    frame: s.caller,
                },
                None => Action::Stop,
            },
            // Back to the callee's entry in the callee's frame, then one instruction.
            (LineStep::Next, false) => match s.func_start {
                Some(f) if f != s.pc && f != 0 => Action::Resume {
                    addr: f,
                    frame: s.stack_frame,
                },
                _ => Action::Step,
            },
            (LineStep::Step, true) => {
                // To the function's first line (gdb skips no prologue of a frameless
                // x86-64 function; a prologue ending inside a line runs to that line's
                // end).
                let Some(mut target) = s.func_start else {
                    return Action::Stop;
                };
                if let Some(l) = symbols.line_range(target)
                    && l.start != target
                    && l.end < function_range_end(symbols, s.pc).unwrap_or(0)
                {
                    target = l.end;
                }
                if target == s.pc {
                    return Action::Stop;
                }
                // Stop as soon as the step-resume address is reached.
                self.range = (self.range.0, self.range.0);
                Action::Resume {
                    addr: target,
                    frame: None,
                }
            }
            (LineStep::Step, false) => {
                // Back into the callee: to the start of the line (row) it returned from.
                let Some(l) = symbols.line_range(s.pc) else {
                    return Action::Stop;
                };
                if l.start == s.pc {
                    return Action::Stop;
                }
                self.range = (l.start, l.end);
                Action::Step
            }
        }
    }

    /// Whether the stop's frame is an inlined call made (directly or through other
    /// inlined calls) from the stepping frame.
    fn stepped_in_from(&self, symbols: &Symbols, s: &Facts) -> bool {
        let visible = s.inlined.len() - s.skipped;
        for outward in 1..=visible {
            let id = s.frame_at(symbols, outward);
            if id.is_some() && id == self.step_frame {
                return true;
            }
        }
        false
    }
}

/// The registers at the replay's position and its caller's, read from the stack.
fn snapshot(symbols: &Symbols, r: &Replay) -> Snapshot {
    let st = r.regs();
    let regs = Frame {
        rip: st.rip,
        rsp: st.gpr[gpr::RSP],
        rbp: st.gpr[gpr::RBP],
    };
    let read_code = |a: u64| -> Option<u8> {
        let mut b = [0u8; 1];
        r.read_memory(a, &mut b).ok().map(|()| b[0])
    };
    let caller = frame_rule(symbols, regs.rip, regs.rip, true, &read_code)
        .and_then(|rule| rule.caller(regs, &|a| r.read_u64(a)));
    Snapshot {
        icount: r.icount(),
        regs,
        caller,
    }
}

/// The rule that finds a frame's caller at `lookup` (the pc, or for an outer frame the
/// return address less one; `pc` is the frame's own pc): the call-frame information,
/// else gdb's x86-64 fallback (see the module documentation).
fn frame_rule(
    symbols: &Symbols,
    lookup: u64,
    pc: u64,
    innermost: bool,
    read_code: &dyn Fn(u64) -> Option<u8>,
) -> Option<FrameRule> {
    if let Some(u) = symbols.unwinder()
        && u.covers(lookup)
    {
        return u.rule(lookup);
    }
    let top = FrameRule {
        base: CfaBase::Rsp,
        cfa_offset: 8,
        ra_offset: -8,
        rbp: SavedRbp::Same,
    };
    // At a `ret`, the return address is on top of the stack.
    if innermost && read_code(pc) == Some(0xc3) {
        return Some(top);
    }
    let Some(func) = function_entry(symbols, lookup) else {
        return Some(top);
    };
    if pc <= func || read_code(func) != Some(0x55) {
        return Some(top);
    }
    // After `push %rbp`: one slot lower; after `mov %rsp, %rbp` too, from RBP.
    let pushed = FrameRule {
        base: CfaBase::Rsp,
        cfa_offset: 16,
        ra_offset: -8,
        rbp: SavedRbp::At(-16),
    };
    if pc <= func + 1 {
        return Some(pushed);
    }
    let code: Vec<u8> = (1..4).filter_map(|i| read_code(func + i)).collect();
    let moves = code.starts_with(&[0x48, 0x89, 0xe5])
        || code.starts_with(&[0x48, 0x8b, 0xec])
        || code.starts_with(&[0x89, 0xe5])
        || code.starts_with(&[0x8b, 0xec]);
    if moves {
        Some(FrameRule {
            base: CfaBase::Rbp,
            cfa_offset: 16,
            ra_offset: -8,
            rbp: SavedRbp::At(-16),
        })
    } else {
        Some(pushed)
    }
}

/// The entry of the function containing `pc` (gdb's `get_pc_function_start`): its
/// DWARF function's, else its symbol's.
fn function_entry(symbols: &Symbols, pc: u64) -> Option<u64> {
    if let Some(blocks) = symbols.blocks()
        && let Some(f) = blocks.function(pc)
    {
        return Some(blocks.get(f).entry());
    }
    symbols.lookup(pc).map(|l| l.function.addr)
}

/// The start of the address range of the function holding `pc` (gdb's
/// `stop_func_start`): a function in pieces counts from the piece holding `pc`; a
/// symbol of its own for a piece (such as `.cold`) wins over the function.
fn function_range_start(symbols: &Symbols, pc: u64) -> Option<u64> {
    function_range(symbols, pc).map(|r| r.0)
}

fn function_range_end(symbols: &Symbols, pc: u64) -> Option<u64> {
    function_range(symbols, pc).map(|r| r.1)
}

fn function_range(symbols: &Symbols, pc: u64) -> Option<(u64, u64)> {
    let sym = symbols.lookup(pc);
    if let Some(blocks) = symbols.blocks()
        && let Some(f) = blocks.function(pc)
    {
        let block = blocks.get(f);
        if sym.is_none_or(|l| block.entry() >= l.function.addr) {
            if block.ranges.len() <= 1 {
                return Some((block.start(), block.end()));
            }
            return block
                .ranges
                .iter()
                .copied()
                .find(|&(a, b)| a <= pc && pc < b);
        }
    }
    sym.map(|l| (l.function.addr, l.function.addr + l.function.size))
}

/// One position of a backward trail.
#[derive(Debug, Clone, Copy)]
struct Record {
    snap: Snapshot,
    /// The instruction at this position changed a watched range.
    wrote: Option<super::Watchpoint>,
}

/// The positions before a starting point, newest first: stretches of growing length
/// before the oldest position loaded are replayed (from their checkpoint, at full speed
/// up to the stretch), one instruction at a time, recording what a step needs.
struct Trail {
    records: Vec<Record>,
    /// Index of the record last returned (records[..next] are older).
    next: usize,
    /// The icount the loaded records start at, or where the trail starts when none are
    /// loaded.
    lower: Icount,
    /// Where the trail started, for the progress report.
    upper: Icount,
    /// Length of the next stretch to load.
    stretch: Icount,
}

/// The first stretch a trail loads (most steps end within a few lines).
const FIRST_STRETCH: Icount = 512;

impl Trail {
    fn new(upper: Icount) -> Trail {
        Trail {
            records: Vec::new(),
            next: 0,
            lower: upper,
            upper,
            stretch: FIRST_STRETCH,
        }
    }

    /// The record last returned.
    fn current(&self) -> Option<&Record> {
        self.records.get(self.next)
    }

    /// The position before the last one returned (None at the start of the
    /// recording).
    fn back(
        &mut self,
        tl: &Timeline,
        cancel: Option<&AtomicBool>,
        progress: &mut dyn FnMut(f64),
    ) -> Result<Option<Record>, Moved> {
        while self.next == 0 {
            if self.lower == 0 {
                return Ok(None);
            }
            progress(1.0 - self.lower as f64 / self.upper.max(1) as f64);
            self.load(tl, cancel)?;
        }
        self.next -= 1;
        Ok(Some(self.records[self.next]))
    }

    /// Replays the stretch before `lower`: from its checkpoint at full speed to the
    /// stretch's start, then one instruction at a time.
    fn load(&mut self, tl: &Timeline, cancel: Option<&AtomicBool>) -> Result<(), Moved> {
        let hi = self.lower;
        let idx = tl.latest_checkpoint(|c| c.icount < hi);
        let base = tl.checkpoints[idx].icount.min(hi);
        let from = hi.saturating_sub(self.stretch).max(base);
        self.stretch = self.stretch.saturating_mul(4);
        let mut scan = tl.checkpoints[idx].replay.clone();
        scan.set_user_breakpoints(Vec::new());
        if from > scan.icount()
            && let Stop::Diverged(d) = scan.run(Target::Icount(from))
        {
            return Err(Moved::Diverged(d));
        }
        let mut watcher = Watcher::new(&tl.watchpoints, &mut scan);
        let symbols = tl.symbols();
        let mut records = Vec::new();
        let mut steps = 0u64;
        while scan.icount() < hi {
            steps += 1;
            if steps.is_multiple_of(4096) && cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                return Err(Moved::Interrupted);
            }
            let snap = snapshot(symbols, &scan);
            let k = scan.icount();
            match scan.run(Target::Icount(k + 1)) {
                Stop::Diverged(d) => return Err(Moved::Diverged(d)),
                Stop::Reached(_) | Stop::Finished(_) | Stop::Breakpoint(_) => {}
            }
            if scan.icount() == k {
                break;
            }
            let wrote = watcher.check(&mut scan);
            records.push(Record { snap, wrote });
        }
        self.lower = from;
        if records.is_empty() && self.lower == hi {
            // Nothing before this point can be replayed: the start.
            self.lower = 0;
        }
        self.next = records.len();
        self.records = records;
        Ok(())
    }
}
