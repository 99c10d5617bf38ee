//! Where the terminal UI puts a breakpoint given by source line (`:break FILE:LINE`) or
//! by a function the compiler inlined (`:break NAME`), against gdb's `info breakpoints`
//! for the same specification on the demo recording's kernel: every line of every
//! source file of the kernel (lines without code too: both take the next line with
//! code), and every function that exists only inlined.

mod common;

use common::gdb::gdb_available;
use krr_engine::replay::Replay;
use krr_engine::symbols::Symbols;
use krr_engine::timeline::Timeline;
use krr_ui::{App, Keymap, MoveCtl};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demo.krr")
}

/// gdb's addresses for each specification (`break SPEC`), from `info breakpoints`;
/// specifications gdb refused are absent.
fn gdb_locations(elf: &Path, specs: &[String], dir: &Path) -> BTreeMap<String, BTreeSet<u64>> {
    let mut script = String::new();
    for (i, s) in specs.iter().enumerate() {
        script.push_str(&format!("echo @@{i}\\n\nbreak {s}\n"));
    }
    script.push_str("info breakpoints\n");
    let path = dir.join("breaks.gdb");
    std::fs::write(&path, script).unwrap();
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "set confirm off", "-ex"])
        .arg(format!("file {}", elf.display()))
        .arg("-x")
        .arg(&path)
        .output()
        .expect("gdb runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // Which breakpoint number each specification became.
    let mut number_of: BTreeMap<u32, String> = BTreeMap::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        if let Some(i) = line.strip_prefix("@@") {
            current = i.trim().parse().ok();
        } else if let (Some(i), Some(rest)) = (current, line.strip_prefix("Breakpoint ")) {
            let n: u32 = rest.split_whitespace().next().unwrap().parse().unwrap();
            number_of.insert(n, specs[i].clone());
            current = None;
        }
    }
    let mut out: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(id) = words.next() else { continue };
        let number = id.split('.').next().unwrap().parse::<u32>().ok();
        let Some(spec) = number.and_then(|n| number_of.get(&n)) else {
            continue;
        };
        if let Some(addr) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("0x"))
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            out.entry(spec.clone()).or_default().insert(addr);
        }
    }
    out
}

/// The UI's addresses for `:break SPEC` (None where it refused it).
fn ui_locations(app: &mut App, spec: &str) -> Option<BTreeSet<u64>> {
    let mut ignore = |_: f64| {};
    let mut ctl = MoveCtl::none(&mut ignore);
    app.command("delete", &mut ctl);
    app.command(&format!("break {spec}"), &mut ctl);
    let at: BTreeSet<u64> = app.timeline.breakpoints().iter().copied().collect();
    (!at.is_empty()).then_some(at)
}

#[test]
fn source_line_and_inlined_function_breakpoints_are_where_gdb_puts_them() {
    if !gdb_available() {
        return;
    }
    let replay = Replay::open(fixture()).expect("fixture");
    let image = replay
        .header()
        .kernel_image
        .clone()
        .expect("embedded kernel");
    let symbols = Symbols::from_header(replay.header());
    let dir = std::env::temp_dir().join(format!("krr-breaks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let elf = dir.join("kernel.elf");
    std::fs::write(&elf, image).unwrap();

    // Every line of every source file with code, and a few past each file's end.
    let mut last_line: BTreeMap<String, u32> = BTreeMap::new();
    for (_, file, line) in symbols.line_table().expect("lines").statements() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let e = last_line.entry(name).or_default();
        *e = (*e).max(line);
    }
    let mut specs: Vec<String> = last_line
        .iter()
        .flat_map(|(f, &last)| (1..=last + 2).map(move |l| format!("{f}:{l}")))
        .collect();
    // Functions that exist only inlined.
    let inlined: BTreeSet<String> = symbols
        .blocks()
        .expect("blocks")
        .iter()
        .filter(|b| b.is_inlined())
        .filter_map(|b| b.name.clone())
        .filter(|n| symbols.functions().iter().all(|f| &f.name != n))
        .collect();
    assert!(inlined.contains("sys_read_disk"), "{inlined:?}");
    specs.extend(inlined.iter().cloned());

    let gdb = gdb_locations(&elf, &specs, &dir);
    assert!(
        gdb.len() > specs.len() / 2,
        "gdb placed only {} of {} breakpoints",
        gdb.len(),
        specs.len()
    );
    let mut app = App::new(Timeline::new(replay, 1 << 30), Keymap::default());
    let mut wrong = Vec::new();
    let mut several = 0;
    for spec in &specs {
        let ui = ui_locations(&mut app, spec);
        let theirs = gdb.get(spec);
        if theirs.is_some_and(|t| t.len() > 1) {
            several += 1;
        }
        if ui.as_ref() != theirs {
            wrong.push(format!(
                "{spec}: ui {:x?}, gdb {:x?} ({})",
                ui, theirs, app.message
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(several > 0, "no specification had several locations");
    assert!(
        wrong.is_empty(),
        "{} of {} differ:\n{}",
        wrong.len(),
        specs.len(),
        wrong.join("\n")
    );
}
