//! Keys and the actions they trigger, with overrides from a TOML file.
//!
//! The file (`$KRR_TUI_KEYS`, else `~/.config/krr-tui/keys.toml`) maps action names to
//! one key or a list of keys; an action named there loses its default keys:
//!
//! ```toml
//! step = "s"
//! reverse-step = ["S", "ctrl-b"]
//! quit = ["q", "ctrl-c"]
//! ```
//!
//! Keys: a single character (case matters: `S` is shift-s), `ctrl-X`, or one of `tab`,
//! `backtab`, `esc`, `enter`, `space`, `up`, `down`, `left`, `right`, `pageup`,
//! `pagedown`, `home`, `end`, `f1`..`f12`.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Everything a key can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Step,
    ReverseStep,
    Next,
    ReverseNext,
    Nexti,
    ReverseNexti,
    Stepi,
    ReverseStepi,
    Continue,
    ReverseContinue,
    Finish,
    ReverseFinish,
    Goto,
    GotoBookmark,
    Breakpoint,
    Watch,
    Command,
    ExportGdb,
    /// The kernel log (dmesg) at the position.
    KernelLog,
    Help,
    Quit,
    FocusNext,
    FocusPrev,
    Grow,
    Shrink,
    CursorUp,
    CursorDown,
    TogglePane(u8),
}

impl Action {
    /// Every action, in help order.
    pub fn all() -> Vec<Action> {
        let mut v = vec![
            Action::Step,
            Action::ReverseStep,
            Action::Next,
            Action::ReverseNext,
            Action::Nexti,
            Action::ReverseNexti,
            Action::Stepi,
            Action::ReverseStepi,
            Action::Continue,
            Action::ReverseContinue,
            Action::Finish,
            Action::ReverseFinish,
            Action::Goto,
            Action::GotoBookmark,
            Action::Breakpoint,
            Action::Watch,
            Action::Command,
            Action::ExportGdb,
            Action::KernelLog,
            Action::Help,
            Action::Quit,
            Action::FocusNext,
            Action::FocusPrev,
            Action::Grow,
            Action::Shrink,
            Action::CursorUp,
            Action::CursorDown,
        ];
        v.extend((1..=crate::app::PANES.len() as u8).map(Action::TogglePane));
        v
    }

    /// The name used in the keys file.
    pub fn name(self) -> String {
        match self {
            Action::Step => "step".into(),
            Action::ReverseStep => "reverse-step".into(),
            Action::Next => "next".into(),
            Action::ReverseNext => "reverse-next".into(),
            Action::Nexti => "nexti".into(),
            Action::ReverseNexti => "reverse-nexti".into(),
            Action::Stepi => "stepi".into(),
            Action::ReverseStepi => "reverse-stepi".into(),
            Action::Continue => "continue".into(),
            Action::ReverseContinue => "reverse-continue".into(),
            Action::Finish => "finish".into(),
            Action::ReverseFinish => "reverse-finish".into(),
            Action::Goto => "goto".into(),
            Action::GotoBookmark => "goto-bookmark".into(),
            Action::Breakpoint => "breakpoint".into(),
            Action::Watch => "watch".into(),
            Action::Command => "command".into(),
            Action::ExportGdb => "export-gdb".into(),
            Action::KernelLog => "kernel-log".into(),
            Action::Help => "help".into(),
            Action::Quit => "quit".into(),
            Action::FocusNext => "focus-next".into(),
            Action::FocusPrev => "focus-prev".into(),
            Action::Grow => "grow".into(),
            Action::Shrink => "shrink".into(),
            Action::CursorUp => "cursor-up".into(),
            Action::CursorDown => "cursor-down".into(),
            Action::TogglePane(n) => format!("toggle-pane-{n}"),
        }
    }

    pub fn description(self) -> String {
        match self {
            Action::Step => "step one source line (into calls)".into(),
            Action::ReverseStep => "step one source line backward".into(),
            Action::Next => "next source line, over calls".into(),
            Action::ReverseNext => "back one source line, over calls".into(),
            Action::Nexti => "next instruction, over calls".into(),
            Action::ReverseNexti => "back one instruction, over calls".into(),
            Action::Stepi => "step one instruction".into(),
            Action::ReverseStepi => "step one instruction backward".into(),
            Action::Continue => "continue to a breakpoint, watchpoint or the end".into(),
            Action::ReverseContinue => "continue backward (Esc interrupts)".into(),
            Action::Finish => "run until the current function returns".into(),
            Action::ReverseFinish => "back to the call of the current function".into(),
            Action::Goto => "goto: event N, or icount K".into(),
            Action::GotoBookmark => "goto a bookmark (:mark NAME sets one)".into(),
            Action::Breakpoint => "toggle a breakpoint at the disassembly cursor".into(),
            Action::Watch => "watch memory: ADDR [LEN]".into(),
            Action::Command => "command line".into(),
            Action::ExportGdb => {
                "serve this replay to gdb (127.0.0.1, a free port); the UI follows gdb's moves"
                    .into()
            }
            Action::KernelLog => "kernel log (dmesg: Linux's printk ring) at this position".into(),
            Action::Help => "this help".into(),
            Action::Quit => "quit".into(),
            Action::FocusNext => "focus the next pane".into(),
            Action::FocusPrev => "focus the previous pane".into(),
            Action::Grow => "grow the focused pane".into(),
            Action::Shrink => "shrink the focused pane".into(),
            Action::CursorUp => {
                "move the cursor up (disassembly, events: enter goes there, memory)".into()
            }
            Action::CursorDown => "move the cursor down".into(),
            Action::TogglePane(n) => format!(
                "show or hide the {} pane",
                crate::app::PANES
                    .get(n as usize - 1)
                    .map(|p| p.title())
                    .unwrap_or("?")
            ),
        }
    }

    fn from_name(name: &str) -> Option<Action> {
        Action::all().into_iter().find(|a| a.name() == name)
    }
}

/// A key, normalized: characters carry their case, not a shift modifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub code: KeyCode,
    pub ctrl: bool,
}

impl Key {
    pub fn from_event(e: &KeyEvent) -> Key {
        Key {
            code: e.code,
            ctrl: e.modifiers.contains(KeyModifiers::CONTROL),
        }
    }

    pub fn parse(s: &str) -> Option<Key> {
        let (ctrl, rest) = match s.strip_prefix("ctrl-") {
            Some(r) if !r.is_empty() => (true, r),
            _ => (false, s),
        };
        let mut chars = rest.chars();
        let code = match (chars.next(), chars.next()) {
            (Some(c), None) => KeyCode::Char(c),
            _ => match rest.to_ascii_lowercase().as_str() {
                "tab" => KeyCode::Tab,
                "backtab" => KeyCode::BackTab,
                "esc" => KeyCode::Esc,
                "enter" => KeyCode::Enter,
                "space" => KeyCode::Char(' '),
                "up" => KeyCode::Up,
                "down" => KeyCode::Down,
                "left" => KeyCode::Left,
                "right" => KeyCode::Right,
                "pageup" => KeyCode::PageUp,
                "pagedown" => KeyCode::PageDown,
                "home" => KeyCode::Home,
                "end" => KeyCode::End,
                f if f.starts_with('f') => {
                    KeyCode::F(f[1..].parse().ok().filter(|n| (1..=12).contains(n))?)
                }
                _ => return None,
            },
        };
        Some(Key { code, ctrl })
    }

    pub fn label(&self) -> String {
        let base = match self.code {
            KeyCode::Char(' ') => "space".to_string(),
            KeyCode::Char(c) => c.to_string(),
            KeyCode::Tab => "tab".into(),
            KeyCode::BackTab => "backtab".into(),
            KeyCode::Esc => "esc".into(),
            KeyCode::Enter => "enter".into(),
            KeyCode::Up => "up".into(),
            KeyCode::Down => "down".into(),
            KeyCode::Left => "left".into(),
            KeyCode::Right => "right".into(),
            KeyCode::PageUp => "pageup".into(),
            KeyCode::PageDown => "pagedown".into(),
            KeyCode::Home => "home".into(),
            KeyCode::End => "end".into(),
            KeyCode::F(n) => format!("f{n}"),
            other => format!("{other:?}"),
        };
        if self.ctrl {
            format!("ctrl-{base}")
        } else {
            base
        }
    }
}

/// Errors reading a keys file.
#[derive(Debug, thiserror::Error)]
pub enum KeymapError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Keys {
    One(String),
    Many(Vec<String>),
}

/// Key bindings.
#[derive(Debug, Clone)]
pub struct Keymap {
    bindings: HashMap<Key, Action>,
}

impl Default for Keymap {
    fn default() -> Self {
        let mut m = Keymap {
            bindings: HashMap::new(),
        };
        let defaults: &[(&str, Action)] = &[
            ("s", Action::Step),
            ("S", Action::ReverseStep),
            ("n", Action::Next),
            ("N", Action::ReverseNext),
            ("i", Action::Stepi),
            ("o", Action::Nexti),
            ("O", Action::ReverseNexti),
            ("I", Action::ReverseStepi),
            ("c", Action::Continue),
            ("C", Action::ReverseContinue),
            ("f", Action::Finish),
            ("F", Action::ReverseFinish),
            ("g", Action::Goto),
            ("'", Action::GotoBookmark),
            ("b", Action::Breakpoint),
            ("w", Action::Watch),
            (":", Action::Command),
            ("E", Action::ExportGdb),
            ("D", Action::KernelLog),
            ("?", Action::Help),
            ("q", Action::Quit),
            ("ctrl-c", Action::Quit),
            ("tab", Action::FocusNext),
            ("backtab", Action::FocusPrev),
            ("+", Action::Grow),
            ("=", Action::Grow),
            ("-", Action::Shrink),
            ("up", Action::CursorUp),
            ("k", Action::CursorUp),
            ("down", Action::CursorDown),
            ("j", Action::CursorDown),
        ];
        for (k, a) in defaults {
            m.bindings.insert(Key::parse(k).expect("default key"), *a);
        }
        for n in 1..=crate::app::PANES.len() as u8 {
            let c = char::from(b'0' + n);
            m.bindings.insert(
                Key {
                    code: KeyCode::Char(c),
                    ctrl: false,
                },
                Action::TogglePane(n),
            );
        }
        m
    }
}

impl Keymap {
    pub fn action(&self, key: &KeyEvent) -> Option<Action> {
        self.bindings.get(&Key::from_event(key)).copied()
    }

    /// The keys bound to `action`, sorted for display.
    pub fn keys_for(&self, action: Action) -> Vec<String> {
        let mut v: Vec<String> = self
            .bindings
            .iter()
            .filter(|(_, a)| **a == action)
            .map(|(k, _)| k.label())
            .collect();
        v.sort();
        v
    }

    /// Applies overrides in the keys-file format (see the module documentation).
    pub fn apply_toml(&mut self, text: &str, path: &Path) -> Result<(), KeymapError> {
        let invalid = |message: String| KeymapError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let table: BTreeMap<String, Keys> =
            toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (name, keys) in table {
            let action = Action::from_name(&name)
                .ok_or_else(|| invalid(format!("unknown action {name:?}")))?;
            let keys = match keys {
                Keys::One(k) => vec![k],
                Keys::Many(v) => v,
            };
            let parsed = keys
                .iter()
                .map(|k| Key::parse(k).ok_or_else(|| invalid(format!("unknown key {k:?}"))))
                .collect::<Result<Vec<_>, _>>()?;
            self.bindings.retain(|_, a| *a != action);
            for k in parsed {
                self.bindings.insert(k, action);
            }
        }
        Ok(())
    }

    /// The default keymap with the user's file applied, if there is one.
    pub fn load() -> Result<Keymap, KeymapError> {
        let mut map = Keymap::default();
        let path = match std::env::var_os("KRR_TUI_KEYS") {
            Some(p) => PathBuf::from(p),
            None => match std::env::var_os("HOME") {
                Some(home) => Path::new(&home).join(".config/krr-tui/keys.toml"),
                None => return Ok(map),
            },
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => map.apply_toml(&text, &path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(KeymapError::Io { path, source }),
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    #[test]
    fn defaults_follow_gdb_single_key_mode() {
        let m = Keymap::default();
        assert_eq!(m.action(&press('s')), Some(Action::Step));
        assert_eq!(m.action(&press('S')), Some(Action::ReverseStep));
        assert_eq!(m.action(&press('C')), Some(Action::ReverseContinue));
        assert_eq!(m.action(&press('3')), Some(Action::TogglePane(3)));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(m.action(&ctrl_c), Some(Action::Quit));
    }

    #[test]
    fn a_keys_file_replaces_an_actions_keys_and_rejects_nonsense() {
        let mut m = Keymap::default();
        let p = Path::new("keys.toml");
        m.apply_toml("stepi = [\"x\", \"f5\"]\nquit = \"ctrl-q\"\n", p)
            .unwrap();
        assert_eq!(m.action(&press('x')), Some(Action::Stepi));
        assert_eq!(
            m.action(&KeyEvent::new(KeyCode::F(5), KeyModifiers::NONE)),
            Some(Action::Stepi)
        );
        assert_eq!(m.action(&press('i')), None);
        assert_eq!(m.action(&press('q')), None);
        assert_eq!(m.keys_for(Action::Quit), vec!["ctrl-q"]);
        assert!(m.apply_toml("fly = \"z\"", p).is_err());
        assert!(m.apply_toml("step = \"notakey\"", p).is_err());
        assert!(m.apply_toml("step = ", p).is_err());
    }
}
