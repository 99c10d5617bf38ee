//! Drawing: every pane is a function of the [`App`] state.

use crate::app::{App, Mode, PANES, Pane, SourceView};
use crate::keymap::Action;
use krr_engine::state::gpr;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Gauge, Paragraph};

const LEFT: [Pane; 3] = [Pane::Disassembly, Pane::Source, Pane::Console];
/// The console pane's view of the output: its last bytes (a screen's worth of lines,
/// however chatty the guest).
const CONSOLE_VIEW_BYTES: usize = 64 << 10;
const RIGHT: [Pane; 5] = [
    Pane::Registers,
    Pane::Backtrace,
    Pane::Locals,
    Pane::Memory,
    Pane::Checkpoints,
];

/// Most frames the backtrace lists.
pub const MAX_BACKTRACE: usize = 64;

/// The registers pane's least height: rip, rflags, cs and cr3, and its borders.
const REGISTERS_MIN_HEIGHT: u16 = 6;

/// Draws the whole screen.
pub fn draw(f: &mut Frame<'_>, app: &App) {
    let [main, status, prompt] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let events = app.is_visible(Pane::Events);
    let top_visible = PANES
        .iter()
        .any(|p| *p != Pane::Events && app.is_visible(*p));
    let (top, bottom) = match (top_visible, events) {
        (true, true) => {
            let [t, b] = Layout::vertical([
                Constraint::Fill(10),
                Constraint::Fill(app.weights[Pane::Events.index()]),
            ])
            .areas(main);
            (Some(t), Some(b))
        }
        (true, false) => (Some(main), None),
        (false, true) => (None, Some(main)),
        (false, false) => (None, None),
    };
    if let Some(b) = bottom {
        render_pane(f, app, Pane::Events, b);
    }
    if let Some(top) = top {
        let cols: Vec<&[Pane]> = [&LEFT[..], &RIGHT[..]]
            .into_iter()
            .filter(|c| c.iter().any(|p| app.is_visible(*p)))
            .collect();
        let widths: Vec<Constraint> = cols
            .iter()
            .map(|c| Constraint::Fill(if c.len() == LEFT.len() { 3 } else { 2 }))
            .collect();
        let areas = Layout::horizontal(widths).split(top);
        for (col, area) in cols.iter().zip(areas.iter()) {
            let visible: Vec<Pane> = col.iter().copied().filter(|p| app.is_visible(*p)).collect();
            let mut heights: Vec<Constraint> = visible
                .iter()
                .map(|p| Constraint::Fill(app.weights[p.index()]))
                .collect();
            let mut rows = Layout::vertical(heights.clone()).split(*area);
            // The registers pane keeps room for the registers that say where the kernel
            // is (rip, rflags, cs, cr3: its first rows), however small the screen.
            if let Some(i) = visible.iter().position(|p| *p == Pane::Registers)
                && rows[i].height < REGISTERS_MIN_HEIGHT
            {
                heights[i] = Constraint::Length(REGISTERS_MIN_HEIGHT.min(area.height));
                rows = Layout::vertical(heights).split(*area);
            }
            for (p, r) in visible.iter().zip(rows.iter()) {
                render_pane(f, app, *p, *r);
            }
        }
    }
    render_status(f, app, status);
    render_prompt(f, app, prompt);
    match &app.mode {
        Mode::Help => render_help(f, app),
        Mode::Output(lines) => render_popup(f, "output (any key closes)", lines, app.popup_scroll),
        _ => {}
    }
}

fn block(app: &App, pane: Pane) -> Block<'static> {
    let n = pane.index() + 1;
    let style = if app.focus == pane {
        Style::default().fg(Color::Yellow)
    } else {
        Style::default()
    };
    Block::default()
        .borders(Borders::ALL)
        .border_style(style)
        .title(format!(" {n} {} ", pane.title()))
}

/// Draws one pane into `area`.
pub fn render_pane(f: &mut Frame<'_>, app: &App, pane: Pane, area: Rect) {
    let b = block(app, pane);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let h = inner.height as usize;
    let lines: Vec<Line<'static>> = match pane {
        Pane::Registers => register_grid(app, inner.width as usize, h),
        Pane::Disassembly => disassembly_lines(app, h),
        Pane::Source => source_lines(app, h),
        Pane::Events => event_lines(app, inner.width as usize, h),
        Pane::Checkpoints => checkpoint_lines(app, h),
        Pane::Console => {
            // The end of the console is what the pane shows: no need to convert it all.
            let text = String::from_utf8_lossy(&app.replay().console().last(CONSOLE_VIEW_BYTES))
                .into_owned();
            let all: Vec<&str> = text.lines().collect();
            let skip = all.len().saturating_sub(h);
            all[skip..]
                .iter()
                .map(|l| Line::raw(l.to_string()))
                .collect()
        }
        Pane::Memory => {
            let base = app.memory_address().unwrap_or(0) & !0xf;
            let mut v = vec![Line::styled(
                match app.mem_at {
                    crate::app::MemAt::Register(r) => {
                        format!("at ${}", if r == 16 { "rip" } else { gpr::NAMES[r] })
                    }
                    crate::app::MemAt::Addr(a) => format!("at {a:#x}"),
                },
                Style::default().add_modifier(Modifier::DIM),
            )];
            v.extend(
                (0..h.saturating_sub(1) as u64).map(|r| Line::raw(app.hex_row(base + r * 16))),
            );
            v
        }
        Pane::Backtrace => backtrace_pane(app, h),
        Pane::Locals => locals_pane(app),
    };
    f.render_widget(Paragraph::new(lines), inner);
}

/// Register lines and whether each changed in the last move, most telling first: where
/// the kernel is (rip, rflags, cs and the privilege level, the address space in cr3,
/// the stack), then the general registers, then the other control registers.
pub fn register_lines(app: &App) -> Vec<(String, bool)> {
    let now = app.regs();
    let before = &app.prev_regs;
    let mut v: Vec<(String, bool)> = vec![
        (
            format!("{:<6} {:#018x}", "rip", now.rip),
            now.rip != before.rip,
        ),
        (
            format!("{:<6} {:#018x} {}", "rflags", now.rflags, flags(now.rflags)),
            now.rflags != before.rflags,
        ),
        (
            format!(
                "{:<6} {:#06x}  cpl {}",
                "cs",
                now.seg[1].selector,
                now.cpl()
            ),
            now.seg[1].selector != before.seg[1].selector,
        ),
        (
            format!("{:<6} {:#018x}", "cr3", now.cr3),
            now.cr3 != before.cr3,
        ),
    ];
    let order = [
        gpr::RSP,
        gpr::RAX,
        gpr::RBX,
        gpr::RCX,
        gpr::RDX,
        gpr::RSI,
        gpr::RDI,
        gpr::RBP,
        8,
        9,
        10,
        11,
        12,
        13,
        14,
        15,
    ];
    v.extend(order.iter().map(|&i| {
        (
            format!("{:<6} {:#018x}", gpr::NAMES[i], now.gpr[i]),
            now.gpr[i] != before.gpr[i],
        )
    }));
    for (name, a, b) in [
        ("cr0", now.cr0, before.cr0),
        ("cr2", now.cr2, before.cr2),
        ("cr4", now.cr4, before.cr4),
    ] {
        v.push((format!("{name:<6} {a:#018x}"), a != b));
    }
    v
}

/// The registers pane: [`register_lines`] in as many columns as the width holds, row
/// by row, from the row the pane is scrolled to (the cursor keys scroll it).
fn register_grid(app: &App, w: usize, h: usize) -> Vec<Line<'static>> {
    let regs = register_lines(app);
    let cell = regs
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(1)
        + 2;
    // The last column needs no space after it.
    let columns = ((w + 2) / cell).max(1);
    let rows = regs.len().div_ceil(columns);
    let first = app.reg_scroll.min(rows.saturating_sub(h.max(1)));
    regs.chunks(columns)
        .skip(first)
        .take(h)
        .map(|row| {
            let spans: Vec<Span<'static>> = row
                .iter()
                .map(|(l, changed)| {
                    let text = format!("{l:<cell$}");
                    if *changed {
                        Span::styled(
                            text,
                            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
                        )
                    } else {
                        Span::raw(text)
                    }
                })
                .collect();
            Line::from(spans)
        })
        .collect()
}

fn flags(rf: u64) -> String {
    [
        (0, 'C'),
        (2, 'P'),
        (6, 'Z'),
        (7, 'S'),
        (9, 'I'),
        (10, 'D'),
        (11, 'O'),
    ]
    .iter()
    .filter(|(b, _)| rf & (1 << b) != 0)
    .map(|(_, c)| *c)
    .collect()
}

fn disassembly_lines(app: &App, h: usize) -> Vec<Line<'static>> {
    let rip = app.rip();
    let cursor = app.cursor.unwrap_or(rip);
    let mut out = Vec::new();
    for l in app.disassembly(h) {
        if let Some(name) = &l.label {
            out.push(Line::styled(
                format!("{name}:"),
                Style::default().fg(Color::Cyan),
            ));
        }
        let bp = if app.timeline.breakpoints().contains(&l.addr) {
            "●"
        } else {
            " "
        };
        let here = if l.addr == rip { "→" } else { " " };
        let mut style = Style::default();
        if l.addr == rip {
            style = style.fg(Color::Green).add_modifier(Modifier::BOLD);
        }
        if l.addr == cursor && app.cursor.is_some() {
            style = style.add_modifier(Modifier::REVERSED);
        }
        out.push(Line::from(vec![
            Span::styled(bp.to_string(), Style::default().fg(Color::Red)),
            Span::styled(format!("{here} {:016x}  {}", l.addr, l.text), style),
        ]));
        if out.len() >= h {
            break;
        }
    }
    // Keep the current line in view when labels pushed it down.
    out.truncate(h);
    out
}

fn source_lines(app: &App, h: usize) -> Vec<Line<'static>> {
    match app.source() {
        SourceView::NoLines => vec![Line::raw("the kernel image has no line information")],
        SourceView::NoLine => vec![Line::raw(format!(
            "no source line for {}",
            app.symbols().describe(app.rip())
        ))],
        SourceView::Missing { file, line } => vec![
            Line::raw(format!("{}:{line}", file.display())),
            Line::raw("(the source file is not on this machine)"),
        ],
        SourceView::Text { file, line, lines } => {
            let mut v = vec![Line::styled(
                format!("{}:{line}", file.display()),
                Style::default().add_modifier(Modifier::DIM),
            )];
            let rows = h.saturating_sub(1);
            let cur = line as usize;
            let first = cur.saturating_sub(rows / 2).max(1);
            for n in first..first + rows {
                let Some(text) = lines.get(n - 1) else { break };
                let s = format!("{}{n:>5} {text}", if n == cur { "→" } else { " " });
                v.push(if n == cur {
                    Line::styled(
                        s,
                        Style::default()
                            .fg(Color::Green)
                            .add_modifier(Modifier::BOLD),
                    )
                } else {
                    Line::raw(s)
                });
            }
            v
        }
    }
}

const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

fn event_lines(app: &App, w: usize, h: usize) -> Vec<Line<'static>> {
    let mut out = Vec::new();
    if w == 0 || h == 0 {
        return out;
    }
    // The density strip: events per column over the whole recording.
    let d = app.density(w.max(1));
    let max = d.iter().copied().max().unwrap_or(0).max(1);
    let here = ((app.timeline.position().on_event_axis() as u128 * w as u128)
        / (app.total_position() as u128 + 1)) as usize;
    let spans: Vec<Span<'static>> = d
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let level = if n == 0 {
                0
            } else {
                1 + (n as usize * 7).div_ceil(max as usize).min(7)
            };
            if i == here.min(w - 1) {
                // The current position.
                Span::styled(
                    "◆",
                    Style::default()
                        .fg(Color::Yellow)
                        .add_modifier(Modifier::BOLD),
                )
            } else {
                Span::raw(BARS[level.min(8)].to_string())
            }
        })
        .collect();
    out.push(Line::from(spans));
    let consumed = app.replay().events_consumed() as i64;
    let rows = h.saturating_sub(1) as i64;
    let first = (consumed - 1 - rows / 2 + app.event_scroll).max(0);
    let last = (first + rows).min(app.replay().event_count() as i64);
    // Where the events listed took effect, as far as replay can learn it cheaply.
    app.timeline
        .learn_events_through(last.saturating_sub(1).max(0) as u64);
    for (n, e) in app.replay().events(first as u64..last.max(first) as u64) {
        let n = n as i64;
        let mark = if n == consumed - 1 {
            "→"
        } else if n < consumed {
            " "
        } else {
            "·"
        };
        let (at, bound) = app.event_position_text(n as u64);
        let bound = bound.map(|b| format!(" (bound {b})")).unwrap_or_default();
        // The task that entered the kernel, once replay has applied the entry.
        let task = app
            .timeline
            .entry_task(n as u64)
            .map(|p| format!("  [pid {} {}]", p.pid, p.name))
            .unwrap_or_default();
        let s = format!(
            "{mark}#{n:<7} {:<16} {at:>12}{bound}  {}{task}",
            e.kind().name(),
            app.timeline.event_text(&e)
        );
        let selected = app.event_scroll != 0 && app.selected_event() == Some(n as u64);
        out.push(if selected {
            Line::styled(s, Style::default().add_modifier(Modifier::REVERSED))
        } else if n == consumed - 1 {
            Line::styled(
                s,
                Style::default()
                    .fg(Color::Green)
                    .add_modifier(Modifier::BOLD),
            )
        } else if n >= consumed {
            Line::styled(s, Style::default().add_modifier(Modifier::DIM))
        } else {
            Line::raw(s)
        });
    }
    out
}

fn checkpoint_lines(app: &App, h: usize) -> Vec<Line<'static>> {
    let cps = app.timeline.checkpoints();
    let now = app.timeline.icount();
    let current = cps.iter().rposition(|c| c.icount <= now);
    let mut v = vec![Line::raw(format!(
        "{} checkpoints, {} KiB of {} MiB",
        cps.len(),
        app.timeline.checkpoint_bytes() / 1024,
        app.timeline.budget() >> 20
    ))];
    // Keep the checkpoint in use in view.
    let rows = h.saturating_sub(1).max(1);
    let first = current
        .unwrap_or(0)
        .saturating_sub(rows / 2)
        .min(cps.len().saturating_sub(rows));
    v.extend(cps.iter().enumerate().skip(first).take(rows).map(|(i, c)| {
        let s = format!(
            "{}icount {:>10}  #{:<6} {:>7} KiB",
            if Some(i) == current { "→" } else { " " },
            c.icount,
            c.events_consumed,
            c.bytes / 1024
        );
        Line::raw(s)
    }));
    v
}

fn render_status(f: &mut Frame<'_>, app: &App, area: Rect) {
    let s = format!(" {}  │ {}", app.position(), app.message);
    f.render_widget(
        Paragraph::new(s).style(Style::default().add_modifier(Modifier::REVERSED)),
        area,
    );
}

fn render_prompt(f: &mut Frame<'_>, app: &App, area: Rect) {
    let text = match &app.mode {
        Mode::Prompt { kind, input } => format!("{}{input}█", kind.prefix()),
        _ => "s/S step  n/N next  i/I stepi  c/C continue  f/F finish  g goto  b break  w watch  : command  ? help  q quit".into(),
    };
    f.render_widget(Paragraph::new(text), area);
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

/// A popup over the screen; where its lines do not fit, it shows them from `scroll` on
/// and says which (the cursor keys scroll it).
fn render_popup(f: &mut Frame<'_>, title: &str, lines: &[String], scroll: usize) {
    let w = lines
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(10)
        .max(title.len() + 30) as u16
        + 4;
    let area = centered(f.area(), w, lines.len() as u16 + 2);
    let rows = area.height.saturating_sub(2) as usize;
    let first = scroll.min(lines.len().saturating_sub(rows));
    let title = if rows < lines.len() {
        format!(
            " {title} (lines {}-{} of {}: up/down, page up/down scroll) ",
            first + 1,
            (first + rows).min(lines.len()),
            lines.len()
        )
    } else {
        format!(" {title} ")
    };
    f.render_widget(Clear, area);
    f.render_widget(
        Paragraph::new(
            lines
                .iter()
                .skip(first)
                .map(|l| Line::raw(l.clone()))
                .collect::<Vec<_>>(),
        )
        .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

/// The help overlay's lines: every action with its keys, then the commands.
pub fn help_lines(app: &App) -> Vec<String> {
    let mut v: Vec<String> = Action::all()
        .into_iter()
        .map(|a| {
            let keys = app.keymap.keys_for(a).join(" ");
            format!("{keys:<14} {}", a.description())
        })
        .collect();
    v.push(String::new());
    v.extend(
        [
            ":break ADDR|SYMBOL[+OFF]|FILE:LINE|FUNCTION",
            ":delete [the same]",
            ":watch ADDR [LEN]   :unwatch ADDR",
            ":goto event N | icount K | NAME   :x ADDR|$REG [ROWS]",
            ":mark NAME   :marks   :last ADDR [LEN]",
            ":print EXPR   :p/x EXPR   (variables, members, *, &, [], casts)",
            ":frame N   :up [N]   :down [N]   :bt",
            ":info breakpoints|checkpoints|registers|locals|args",
            ":stepi :next :continue :finish and their reverse-*",
            "keys file: $KRR_TUI_KEYS or ~/.config/krr-tui/keys.toml",
            "up/down, page up/down scroll; other keys close",
        ]
        .map(String::from),
    );
    v
}

fn render_help(f: &mut Frame<'_>, app: &App) {
    render_popup(f, "keys", &help_lines(app), app.popup_scroll);
}

/// A progress box for long moves (drawn alone while the move runs).
pub fn draw_progress(f: &mut Frame<'_>, what: &str, fraction: f64) {
    let area = centered(f.area(), 60, 3);
    f.render_widget(Clear, area);
    f.render_widget(
        Gauge::default()
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(format!(" {what}: scanning back (Esc interrupts) ")),
            )
            .ratio(fraction.clamp(0.0, 1.0)),
        area,
    );
}

/// The backtrace: gdb's frames (inlined calls and arguments) where the kernel has DWARF
/// information, else return addresses and how they were found.
fn backtrace_pane(app: &App, h: usize) -> Vec<Line<'static>> {
    if app.symbols().debug_info().is_some() {
        return app
            .backtrace_lines(h.max(1))
            .into_iter()
            .map(Line::raw)
            .collect();
    }
    let (frames, how) = app.backtrace(h.saturating_sub(1).max(1));
    let mut v = vec![Line::styled(
        how,
        Style::default().add_modifier(Modifier::DIM),
    )];
    v.extend(frames.iter().enumerate().map(|(i, a)| {
        let line = app
            .symbols()
            .line(*a)
            .map(|l| {
                format!(
                    "  {}:{}",
                    l.file
                        .file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default(),
                    l.line
                )
            })
            .unwrap_or_default();
        let name = app
            .symbols()
            .lookup(*a)
            .map(|l| format!(" {l}"))
            .unwrap_or_default();
        Line::raw(format!("#{i:<2} {a:#018x}{name}{line}"))
    }));
    v
}

/// The selected frame's arguments and locals, as gdb's `info args` and `info locals`.
fn locals_pane(app: &App) -> Vec<Line<'static>> {
    let dim = Style::default().add_modifier(Modifier::DIM);
    let Some(vars) = app.timeline.frame_variables(app.frame) else {
        return vec![Line::styled("no DWARF variables for this code", dim)];
    };
    let sections = [
        (format!("frame #{} arguments", app.frame), &vars.arguments),
        ("locals".to_string(), &vars.locals),
    ];
    let mut v = Vec::new();
    for (title, list) in sections {
        v.push(Line::styled(title, dim));
        if list.is_empty() {
            v.push(Line::styled("  none", dim));
        }
        v.extend(
            list.iter()
                .map(|a| Line::raw(format!("{} = {}", a.name, a.value))),
        );
    }
    v
}
