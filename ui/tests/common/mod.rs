//! Shared setup: the checked-in demo recording opened in an App.

use krr_engine::replay::Replay;
use krr_engine::timeline::Timeline;
use krr_ui::{App, Keymap, MoveCtl};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::path::Path;
use std::sync::OnceLock;

pub fn opened() -> Replay {
    static BASE: OnceLock<Replay> = OnceLock::new();
    BASE.get_or_init(|| {
        Replay::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/demo.krr"))
            .expect("fixture")
    })
    .clone()
}

pub fn app() -> App {
    let replay = opened();
    App::new(Timeline::new(replay, 1 << 30), Keymap::default())
}

pub fn key(app: &mut App, code: KeyCode) {
    let mut ignore = |_: f64| {};
    app.press(
        KeyEvent::new(code, KeyModifiers::NONE),
        &mut MoveCtl::none(&mut ignore),
    );
}

/// Types each character as a key press.
pub fn keys(app: &mut App, s: &str) {
    for c in s.chars() {
        key(app, KeyCode::Char(c));
    }
}
