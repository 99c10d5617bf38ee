//! krr-tui's terminal application: a replay one moves through freely in time.
//!
//! [`App`] holds the state and does what keys and commands say; [`draw`] renders it;
//! [`run`] drives both from crossterm events.

pub mod app;
pub mod draw;
pub mod keymap;
pub mod record;

pub use app::{App, Mode, MoveCtl, Pane};
pub use keymap::{Action, Keymap, KeymapError};

use ratatui::Terminal;
use ratatui::backend::Backend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Takes over the terminal (alternate screen, raw mode), runs the application, and
/// restores the terminal, also on panic.
pub fn run_in_terminal(app: App) -> std::io::Result<()> {
    let mut terminal = ratatui::try_init().inspect_err(|_| ratatui::restore())?;
    let result = run(&mut terminal, app);
    ratatui::restore();
    result
}

/// Runs the application on `terminal` until the user quits.
pub fn run<B: Backend>(terminal: &mut Terminal<B>, mut app: App) -> Result<(), B::Error> {
    terminal.draw(|f| draw::draw(f, &app))?;
    while !app.quit {
        // While gdb drives an exported copy of the replay, follow it between keys.
        if app.following.is_some() && !event::poll(Duration::from_millis(100)).unwrap_or(false) {
            if app.follow() {
                terminal.draw(|f| draw::draw(f, &app))?;
            }
            continue;
        }
        let Ok(ev) = event::read() else { break };
        let Event::Key(key) = ev else {
            terminal.draw(|f| draw::draw(f, &app))?;
            continue;
        };
        if key.kind == KeyEventKind::Release {
            continue;
        }
        // While a move runs, a watcher thread reads the keyboard and interrupts it on Esc.
        let cancel = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let cancel = cancel.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                // Give short moves a chance to finish before taking over the keyboard
                // (keys read here other than Esc are dropped).
                std::thread::park_timeout(Duration::from_millis(150));
                while !done.load(Ordering::SeqCst) {
                    if event::poll(Duration::from_millis(30)).unwrap_or(false)
                        && let Ok(Event::Key(k)) = event::read()
                        && k.code == KeyCode::Esc
                    {
                        cancel.store(true, Ordering::SeqCst);
                    }
                }
            })
        };
        let what = app
            .keymap
            .action(&key)
            .map(|a| a.name())
            .unwrap_or_default();
        let mut draw_error = None;
        let mut drew_progress = false;
        {
            let mut progress = |p: f64| {
                drew_progress = true;
                if let Err(e) = terminal.draw(|f| draw::draw_progress(f, &what, p)) {
                    draw_error.get_or_insert(e);
                }
            };
            let mut ctl = MoveCtl {
                cancel: Some(&cancel),
                progress: &mut progress,
            };
            app.press(key, &mut ctl);
        }
        done.store(true, Ordering::SeqCst);
        watcher.thread().unpark();
        let _ = watcher.join();
        if let Some(e) = draw_error {
            return Err(e);
        }
        if drew_progress {
            terminal.clear()?;
        }
        terminal.draw(|f| draw::draw(f, &app))?;
    }
    Ok(())
}
