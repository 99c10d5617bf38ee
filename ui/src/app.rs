//! The application state and what keys and commands do to it, apart from drawing.

use crate::keymap::{Action, Keymap};
use krr_engine::replay::{End, Replay, format_instruction};
use krr_engine::state::{CpuState, gpr};
use krr_engine::symbols::{Radix, Symbols};
use krr_engine::timeline::{LineStep, MAX_WATCH_LEN, Moved, Timeline, WatchWrite, Writer};
use ratatui::crossterm::event::{KeyCode, KeyEvent};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Receiver;

/// See [`App::exporter`].
pub type Exporter = Box<dyn FnMut(&Replay) -> Result<(String, Receiver<(u64, u64)>), String>>;

/// The panes, in focus order; `TogglePane(n)` hides or shows `PANES[n - 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Registers,
    Disassembly,
    Source,
    Events,
    Checkpoints,
    Console,
    Memory,
    Backtrace,
    Locals,
}

pub const PANES: [Pane; 9] = [
    Pane::Registers,
    Pane::Disassembly,
    Pane::Source,
    Pane::Events,
    Pane::Checkpoints,
    Pane::Console,
    Pane::Memory,
    Pane::Backtrace,
    Pane::Locals,
];

impl Pane {
    pub fn title(self) -> &'static str {
        match self {
            Pane::Registers => "registers",
            Pane::Disassembly => "disassembly",
            Pane::Source => "source",
            Pane::Events => "events",
            Pane::Checkpoints => "checkpoints",
            Pane::Console => "console",
            Pane::Memory => "memory",
            Pane::Backtrace => "backtrace",
            Pane::Locals => "locals",
        }
    }

    pub fn index(self) -> usize {
        PANES.iter().position(|p| *p == self).unwrap_or(0)
    }
}

/// What the keyboard is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Typing into a prompt (`:` command, `g` goto, `w` watch).
    Prompt {
        kind: PromptKind,
        input: String,
    },
    Help,
    /// Command output (`info ...`), dismissed by any key.
    Output(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptKind {
    Command,
    Goto,
    Watch,
    Bookmark,
}

impl PromptKind {
    pub fn prefix(self) -> &'static str {
        match self {
            PromptKind::Command => ":",
            PromptKind::Goto => "goto (event N | icount K): ",
            PromptKind::Watch => "watch (ADDR [LEN]): ",
            PromptKind::Bookmark => "goto bookmark: ",
        }
    }
}

/// Where the memory pane looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemAt {
    Addr(u64),
    Register(usize),
}

/// How a long move is controlled: a flag the caller sets to interrupt it, and where its
/// progress goes (reverse moves report the fraction scanned).
pub struct MoveCtl<'a> {
    pub cancel: Option<&'a AtomicBool>,
    pub progress: &'a mut dyn FnMut(f64),
}

impl MoveCtl<'_> {
    /// No interruption, progress ignored (tests).
    pub fn none(f: &mut dyn FnMut(f64)) -> MoveCtl<'_> {
        MoveCtl {
            cancel: None,
            progress: f,
        }
    }
}

/// One line of the disassembly pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisasmLine {
    pub addr: u64,
    /// The function starting here, if one does.
    pub label: Option<String>,
    pub text: String,
}

/// The source pane's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceView {
    /// The image has no line information.
    NoLines,
    /// No line for this address.
    NoLine,
    /// The file is not on this machine.
    Missing { file: PathBuf, line: u32 },
    Text {
        file: PathBuf,
        line: u32,
        lines: Rc<Vec<String>>,
    },
}

/// The state of the application.
pub struct App {
    /// The replay and everything the panes read of it (symbols included).
    pub timeline: Timeline,
    /// Starts a gdb server on a copy of the replay at its current position; returns the
    /// address gdb connects to and the positions (icount, events applied) gdb moves to.
    pub exporter: Option<Exporter>,
    /// Positions from an exported gdb session, which the UI follows.
    pub following: Option<Receiver<(u64, u64)>>,
    pub keymap: Keymap,
    pub mode: Mode,
    pub focus: Pane,
    pub hidden: [bool; PANES.len()],
    /// Relative sizes of the panes.
    pub weights: [u16; PANES.len()],
    /// Registers before the last move (changed ones are highlighted).
    pub prev_regs: CpuState,
    /// Disassembly cursor (None: at RIP).
    pub cursor: Option<u64>,
    /// Events list offset from the current event (moved by the cursor keys).
    pub event_scroll: i64,
    /// First row of the registers pane shown (moved by the cursor keys).
    pub reg_scroll: usize,
    /// First line of the help or output popup shown.
    pub popup_scroll: usize,
    pub mem_at: MemAt,
    /// The frame the locals pane and `:print` read (gdb's selected frame; 0 after every
    /// move).
    pub frame: usize,
    /// The status bar message about the last action.
    pub message: String,
    pub quit: bool,
    /// Directories searched first (by file name) for source files.
    pub source_dirs: Vec<PathBuf>,
    /// The directory of the kernel image the symbols came from: relative source paths
    /// in its DWARF information are taken from there.
    pub image_dir: Option<PathBuf>,
    sources: RefCell<HashMap<PathBuf, Option<Rc<Vec<String>>>>>,
    /// The density strip's columns, for a width and a number of applied events known.
    density: RefCell<Option<(usize, u64, Vec<u32>)>>,
}

impl App {
    pub fn new(timeline: Timeline, keymap: Keymap) -> App {
        let prev_regs = timeline.regs().clone();
        App {
            timeline,
            exporter: None,
            following: None,
            keymap,
            mode: Mode::Normal,
            focus: Pane::Disassembly,
            hidden: [false; PANES.len()],
            weights: [3; PANES.len()],
            prev_regs,
            cursor: None,
            event_scroll: 0,
            reg_scroll: 0,
            popup_scroll: 0,
            mem_at: MemAt::Register(gpr::RSP),
            frame: 0,
            message: "press ? for help".into(),
            quit: false,
            source_dirs: Vec::new(),
            image_dir: None,
            sources: RefCell::new(HashMap::new()),
            density: RefCell::new(None),
        }
    }

    pub fn replay(&self) -> &Replay {
        self.timeline.replay()
    }

    pub fn regs(&self) -> &CpuState {
        self.timeline.regs()
    }

    /// The guest's symbols and source lines.
    pub fn symbols(&self) -> &Symbols {
        self.timeline.symbols()
    }

    pub fn rip(&self) -> u64 {
        self.regs().rip
    }

    /// The recording's extent on the axis of its event positions (instruction counts,
    /// or deterministic-exit ordinals for a recording made without a counter), as far
    /// as known.
    pub fn total_position(&self) -> u64 {
        let r = self.replay();
        let last_event = r
            .event_count()
            .checked_sub(1)
            .and_then(|n| r.event_position(n))
            .map_or(0, |p| p.0);
        last_event
            .max(r.final_position().unwrap_or(0))
            .max(self.timeline.position().on_event_axis())
            .max(1)
    }

    /// How far into the recording the replay is, on the axis of its event positions.
    pub fn percent(&self) -> f64 {
        100.0 * self.timeline.position().on_event_axis() as f64 / self.total_position() as f64
    }

    /// `#event  icount  pct  function  pid N name` for the status bar.
    pub fn position(&self) -> String {
        let p = self.timeline.position();
        let ev = p.event.map_or("#-".to_string(), |n| format!("#{n}"));
        // Without a counter the events are placed by exit ordinal: show it too.
        let exit = p.exit.map(|e| format!(" (exit {e})")).unwrap_or_default();
        // The guest's current process, where its kernel is known.
        let process = self
            .timeline
            .current_process()
            .map(|p| format!("  pid {} {}", p.pid, p.name))
            .unwrap_or_default();
        format!(
            "{ev}  icount {}{exit}  {:.1}%  {}{process}",
            p.icount,
            self.percent(),
            self.symbols().describe(p.rip)
        )
    }

    /// The event under the events pane's cursor (the last applied one, moved by the
    /// cursor keys).
    pub fn selected_event(&self) -> Option<u64> {
        let n = self.replay().events_consumed() as i64 - 1 + self.event_scroll;
        (0..self.replay().event_count() as i64)
            .contains(&n)
            .then_some(n as u64)
    }

    pub fn is_visible(&self, p: Pane) -> bool {
        !self.hidden[p.index()]
    }

    // ----- keys -----

    /// Handles one key press.
    pub fn press(&mut self, key: KeyEvent, ctl: &mut MoveCtl<'_>) {
        match &mut self.mode {
            Mode::Help | Mode::Output(_) => {
                let len = match &self.mode {
                    Mode::Output(lines) => lines.len(),
                    _ => crate::draw::help_lines(self).len(),
                };
                // Scroll what does not fit; any other key closes.
                let scroll = match key.code {
                    KeyCode::Up | KeyCode::Char('k') => self.popup_scroll.saturating_sub(1),
                    KeyCode::Down | KeyCode::Char('j') => self.popup_scroll + 1,
                    KeyCode::PageUp => self.popup_scroll.saturating_sub(10),
                    KeyCode::PageDown => self.popup_scroll + 10,
                    KeyCode::Home => 0,
                    KeyCode::End => len,
                    _ => {
                        self.mode = Mode::Normal;
                        self.popup_scroll = 0;
                        return;
                    }
                };
                self.popup_scroll = scroll.min(len);
            }
            Mode::Prompt { kind, input } => match key.code {
                KeyCode::Esc => self.mode = Mode::Normal,
                KeyCode::Enter => {
                    let kind = *kind;
                    let line = std::mem::take(input);
                    self.mode = Mode::Normal;
                    match kind {
                        PromptKind::Command => self.command(&line, ctl),
                        PromptKind::Goto => self.command(&format!("goto {line}"), ctl),
                        PromptKind::Watch => self.command(&format!("watch {line}"), ctl),
                        PromptKind::Bookmark => self.command(&format!("goto {line}"), ctl),
                    }
                }
                KeyCode::Backspace if input.pop().is_none() => self.mode = Mode::Normal,
                KeyCode::Char(c) => input.push(c),
                _ => {}
            },
            Mode::Normal => {
                if let Some(a) = self.keymap.action(&key) {
                    self.act(a, ctl);
                } else if key.code == KeyCode::Enter && self.focus == Pane::Events {
                    // Goto the event under the events cursor.
                    if let Some(n) = self.selected_event() {
                        self.moved(&format!("goto event {n}"), |t, _| t.goto_event(n), ctl);
                    }
                }
            }
        }
    }

    /// Does what an action says.
    pub fn act(&mut self, action: Action, ctl: &mut MoveCtl<'_>) {
        match action {
            Action::Step => self.line_move(false, true, ctl),
            Action::ReverseStep => self.line_move(false, false, ctl),
            Action::Next => self.line_move(true, true, ctl),
            Action::ReverseNext => self.line_move(true, false, ctl),
            Action::Nexti => self.moved("nexti", |t, c| t.next(c.cancel), ctl),
            Action::ReverseNexti => self.moved(
                "reverse-nexti",
                |t, c| t.reverse_next(c.cancel, c.progress),
                ctl,
            ),
            Action::Stepi => self.moved("stepi", |t, _| t.stepi(), ctl),
            Action::ReverseStepi => self.moved("reverse-stepi", |t, _| t.reverse_stepi(), ctl),
            Action::Continue => self.moved("continue", |t, c| t.continue_forward(c.cancel), ctl),
            Action::ReverseContinue => self.moved(
                "reverse-continue",
                |t, c| t.reverse_continue(c.cancel, c.progress),
                ctl,
            ),
            Action::Finish => self.moved("finish", |t, c| t.finish_frame(c.cancel), ctl),
            Action::ReverseFinish => self.moved(
                "reverse-finish",
                |t, c| t.reverse_finish_frame(c.cancel, c.progress),
                ctl,
            ),
            Action::Goto => self.prompt(PromptKind::Goto),
            Action::Watch => self.prompt(PromptKind::Watch),
            Action::GotoBookmark => self.prompt(PromptKind::Bookmark),
            Action::Command => self.prompt(PromptKind::Command),
            Action::Breakpoint => {
                let at = self.cursor.unwrap_or(self.rip());
                self.toggle_breakpoint(at);
            }
            Action::ExportGdb => self.export_gdb(),
            Action::KernelLog => self.show_kernel_log(),
            Action::Help => self.mode = Mode::Help,
            Action::Quit => self.quit = true,
            Action::FocusNext => self.cycle_focus(1),
            Action::FocusPrev => self.cycle_focus(PANES.len() - 1),
            Action::Grow => {
                let w = &mut self.weights[self.focus.index()];
                *w = (*w + 1).min(12);
            }
            Action::Shrink => {
                let w = &mut self.weights[self.focus.index()];
                *w = w.saturating_sub(1).max(1);
            }
            Action::CursorUp => self.move_cursor(-1),
            Action::CursorDown => self.move_cursor(1),
            Action::TogglePane(n) => {
                if let Some(h) = self.hidden.get_mut(n as usize - 1) {
                    *h = !*h;
                    if !self.is_visible(self.focus) {
                        self.cycle_focus(1);
                    }
                }
            }
        }
    }

    fn prompt(&mut self, kind: PromptKind) {
        self.mode = Mode::Prompt {
            kind,
            input: String::new(),
        };
    }

    fn cycle_focus(&mut self, by: usize) {
        let mut i = self.focus.index();
        for _ in 0..PANES.len() {
            i = (i + by) % PANES.len();
            if !self.hidden[i] {
                self.focus = PANES[i];
                return;
            }
        }
    }

    fn move_cursor(&mut self, by: i64) {
        match self.focus {
            Pane::Disassembly => {
                let lines = self.disassembly(64);
                if lines.is_empty() {
                    return;
                }
                let at = self.cursor.unwrap_or(self.rip());
                let i = lines.iter().position(|l| l.addr == at).unwrap_or(0) as i64;
                let j = (i + by).clamp(0, lines.len() as i64 - 1);
                if let Some(l) = lines.get(j as usize) {
                    self.cursor = Some(l.addr);
                }
            }
            Pane::Events => self.event_scroll += by,
            Pane::Registers => {
                let rows = crate::draw::register_lines(self).len();
                self.reg_scroll = self
                    .reg_scroll
                    .saturating_add_signed(by as isize)
                    .min(rows.saturating_sub(1));
            }
            Pane::Memory => {
                let base = self.memory_address().unwrap_or(0);
                self.mem_at = MemAt::Addr(base.wrapping_add_signed(by * 16));
            }
            _ => {}
        }
    }

    fn toggle_breakpoint(&mut self, at: u64) {
        if self.timeline.remove_breakpoint(at) {
            self.message = format!("breakpoint at {} deleted", self.symbols().describe(at));
        } else {
            self.timeline.add_breakpoint(at);
            self.message = format!("breakpoint at {}", self.symbols().describe(at));
        }
    }

    /// Runs a timeline move and reports where it ended.
    fn moved(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Timeline, &mut MoveCtl<'_>) -> Moved,
        ctl: &mut MoveCtl<'_>,
    ) {
        self.prev_regs = self.regs().clone();
        let m = f(&mut self.timeline, ctl);
        self.after_move(what, m);
    }

    fn after_move(&mut self, what: &str, m: Moved) {
        self.cursor = None;
        self.frame = 0;
        self.event_scroll = 0;
        self.message = match m {
            // Arriving at icount 0 is arriving at the start: say so.
            Moved::Arrived if self.timeline.icount() == 0 => {
                format!("{what}: at the start of the recording")
            }
            Moved::Arrived => what.to_string(),
            Moved::Breakpoint(a) => format!("{what}: breakpoint at {}", self.symbols().describe(a)),
            Moved::Watchpoint(w) => {
                let forward = !what.starts_with("reverse");
                let write = self.timeline.watch_write(w, forward);
                format!(
                    "{what}: watchpoint {}",
                    self.write_text(&write, if forward { "" } else { "next: " })
                )
            }
            Moved::Start => format!("{what}: at the start of the recording"),
            Moved::End(End::PowerOff) => {
                format!("{what}: at the end of the recording (guest powered off)")
            }
            Moved::End(End::EndOfRecording) => format!("{what}: at the end of the recording"),
            Moved::Interrupted => format!("{what}: interrupted"),
            Moved::Diverged(d) => format!(
                "{what}: replay diverged at event #{} icount {}: expected {}, got {}",
                d.event, d.icount, d.expected, d.actual
            ),
        };
    }

    /// `ticks (8 bytes): 41 -> 42 by sched_timer_tick+0x19` (`prefix` before `by`), or
    /// `... by event #12 dma_write`.
    fn write_text(&self, write: &WatchWrite, prefix: &str) -> String {
        let w = write.watch;
        let name = self
            .symbols()
            .describe_symbol(w.addr)
            .unwrap_or_else(|| format!("{:#x}", w.addr));
        let value = |b: &Option<Vec<u8>>| match b {
            None => "(unmapped)".to_string(),
            Some(bytes) => match WatchWrite::value(bytes) {
                Some(v) if v < 0x10000 => v.to_string(),
                Some(v) => format!("{v:#0width$x}", width = 2 + 2 * bytes.len()),
                None => {
                    let hex: Vec<String> =
                        bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
                    let more = if bytes.len() > 8 { " …" } else { "" };
                    format!("{}{more}", hex.join(" "))
                }
            },
        };
        let by = match &write.by {
            Writer::Instruction { rip, .. } => self.symbols().describe(*rip),
            Writer::Event { n, kind } => format!("event #{n} {}", kind.name()),
        };
        format!(
            "{name} ({} bytes): {} -> {}, {prefix}by {by}",
            w.len,
            value(&write.old),
            value(&write.new)
        )
    }

    /// Source-line moves: `step` (into calls) and `next` (over calls), forward or back,
    /// taken as gdb takes them ([`Timeline::line_step`]). Without line information they
    /// move by one instruction.
    fn line_move(&mut self, over_calls: bool, forward: bool, ctl: &mut MoveCtl<'_>) {
        let what = match (over_calls, forward) {
            (false, true) => "step",
            (false, false) => "reverse-step",
            (true, true) => "next",
            (true, false) => "reverse-next",
        };
        let how = if over_calls {
            LineStep::Next
        } else {
            LineStep::Step
        };
        let lines = self.symbols().has_lines();
        self.moved(
            what,
            |t, c| t.line_step(how, forward, c.cancel, c.progress),
            ctl,
        );
        if !lines {
            self.message
                .push_str(" (no line information: by instruction)");
        }
    }

    // ----- commands -----

    /// Runs a command line (without the leading `:`).
    pub fn command(&mut self, line: &str, ctl: &mut MoveCtl<'_>) {
        if let Some((radix, expr)) = print_command(line) {
            self.cmd_print(expr, radix);
            return;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&cmd, args)) = words.split_first() else {
            return;
        };
        let simple = match cmd {
            "si" | "stepi" => Some(Action::Stepi),
            "rsi" | "reverse-stepi" => Some(Action::ReverseStepi),
            "s" | "step" => Some(Action::Step),
            "rs" | "reverse-step" => Some(Action::ReverseStep),
            "n" | "next" => Some(Action::Next),
            "ni" | "nexti" => Some(Action::Nexti),
            "rni" | "reverse-nexti" => Some(Action::ReverseNexti),
            "rn" | "reverse-next" => Some(Action::ReverseNext),
            "c" | "continue" => Some(Action::Continue),
            "rc" | "reverse-continue" => Some(Action::ReverseContinue),
            "fin" | "finish" => Some(Action::Finish),
            "rfin" | "reverse-finish" => Some(Action::ReverseFinish),
            "help" | "h" => Some(Action::Help),
            "q" | "quit" => Some(Action::Quit),
            _ => None,
        };
        if let Some(a) = simple {
            self.act(a, ctl);
            return;
        }
        let result = match cmd {
            "b" | "break" => self.cmd_break(args),
            "d" | "delete" => self.cmd_delete(args),
            "watch" => self.cmd_watch(args),
            "unwatch" => self.cmd_unwatch(args),
            "g" | "goto" => self.cmd_goto(args, ctl),
            "x" => self.cmd_x(args),
            "mark" => self.cmd_mark(args),
            "marks" => {
                self.mode = Mode::Output(self.bookmark_lines());
                Ok(())
            }
            "last" => self.cmd_last(args, ctl),
            "frame" | "f" => self.cmd_frame(args.first().copied(), None),
            "up" => self.cmd_frame(args.first().copied(), Some(true)),
            "down" => self.cmd_frame(args.first().copied(), Some(false)),
            "dmesg" => {
                self.show_kernel_log();
                Ok(())
            }
            "bt" | "backtrace" | "where" => {
                self.mode = Mode::Output(self.backtrace_lines(crate::draw::MAX_BACKTRACE));
                Ok(())
            }
            "info" | "i" => self.cmd_info(args),
            other => Err(format!("unknown command {other:?} (? lists the commands)")),
        };
        if let Err(e) = result {
            self.message = e;
        }
    }

    fn cmd_break(&mut self, args: &[&str]) -> Result<(), String> {
        let Some(spec) = args.first() else {
            let at = self.cursor.unwrap_or(self.rip());
            self.timeline.add_breakpoint(at);
            self.message = format!("breakpoint at {}", self.symbols().describe(at));
            return Ok(());
        };
        let (what, at) = self.breakpoint_locations(spec)?;
        for &a in &at {
            self.timeline.add_breakpoint(a);
        }
        self.message = format!("breakpoint at {what}{}", self.locations_text(&what, &at));
        Ok(())
    }

    /// ` (disk_read+0x10)` (nothing where that is `what`), or ` (2 locations: a, b)`.
    fn locations_text(&self, what: &str, at: &[u64]) -> String {
        let names: Vec<String> = at.iter().map(|&a| self.symbols().describe(a)).collect();
        match names.as_slice() {
            [one] if one == what => String::new(),
            [one] => format!(" ({one})"),
            _ => format!(" ({} locations: {})", at.len(), names.join(", ")),
        }
    }

    /// The addresses a breakpoint specification names, as gdb places them, and how to
    /// name them: `FILE:LINE` (the line's first address in each function or inlined
    /// call it has code in; the next line with code where it has none), a function
    /// (its symbol and every inlined call of it), or an address.
    fn breakpoint_locations(&self, spec: &str) -> Result<(String, Vec<u64>), String> {
        if let Some((file, line)) = spec.rsplit_once(':')
            && let Ok(line) = line.parse::<u32>()
        {
            if !self.symbols().has_lines() {
                return Err(format!("no breakpoint at {spec}: no line information"));
            }
            return match self.symbols().line_addresses(file, line) {
                Some((l, at)) if !at.is_empty() => Ok((format!("{file}:{l}"), at)),
                _ => Err(format!("no line {line} in a file {file:?} with code")),
            };
        }
        if register_index(spec).is_none() && parse_number(spec).is_none() && !spec.contains('+') {
            let at = self.symbols().function_addresses(spec);
            if !at.is_empty() {
                return Ok((spec.to_string(), at));
            }
        }
        let at = self.parse_address(spec)?;
        self.check_code_address(spec, at)?;
        Ok((self.symbols().describe(at), vec![at]))
    }

    fn cmd_delete(&mut self, args: &[&str]) -> Result<(), String> {
        match args.first() {
            None => {
                let all: Vec<u64> = self.timeline.breakpoints().iter().copied().collect();
                for a in &all {
                    self.timeline.remove_breakpoint(*a);
                }
                self.message = format!("{} breakpoints deleted", all.len());
            }
            Some(spec) => {
                let at = match self.breakpoint_locations(spec) {
                    Ok((_, at)) => at,
                    Err(_) => vec![self.parse_address(spec)?],
                };
                let removed = at
                    .iter()
                    .filter(|&&a| self.timeline.remove_breakpoint(a))
                    .count();
                if removed == 0 {
                    return Err(format!("no breakpoint at {spec}"));
                }
                self.message = format!("breakpoint at {spec} deleted");
            }
        }
        Ok(())
    }

    fn cmd_watch(&mut self, args: &[&str]) -> Result<(), String> {
        let addr = self.parse_address(args.first().ok_or("watch ADDR [LEN]")?)?;
        // Without a length, a variable's own size (its symbol's), else 8 bytes.
        let len = match args.get(1) {
            Some(l) => parse_number(l).ok_or_else(|| format!("{l:?} is not a length"))?,
            None => args
                .first()
                .and_then(|name| self.symbols().data_symbol(name))
                .map_or(8, |d| d.size.clamp(1, MAX_WATCH_LEN)),
        };
        if !(1..=MAX_WATCH_LEN).contains(&len) {
            return Err(format!(
                "cannot watch {len} bytes: from 1 to {MAX_WATCH_LEN} at a time"
            ));
        }
        // Every byte watched must be mapped here (a write elsewhere cannot be seen).
        let mut probe = vec![0u8; len as usize];
        if self.timeline.read_available(addr, &mut probe) < probe.len() {
            return Err(format!(
                "cannot watch {addr:#x} ({len} bytes): not mapped at this position"
            ));
        }
        let w = self.timeline.add_watchpoint(addr, len);
        self.message = format!(
            "watchpoint {:#x} ({} bytes): continue and reverse-continue stop where it is written",
            w.addr, w.len
        );
        Ok(())
    }

    fn cmd_unwatch(&mut self, args: &[&str]) -> Result<(), String> {
        let addr = self.parse_address(args.first().ok_or("unwatch ADDR")?)?;
        if !self.timeline.remove_watchpoint(addr) {
            return Err(format!("no watchpoint at {addr:#x}"));
        }
        self.message = format!("watchpoint {addr:#x} deleted");
        Ok(())
    }

    fn cmd_mark(&mut self, args: &[&str]) -> Result<(), String> {
        let [name] = args else {
            return Err("mark NAME".into());
        };
        if parse_number(name).is_some() || matches!(*name, "event" | "e" | "icount" | "i") {
            return Err(format!(
                "{name:?} cannot name a bookmark (goto takes it otherwise)"
            ));
        }
        let p = self.timeline.set_bookmark(name);
        self.message = format!("bookmark {name}: icount {}", p.icount);
        Ok(())
    }

    /// `NAME  #event  icount  function` for each bookmark.
    pub fn bookmark_lines(&self) -> Vec<String> {
        let v: Vec<String> = self
            .timeline
            .bookmarks()
            .iter()
            .map(|(name, p)| {
                let ev = p.event.map_or("#-".to_string(), |n| format!("#{n}"));
                format!(
                    "{name:<16} {ev:<8} icount {:<12} {}",
                    p.icount,
                    self.symbols().describe(p.rip)
                )
            })
            .collect();
        if v.is_empty() {
            vec!["no bookmarks (:mark NAME sets one)".into()]
        } else {
            v
        }
    }

    /// UDB's `last`: back to where the bytes last changed, and by what.
    fn cmd_last(&mut self, args: &[&str], ctl: &mut MoveCtl<'_>) -> Result<(), String> {
        let target = args.first().ok_or("last ADDR [LEN]")?;
        let addr = self.parse_address(target)?;
        let len = match args.get(1) {
            Some(l) => parse_number(l).ok_or_else(|| format!("{l:?} is not a length"))?,
            None => self
                .symbols()
                .data_symbol(target)
                .map_or(8, |d| d.size.clamp(1, MAX_WATCH_LEN)),
        };
        if !(1..=MAX_WATCH_LEN).contains(&len) {
            return Err(format!(
                "cannot look for {len} bytes: from 1 to {MAX_WATCH_LEN} at a time"
            ));
        }
        let mut probe = vec![0u8; len as usize];
        if self.timeline.read_available(addr, &mut probe) < probe.len() {
            return Err(format!(
                "cannot look for {addr:#x} ({len} bytes): not mapped or not recorded here"
            ));
        }
        self.prev_regs = self.regs().clone();
        let (moved, write) = self
            .timeline
            .last_write(addr, len, ctl.cancel, ctl.progress);
        match write {
            Some(w) => {
                self.cursor = None;
                self.event_scroll = 0;
                self.message = format!("last: {}", self.write_text(&w, "next: "));
            }
            None => {
                self.after_move("last", moved);
                if self.timeline.icount() == 0 {
                    self.message =
                        format!("last: {target} did not change since the start of the recording");
                }
            }
        }
        Ok(())
    }

    fn cmd_goto(&mut self, args: &[&str], ctl: &mut MoveCtl<'_>) -> Result<(), String> {
        let usage = "goto event N | goto icount K | goto BOOKMARK";
        if let [name] = args
            && parse_number(name).is_none()
        {
            let name = name.to_string();
            if !self.timeline.bookmarks().contains_key(&name) {
                return Err(format!("no bookmark {name:?} ({usage})"));
            }
            self.moved(
                &format!("goto {name}"),
                |t, _| t.goto_bookmark(&name).unwrap_or(Moved::Arrived),
                ctl,
            );
            return Ok(());
        }
        let (what, value) = match args {
            [n] => ("event", *n),
            ["event" | "e", n] => ("event", *n),
            ["icount" | "i", k] => ("icount", *k),
            _ => return Err(usage.into()),
        };
        let v =
            parse_number(value).ok_or_else(|| format!("{value:?} is not a number ({usage})"))?;
        let total = self.replay().event_count();
        if what == "event" {
            if v >= total {
                return Err(format!(
                    "event {v} does not exist: the recording has {total} events"
                ));
            }
            self.moved(&format!("goto event {v}"), |t, _| t.goto_event(v), ctl);
        } else {
            self.moved(&format!("goto icount {v}"), |t, _| t.goto_icount(v), ctl);
        }
        Ok(())
    }

    fn cmd_x(&mut self, args: &[&str]) -> Result<(), String> {
        let target = args.first().ok_or("x ADDR|$REG")?;
        self.mem_at = match register_index(target) {
            Some(r) => MemAt::Register(r),
            None => MemAt::Addr(self.parse_address(target)?),
        };
        if self.hidden[Pane::Memory.index()] {
            self.hidden[Pane::Memory.index()] = false;
        }
        let mut out = Vec::new();
        let rows = args
            .get(1)
            .and_then(|n| parse_number(n))
            .unwrap_or(4)
            .min(64);
        let base = self.memory_address().unwrap_or(0);
        for r in 0..rows {
            out.push(self.hex_row(base.wrapping_add(r * 16)));
        }
        self.message = format!("memory at {base:#x}");
        self.mode = Mode::Output(out);
        Ok(())
    }

    fn cmd_info(&mut self, args: &[&str]) -> Result<(), String> {
        let out = match args.first().copied() {
            Some("b" | "break" | "breakpoints" | "watchpoints") => {
                let mut v: Vec<String> = self
                    .timeline
                    .breakpoints()
                    .iter()
                    .map(|a| format!("breakpoint  {a:#018x}  {}", self.symbols().describe(*a)))
                    .collect();
                v.extend(
                    self.timeline
                        .watchpoints()
                        .iter()
                        .map(|w| format!("watchpoint  {:#018x}  {} bytes", w.addr, w.len)),
                );
                if v.is_empty() {
                    v.push("no breakpoints or watchpoints".into());
                }
                v
            }
            Some("checkpoints" | "c") => {
                let mut v: Vec<String> = self
                    .timeline
                    .checkpoints()
                    .iter()
                    .map(|c| {
                        format!(
                            "icount {:>12}  events {:>8}  {:>8} KiB",
                            c.icount,
                            c.events_consumed,
                            c.bytes / 1024
                        )
                    })
                    .collect();
                v.push(format!(
                    "{} KiB of {} MiB budget",
                    self.timeline.checkpoint_bytes() / 1024,
                    self.timeline.budget() >> 20
                ));
                v
            }
            Some("registers" | "r" | "reg") => crate::draw::register_lines(self)
                .into_iter()
                .map(|(l, _)| l)
                .collect(),
            Some("locals" | "args" | "arguments") => {
                let v = self
                    .timeline
                    .frame_variables(self.frame)
                    .ok_or("no frame information here (no DWARF for this code)")?;
                let list = if args[0] == "locals" {
                    v.locals
                } else {
                    v.arguments
                };
                if list.is_empty() {
                    vec![if args[0] == "locals" {
                        "No locals.".into()
                    } else {
                        "No arguments.".into()
                    }]
                } else {
                    list.iter()
                        .map(|v| format!("{} = {}", v.name, v.value))
                        .collect()
                }
            }
            _ => {
                return Err("info breakpoints | checkpoints | registers | locals | args".into());
            }
        };
        self.mode = Mode::Output(out);
        Ok(())
    }

    /// The kernel log at the position in the output view, its end shown first (the
    /// newest messages).
    fn show_kernel_log(&mut self) {
        match self.timeline.kernel_log() {
            Ok(lines) if lines.is_empty() => self.message = "the kernel log is empty".into(),
            Ok(lines) => {
                self.message = format!("kernel log: {} lines", lines.len());
                self.popup_scroll = lines.len().saturating_sub(1);
                self.mode = Mode::Output(lines);
            }
            Err(e) => self.message = e.to_string(),
        }
    }

    /// `:print EXPR` (`:p/x EXPR`): the value in the selected frame, as gdb prints it;
    /// a value too long for the status bar opens in the output view.
    fn cmd_print(&mut self, expr: &str, radix: Radix) {
        if expr.trim().is_empty() {
            self.message = "print EXPR (p/x EXPR for hexadecimal)".into();
            return;
        }
        match self.timeline.print_expression(expr, self.frame, radix) {
            Ok(v) => {
                let text = format!("{} = {v}", expr.trim());
                if text.len() > PRINT_IN_STATUS {
                    self.mode = Mode::Output(wrap(&text, PRINT_IN_STATUS));
                    self.popup_scroll = 0;
                }
                self.message = text;
            }
            Err(e) => self.message = format!("print {}: {e}", expr.trim()),
        }
    }

    /// `:frame [N]`, `:up [N]`, `:down [N]`: selects the frame the locals pane and
    /// `:print` read.
    fn cmd_frame(&mut self, arg: Option<&str>, up: Option<bool>) -> Result<(), String> {
        let n = match arg {
            Some(a) => a
                .parse::<usize>()
                .map_err(|_| format!("frame: not a number: {a}"))?,
            None if up.is_some() => 1,
            None => self.frame,
        };
        let frames = self.timeline.stack_frames(crate::draw::MAX_BACKTRACE);
        let target = match up {
            Some(true) => self.frame.saturating_add(n),
            Some(false) => self
                .frame
                .checked_sub(n)
                .ok_or("Bottom (innermost) frame selected; you cannot go down.")?,
            None => n,
        };
        let frame = frames
            .get(target)
            .ok_or_else(|| "Initial frame selected; you cannot go up.".to_string())?;
        self.frame = target;
        self.message = format!("#{:<3}{}", target, self.timeline.frame_text(frame));
        Ok(())
    }

    /// The backtrace as gdb prints it, the selected frame marked.
    pub fn backtrace_lines(&self, max: usize) -> Vec<String> {
        let frames = self.timeline.stack_frames(max);
        if frames.is_empty() {
            return vec!["No stack.".into()];
        }
        frames
            .iter()
            .map(|f| {
                let mark = if f.level == self.frame { ">" } else { " " };
                format!("{mark}#{:<3}{}", f.level, self.timeline.frame_text(f))
            })
            .collect()
    }

    /// Refuses a breakpoint address that cannot be code: one past the end of the
    /// symbol it was given by (`symbol+off`), or one in no function of the guest's
    /// symbols and not mapped at this position (code loaded later, such as a module's,
    /// is accepted by its symbol).
    fn check_code_address(&self, text: &str, at: u64) -> Result<(), String> {
        let name = text.split_once('+').map_or(text, |(n, _)| n);
        if self.symbols().data_symbol(name).is_some()
            && self.symbols().functions().iter().all(|f| f.name != name)
        {
            return Err(format!(
                "no breakpoint at {text}: {name} is a variable (w {name} watches it)"
            ));
        }
        if let Some((name, _)) = text.split_once('+')
            && register_index(name).is_none()
            && let Some(f) = self.symbols().functions().iter().find(|f| f.name == name)
            && at.wrapping_sub(f.addr) >= f.size
        {
            return Err(format!(
                "no breakpoint at {text}: {name} is {:#x} bytes long",
                f.size
            ));
        }
        if self.timeline.instruction_at(at).is_none() && self.symbols().lookup(at).is_none() {
            return Err(format!(
                "no breakpoint at {text} ({at:#x}): in no function, and no code mapped there \
                 at this position"
            ));
        }
        Ok(())
    }

    /// `0x...`, decimal, `$reg`, `symbol` or `symbol+off`.
    pub fn parse_address(&self, s: &str) -> Result<u64, String> {
        if let Some(r) = register_index(s) {
            return Ok(register_value(self.regs(), r));
        }
        if let Some(v) = parse_number(s) {
            return Ok(v);
        }
        let (name, off) = match s.split_once('+') {
            Some((n, o)) => (
                n,
                parse_number(o).ok_or_else(|| format!("bad offset in {s:?}"))?,
            ),
            None => (s, 0),
        };
        self.symbols()
            .address_of(name)
            .map(|a| a.wrapping_add(off))
            .ok_or_else(|| format!("no symbol {name:?}"))
    }

    // ----- views -----

    pub fn memory_address(&self) -> Option<u64> {
        match self.mem_at {
            MemAt::Addr(a) => Some(a),
            MemAt::Register(r) => Some(register_value(self.regs(), r)),
        }
    }

    /// `address  16 hex bytes  ascii`, with `??` where unmapped.
    pub fn hex_row(&self, addr: u64) -> String {
        let mut hex = String::new();
        let mut ascii = String::new();
        for i in 0..16u64 {
            let mut b = [0u8; 1];
            if self
                .timeline
                .read_memory(addr.wrapping_add(i), &mut b)
                .is_ok()
            {
                hex.push_str(&format!("{:02x} ", b[0]));
                ascii.push(if b[0].is_ascii_graphic() {
                    b[0] as char
                } else {
                    '.'
                });
            } else {
                hex.push_str("?? ");
                ascii.push(' ');
            }
            if i == 7 {
                hex.push(' ');
            }
        }
        format!("{addr:016x}  {hex} {ascii}")
    }

    /// Instructions around RIP (decoded from the start of its function when it is
    /// near, so the lines before RIP are real instruction boundaries).
    pub fn disassembly(&self, rows: usize) -> Vec<DisasmLine> {
        let rip = self.rip();
        let symbols = self.symbols();
        let start = match symbols.lookup(rip) {
            // From RIP's own address space: early Linux code runs at the physical
            // addresses of a function linked at a virtual one.
            Some(l) if l.offset <= 4096 => rip - l.offset,
            _ => rip,
        };
        let want_after = rows * 15 + 15;
        let len = (rip - start) as usize + want_after;
        let mut all = Vec::new();
        for ins in self.timeline.instructions(start, len) {
            let mut text = format_instruction(&ins);
            if let Some(name) = operand_address(&ins).and_then(|a| symbols.describe_symbol(a)) {
                text.push_str(&format!("  <{name}>"));
            }
            let label = symbols
                .lookup(ins.ip())
                .filter(|l| l.offset == 0)
                .map(|l| l.function.name.clone());
            all.push(DisasmLine {
                addr: ins.ip(),
                label,
                text,
            });
            if all.len() > rows && all.iter().rev().nth(rows / 2).is_some_and(|l| l.addr > rip) {
                break;
            }
        }
        let at = all.iter().position(|l| l.addr >= rip).unwrap_or(0);
        let first = at.saturating_sub(rows / 3);
        all.into_iter().skip(first).take(rows).collect()
    }

    pub fn source(&self) -> SourceView {
        if !self.symbols().has_lines() {
            return SourceView::NoLines;
        }
        let Some(line) = self.timeline.source_line() else {
            return SourceView::NoLine;
        };
        let text = self.source_text(&line.file);
        match text {
            Some(lines) => SourceView::Text {
                file: line.file,
                line: line.line,
                lines,
            },
            None => SourceView::Missing {
                file: line.file,
                line: line.line,
            },
        }
    }

    fn source_text(&self, file: &Path) -> Option<Rc<Vec<String>>> {
        if let Some(t) = self.sources.borrow().get(file) {
            return t.clone();
        }
        // A relative DWARF path (a build that maps its directories away, as our Linux
        // guest's) is relative to where the image is.
        let beside_image = self
            .image_dir
            .as_ref()
            .filter(|_| file.is_relative())
            .map(|d| d.join(file));
        let candidates = self
            .source_dirs
            .iter()
            .filter_map(|d| file.file_name().map(|n| d.join(n)))
            .chain(beside_image)
            .chain(std::iter::once(file.to_path_buf()));
        let text = candidates
            .into_iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|t| Rc::new(t.lines().map(|l| l.replace('\t', "    ")).collect()));
        self.sources
            .borrow_mut()
            .insert(file.to_path_buf(), text.clone());
        text
    }

    /// Event counts per column over the whole recording, each event where it was
    /// applied (or its recorded bound, for those not replayed yet).
    pub fn density(&self, columns: usize) -> Vec<u32> {
        let known = self.replay().events_applied_known();
        if let Some((c, k, d)) = &*self.density.borrow()
            && (*c, *k) == (columns, known)
        {
            return d.clone();
        }
        let d = self
            .replay()
            .event_density(columns.max(1), self.total_position());
        *self.density.borrow_mut() = Some((columns, known, d.clone()));
        d
    }

    /// An event's position for display: where it was applied; for an event whose
    /// recorded position is only an upper bound, that bound too (`≤N` alone where it
    /// has not been replayed yet).
    pub fn event_position_text(&self, n: u64) -> (String, Option<u64>) {
        let r = self.replay();
        let Some(e) = r.event(n) else {
            return (String::new(), None);
        };
        match r.event_position(n) {
            Some((p, true)) => (format!("≤{p}"), None),
            Some((p, false)) => (p.to_string(), e.position_is_bound().then_some(e.icount())),
            None => (String::new(), None),
        }
    }

    /// Serves the replay at the current position to gdb; the UI then follows gdb.
    fn export_gdb(&mut self) {
        if self.following.is_some() {
            self.message = "gdb: already exported (the UI follows it)".into();
            return;
        }
        let Some(export) = self.exporter.as_mut() else {
            self.message = "gdb export is not available here".into();
            return;
        };
        match export(self.timeline.replay()) {
            Ok((addr, positions)) => {
                self.following = Some(positions);
                self.message = format!("gdb: target remote {addr}  (the UI follows gdb's moves)");
            }
            Err(e) => self.message = format!("gdb export failed: {e}"),
        }
    }

    /// Moves to the latest position gdb reported, if any. True if the view changed.
    pub fn follow(&mut self) -> bool {
        let Some(rx) = &self.following else {
            return false;
        };
        let mut latest = None;
        let mut ended = false;
        loop {
            match rx.try_recv() {
                Ok(p) => latest = Some(p),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    ended = true;
                    break;
                }
            }
        }
        if let Some((icount, consumed)) = latest {
            self.prev_regs = self.regs().clone();
            self.timeline.goto_icount(icount);
            self.frame = 0;
            if self.timeline.replay().events_consumed() < consumed {
                self.timeline.goto_event(consumed - 1);
            }
            self.message = format!("gdb moved to icount {icount}");
        }
        if ended {
            self.following = None;
            self.message = if latest.is_some() {
                format!("{}; gdb session ended", self.message)
            } else {
                "gdb session ended".into()
            };
        }
        latest.is_some() || ended
    }

    /// Frames: RIP, then return addresses, and how they were found.
    pub fn backtrace(&self, max: usize) -> (Vec<u64>, &'static str) {
        self.timeline.backtrace(max)
    }
}

/// The address an instruction names outright: its branch target, or the address of a
/// memory operand without base or index registers (absolute or RIP-relative).
fn operand_address(ins: &iced_x86::Instruction) -> Option<u64> {
    use iced_x86::{OpKind, Register};
    let target = ins.near_branch_target();
    if target != 0 {
        return Some(target);
    }
    let memory = (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory);
    (memory
        && matches!(ins.memory_base(), Register::None | Register::RIP)
        && ins.memory_index() == Register::None)
        .then(|| ins.memory_displacement64())
}

/// Longest `:print` result shown in the status bar alone.
const PRINT_IN_STATUS: usize = 100;

/// `p EXPR`, `print EXPR`, `p/x EXPR`, `print/x EXPR`: the radix and the expression.
fn print_command(line: &str) -> Option<(Radix, &str)> {
    let line = line.trim_start();
    let (word, rest) = line.split_at(line.find(|c: char| c.is_whitespace()).unwrap_or(line.len()));
    let (name, format) = word.split_once('/').unwrap_or((word, ""));
    if name != "p" && name != "print" {
        return None;
    }
    let radix = match format {
        "" => Radix::Natural,
        "x" => Radix::Hex,
        _ => return None,
    };
    Some((radix, rest.trim()))
}

/// `text` cut into lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(width.max(1))
        .map(|c| c.iter().collect())
        .collect()
}

fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(&h.replace('_', ""), 16).ok(),
        None => s.replace('_', "").parse().ok(),
    }
}

/// `$rax`..`$r15`, `$rip` (index 16).
fn register_index(s: &str) -> Option<usize> {
    let name = s.strip_prefix('$')?;
    if name == "rip" {
        return Some(16);
    }
    gpr::NAMES.iter().position(|n| *n == name)
}

fn register_value(regs: &CpuState, r: usize) -> u64 {
    if r == 16 { regs.rip } else { regs.gpr[r] }
}
