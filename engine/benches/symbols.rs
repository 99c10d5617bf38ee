//! Opening a kernel image and answering what the UI's first screen asks of it: wall
//! time and memory of `Symbols::from_path` (and of hashing the file, which opening the
//! kernel a recording names adds), then of the function and source line at an address,
//! its frames (the DWARF scopes and the call-frame rule there), the first frame's
//! arguments and locals with their types, and the `task_struct` members the status bar
//! reads (`comm`, `pid`). Each query is timed on its first call, as the UI
//! makes it (what it builds is kept for later calls).
//!
//! `cargo bench -p krr-engine --bench symbols` opens the demo kernel embedded in
//! `tests/fixtures/demo.krr` (written to a temporary file first);
//! `KRR_BENCH_VMLINUX=/path/to/vmlinux cargo bench -p krr-engine --bench symbols` opens
//! that image. `KRR_BENCH_FUNCTION` names the function whose address is asked about
//! (default `do_sys_openat2`, else the demo's `kmain`). `KRR_BENCH_RECORDING=FILE.krr`
//! also replays that recording's first screen with the image as `--kernel`
//! (the stack, its variables, the current task).
//!
//! Memory, per step and from before the open: the peak of bytes allocated on the heap
//! (counted exactly by this bench's global allocator), and the process's peak resident
//! set (`VmHWM`, reset through `/proc/self/clear_refs` before the open) with the
//! resident set after the step split as the kernel reports it: `RssAnon` (heap, stacks:
//! the process's own memory) and `RssFile` (pages of mapped files: the image's pages
//! that were touched, which are the kernel's page cache, shared and dropped under
//! memory pressure rather than swapped).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use krr_engine::replay::Replay;
use krr_engine::symbols::{DWARF_PC, Symbols};
use krr_engine::timeline::{DEFAULT_CHECKPOINT_BUDGET, Timeline};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{NOW, PEAK};

/// A `/proc/self/status` field in KiB (0 where it is missing).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// Measures the steps of one run from a common start.
struct Meter {
    heap_base: usize,
    anon_base: u64,
    file_base: u64,
}

impl Meter {
    fn start() -> Meter {
        // "5" resets the peak resident set size (VmHWM) to the current one.
        if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
            eprintln!("(cannot reset VmHWM: {e}; it then counts from the process start)");
        }
        let heap_base = NOW.load(Ordering::Relaxed);
        PEAK.store(heap_base, Ordering::Relaxed);
        Meter {
            heap_base,
            anon_base: status_kib("RssAnon"),
            file_base: status_kib("RssFile"),
        }
    }

    /// Runs `step`, then prints its time and the memory figures so far.
    fn step<T>(&self, what: &str, step: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = step();
        let took = started.elapsed();
        let heap_now = NOW.load(Ordering::Relaxed).saturating_sub(self.heap_base);
        let heap_peak = PEAK.load(Ordering::Relaxed).saturating_sub(self.heap_base);
        println!(
            "  {what:<34} {:>9.1} ms   heap {:>7.1} MiB now, {:>7.1} MiB peak   \
             VmHWM {:>7.1} MiB   RssAnon +{:>6.1} MiB   RssFile +{:>6.1} MiB",
            took.as_secs_f64() * 1e3,
            mib(heap_now as u64),
            mib(heap_peak as u64),
            status_kib("VmHWM") as f64 / 1024.0,
            status_kib("RssAnon").saturating_sub(self.anon_base) as f64 / 1024.0,
            status_kib("RssFile").saturating_sub(self.file_base) as f64 / 1024.0,
        );
        out
    }
}

/// The image to open: KRR_BENCH_VMLINUX, else the demo kernel embedded in the checked-in
/// recording, written to `dir`.
fn image(dir: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("KRR_BENCH_VMLINUX") {
        return PathBuf::from(p);
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/demo.krr");
    let replay = Replay::open(&fixture).expect("the demo fixture");
    let elf = replay
        .header()
        .kernel_image
        .as_deref()
        .expect("the demo fixture embeds its kernel");
    let path = dir.join("demo-kernel.elf");
    std::fs::write(&path, elf).expect("writing the demo kernel");
    path
}

/// A recording's header naming the image as the kernel it ran (the demo fixture's, its
/// kernel identity replaced and no image embedded).
fn recorded_header(path: &Path, size: u64) -> krr_engine::trace::Header {
    use sha2::{Digest as _, Sha256};
    use std::io::Read as _;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/demo.krr");
    let mut header = Replay::open(&fixture)
        .expect("the demo fixture")
        .header()
        .clone();
    header.kernel_image = None;
    header.kernel.name = std::path::absolute(path)
        .expect("an absolute path")
        .display()
        .to_string();
    header.kernel.size = size;
    let mut file = std::fs::File::open(path).expect("the image");
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("reading the image");
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    header.kernel.sha256 = sha.finalize().into();
    header
}

fn main() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let path = image(tmp.path());
    let size = std::fs::metadata(&path).expect("the image").len();
    println!("{} ({:.1} MiB)", path.display(), mib(size));
    // Opening the kernel file a recording names (no `--kernel`): `Symbols::from_header`
    // checks the file is the one recorded by its size and SHA-256 before opening it.
    let header = recorded_header(&path, size);
    let meter = Meter::start();
    let auto = meter.step("open as recorded (from_header)", || {
        Symbols::from_header(&header)
    });
    let auto_functions = (auto.functions().len(), auto.has_lines());
    drop(auto);
    println!("  (then, measured afresh:)");
    let meter = Meter::start();
    let symbols = meter.step("open (Symbols::from_path)", || {
        Symbols::from_path(&path).expect("the image opens")
    });
    assert_eq!(
        auto_functions,
        (symbols.functions().len(), symbols.has_lines()),
        "from_header opened the file, not the recording's symbol list"
    );
    let function = std::env::var("KRR_BENCH_FUNCTION").ok();
    let names = match &function {
        Some(f) => vec![f.as_str()],
        None => vec!["do_sys_openat2", "kmain"],
    };
    let Some((name, entry)) = names
        .iter()
        .find_map(|n| Some((*n, symbols.address_of(n)?)))
    else {
        println!("  none of {names:?} is a function of the image");
        return;
    };
    // An address inside the function, past its prologue, as a stop in it would be.
    let pc = symbols
        .lookup(entry + 0x10)
        .filter(|l| l.function.name == name)
        .map_or(entry, |_| entry + 0x10);
    let located = meter.step("function at the address", || symbols.describe(pc));
    let line = meter.step("source line (source pane)", || symbols.line(pc));
    let frames = meter.step("DWARF frames (inlined calls)", || {
        symbols.debug_info().map(|d| d.frames_at(pc))
    });
    let rule = meter.step("call-frame rule (unwinding)", || {
        let mut regs = [Some(0x1000u64); 17];
        regs[DWARF_PC] = Some(pc);
        let u = symbols.unwinder()?;
        Some((u.covers(pc), u.caller_registers(&regs, true, &|_| Some(0))))
    });
    let variables = meter.step("first frame's arguments, locals", || {
        let info = symbols.debug_info()?;
        let frame = frames.as_ref()?.last()?;
        let vars: Vec<String> = info
            .parameters(frame)
            .into_iter()
            .chain(info.locals(frame))
            .map(|v| format!("{} {}", info.type_name(&info.type_of(v.die)), v.name))
            .collect();
        Some(vars)
    });
    let members = meter.step("task_struct comm, pid (status)", || {
        (
            symbols.member("task_struct", "comm"),
            symbols.member("task_struct", "pid"),
        )
    });
    println!(
        "  -> {located}; {line:?}; {} frames; rule {:?}; {} variables; comm {:?}, pid {:?}",
        frames.as_ref().map_or(0, Vec::len),
        rule.map(|r| r.0),
        variables.as_ref().map_or(0, Vec::len),
        members.0,
        members.1,
    );
    if let Some(rec) = std::env::var_os("KRR_BENCH_RECORDING") {
        let mut timeline = Timeline::new(
            Replay::open(Path::new(&rec)).expect("the recording"),
            DEFAULT_CHECKPOINT_BUDGET,
        );
        timeline.set_symbols(symbols);
        let frames = meter.step("recording: stack frames", || timeline.stack_frames(16));
        let vars = meter.step("recording: frame 0 variables", || {
            timeline.frame_variables(0)
        });
        let task = meter.step("recording: current task", || timeline.current_process());
        // The source pane's line: gdb's, which asks whether the position enters an
        // inlined call (every function and inlined call of the image: `Blocks`).
        let line = meter.step("recording: source line (inlined)", || {
            timeline.source_line()
        });
        println!(
            "  -> {} frames, {} variables, task {task:?}, line {line:?}",
            frames.len(),
            vars.map_or(0, |v| v.arguments.len() + v.locals.len())
        );
        return;
    }
    // What later commands build (not the first screen): breakpoints by function name
    // and by line (all line programs), the kernel log's types, a global's entry.
    let addresses = meter.step("later: break NAME (all blocks)", || {
        symbols.function_addresses(name).len()
    });
    let stmts = meter.step("later: break FILE:LINE", || {
        let l = line.as_ref()?;
        let file = l.file.file_name()?.to_str()?;
        symbols.line_addresses(file, l.line).map(|(_, a)| a.len())
    });
    let printk = meter.step("later: printk ring layout (dmesg)", || {
        symbols.member("printk_ringbuffer", "desc_ring")
    });
    let global = meter.step("later: a global by name (print)", || {
        symbols.debug_info()?.global("jiffies", None)
    });
    println!(
        "  -> {addresses} locations of {name}; {stmts:?} at its line; printk {printk:?}; \
         jiffies {}",
        global.is_some()
    );
}
