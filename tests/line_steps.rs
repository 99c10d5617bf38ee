//! The terminal UI's source-line moves against gdb's: from the first time execution
//! reaches each sampled source line of the demo recording (every function of the demo
//! kernel that runs is sampled; `KRR_LINE_SAMPLES=all` takes every line, `=N` up to N
//! per function), `n`, `N`, `s`, `S`, `f` and `F` must land where gdb's `next`,
//! `reverse-next`, `step`, `reverse-step`, `finish` and `reverse-finish` land, with gdb
//! in batch mode attached to `krr-tui replay --gdb` on the same recording
//! (`KRR_LINE_MOVES=next,finish` compares only those).
//!
//! Two kinds of difference are reported but not failed, because gdb is the one that is
//! wrong there: `finish` where gdb cannot find the caller (see
//! `finish_not_comparable`), and `reverse-finish` where gdb goes back to the last entry
//! of the function in any frame (another thread's or a recursive call's) rather than
//! this frame's.

mod common;

use common::gdb::{Server, gdb_available, run_gdb_file};
use common::samples::{Sample, fixture, per_function, samples, write_kernel_elf};
use krr_engine::replay::Replay;
use krr_engine::timeline::Timeline;
use krr_ui::{App, Keymap, MoveCtl};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `command` in gdb from each sample position; the icount it lands at, or None
/// where gdb refused it.
fn gdb_results(samples: &[Sample], command: &str, dir: &Path) -> Vec<Option<u64>> {
    let server = Server::start();
    let list: Vec<String> = samples.iter().map(|s| s.icount.to_string()).collect();
    let script = format!(
        r#"
import gdb, re
gdb.execute("set pagination off")
gdb.execute("set confirm off")
gdb.execute("target remote {addr}")
def when():
    out = gdb.execute("monitor when", to_string=True)
    return int(re.search(r"icount: (\d+)", out).group(1))
for k in [{list}]:
    # Arrive at k by a step, as a stop gdb has seen (not a `monitor` move).
    if k > 0:
        gdb.execute("monitor goto-icount %d" % (k - 1), to_string=True)
        gdb.execute("maint flush register-cache", to_string=True)
        gdb.execute("stepi", to_string=True)
    else:
        gdb.execute("monitor goto-icount 0", to_string=True)
        gdb.execute("maint flush register-cache", to_string=True)
    assert when() == k
    try:
        gdb.execute("{command}", to_string=True)
        print("RESULT %d %d" % (k, when()))
    except gdb.error as e:
        print("RESULT %d none %s" % (k, str(e).replace("\n", " ")))
gdb.execute("detach")
"#,
        addr = server.addr,
        list = list.join(","),
    );
    let script_path = dir.join(format!("{}.py", command.replace(' ', "_")));
    std::fs::write(&script_path, script).unwrap();
    let (out, err) = run_gdb_file(
        Some(&dir.join("kernel.elf")),
        &script_path,
        Duration::from_secs(1800),
    );
    let mut results: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    for l in out.lines() {
        let Some(rest) = l.strip_prefix("RESULT ") else {
            continue;
        };
        let mut w = rest.split_whitespace();
        let k: u64 = w.next().unwrap().parse().unwrap();
        results.insert(k, w.next().and_then(|v| v.parse().ok()));
    }
    assert_eq!(
        results.len(),
        samples
            .iter()
            .map(|s| s.icount)
            .collect::<BTreeSet<_>>()
            .len(),
        "gdb answered every sample for {command}:\n{out}\n{err}"
    );
    samples.iter().map(|s| results[&s.icount]).collect()
}

/// Where the UI's move `key` lands from each sample position, and for `f` why gdb's
/// `finish` is not comparable there, if it is not.
fn ui_results(samples: &[Sample], key: char) -> Vec<(u64, Option<&'static str>, Option<u64>)> {
    let replay = Replay::open(fixture()).expect("fixture");
    let mut app = App::new(Timeline::new(replay, 1 << 30), Keymap::default());
    let mut ignore = |_: f64| {};
    samples
        .iter()
        .map(|s| {
            app.timeline.goto_icount(s.icount);
            assert_eq!(app.timeline.icount(), s.icount);
            let not_comparable = if key == 'f' {
                finish_not_comparable(&app.timeline)
            } else {
                None
            };
            let cfa = app.timeline.caller_frame().map(|c| c.stack_pointer);
            app.press(
                KeyEvent::new(KeyCode::Char(key), KeyModifiers::NONE),
                &mut MoveCtl::none(&mut ignore),
            );
            (app.timeline.icount(), not_comparable, cfa)
        })
        .collect()
}

/// Whether gdb's `reverse-finish`, which goes back to the last entry of the function
/// in any frame, landed before another activation's entry: the instruction after
/// `landed` is the function's entry in a frame other than `cfa`'s (another thread's, or
/// a recursive call's).
fn entered_elsewhere(t: &mut Timeline, landed: u64, cfa: Option<u64>) -> bool {
    let Some(cfa) = cfa else {
        return false;
    };
    t.goto_icount(landed + 1);
    let entry = t
        .symbols()
        .lookup(t.position().rip)
        .is_some_and(|l| l.offset == 0);
    entry && t.caller_frame().is_some_and(|c| c.stack_pointer != cfa)
}

/// Where gdb's `finish` cannot find the caller: in code the call-frame information does
/// not describe (gdb guesses the caller from the top of the stack, which in an entry
/// stub is the interrupted instruction), or where the return address starts a symbol
/// (gdb names the caller's frame by the function before the return address and the
/// stop there by the symbol at it, so the two never match: the demo's `trap_return`).
fn finish_not_comparable(t: &Timeline) -> Option<&'static str> {
    let symbols = t.symbols();
    let rip = t.position().rip;
    if !symbols.unwinder().is_some_and(|u| u.covers(rip)) {
        return Some("no call-frame information");
    }
    let caller = t.caller_frame()?;
    symbols
        .lookup(caller.return_address)
        .filter(|l| l.offset == 0)
        .map(|_| "the return address starts a symbol")
}

#[test]
fn the_ui_line_moves_land_where_gdbs_do() {
    if !gdb_available() {
        return;
    }
    // Every executed line takes about 7 minutes here; by default a few per function.
    let samples = samples(per_function("KRR_LINE_SAMPLES", 3));
    let functions: BTreeSet<&str> = samples.iter().map(|s| s.function.as_str()).collect();
    println!(
        "{} samples over {} functions",
        samples.len(),
        functions.len()
    );
    let dir = tempfile::tempdir().unwrap();
    write_kernel_elf(dir.path());
    let only: Option<String> = std::env::var("KRR_LINE_MOVES").ok();
    let moves = [
        ('n', "next"),
        ('N', "reverse-next"),
        ('s', "step"),
        ('S', "reverse-step"),
        ('f', "finish"),
        ('F', "reverse-finish"),
    ];
    let mut check = Timeline::new(Replay::open(fixture()).expect("fixture"), 1 << 30);
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    let mut compared = 0;
    for (key, command) in moves {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|m| m == command))
        {
            continue;
        }
        let t = Instant::now();
        let gdb = gdb_results(&samples, command, dir.path());
        let tg = t.elapsed();
        let t = Instant::now();
        let ui = ui_results(&samples, key);
        println!(
            "{command}: gdb {:.1} s, ui {:.1} s",
            tg.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        for ((s, g), (u, not_comparable, cfa)) in samples.iter().zip(&gdb).zip(&ui) {
            let Some(g) = g else {
                continue;
            };
            // Where gdb is known to be wrong, a difference is reported, not failed.
            let not_comparable = if g == u {
                None
            } else if key == 'F' && entered_elsewhere(&mut check, *g, *cfa) {
                Some("gdb went back to the function's entry in another frame")
            } else {
                *not_comparable
            };
            if let Some(why) = not_comparable {
                skipped.push(format!(
                    "{key} ({command}) from icount {} {}: {why} (ui {u}, gdb {g})",
                    s.icount, s.function
                ));
                continue;
            }
            compared += 1;
            if g != u {
                failures.push(format!(
                    "{key} ({command}) from icount {} {:#x} {} {}: ui {u}, gdb {g}",
                    s.icount, s.rip, s.function, s.line
                ));
            }
        }
    }
    for s in &skipped {
        println!("not compared: {s}");
    }
    for f in &failures {
        println!("{f}");
    }
    println!(
        "{compared} compared, {} not comparable, {} differ",
        skipped.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} moves differ from gdb's",
        failures.len()
    );
}

/// The line table gdb reads, at every instruction of the demo kernel: the line, its
/// file and the range gdb's `info line *ADDR` gives are the UI's.
#[test]
fn the_line_at_every_instruction_is_gdbs() {
    if !gdb_available() {
        return;
    }
    let mut t = Timeline::new(Replay::open(fixture()).expect("fixture"), 1 << 30);
    // Late in the recording, where the kernel's text is mapped.
    t.goto_icount(1_000_000);
    let symbols = t.symbols();
    let mut addrs = Vec::new();
    for f in symbols.functions() {
        for ins in t.instructions(f.addr, f.size as usize) {
            addrs.push(ins.ip());
        }
    }
    addrs.sort_unstable();
    addrs.dedup();
    assert!(addrs.len() > 2000, "{} instructions", addrs.len());
    let dir = tempfile::tempdir().unwrap();
    let elf = dir.path().join("kernel.elf");
    std::fs::write(
        &elf,
        t.replay()
            .header()
            .kernel_image
            .as_deref()
            .expect("embedded kernel"),
    )
    .unwrap();
    let script = dir.path().join("lines.gdb");
    let text: String = addrs
        .iter()
        .map(|a| format!("info line *{a:#x}\n"))
        .collect();
    std::fs::write(&script, text).unwrap();
    let out = Command::new("gdb")
        .args(["-batch", "-nx"])
        .arg("-ex")
        .arg(format!("file {}", elf.display()))
        .arg("-x")
        .arg(&script)
        .output()
        .expect("gdb runs");
    let out = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("Line ") || l.starts_with("No line number"))
        .collect();
    assert_eq!(answers.len(), addrs.len(), "{out}");
    let mut differ = Vec::new();
    for (&a, gdb) in addrs.iter().zip(&answers) {
        // `Line 70 of "FILE" starts at address 0x... <sym> and ends at 0x... <sym>.`
        let ours = match symbols.line_range(a) {
            None => "none".to_string(),
            Some(l) => format!(
                "{} {} {:#x} {:#x}",
                l.file.display(),
                l.line,
                l.start,
                l.end
            ),
        };
        let theirs = if gdb.starts_with("No line number") {
            "none".to_string()
        } else {
            let line = gdb.split_whitespace().nth(1).unwrap();
            let file = gdb.split('"').nth(1).unwrap();
            let addrs: Vec<&str> = gdb
                .split_whitespace()
                .filter(|w| w.starts_with("0x"))
                .map(|w| w.trim_end_matches('.'))
                .collect();
            format!("{file} {line} {} {}", addrs[0], addrs[1])
        };
        if ours != theirs {
            differ.push(format!("{a:#x}: ours {ours}, gdb {theirs}"));
        }
    }
    assert!(
        differ.is_empty(),
        "{} differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
}
