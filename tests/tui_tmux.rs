//! End to end: the replay TUI in a real terminal (tmux), driven by keys, checked on the
//! captured screen.

mod common;

use common::tmux::{Tmux, available, start, status_icount};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Opens the checked-in demo recording in the TUI inside a detached tmux session of
/// `width` columns, or None (printing why) where tmux is missing.
fn open_fixture(name: &str, width: u16) -> Option<Tmux> {
    if !available(false) {
        return None;
    }
    let bin = env!("CARGO_BIN_EXE_krr-tui");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demo.krr");
    let cmd = format!("{bin} replay {}", fixture.display());
    Some(start(name, &cmd, width, 48, &[]))
}

#[test]
fn step_reverse_step_goto_and_reverse_continue_to_a_breakpoint() {
    let Some(t) = open_fixture("test", 160) else {
        return;
    };
    let first = t.wait_for("press ? for help");
    assert!(first.contains("#-  icount 0  0.0%"), "{first}");
    assert!(first.contains("1 registers") && first.contains("4 events"));

    // Step one instruction forward, then back: the start is reported, not an error.
    t.send(&["i"]);
    t.wait_for("icount 1  ");
    assert!(t.status().contains("│ stepi"), "{}", t.status());
    t.send(&["I"]);
    let s = t.wait_for("start of the recording");
    assert!(t.status().contains("icount 0  "), "{s}");

    // Goto an event.
    t.send(&["g"]);
    t.wait_for("goto (event N | icount K)");
    t.type_text("1200");
    t.send(&["Enter"]);
    let s = t.wait_for("#1200  icount");
    assert!(
        s.contains("→#1200"),
        "the events pane marks the current event:\n{s}"
    );

    // A source-line step forward, then back.
    let at_event = status_icount(&t.status());
    t.send(&["s"]);
    t.wait_for("│ step");
    let stepped = status_icount(&t.status());
    assert!(stepped > at_event, "{}", t.status());
    t.send(&["S"]);
    t.wait_for("│ reverse-step");
    // The step stopped at the entry of an inlined call (kprintf's uart output): there
    // reverse-step enters the call without moving, as gdb's does; the next one goes
    // back.
    assert_eq!(status_icount(&t.status()), stepped, "{}", t.status());
    t.send(&["S"]);
    // (While it scans back, the screen shows its progress instead of the status.)
    t.wait_for_status_where(
        Duration::from_secs(30),
        &format!("an icount below {stepped}"),
        |s| s.contains("icount ") && status_icount(s) < stepped,
    );

    // A breakpoint on a symbol, then reverse-continue to its last hit before here.
    t.break_at("krr_agent_rdtsc");
    t.wait_for("│ breakpoint at krr_agent_rdtsc");
    t.send(&["C"]);
    let s = t.wait_for("reverse-continue: breakpoint at krr_agent_rdtsc");
    let status = t.status();
    assert!(status.contains("krr_agent_rdtsc"), "{status}");
    assert!(
        s.contains("krr_agent_rdtsc:"),
        "the disassembly shows the function:\n{s}"
    );
    assert!(
        s.lines().any(|l| l.contains("●→ ")),
        "breakpoint mark on the current line:\n{s}"
    );
    let icount = status_icount(&status);
    assert!(icount > 0 && icount < 867_330, "{status}");

    t.send(&["q"]);
    t.wait_exit("q did not quit");
}

#[test]
fn record_shows_the_live_console_and_q_ends_the_recording() {
    if !available(true) {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_krr-tui");
    let out = std::env::temp_dir().join(format!("krr-tmux-record-{}.krr", std::process::id()));
    let cmd = format!("{bin} record -o {}", out.display());
    let t = start("rec", &cmd, 140, 40, &[]);
    t.wait_for("q or Esc ends the recording");
    // The console fills in while the guest runs, and the counters count.
    let s = t.wait_for("krr-demo");
    assert!(s.contains("syscall") && s.contains("total"), "{s}");
    t.send(&["q"]);
    let s = t.wait_for("press any key");
    assert!(
        s.contains("recording ended"),
        "the recording ends (interrupted, or the guest already powered off):\n{s}"
    );
    t.send(&["x"]);
    t.wait_exit("the recorder did not exit");
    let info = Command::new(bin).arg("info").arg(&out).output().unwrap();
    let _ = std::fs::remove_file(&out);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
}

/// The README's main job: `krr-tui demo` records the demo guest live, then opens its
/// replay; the temporary recording is gone after quitting.
#[test]
fn demo_records_the_guest_then_opens_its_replay() {
    if !available(true) {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_krr-tui");
    let tmp = tempfile::tempdir().unwrap();
    let tmpdir = format!("TMPDIR={}", tmp.path().display());
    let t = start("demo", &format!("{bin} demo"), 160, 48, &[tmpdir]);
    t.wait_for("q or Esc ends the recording");
    t.wait_for("guest powered off — press any key");
    t.send(&["x"]);
    let s = t.wait_for("1 registers");
    assert!(
        s.contains("2 disassembly") && s.contains("6 console"),
        "{s}"
    );
    let recordings: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(recordings.len(), 1, "the recording is in TMPDIR while open");
    t.send(&["i"]);
    t.wait_for_status("icount 1 ");
    t.send(&["q"]);
    t.wait_exit("the replay did not exit");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the temporary recording is removed"
    );
}

/// A recording made without an instruction counter places its events by exit ordinal:
/// the status bar and the density strip measure progress on that axis (the replay's
/// own instruction count is on another scale).
#[test]
fn a_recording_without_a_counter_shows_progress_by_exit() {
    if !available(true) {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_krr-tui");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("no-counter.krr");
    let rec = Command::new(bin)
        .args(["record", "--headless", "--quiet", "--no-counter", "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        rec.status.success(),
        "{}",
        String::from_utf8_lossy(&rec.stderr)
    );
    let cmd = format!("{bin} replay {}", file.display());
    let t = start("nocounter", &cmd, 160, 48, &[]);
    t.wait_for("1 registers");
    t.command("goto event 1000");
    let status = t.wait_for_status("#1000 ");
    assert!(status.contains("(exit "), "{status}");
    let percent: f64 = status
        .split_whitespace()
        .find_map(|w| w.strip_suffix('%').and_then(|p| p.parse().ok()))
        .expect("a percentage");
    // Event 1000 of about 2,600 lies well inside the recording.
    assert!(percent > 10.0 && percent < 90.0, "{status}");
}

#[test]
fn export_key_serves_gdb_and_the_ui_follows_its_moves() {
    if Command::new("gdb").arg("--version").output().is_err() {
        println!("skipped: gdb is not installed");
        return;
    }
    let Some(t) = open_fixture("export", 200) else {
        return;
    };
    t.wait_for("press ? for help");
    // Move somewhere first: gdb starts where the UI stands.
    t.type_text("g");
    t.type_text("icount 5000");
    t.send(&["Enter"]);
    t.wait_for("icount 5000  ");
    t.send(&["E"]);
    let screen = t.wait_for("target remote 127.0.0.1:");
    let addr = screen
        .split("target remote ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("address on screen")
        .to_string();
    let gdb = Command::new("gdb")
        .args(["-q", "-batch", "-nx"])
        .args(["-ex", "set confirm off"])
        .args(["-ex", &format!("target remote {addr}")])
        .args(["-ex", "monitor when"])
        .args(["-ex", "stepi"])
        .args(["-ex", "stepi"])
        .args(["-ex", "stepi"])
        .args(["-ex", "monitor when"])
        .args(["-ex", "detach"])
        .output()
        .expect("gdb runs");
    let text =
        String::from_utf8_lossy(&gdb.stdout).into_owned() + &String::from_utf8_lossy(&gdb.stderr);
    assert!(
        text.contains("icount: 5000,"),
        "gdb starts where the UI was:\n{text}"
    );
    assert!(text.contains("icount: 5003,"), "gdb stepped:\n{text}");
    // The UI followed gdb's three steps.
    let screen = t.wait_for("icount 5003  ");
    assert!(screen.contains("gdb moved to icount 5003"), "{screen}");
}

/// A kernel developer's questions in a real terminal: a variable by name (`:x ticks`,
/// `w ticks`), a watchpoint stop with the old and new value and the writer, the
/// disassembly naming the variable, `last`, and a bookmark round trip.
#[test]
fn variables_watch_values_last_and_bookmarks() {
    let Some(t) = open_fixture("vars", 200) else {
        return;
    };
    t.wait_for("press ? for help");
    t.send(&["g"]);
    t.type_text("300");
    t.send(&["Enter"]);
    t.wait_for_status("goto event 300");

    // A bookmark here.
    t.command("mark start300");
    let marked = t.wait_for_status("bookmark start300: icount ");
    let icount = marked
        .split("bookmark start300: icount ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the bookmark's icount")
        .to_string();

    // :x ticks shows its memory.
    t.command("x ticks 1");
    let s = t.wait_for("memory at 0xffffffff8012");
    assert!(s.contains("ffffffff8012"), "{s}");
    t.send(&["Escape"]);

    // w ticks: 8 bytes; continue stops with the values and the instruction.
    t.send(&["w"]);
    t.type_text("ticks");
    t.send(&["Enter"]);
    t.wait_for_status("watchpoint 0xffffffff8012");
    t.send(&["c"]);
    let status = t.wait_for_status("continue: watchpoint ticks (8 bytes): ");
    assert!(
        status.contains(" -> ") && status.contains("by sched_timer_tick+"),
        "{status}"
    );
    let s = t.screen();
    assert!(s.contains("<ticks>"), "the disassembly names ticks:\n{s}");

    // last: back to right before the write, naming it.
    t.command("unwatch ticks");
    t.wait_for_status("watchpoint 0xffffffff8012");
    t.command("last ticks");
    let status = t.wait_for_status("last: ticks (8 bytes): ");
    assert!(status.contains("next: by sched_timer_tick+"), "{status}");

    // Back to the bookmark.
    t.send(&["'"]);
    t.wait_for("goto bookmark: ");
    t.type_text("start300");
    t.send(&["Enter"]);
    let status = t.wait_for_status("goto start300");
    assert!(status.contains(&format!("icount {icount} ")), "{status}");
    t.send(&["q"]);
    t.wait_exit("q did not quit");
}

/// Variables in a real terminal: the locals pane at a breakpoint, `:print` of a member
/// (`/x` too), a structure through a pointer and a string, `:up` to the caller and
/// `:print` there, and an error for a name that does not exist.
#[test]
fn locals_pane_print_and_frames() {
    let Some(t) = open_fixture("print", 200) else {
        return;
    };
    t.wait_for("press ? for help");
    t.break_at("syscall_dispatch");
    t.wait_for_status("breakpoint at syscall_dispatch");
    t.send(&["c"]);
    t.wait_for_status("continue: breakpoint at syscall_dispatch");
    let s = t.screen();
    assert!(s.contains("9 locals"), "{s}");
    assert!(
        s.contains("tf = 0xffffffff8012"),
        "the locals pane shows tf:\n{s}"
    );
    assert!(
        s.contains("#0  syscall_dispatch (tf=0xffffffff8012"),
        "the backtrace shows the argument:\n{s}"
    );

    // A member of the trap frame: the user code segment (0x30, RPL 3) the system call
    // came from.
    t.command("p/x tf->cs");
    t.wait_for_status("tf->cs = 0x33");

    // A structure through a global pointer, and a string member.
    t.command("print cur->state");
    t.wait_for_status("cur->state = RUNNING");
    t.command("p cur->name");
    let status = t.wait_for_status("cur->name = 0xffffffff8010");
    assert!(status.contains('"'), "the name's string: {status}");

    // The caller's frame is the assembly entry stub, which has no variables; back down,
    // tf is there again.
    t.command("up");
    t.wait_for_status("#1  0xffffffff80100af0 in trap_common () at entry.S");
    t.command("p tf");
    t.wait_for_status("print tf: No symbol \"tf\" in current context.");
    t.command("down");
    t.wait_for_status("#0  syscall_dispatch (tf=0xffffffff8012");
    t.command("p tf->rip == cur->pid");
    t.wait_for_status("tf->rip == cur->pid = 0");

    t.command("p no_such_variable");
    t.wait_for_status("No symbol \"no_such_variable\" in current context.");
    // The demo kernel has no printk ring: D says so.
    t.send(&["D"]);
    t.wait_for_status("the kernel log is Linux's printk ring; this kernel has none");
    t.send(&["q"]);
    t.wait_exit("q did not quit");
}
