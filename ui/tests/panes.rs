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
    // Written aside and renamed into place: tests running at once never read it half
    // written.
    let aside = dir.join(format!("{:?}.tmp", std::thread::current().id()));
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, dir.join(file.file_name().unwrap())).unwrap();
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
    // Where a register's name is drawn, and in which colour.
    let colour_of = |name: &str| {
        let area = buf.area;
        for y in area.top()..area.bottom() {
            let row: String = (area.left()..area.right())
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect();
            if let Some(i) = row.find(&format!("{name} ")) {
                let x = row[..i].chars().count() as u16;
                return buf[(x, y)].fg;
            }
        }
        panic!("{name} is not shown");
    };
    // rip changed and is drawn red; a register that did not change is not.
    assert_eq!(colour_of("rip"), ratatui::style::Color::Red);
    let unchanged = draw::register_lines(&a)
        .into_iter()
        .find(|(_, c)| !c)
        .map(|(l, _)| l.split_whitespace().next().unwrap().to_string())
        .unwrap();
    assert_ne!(colour_of(&unchanged), ratatui::style::Color::Red);
}

/// The registers that say where the kernel is (rip, rflags, cs with the privilege
/// level, cr3) are visible in the whole screen at 80x24 and at 200x50.
#[test]
fn the_registers_that_locate_the_kernel_show_at_80x24_and_200x50() {
    let a = positioned();
    for (w, h, name) in [(80, 24, "screen_80x24"), (200, 50, "screen_200x50")] {
        let screen = render(&a, None, w, h);
        let pane = screen
            .lines()
            .skip_while(|l| !l.contains(" 1 registers "))
            .take_while(|l| !l.contains(" 8 backtrace "))
            .collect::<Vec<_>>()
            .join("\n");
        for r in ["rip ", "rflags ", "cs ", "cpl ", "cr3 "] {
            assert!(
                pane.contains(r),
                "{w}x{h}: no {r:?} in the registers pane:\n{screen}"
            );
        }
        insta::assert_snapshot!(name, screen);
    }
}

/// The help overlay scrolls where it does not fit (80x24 holds less than all of it).
#[test]
fn the_help_overlay_scrolls_at_80x24() {
    let mut a = positioned();
    keys(&mut a, "?");
    let all = draw::help_lines(&a);
    let top = render(&a, None, 80, 24);
    assert!(top.contains("lines 1-"), "{top}");
    assert!(!top.contains(all.last().unwrap().as_str()), "{top}");
    key(&mut a, KeyCode::End);
    assert_eq!(a.mode, krr_ui::app::Mode::Help, "scrolling keeps it open");
    let bottom = render(&a, None, 80, 24);
    assert!(
        bottom.contains(all.last().unwrap().trim_end()),
        "the last line is reached:\n{bottom}"
    );
    key(&mut a, KeyCode::Up);
    key(&mut a, KeyCode::Home);
    assert_eq!(render(&a, None, 80, 24), top);
    key(&mut a, KeyCode::Esc);
    assert_eq!(a.mode, krr_ui::app::Mode::Normal);
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

/// Events the agent writes into its ring are stamped with the next VM exit (an upper
/// bound); the pane lists each where replay applied it, so the last applied event (→)
/// is the status bar's and comes before its position.
#[test]
fn events_are_listed_where_they_took_effect() {
    let mut a = app();
    keys(&mut a, ":break syscall_dispatch");
    key(&mut a, KeyCode::Enter);
    keys(&mut a, "c");
    assert!(
        a.position().starts_with("#216  icount 317139 "),
        "{}",
        a.position()
    );
    let pane = render(&a, Some(Pane::Events), 130, 16);
    let row = |n: u64| -> String {
        pane.lines()
            .find(|l| l.contains(&format!("#{n} ")))
            .unwrap_or_else(|| panic!("no row for #{n}:\n{pane}"))
            .to_string()
    };
    assert!(row(216).contains("→#216"), "{pane}");
    // #215-#218 were all collected at the exit at 320846, and applied before it.
    for (n, at) in [(215, 312501), (216, 316806), (217, 317168), (218, 317252)] {
        let r = row(n);
        assert!(r.contains(&format!(" {at} ")), "#{n} at {at}: {r}");
        assert!(r.contains("(bound 320846)"), "#{n}: {r}");
    }
    // The current position lies between the last applied event and the next.
    assert!(316806 <= a.timeline.icount() && a.timeline.icount() < 317168);
}

/// The density strip counts each event in the column where it was applied.
#[test]
fn the_density_strip_places_events_where_they_took_effect() {
    let mut a = app();
    keys(&mut a, ":goto icount 999999999");
    key(&mut a, KeyCode::Enter);
    let r = a.replay();
    let n = r.event_count();
    assert_eq!(
        r.events_applied_known(),
        n,
        "the whole recording was replayed"
    );
    let columns = (a.total_position() / 1000) as usize;
    let d = a.density(columns);
    let column = |p: u64| (p as u128 * columns as u128 / (a.total_position() as u128 + 1)) as usize;
    let mut expected = vec![0u32; columns];
    let mut moved = 0;
    for i in 0..n {
        let applied = r.applied_position(i).expect("applied");
        expected[column(applied).min(columns - 1)] += 1;
        moved += usize::from(column(applied) != column(r.event(i).expect("event").icount()));
    }
    assert_eq!(d, expected);
    assert!(
        moved > 0,
        "some events are drawn in another column than their bound's"
    );
}
