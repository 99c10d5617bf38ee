//! The recording view: the guest console live, event counters per kind, and a key that
//! ends the recording. The recorder runs on another thread and sends [`RecordMsg`]s.

use krr_engine::event::EventKind;
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

/// What the recorder thread tells the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordMsg {
    /// One event, with its console bytes if it is console output.
    Event(EventKind, Option<Vec<u8>>),
    /// The recording ended (why, in words).
    Done(String),
}

/// The state of the recording view.
pub struct RecordView {
    pub title: String,
    pub console: Vec<u8>,
    pub counts: [u64; EventKind::ALL.len()],
    pub started: Instant,
    /// Set when the recording ended.
    pub done: Option<String>,
    pub stopping: bool,
}

impl RecordView {
    pub fn new(title: &str) -> RecordView {
        RecordView {
            title: title.to_string(),
            console: Vec::new(),
            counts: [0; EventKind::ALL.len()],
            started: Instant::now(),
            done: None,
            stopping: false,
        }
    }

    pub fn apply(&mut self, msg: RecordMsg) {
        match msg {
            RecordMsg::Event(kind, bytes) => {
                self.counts[kind.index()] += 1;
                if let Some(b) = bytes {
                    self.console.extend_from_slice(&b);
                    // Keep the tail only: the view shows the last screenful.
                    if self.console.len() > 1 << 20 {
                        self.console.drain(..self.console.len() - (1 << 19));
                    }
                }
            }
            RecordMsg::Done(why) => self.done = Some(why),
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Draws the recording view.
pub fn draw(f: &mut Frame<'_>, v: &RecordView) {
    let [main, status] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(1)]).areas(f.area());
    let [console, counters] =
        Layout::horizontal([Constraint::Fill(3), Constraint::Length(28)]).areas(main);
    let block = Block::default()
        .borders(Borders::ALL)
        .title(format!(" {} — console ", v.title));
    let inner = block.inner(console);
    let text = String::from_utf8_lossy(&v.console).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(inner.height as usize);
    f.render_widget(block, console);
    f.render_widget(
        Paragraph::new(
            lines[skip..]
                .iter()
                .map(|l| Line::raw(l.to_string()))
                .collect::<Vec<_>>(),
        ),
        inner,
    );
    let mut rows: Vec<Line<'static>> = EventKind::ALL
        .iter()
        .map(|k| Line::raw(format!("{:<17}{:>8}", k.name(), v.counts[k.index()])))
        .collect();
    rows.push(Line::raw(format!("{:<17}{:>8}", "total", v.total())));
    f.render_widget(
        Paragraph::new(rows).block(Block::default().borders(Borders::ALL).title(" events ")),
        counters,
    );
    let s = match &v.done {
        Some(why) => format!(" {why} — press any key"),
        None if v.stopping => " stopping...".to_string(),
        None => format!(
            " recording for {:.0} s — q or Esc ends the recording",
            v.started.elapsed().as_secs_f64()
        ),
    };
    f.render_widget(
        Paragraph::new(s).style(Style::default().add_modifier(Modifier::REVERSED)),
        status,
    );
}

/// Runs the view until the recording ended and a key was pressed; `q`, Esc or ctrl-c
/// set `stop`, which ends the recording.
pub fn run_in_terminal(
    title: &str,
    rx: Receiver<RecordMsg>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut terminal = ratatui::try_init().inspect_err(|_| ratatui::restore())?;
    let mut view = RecordView::new(title);
    let result = (|| -> std::io::Result<()> {
        loop {
            loop {
                match rx.try_recv() {
                    Ok(m) => view.apply(m),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if view.done.is_none() {
                            view.done = Some("the recorder stopped".into());
                        }
                        break;
                    }
                }
            }
            terminal.draw(|f| draw(f, &view))?;
            if stop.load(Ordering::SeqCst) && view.done.is_none() {
                view.stopping = true;
            }
            if event::poll(Duration::from_millis(100))?
                && let Event::Key(k) = event::read()?
                && k.kind != KeyEventKind::Release
            {
                if view.done.is_some() {
                    return Ok(());
                }
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                    stop.store(true, Ordering::SeqCst);
                    view.stopping = true;
                }
            }
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    #[test]
    fn the_view_counts_events_and_shows_the_console_tail() {
        let mut v = RecordView::new("recording x.krr");
        v.apply(RecordMsg::Event(EventKind::Syscall, None));
        v.apply(RecordMsg::Event(EventKind::Syscall, None));
        v.apply(RecordMsg::Event(
            EventKind::Console,
            Some(b"hello\nworld\n".to_vec()),
        ));
        assert_eq!(v.counts[EventKind::Syscall.index()], 2);
        assert_eq!(v.total(), 3);
        v.apply(RecordMsg::Done("recording ended: guest powered off".into()));
        let mut t = Terminal::new(TestBackend::new(80, 20)).unwrap();
        t.draw(|f| draw(f, &v)).unwrap();
        let screen = format!("{}", t.backend());
        assert!(screen.contains("world"), "{screen}");
        assert!(screen.contains("syscall                 2"), "{screen}");
        assert!(screen.contains("total                   3"), "{screen}");
        assert!(
            screen.contains("guest powered off — press any key"),
            "{screen}"
        );
    }
}
