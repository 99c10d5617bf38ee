//! The krr-tui command line end to end: recording under KVM (where /dev/kvm exists),
//! replay and info on the checked-in fixture (everywhere), signals, kill -9, hostile
//! guests.

use krr_engine::trace::RecordingReader;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn krr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_krr-tui"))
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demo.krr")
}

fn kvm() -> bool {
    match krr_recorder::kvm_available() {
        Ok(()) => true,
        Err(why) => {
            println!("skipped: {why}");
            false
        }
    }
}

/// Runs a command to completion, failing the test if it takes longer than `limit`.
fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("krr-tui starts");
    wait_with_timeout(&mut child, limit)
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Output {
    let start = Instant::now();
    // Drain pipes on threads so a chatty child never blocks.
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
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = t_out.join().unwrap();
            let stderr = t_err.join().unwrap();
            panic!(
                "krr-tui did not finish within {limit:?}; it printed:\n{}{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn recorded_console(path: &Path) -> Vec<u8> {
    RecordingReader::open(path).unwrap().console().unwrap()
}

fn replay_verify(path: &Path) -> Output {
    let mut cmd = krr();
    cmd.arg("replay")
        .arg(path)
        .arg("--headless")
        .arg("--verify");
    run_with_timeout(cmd, Duration::from_secs(300))
}

#[test]
fn info_json_reports_every_kind_of_the_fixture() {
    let out = krr()
        .args(["info", "--json"])
        .arg(fixture())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in ["total_events", "kernel_instructions", "duration_s"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key}: {v}");
    }
    assert!(v["bit_scan_ignores_rep"].is_boolean(), "{v}");
    let events = v["events"].as_object().unwrap();
    let sum: u64 = events.values().map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(sum, v["total_events"].as_u64().unwrap());
    for kind in [
        "syscall",
        "user_interrupt",
        "kernel_interrupt",
        "user_exception",
        "port_in",
        "user_read",
        "rdtsc",
        "rdrand",
        "rdseed",
        "dma_write",
        "console",
    ] {
        assert!(events[kind].as_u64().unwrap() > 0, "{kind}: {v}");
    }
}

#[test]
fn fixture_replays_headless_with_the_recorded_console() {
    let out = replay_verify(&fixture());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("replayed "), "{last}");
    assert!(last.contains("divergences: 0"), "{last}");
    let console = recorded_console(&fixture());
    assert!(
        out.stdout.starts_with(&console),
        "replayed console differs from the recorded one"
    );
}

#[test]
fn bad_files_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.krr");
    std::fs::write(&junk, b"definitely not a recording").unwrap();
    for args in [vec!["info"], vec!["replay", "--headless"]] {
        let out = krr().args(&args).arg(&junk).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("junk.krr"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = krr()
        .args(["info"])
        .arg(dir.path().join("missing.krr"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn fresh_recordings_replay_without_divergence() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let file = dir.path().join(format!("demo{round}.krr"));
        let mut cmd = krr();
        cmd.args(["record", "--headless", "-o"]).arg(&file);
        if round == 1 {
            // The policy of hosts without an instruction counter: interrupts only at
            // deterministic exits, events placed by exit ordinals.
            cmd.arg("--no-counter");
        }
        let rec = run_with_timeout(cmd, Duration::from_secs(120));
        assert!(
            rec.status.success(),
            "{}",
            String::from_utf8_lossy(&rec.stderr)
        );
        // The console echoed while recording is what the recording holds.
        let console = recorded_console(&file);
        assert_eq!(rec.stdout, console, "round {round}");
        let out = replay_verify(&file);
        assert!(
            out.status.success(),
            "round {round}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout.starts_with(&console),
            "round {round}: console differs"
        );
    }
}

fn write_guest(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.elf"));
    std::fs::write(
        &path,
        krr_guest::hostile_guest(name).expect("hostile guest exists"),
    )
    .unwrap();
    path
}

#[test]
fn signals_end_the_recording_with_a_complete_file() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_guest(dir.path(), "no-poweroff");
    // The last case records without a counter: interrupts in the kernel's spin loop are
    // then placed by signature (rip and registers).
    for (signal, no_counter) in [
        (libc::SIGTERM, false),
        (libc::SIGINT, false),
        (libc::SIGTERM, true),
    ] {
        let file = dir.path().join(format!("sig{signal}-{no_counter}.krr"));
        let mut cmd = krr();
        cmd.args(["record", "--headless", "--quiet", "--kernel"])
            .arg(&kernel)
            .arg("-o")
            .arg(&file);
        if no_counter {
            cmd.arg("--no-counter");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Let it record for a while (set-up included) even on a loaded machine.
        std::thread::sleep(Duration::from_secs(3));
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = wait_with_timeout(&mut child, Duration::from_secs(20));
        assert!(
            out.status.success(),
            "signal {signal}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = RecordingReader::open(&file).unwrap();
        assert!(r.recovery().complete, "signal {signal}: {:?}", r.recovery());
        assert!(
            r.stats().end_reason.contains("interrupted"),
            "{}",
            r.stats().end_reason
        );
        // The guest runs in kernel mode with interrupts on: timer interrupts that find it
        // spinning are injected at arbitrary instructions and placed by their exact icount
        // (or by signature without a counter).
        let interrupts = r
            .stats()
            .count(krr_engine::event::EventKind::KernelInterrupt);
        let what = format!(
            "signal {signal}, counter {:?}, {} events, {} at the end",
            r.header().machine.counter,
            r.stats().total_events,
            r.stats().kernel_instructions
        );
        eprintln!("{what}");
        assert!(interrupts > 10, "{what}: {interrupts} kernel interrupts");
        let out = replay_verify(&file);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "signal {signal}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("divergences: 0 (end of recording)"),
            "{stdout}"
        );
    }
}

#[test]
fn kill_9_leaves_a_recording_whose_complete_chunks_replay() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("killed.krr");
    let mut child = krr()
        .args(["record", "--headless", "--quiet", "-o"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    child.kill().unwrap();
    child.wait().unwrap();
    let r = RecordingReader::open(&file).expect("a killed recording still opens");
    assert!(!r.recovery().complete);
    assert!(r.recovery().valid_events > 0, "{:?}", r.recovery());
    let out = krr()
        .args(["replay", "--headless", "--quiet"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("divergences: 0 (end of recording)"),
        "{stdout}"
    );
}

#[test]
fn hostile_guests_end_the_recording_with_a_clear_error() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, expect) in [
        ("ring-garbage", "agent ring"),
        ("ring-header", "agent ring"),
        ("doorbell-nonsense", "doorbell"),
        ("triple-fault", "triple fault"),
    ] {
        let kernel = write_guest(dir.path(), name);
        let file = dir.path().join(format!("{name}.krr"));
        let mut cmd = krr();
        cmd.args(["record", "--headless", "--quiet", "--kernel"])
            .arg(&kernel)
            .arg("-o")
            .arg(&file);
        let out = run_with_timeout(cmd, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(err.contains(expect), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        // What was recorded before is kept, in a complete file.
        let r = RecordingReader::open(&file).unwrap();
        assert!(r.recovery().complete, "{name}: {:?}", r.recovery());
        assert!(
            r.stats().end_reason.contains(expect),
            "{name}: {}",
            r.stats().end_reason
        );
        assert!(r.event_count() > 0, "{name}: nothing kept");
    }
}
