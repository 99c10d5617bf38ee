//! Start positions on the demo recording for the tests that compare the UI with gdb:
//! the first time execution reaches each source statement.

use krr_engine::replay::{Replay, Stop, Target};
use krr_engine::symbols::Symbols;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demo.krr")
}

/// A start position: the first time execution reaches a statement.
#[derive(Debug, Clone)]
pub struct Sample {
    pub icount: u64,
    pub rip: u64,
    pub function: String,
    pub line: String,
}

/// Every statement of the kernel that executes, at the first icount it is reached;
/// at most `per_function` per function, spread over its lines.
pub fn samples(per_function: usize) -> Vec<Sample> {
    let mut replay = Replay::open(fixture()).expect("fixture");
    let symbols = Symbols::from_header(replay.header());
    let table = symbols.line_table().expect("line tables");
    let mut pending: BTreeSet<u64> = table.statements().iter().map(|s| s.0).collect();
    let mut first: BTreeMap<u64, u64> = BTreeMap::new();
    replay.set_user_breakpoints(pending.iter().copied().collect());
    while let Stop::Breakpoint(a) = replay.run(Target::End) {
        first.entry(a).or_insert(replay.icount());
        pending.remove(&a);
        replay.set_user_breakpoints(pending.iter().copied().collect());
    }
    let mut by_function: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for (&rip, &icount) in &first {
        let function = symbols
            .lookup(rip)
            .map(|l| l.function.name.clone())
            .unwrap_or_default();
        let line = symbols
            .line(rip)
            .map(|l| format!("{}:{}", l.file.display(), l.line))
            .unwrap_or_default();
        by_function
            .entry(function.clone())
            .or_default()
            .push(Sample {
                icount,
                rip,
                function,
                line,
            });
    }
    let mut out = Vec::new();
    for (_, mut v) in by_function {
        v.sort_by_key(|s| s.rip);
        if v.len() > per_function {
            let step = v.len() as f64 / per_function as f64;
            v = (0..per_function)
                .map(|i| v[(i as f64 * step) as usize].clone())
                .collect();
        }
        out.extend(v);
    }
    out.sort_by_key(|s| s.icount);
    out
}

/// How many samples per function the environment variable `var` asks for (`all`, or a
/// number), else `default`.
pub fn per_function(var: &str, default: usize) -> usize {
    match std::env::var(var).as_deref() {
        Ok("all") => usize::MAX,
        Ok(n) => n
            .parse()
            .unwrap_or_else(|_| panic!("{var}: a number or `all`")),
        Err(_) => default,
    }
}

/// Writes the demo recording's embedded kernel to `dir/kernel.elf` (for gdb's `file`).
pub fn write_kernel_elf(dir: &Path) -> PathBuf {
    let replay = Replay::open(fixture()).expect("fixture");
    let path = dir.join("kernel.elf");
    std::fs::write(
        &path,
        replay
            .header()
            .kernel_image
            .as_deref()
            .expect("embedded kernel"),
    )
    .unwrap();
    path
}
