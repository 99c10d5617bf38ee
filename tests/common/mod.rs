//! Helpers of the end-to-end tests: the krr-tui binary, KVM's presence, runs with a
//! time limit, and what a recording holds.
#![allow(dead_code)]

use krr_engine::trace::RecordingReader;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn krr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_krr-tui"))
}

pub fn kvm() -> bool {
    match krr_recorder::kvm_available() {
        Ok(()) => true,
        Err(why) => {
            println!("skipped: {why}");
            false
        }
    }
}

/// Runs a command to completion, failing the test if it takes longer than `limit`.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("krr-tui starts");
    wait_with_timeout(&mut child, limit)
}

pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> Output {
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

pub fn recorded_console(path: &Path) -> Vec<u8> {
    RecordingReader::open(path).unwrap().console().unwrap()
}

pub fn replay_verify(path: &Path) -> Output {
    let mut cmd = krr();
    cmd.arg("replay")
        .arg(path)
        .arg("--headless")
        .arg("--verify");
    run_with_timeout(cmd, Duration::from_secs(300))
}

pub fn write_guest(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.elf"));
    std::fs::write(
        &path,
        krr_guest::hostile_guest(name).expect("hostile guest exists"),
    )
    .unwrap();
    path
}

/// Replays `path` with `--verify` and asserts it verifies to the end of the recording
/// with no divergence (`what` names the case); returns what replay printed.
pub fn assert_verifies_to_its_end(path: &Path, what: &str) -> String {
    let out = replay_verify(path);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("divergences: 0 (end of recording)"),
        "{what}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The first line `child` writes to its (piped) standard output.
pub fn first_line(child: &mut Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().expect("piped stdout"))
        .read_line(&mut line)
        .expect("reading the child's output");
    line
}

pub mod gdb;
pub mod samples;
pub mod tmux;
