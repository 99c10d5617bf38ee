//! A terminal UI in a real terminal: a detached tmux session driven by keys and read
//! from its captured screen (the tmux end-to-end tests).

use std::process::Command;
use std::time::{Duration, Instant};

pub struct Tmux {
    socket: String,
}

impl Tmux {
    pub fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs")
    }

    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "tui"]).stdout).into_owned()
    }

    pub fn send(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "tui"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status.success());
    }

    pub fn type_text(&self, text: &str) {
        assert!(
            self.cmd(&["send-keys", "-t", "tui", "-l", text])
                .status
                .success()
        );
    }

    /// Waits until the screen shows `what`; fails with the screen otherwise.
    pub fn wait_for(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("the screen never showed {what:?}; it shows:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A `:` command typed into the UI and entered.
    pub fn command(&self, text: &str) {
        self.send(&[":"]);
        self.type_text(text);
        self.send(&["Enter"]);
    }

    /// `:break LOCATION`, waiting until the status bar confirms it: keys sent while a
    /// command runs (finding a function's inlined copies reads the image's DWARF) are
    /// dropped, as the UI drops every key but Esc during a long move.
    pub fn break_at(&self, location: &str) {
        self.command(&format!("break {location}"));
        self.wait_for_status(&format!("breakpoint at {location}"));
    }

    /// Waits until the status bar shows `what`; fails with it otherwise.
    pub fn wait_for_status(&self, what: &str) -> String {
        self.wait_for_status_where(Duration::from_secs(30), &format!("{what:?}"), |s| {
            s.contains(what)
        })
    }

    /// Waits up to `limit` until the status bar is one `ok` accepts; fails saying it
    /// never showed `described` otherwise.
    pub fn wait_for_status_where(
        &self,
        limit: Duration,
        described: &str,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status();
            if ok(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the status never showed {described}: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the program in the session has exited; fails saying `what` otherwise.
    pub fn wait_exit(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.cmd(&["has-session", "-t", "tui"]).status.success() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The status bar (the line above the key hints).
    pub fn status(&self) -> String {
        let s = self.screen();
        let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
        lines
            .iter()
            .rev()
            .find(|l| l.contains("icount"))
            .map(|l| l.to_string())
            .unwrap_or_default()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The icount a status bar shows.
pub fn status_icount(status: &str) -> u64 {
    status
        .split("icount ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no icount in the status bar: {status}"))
}

/// Whether tmux, and where `kvm` is asked for /dev/kvm, are here; prints why a test is
/// skipped where not.
pub fn available(kvm: bool) -> bool {
    if Command::new("tmux").arg("-V").output().is_err() {
        println!("skipped: tmux is not installed");
        return false;
    }
    let no_kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err();
    if kvm && no_kvm {
        println!("skipped: /dev/kvm not available");
        return false;
    }
    true
}

/// Runs `cmd` in a detached tmux session `width` x `height` with the environment
/// `env` (NAME=VALUE) and the default keymap.
pub fn start(name: &str, cmd: &str, width: u16, height: u16, env: &[String]) -> Tmux {
    let t = Tmux {
        socket: format!("krr-tui-{name}-{}", std::process::id()),
    };
    let (width, height) = (width.to_string(), height.to_string());
    let mut args = vec![
        "new-session",
        "-d",
        "-s",
        "tui",
        "-x",
        &width,
        "-y",
        &height,
    ];
    args.extend(["-e", "KRR_TUI_KEYS=/nonexistent"]);
    for e in env {
        args.extend(["-e", e.as_str()]);
    }
    args.push(cmd);
    let out = t.cmd(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t
}
