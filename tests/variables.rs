//! Variables, backtraces and expressions in the UI's engine against gdb's: from the
//! first time execution reaches sampled source lines of the demo recording (a few per
//! function; `KRR_VARIABLE_SAMPLES=all` or `=N`), the backtrace (inlined frames and
//! arguments), `info args`, `info locals` and a set of `print` expressions must read as
//! gdb reads them, with gdb in batch mode attached to `krr-tui replay --gdb` on the same
//! recording (`set print entry-values no`: the UI does not print `x@entry=`).

mod common;

use common::gdb::{Server, gdb_available, run_gdb_file};
use common::samples::{fixture, per_function, samples, write_kernel_elf};
use krr_engine::replay::Replay;
use krr_engine::symbols::{Radix, Symbols};
use krr_engine::timeline::Timeline;
use std::collections::BTreeMap;
use std::time::Duration;

/// Expressions printed at every sample (an error is compared as an error).
const EXPRESSIONS: [&str; 16] = [
    "ticks",
    "&ticks",
    "cur",
    "*cur",
    "cur->name",
    "cur->pid + 1",
    "procs[1]",
    "&procs[1]",
    "procs[1].name[0]",
    "(long)ticks * 2 - 1",
    "sizeof(struct proc)",
    "(struct proc *)cur",
    "*cur->parent",
    "disk_buf",
    "prog_names",
    "prog_names[1][0] + (unsigned char)200",
];

/// What one position shows: the backtrace lines, the arguments, the locals, each
/// expression's value (or `error`).
#[derive(Debug, Default, PartialEq, Eq)]
struct Shown {
    backtrace: Vec<String>,
    args: Vec<String>,
    locals: Vec<String>,
    prints: Vec<String>,
    /// `print/x` of the first argument, where there is one.
    hex: Vec<String>,
}

/// `at syscall.c:70` keeps only the file's name (gdb prints the path as compiled).
fn normalize(line: &str) -> String {
    match line.rsplit_once(" at ") {
        Some((head, loc)) => {
            let name = loc.rsplit('/').next().unwrap_or(loc);
            format!("{head} at {name}")
        }
        None => line.to_string(),
    }
}

fn gdb_shown(icounts: &[u64], dir: &std::path::Path) -> BTreeMap<u64, Shown> {
    let server = Server::start();
    let list: Vec<String> = icounts.iter().map(|k| k.to_string()).collect();
    let exprs: Vec<String> = EXPRESSIONS.iter().map(|e| format!("{e:?}")).collect();
    let script = format!(
        r#"
import gdb, re
gdb.execute("set pagination off")
gdb.execute("set confirm off")
gdb.execute("set print entry-values no")
gdb.execute("set width 0")
gdb.execute("set charset ASCII")
gdb.execute("target remote {addr}")
def out(cmd):
    try:
        return gdb.execute(cmd, to_string=True)
    except gdb.error as e:
        return "error: " + str(e)
for k in [{list}]:
    if k > 0:
        gdb.execute("monitor goto-icount %d" % (k - 1), to_string=True)
        gdb.execute("maint flush register-cache", to_string=True)
        gdb.execute("stepi", to_string=True)
    print("POSITION %d" % k)
    for l in out("bt").splitlines():
        print("BT " + l)
    for l in out("info args").splitlines():
        print("ARG " + l)
    for l in out("info locals").splitlines():
        print("LOCAL " + l)
    for e in [{exprs}]:
        v = out("print " + e)
        print("PRINT " + re.sub(r"^\$\d+ = ", "", v.strip()).replace("\n", " "))
    names = []
    try:
        b = gdb.selected_frame().block()
        while b is not None and b.function is None:
            b = b.superblock
        if b is not None:
            names = [s.name for s in b if s.is_argument]
    except RuntimeError:
        pass
    if names:
        v = out("print/x " + names[0])
        print("HEX " + re.sub(r"^\$\d+ = ", "", v.strip()).replace("\n", " "))
gdb.execute("detach")
"#,
        addr = server.addr,
        list = list.join(","),
        exprs = exprs.join(","),
    );
    let script_path = dir.join("variables.py");
    std::fs::write(&script_path, script).unwrap();
    let (out, err) = run_gdb_file(
        Some(&dir.join("kernel.elf")),
        &script_path,
        Duration::from_secs(1800),
    );
    let mut shown: BTreeMap<u64, Shown> = BTreeMap::new();
    let mut at = None;
    for l in out.lines() {
        if let Some(k) = l.strip_prefix("POSITION ") {
            at = Some(k.parse::<u64>().unwrap());
            shown.entry(at.unwrap()).or_default();
            continue;
        }
        let Some(s) = at.and_then(|k| shown.get_mut(&k)) else {
            continue;
        };
        if let Some(b) = l.strip_prefix("BT ") {
            if b.starts_with('#') {
                s.backtrace.push(normalize(b));
            }
        } else if let Some(a) = l.strip_prefix("ARG ") {
            if a != "No arguments." && a != "No symbol table info available." {
                s.args.push(a.to_string());
            }
        } else if let Some(a) = l.strip_prefix("LOCAL ") {
            if a != "No locals." && a != "No symbol table info available." {
                s.locals.push(a.to_string());
            }
        } else if let Some(p) = l.strip_prefix("PRINT ") {
            s.prints.push(if p.starts_with("error: ") {
                "error".into()
            } else {
                p.to_string()
            });
        } else if let Some(p) = l.strip_prefix("HEX ") {
            s.hex.push(p.to_string());
        }
    }
    assert_eq!(
        shown.len(),
        icounts.len(),
        "gdb answered every position:\n{out}\n{err}"
    );
    shown
}

fn ui_shown(t: &mut Timeline, k: u64) -> Shown {
    t.goto_icount(k);
    let frames = t.stack_frames(64);
    let backtrace = frames
        .iter()
        .map(|f| normalize(&format!("#{:<3}{}", f.level, t.frame_text(f))))
        .collect();
    let vars = t.frame_variables(0).unwrap_or_default();
    let line = |v: &krr_engine::timeline::VariableText| format!("{} = {}", v.name, v.value);
    let prints = EXPRESSIONS
        .iter()
        .map(|e| {
            t.print_expression(e, 0, Radix::Natural)
                .unwrap_or_else(|_| "error".into())
        })
        .collect();
    let hex = vars
        .arguments
        .first()
        .map(|a| {
            vec![
                t.print_expression(&a.name, 0, Radix::Hex)
                    .unwrap_or_else(|e| format!("error: {e}")),
            ]
        })
        .unwrap_or_default();
    Shown {
        backtrace,
        args: vars.arguments.iter().map(line).collect(),
        locals: vars.locals.iter().map(line).collect(),
        prints,
        hex,
    }
}

#[test]
fn variables_backtraces_and_prints_read_as_gdbs() {
    if !gdb_available() {
        return;
    }
    let samples = samples(per_function("KRR_VARIABLE_SAMPLES", 2));
    let dir = tempfile::tempdir().unwrap();
    write_kernel_elf(dir.path());
    let replay = Replay::open(fixture()).expect("fixture");
    let icounts: Vec<u64> = samples.iter().map(|s| s.icount).collect();
    let gdb = gdb_shown(&icounts, dir.path());
    let symbols = Symbols::from_header(replay.header());
    let mut t = Timeline::new(replay, 1 << 30);
    let mut failures = Vec::new();
    let mut compared = (0, 0, 0);
    let mut unknown_frames = 0;
    for s in &samples {
        let g = &gdb[&s.icount];
        let mut u = ui_shown(&mut t, s.icount);
        // gdb goes on past the code the symbols know (`0x0 in ?? ()`, or an interrupt
        // frame's words taken for return addresses: `0x246 in ?? ()`, `in boot_stack ()`);
        // the UI stops where a return address is in no function.
        let mut g_backtrace = g.backtrace.clone();
        let outside_code = |f: &String| {
            f.split_whitespace()
                .nth(1)
                .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
                .is_some_and(|pc| symbols.lookup(pc.wrapping_sub(1)).is_none())
        };
        if g_backtrace.len() > u.backtrace.len()
            && g_backtrace[u.backtrace.len()..].iter().all(outside_code)
        {
            unknown_frames += g_backtrace.len() - u.backtrace.len();
            g_backtrace.truncate(u.backtrace.len());
        }
        // In an assembly file gdb's language is asm, which names `struct proc *` as
        // `proc *`.
        if s.line.contains(".S:") {
            for p in u.prints.iter_mut() {
                *p = p.replace("(struct ", "(");
            }
        }
        // gdb keeps a lexical block's locals in a hash table: compare them as sets.
        let mut g_locals = g.locals.clone();
        g_locals.sort();
        u.locals.sort();
        compared.0 += g.backtrace.len();
        compared.1 += g.args.len() + g_locals.len();
        compared.2 += g.prints.len();
        let what = format!("icount {} {} {}", s.icount, s.function, s.line);
        if u.backtrace != g_backtrace {
            failures.push(format!(
                "{what}: backtrace\n  ui:  {:?}\n  gdb: {:?}",
                u.backtrace, g.backtrace
            ));
        }
        if u.args != g.args {
            failures.push(format!(
                "{what}: args\n  ui:  {:?}\n  gdb: {:?}",
                u.args, g.args
            ));
        }
        if u.locals != g_locals {
            failures.push(format!(
                "{what}: locals\n  ui:  {:?}\n  gdb: {:?}",
                u.locals, g_locals
            ));
        }
        for (i, e) in EXPRESSIONS.iter().enumerate() {
            if u.prints.get(i) != g.prints.get(i) {
                failures.push(format!(
                    "{what}: print {e}\n  ui:  {:?}\n  gdb: {:?}",
                    u.prints.get(i),
                    g.prints.get(i)
                ));
            }
        }
        if u.hex != g.hex {
            failures.push(format!(
                "{what}: print/x\n  ui:  {:?}\n  gdb: {:?}",
                u.hex, g.hex
            ));
        }
    }
    println!(
        "{} positions: {} backtrace frames, {} variables, {} prints compared; {} frames of \
         gdb's past known code not shown",
        samples.len(),
        compared.0,
        compared.1,
        compared.2,
        unknown_frames
    );
    assert!(
        compared.1 > 50 && compared.0 > samples.len(),
        "{compared:?}"
    );
    assert!(
        failures.is_empty(),
        "{} differences from gdb:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
