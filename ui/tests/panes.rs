//! Snapshots of every pane (and the whole screen, help and prompt) rendered with
//! ratatui's TestBackend at a fixed position of the demo recording.

mod common;

use common::{app, key, keys};
use krr_ui::app::PANES;
use krr_ui::{App, Pane, draw};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::KeyCode;
use std::path::PathBuf;

/// The demo recording after event 1200 and two instructions, a breakpoint on the next
/// instruction, and a stand-in source tree (so snapshots do not depend on the checkout).
fn positioned() -> App {
    let mut a = app();
    keys(&mut a, ":goto event 1200");
    key(&mut a, KeyCode::Enter);
    keys(&mut a, "ii");
    let next = a
        .disassembly(8)
        .iter()
        .map(|l| l.addr)
        .find(|&x| x > a.rip())
        .unwrap();
    a.timeline.add_breakpoint(next);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("panes-src");
    std::fs::create_dir_all(&dir).unwrap();
    let file = a.symbols().line(a.rip()).expect("a line").file;
    let text: String = (1..=300).map(|n| format!("source line {n}\n")).collect();
    std::fs::write(dir.join(file.file_name().unwrap()), text).unwrap();
    a.source_dirs = vec![dir];
    a
}

fn render(a: &App, pane: Option<Pane>, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| match pane {
        Some(p) => draw::render_pane(f, a, p, f.area()),
        None => draw::draw(f, a),
    })
    .unwrap();
    format!("{}", t.backend())
}

#[test]
fn every_pane() {
    let a = positioned();
    for p in PANES {
        let width = if p == Pane::Events { 110 } else { 90 };
        insta::assert_snapshot!(p.title(), render(&a, Some(p), width, 16));
    }
}

#[test]
fn whole_screen_help_and_prompt() {
    let mut a = positioned();
    insta::assert_snapshot!("screen", render(&a, None, 160, 48));
    keys(&mut a, "?");
    insta::assert_snapshot!("help", render(&a, None, 120, 48));
    key(&mut a, KeyCode::Esc);
    keys(&mut a, ":break kma");
    insta::assert_snapshot!("prompt", render(&a, None, 120, 30));
}

#[test]
fn registers_changed_by_the_last_move_are_highlighted() {
    let a = positioned();
    let mut t = Terminal::new(TestBackend::new(60, 26)).unwrap();
    t.draw(|f| draw::render_pane(f, &a, Pane::Registers, f.area()))
        .unwrap();
    let buf = t.backend().buffer().clone();
    let changed: Vec<String> = draw::register_lines(&a)
        .into_iter()
        .filter(|(_, c)| *c)
        .map(|(l, _)| l)
        .collect();
    assert!(changed.iter().any(|l| l.starts_with("rip")));
    // The rip row (row 17 inside the border) is drawn red, an unchanged one is not.
    let rip_row = 1 + 16;
    assert_eq!(buf[(1, rip_row)].fg, ratatui::style::Color::Red);
    let unchanged = draw::register_lines(&a)
        .iter()
        .position(|(_, c)| !c)
        .unwrap() as u16;
    assert_ne!(buf[(1, 1 + unchanged)].fg, ratatui::style::Color::Red);
}

#[test]
fn tiny_terminals_and_collapsed_panes_do_not_panic() {
    let mut a = positioned();
    for (w, h) in [(1, 1), (2, 3), (10, 4), (30, 8), (200, 3)] {
        render(&a, None, w, h);
        for p in PANES {
            render(&a, Some(p), w, h);
        }
    }
    keys(&mut a, "?");
    render(&a, None, 5, 5);
}
