//! `krr-tui info` and `krr-tui replay --headless` on recordings crafted to claim or
//! expand to far more than they hold (built here, not checked in): each runs in under
//! 512 MiB.
//!
//! How the peak is measured: the child runs with `RLIMIT_AS` at 512 MiB (set between
//! fork and exec), so an allocation that would take its address space past that fails
//! and the process aborts, which fails the test; address space counts every mapping,
//! touched or not, so it bounds the resident peak from above. Its resident high-water
//! mark is then read from `wait4`'s resource usage (`ru_maxrss`): exact, kept by the
//! kernel after the child exits (unlike `VmHWM` in /proc, gone once it has exited), and
//! of that child alone. Both are plain system calls on any Linux: no cgroup, no
//! `prlimit`, no privileges. The child starts as a copy of the test process (fork, then
//! exec), and `ru_maxrss` counts that copy too, so the tests run one at a time and hold
//! nothing large when they start one (the crafted bytes are written and dropped first).

#[path = "../engine/tests/craft/mod.rs"]
mod craft;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const LIMIT: u64 = 512 << 20;

/// How a run under the limit ended.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// Peak resident memory, in bytes.
    max_rss: u64,
}

/// Runs krr-tui with `args` under [`LIMIT`] of address space.
fn run_limited(args: &[&str], file: &Path) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_krr-tui"));
    cmd.args(args)
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // setrlimit, which is async-signal-safe, on a value on its own stack.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    #[expect(
        clippy::zombie_processes,
        reason = "reaped below by wait4, which also gives its resource usage"
    )]
    let mut child = cmd.spawn().expect("krr-tui starts");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our child, not waited for yet (std's Child is never waited
        // on here); status and usage point to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("krr-tui {args:?} {} ran over 2 minutes", file.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Run {
        status: ExitStatus::from_raw(status),
        stdout: String::from_utf8_lossy(&t_out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
        max_rss: usage.ru_maxrss as u64 * 1024,
    }
}

/// One test at a time (they run on several threads): a run may take hundreds of MiB, and
/// another test building its recording while one starts krr-tui would count in its peak.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `info` and `replay --headless --quiet` on `bytes`; both end normally (exit 0 or
/// a clear error, never killed or aborted) within the limit. Returns their runs.
fn check(name: &str, bytes: Vec<u8>) -> (Run, Run) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.krr"));
    std::fs::write(&file, &bytes).unwrap();
    let size = bytes.len();
    drop(bytes);
    let info = run_limited(&["info"], &file);
    let replay = run_limited(&["replay", "--headless", "--quiet"], &file);
    for (what, run) in [("info", &info), ("replay", &replay)] {
        println!(
            "{name} ({size} bytes): {what} exit {:?}, peak resident {} MiB",
            run.status.code(),
            run.max_rss >> 20
        );
        assert!(
            run.status.code().is_some_and(|c| c <= 1),
            "{name}: {what} ended with {:?} (signal {:?}):\n{}{}",
            run.status,
            run.status.signal(),
            run.stdout,
            run.stderr
        );
        assert!(
            !run.stderr.contains("panicked"),
            "{name}: {what}: {}",
            run.stderr
        );
        assert!(
            run.max_rss < LIMIT,
            "{name}: {what} peak {} MiB",
            run.max_rss >> 20
        );
    }
    (info, replay)
}

/// The offset in an `INCOMPLETE`/`DAMAGED` line of `info`, checked to be there.
fn reports_offset(info: &Run, what: &str) {
    assert!(
        info.status.success() && info.stdout.contains("at offset") && info.stdout.contains(what),
        "info: {}{}",
        info.stdout,
        info.stderr
    );
}

#[test]
fn a_chunk_of_a_few_kb_that_expands_to_64_mib_of_events() {
    let _one = one_at_a_time();
    for (name, bytes) in [
        ("chunk-bomb-cut-short", craft::chunk_bomb()),
        ("chunk-bomb-finished", craft::chunk_bomb_finished()),
    ] {
        assert!(bytes.len() < 100 << 10, "{name}: {} bytes", bytes.len());
        let (info, replay) = check(name, bytes);
        reports_offset(&info, "events in a");
        assert!(
            replay.status.success() && replay.stderr.contains("incomplete or damaged"),
            "{name}: {}{}",
            replay.stdout,
            replay.stderr
        );
    }
}

#[test]
fn millions_of_small_events() {
    let _one = one_at_a_time();
    for n in [1_000_000u64, 4_000_000] {
        let bytes = craft::many_events(n, 65_536);
        let (info, replay) = check(&format!("{n}-events"), bytes);
        assert!(
            info.stdout.contains(&n.to_string()) && !info.stdout.contains("DAMAGED"),
            "{}",
            info.stdout
        );
        // info decodes one chunk (65,536 events of 200 bytes) at a time; replay reads
        // them a chunk at a time too, through its cache of 32 MiB (they all fit the
        // default budget: 8 bytes each for where they were applied).
        assert!(info.max_rss < 32 << 20, "info {} MiB", info.max_rss >> 20);
        assert!(
            replay.max_rss < 128 << 20,
            "replay {} MiB",
            replay.max_rss >> 20
        );
        assert!(
            !replay.stderr.contains("--recording-memory"),
            "{}",
            replay.stderr
        );
    }
}

#[test]
fn chunks_of_64_mib_payloads() {
    let _one = one_at_a_time();
    // 256 MiB of console bytes in four chunks, each decoding to more than the event
    // cache's 32 MiB: replay holds one at a time (its payload and its events), not
    // all four.
    let bytes = craft::big_console_chunks(4);
    let (info, replay) = check("big-chunks", bytes);
    assert!(info.stdout.contains("262144"), "{}", info.stdout);
    assert!(
        replay.max_rss < 320 << 20,
        "replay {} MiB",
        replay.max_rss >> 20
    );
    assert!(
        !replay.stderr.contains("--recording-memory"),
        "{}",
        replay.stderr
    );
}

#[test]
fn a_header_that_declares_64_gib_regions() {
    let _one = one_at_a_time();
    let bytes = craft::region_bomb(16, 64 << 30);
    let (info, replay) = check("region-bomb", bytes);
    assert!(info.status.success(), "{}", info.stderr);
    assert!(
        !replay.status.success() && replay.stderr.contains("replay takes at most"),
        "{}",
        replay.stderr
    );
    // The most a guest may have, in the most regions: nothing allocated for it.
    let bytes = craft::region_bomb(62, 1 << 30);
    let (_, replay) = check("largest-guest", bytes);
    assert!(replay.max_rss < 64 << 20, "{} MiB", replay.max_rss >> 20);
}

#[test]
fn a_trailer_index_and_a_symbol_table_that_claim_millions() {
    let _one = one_at_a_time();
    let (info, _) = check("trailer-bomb", craft::trailer_bomb());
    reports_offset(&info, "index claims");
    let (info, replay) = check("symbol-bomb", craft::symbol_bomb());
    for run in [&info, &replay] {
        assert!(
            !run.status.success() && run.stderr.contains("a recording may hold"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn a_gibibyte_of_snapshot_in_a_megabyte() {
    let _one = one_at_a_time();
    let (info, replay) = check("snapshot-bomb", craft::snapshot_bomb(256));
    assert!(info.status.success(), "{}", info.stderr);
    assert!(replay.status.code().is_some(), "{}", replay.stderr);
}
