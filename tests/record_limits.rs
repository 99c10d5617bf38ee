//! `krr-tui record` reads its kernel and disk images with limits: a kernel larger than
//! the guest's memory is refused (by its size, before it is read, where the file has
//! one), a disk without a size is refused, and a disk is read where the guest reads it,
//! so a large one costs no memory. Each run's peak memory is measured (the child's
//! rusage) under an address-space limit, so that a run reading without bound fails here
//! instead of exhausting the machine.

mod common;

use common::{assert_verifies_to_its_end, krr, kvm};
use krr_engine::event::EventKind;
use krr_engine::trace::RecordingReader;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Address space a recording gets here: room for its 64 MiB guest and more, far less
/// than reading a large image whole takes.
const ADDRESS_SPACE: u64 = 2 << 30;

struct Measured {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// Peak resident memory, bytes.
    peak_rss: u64,
    elapsed: Duration,
}

/// Runs `cmd` under [`ADDRESS_SPACE`], failing the test after `limit`. The child is
/// reaped with `wait4`, which also gives its resource usage. `interrupt`
/// sends SIGINT once a line of standard output contains the text, or once the
/// duration has passed since that line (whichever the pair says).
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, not Child::wait"
)]
fn run_measured(
    mut cmd: Command,
    limit: Duration,
    interrupt: Option<(&str, Duration)>,
) -> Measured {
    let rlimit = libc::rlimit {
        rlim_cur: ADDRESS_SPACE,
        rlim_max: ADDRESS_SPACE,
    };
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // setrlimit, which is async-signal-safe, with a valid struct.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_AS, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("krr-tui starts");
    let pid = child.id() as libc::pid_t;
    let (tx, lines) = mpsc::channel::<String>();
    let out = BufReader::new(child.stdout.take().unwrap());
    let t_out = std::thread::spawn(move || {
        let mut all = String::new();
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut err = child.stderr.take().unwrap();
    let t_err = std::thread::spawn(move || {
        let mut v = String::new();
        let _ = err.read_to_string(&mut v);
        v
    });
    let mut seen: Option<Instant> = None;
    let mut interrupted = false;
    let (status, peak_rss) = loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child, with valid pointers; WNOHANG returns at once.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            break (ExitStatus::from_raw(status), usage.ru_maxrss as u64 * 1024);
        }
        if let Some((text, after)) = interrupt {
            while let Ok(line) = lines.try_recv() {
                if seen.is_none() && line.contains(text) {
                    seen = Some(Instant::now());
                }
            }
            if !interrupted && seen.is_some_and(|t| t.elapsed() >= after) {
                // SAFETY: sending a signal to our own child process.
                unsafe { libc::kill(pid, libc::SIGINT) };
                interrupted = true;
            }
        }
        if start.elapsed() > limit {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!(
                "krr-tui did not finish within {limit:?}; it printed:\n{}",
                t_err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Measured {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        peak_rss,
        elapsed: start.elapsed(),
    }
}

fn record(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = krr();
    cmd.args(["record", "--headless", "--force", "-o"])
        .arg(dir.join("out.krr"))
        .args(args);
    cmd
}

const MIB: u64 = 1 << 20;

#[test]
fn a_kernel_larger_than_the_guest_memory_is_refused_without_reading_it() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A sparse 1 GiB file: its size says it cannot fit in 64 MiB.
    let big = dir.path().join("big-kernel");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let m = run_measured(
        record(
            dir.path(),
            &["--memory", "64M", "--kernel", big.to_str().unwrap()],
        ),
        Duration::from_secs(30),
        None,
    );
    assert_eq!(m.status.code(), Some(1), "{}", m.stderr);
    assert!(
        m.stderr
            .contains("1073741824 bytes, more than the guest's memory (64 MiB)"),
        "{}",
        m.stderr
    );
    assert!(
        m.peak_rss < 32 * MIB,
        "peak RSS {} MiB: the kernel was read",
        m.peak_rss / MIB
    );

    // /dev/zero has no size: it is read no further than the guest's memory.
    let m = run_measured(
        record(dir.path(), &["--memory", "64M", "--kernel", "/dev/zero"]),
        Duration::from_secs(30),
        None,
    );
    assert_eq!(m.status.code(), Some(1), "{}", m.stderr);
    assert!(
        m.stderr.contains("more than the guest's memory (64 MiB)"),
        "{}",
        m.stderr
    );
    assert!(
        m.peak_rss < 128 * MIB,
        "peak RSS {} MiB reading /dev/zero as the kernel",
        m.peak_rss / MIB
    );
    eprintln!(
        "--kernel /dev/zero: refused in {:?}, peak RSS {} MiB",
        m.elapsed,
        m.peak_rss / MIB
    );
}

/// An initrd is read with the kernel's limits, and the files that go with a Linux
/// kernel are checked before the guest starts, each with its own error.
#[test]
fn linux_boot_files_are_checked_before_the_guest_starts() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // A sparse 1 GiB initrd: refused by its size, not read.
    std::fs::File::create(path("big-initrd"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    std::fs::write(path("not-elf"), b"MZ\x90\x00 a PE file, not an ELF").unwrap();
    let cases: [(Vec<String>, &str); 5] = [
        (
            vec![
                "--memory".into(),
                "64M".into(),
                "--initrd".into(),
                path("big-initrd"),
            ],
            "initrd",
        ),
        (vec!["--initrd".into(), path("missing")], "No such file"),
        (vec!["--initrd".into(), path("not-elf")], "not Linux"),
        (vec!["--vmlinux".into(), path("not-elf")], "--vmlinux"),
        // The demo kernel takes no command line: refused, not silently dropped.
        (vec!["--cmdline".into(), "quiet".into()], "command line"),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let m = run_measured(record(dir.path(), &args), Duration::from_secs(30), None);
        assert_eq!(m.status.code(), Some(1), "{args:?}: {}", m.stderr);
        assert!(m.stderr.contains(expected), "{args:?}: {}", m.stderr);
        assert!(
            m.peak_rss < 64 * MIB,
            "{args:?}: peak RSS {} MiB",
            m.peak_rss / MIB
        );
        assert!(
            !dir.path().join("out.krr").exists(),
            "{args:?}: a recording was written"
        );
    }
}

#[test]
fn a_disk_without_a_size_is_refused() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = run_measured(
        record(dir.path(), &["--disk", "/dev/zero"]),
        Duration::from_secs(30),
        None,
    );
    assert_eq!(m.status.code(), Some(1), "{}", m.stderr);
    assert!(
        m.stderr.contains("/dev/zero is a character device"),
        "{}",
        m.stderr
    );
    assert!(m.peak_rss < 32 * MIB, "peak RSS {} MiB", m.peak_rss / MIB);
}

#[test]
fn a_big_sparse_disk_is_read_where_the_guest_reads_it() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The largest disk fw_cfg can describe, sparse: the demo guest starts reading it
    // whole (16 KiB at a time); the recording is stopped a few seconds in.
    let disk = dir.path().join("sparse.img");
    let size = u32::MAX as u64;
    std::fs::File::create(&disk).unwrap().set_len(size).unwrap();
    let m = run_measured(
        record(dir.path(), &["--disk", disk.to_str().unwrap()]),
        Duration::from_secs(120),
        Some((
            &format!("krr-demo: disk opt/krr/disk: {size} bytes"),
            Duration::from_secs(3),
        )),
    );
    assert!(m.status.success(), "{}", m.stderr);
    eprintln!(
        "{size}-byte sparse disk: recorded for {:?}, peak RSS {} MiB",
        m.elapsed,
        m.peak_rss / MIB
    );
    // The guest saw the whole disk at once: the recorder did not read it first.
    assert!(
        m.elapsed < Duration::from_secs(60),
        "{:?}: {}",
        m.elapsed,
        m.stdout
    );
    assert!(
        m.peak_rss < 128 * MIB,
        "peak RSS {} MiB with a {size}-byte disk",
        m.peak_rss / MIB
    );
    let file = dir.path().join("out.krr");
    let r = RecordingReader::open(&file).unwrap();
    assert!(r.recovery().complete, "{:?}", r.recovery());
    let dma = r.stats().count(EventKind::DmaWrite);
    assert!(
        dma > 20,
        "only {dma} DMA writes: the guest did not read the disk"
    );
    assert_verifies_to_its_end(&file, "sparse disk");
}
