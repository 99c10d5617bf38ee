//! `krr-tui record` on a busy machine: the recording thread is pinned to one CPU, and
//! other work there delays the set-up and slows the guest. In a test binary of its own
//! so that its busy threads slow no other recording test.

mod common;

use common::{assert_verifies_to_its_end, first_line, krr, kvm, wait_with_timeout};
use std::process::Stdio;
use std::time::Duration;

/// Pins the calling thread (or, in `pre_exec`, the process) to `cpu`.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity
    // read and write only that set (both async-signal-safe).
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Why a SIGINT a few seconds into a recording can keep few events: on a busy machine
/// the set-up (the host probes run in scratch VMs) and the guest wait for the one CPU
/// the recording thread is pinned to. Two busy threads on that CPU: the recording keeps
/// everything the guest did (it verifies to its end) and `record` says the machine was
/// busy. (A SIGINT 3.2 s into a recording of the demo once kept 235 events and 4
/// console lines where an idle host keeps about 1,900 and 30: the host was loaded.)
#[test]
fn a_busy_cpu_slows_the_recording_and_record_says_so() {
    use std::os::unix::process::CommandExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    if !kvm() {
        return;
    }
    const CPU: usize = 0;
    let done = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || {
                pin_to(CPU).unwrap();
                while !done.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("busy.krr");
    let mut cmd = krr();
    cmd.args(["record", "--headless", "-o"]).arg(&file);
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // sched_setaffinity, which is async-signal-safe.
    unsafe { cmd.pre_exec(|| pin_to(CPU)) };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    first_line(&mut child);
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = wait_with_timeout(&mut child, Duration::from_secs(60));
    done.store(true, Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the machine was busy") && stderr.contains(&format!("for CPU {CPU}")),
        "{stderr}"
    );
    assert_verifies_to_its_end(&file, "busy CPU");
}
