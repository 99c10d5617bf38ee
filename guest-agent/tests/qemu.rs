//! Boots the demo kernel and the hostile guests under QEMU (PVH `-kernel` boot) when
//! `qemu-system-x86_64` is installed, and checks their console output and exit.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";

fn find_qemu() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(QEMU))
        .find(|p| p.is_file())
}

struct Run {
    output: String,
    /// QEMU's exit code; None when it was killed (timeout or `stop_after`).
    status: Option<i32>,
    timed_out: bool,
}

/// Boot `kernel` with the demo disk; stop at exit, at `timeout`, or `linger` after `stop_after` shows.
fn boot(
    qemu: &Path,
    accel: &[&str],
    kernel: &[u8],
    timeout: Duration,
    stop_after: Option<(&str, Duration)>,
) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel_path = dir.path().join("kernel.elf");
    let disk_path = dir.path().join("disk.img");
    std::fs::write(&kernel_path, kernel).unwrap();
    std::fs::write(&disk_path, krr_guest::demo_disk()).unwrap();
    let mut child = Command::new(qemu)
        .args(accel)
        .args(["-machine", "pc", "-m", "128", "-nographic", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .arg("-kernel")
        .arg(&kernel_path)
        .arg("-fw_cfg")
        .arg(format!("name=opt/krr/disk,file={}", disk_path.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu");
    let output = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = Arc::clone(&output);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let start = Instant::now();
    let mut seen_at = None;
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break (status.code(), false);
        }
        if let Some((marker, linger)) = stop_after {
            let text = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
            if seen_at.is_none() && text.contains(marker) {
                seen_at = Some(Instant::now());
            }
            if seen_at.is_some_and(|t| t.elapsed() >= linger) {
                child.kill().unwrap();
                child.wait().unwrap();
                break (None, false);
            }
        }
        if start.elapsed() > timeout {
            child.kill().unwrap();
            child.wait().unwrap();
            break (None, true);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let output = String::from_utf8_lossy(&output.lock().unwrap()).replace('\r', "");
    println!(
        "qemu {accel:?} ran {:.2} s, status {status:?}\n{output}\n{stderr}",
        start.elapsed().as_secs_f64()
    );
    Run {
        output,
        status,
        timed_out,
    }
}

fn check_demo_run(run: &Run) {
    assert!(!run.timed_out, "the demo did not power off in time");
    // isa-debug-exit: QEMU exits with (value << 1) | 1; the demo writes 0.
    assert_eq!(run.status, Some(1), "QEMU exit status");
    let out = &run.output;
    for (i, name) in krr_guest::console::PROGRAMS.iter().enumerate() {
        let prefix = format!("[{name}:{}] ", i + 1);
        assert!(out.contains(&prefix), "no output from {prefix}");
    }
    let checksum = krr_guest::fnv1a64(&krr_guest::demo_disk());
    let line = format!(
        "[disk:2] {}{checksum:016x}",
        krr_guest::console::CHECKSUM_PREFIX
    );
    assert!(out.contains(&line), "no checksum line {line:?}");
    assert!(out.contains("[disk:2] read 262144 bytes in 16 chunks"));
    assert!(out.contains("[primes:1] primes below 1000000: 78498"));
    assert!(out.contains("[primes:1] collatz: longest chain below 300000 starts at 230631"));
    assert!(out.contains("[clock:3] sleep 6: uptime "));
    assert!(out.contains("[pager:4] touched 64 fresh heap pages, sum 2080"));
    assert!(out.contains("krr-demo: pid 5 (crash-ud) killed: #UD invalid opcode"));
    assert!(out.contains("krr-demo: pid 6 (crash-pf) killed: #PF page fault"));
    assert!(out.contains("address dead0000, error 6"));
    assert!(out.contains("[pager:4] child 5 exited with code 134"));
    assert!(out.contains("[pager:4] child 6 exited with code 142"));
    for pid in 1..=6 {
        assert!(
            out.contains(&format!("krr-demo: pid {pid} (")),
            "pid {pid} never exited"
        );
    }
    let stats = out
        .lines()
        .find(|l| l.starts_with("krr-demo: stats: "))
        .expect("stats line");
    let syscalls: u64 = stats["krr-demo: stats: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(syscalls >= 40, "only {syscalls} system calls: {stats}");
    let last = out.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert_eq!(last.trim(), krr_guest::console::POWER_OFF);
}

/// The numbers of the console line that starts with `prefix`, in order.
fn numbers(out: &str, prefix: &str) -> Vec<u64> {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?}"));
    line[prefix.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect()
}

/// The agent self-test kernel checked every record itself; its counts must agree with the
/// kernel's statistics and with the console output.
fn check_agent_selftest(run: &Run) {
    check_demo_run(run);
    let out = &run.output;
    let stats = numbers(out, "krr-demo: stats: ");
    let [syscalls, _, _, _, user_ticks, demand_faults] = stats[..] else {
        panic!("stats line {stats:?}");
    };
    let agent = numbers(out, "krr-demo: agent selftest: ");
    let [
        doorbells,
        full,
        arch_syscalls,
        pf_syscalls,
        interrupts,
        exceptions,
        reads,
        read_bytes,
        split_records,
        split_bytes,
        rdtsc,
        rdrand,
        rdseed,
        lost,
        errors,
    ] = agent[..]
    else {
        panic!("agent line {agent:?}");
    };
    assert_eq!(errors, 0, "records the agent wrote wrong");
    assert_eq!(lost, 0);
    assert!(
        full >= 10 && doorbells == full + 1,
        "{doorbells} doorbells, {full} full"
    );
    assert_eq!(arch_syscalls + pf_syscalls, syscalls);
    assert_eq!(interrupts, user_ticks);
    assert_eq!(
        exceptions,
        demand_faults + 2,
        "demand faults plus the two fatal ones"
    );
    // Every user console line is one write system call, read with copy_from_user.
    let user_lines: Vec<&str> = out.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(reads, user_lines.len() as u64);
    let bytes: usize = user_lines.iter().map(|l| l.len() + 1).sum();
    assert_eq!(read_bytes, bytes as u64);
    // A 1000-byte read through a 256-byte ring arrives in 224-byte pieces.
    assert_eq!((split_records, split_bytes), (5, 1000));
    // The random source follows CPUID: rdrand for the pager's one SYS_RANDOM (retried
    // while it delivers nothing), the generator's seed from rdseed or the TSC.
    let sources = krr_guest::console::random_sources(out).expect("no random-source line");
    assert_eq!(rdrand >= 1, sources.rdrand, "{rdrand} rdrand records");
    assert_eq!(rdseed >= 1, sources.rdseed, "{rdseed} rdseed records");
    // Two TSC reads to calibrate, two by the disk program, nine by the clock program, and
    // the generator's seed where rdseed is absent.
    assert_eq!(rdtsc, 13 + u64::from(!sources.rdseed));
}

#[test]
fn demo_boots_under_qemu_tcg() {
    let Some(qemu) = find_qemu() else {
        println!("skipped: {QEMU} not installed (apt-get install qemu-system-x86)");
        return;
    };
    let run = boot(
        &qemu,
        &["-accel", "tcg"],
        krr_guest::DEMO_KERNEL,
        Duration::from_secs(180),
        None,
    );
    check_demo_run(&run);
}

#[test]
fn agent_selftest_under_qemu_tcg() {
    let Some(qemu) = find_qemu() else {
        println!("skipped: {QEMU} not installed (apt-get install qemu-system-x86)");
        return;
    };
    // `-cpu max` offers rdrand (TCG implements it); the KVM run below, with qemu64,
    // takes the demo's path without it.
    let run = boot(
        &qemu,
        &["-accel", "tcg", "-cpu", "max"],
        krr_guest::AGENT_SELFTEST_KERNEL,
        Duration::from_secs(180),
        None,
    );
    check_agent_selftest(&run);
    assert!(
        krr_guest::console::random_sources(&run.output).is_some_and(|s| s.rdrand),
        "QEMU's max CPU offers rdrand"
    );
    assert!(
        run.output.contains(" 0 syscall-as-#PF"),
        "TCG runs syscall architecturally"
    );
}

/// Under KVM on the PVM development hosts, user `syscall` arrives as a page fault at LSTAR:
/// this run exercises that path (on VT-x hosts, the architectural one).
#[test]
fn agent_selftest_under_qemu_kvm() {
    let Some(qemu) = find_qemu() else {
        println!("skipped: {QEMU} not installed (apt-get install qemu-system-x86)");
        return;
    };
    if !Path::new("/dev/kvm").exists() {
        println!("skipped: /dev/kvm not available");
        return;
    }
    let run = boot(
        &qemu,
        &["-accel", "kvm", "-cpu", "qemu64"],
        krr_guest::AGENT_SELFTEST_KERNEL,
        Duration::from_secs(300),
        None,
    );
    check_agent_selftest(&run);
}

#[test]
fn hostile_guests_boot_under_qemu() {
    let Some(qemu) = find_qemu() else {
        println!("skipped: {QEMU} not installed (apt-get install qemu-system-x86)");
        return;
    };
    let tcg = ["-accel", "tcg"];
    let timeout = Duration::from_secs(60);
    for name in ["ring-garbage", "ring-header", "doorbell-nonsense"] {
        let elf = krr_guest::hostile_guest(name).unwrap();
        let run = boot(&qemu, &tcg, elf, timeout, None);
        assert!(run.output.contains(&format!("hostile {name}: ")), "{name}");
        assert!(run.output.contains("hostile: done, powering off"), "{name}");
        assert_eq!(run.status, Some(1), "{name}: exit status");
    }

    let elf = krr_guest::hostile_guest("no-poweroff").unwrap();
    let marker = "hostile no-poweroff: spinning forever";
    let run = boot(
        &qemu,
        &tcg,
        elf,
        timeout,
        Some((marker, Duration::from_secs(1))),
    );
    assert!(run.output.contains(marker));
    assert!(!run.timed_out);
    assert_eq!(run.status, None, "no-poweroff exited by itself");

    let elf = krr_guest::hostile_guest("triple-fault").unwrap();
    let run = boot(&qemu, &tcg, elf, timeout, None);
    assert!(run.output.contains("hostile triple-fault: empty IDT"));
    assert!(!run.output.contains("hostile: done"));
    assert!(
        !run.timed_out,
        "triple fault did not stop QEMU (-no-reboot)"
    );
    assert_eq!(
        run.status,
        Some(0),
        "QEMU exits 0 on a reset with -no-reboot"
    );
}

/// The replay-speed benchmark kernel runs its loop under QEMU to the checksum that the Rust
/// model of the loop computes, and powers off; so does its boot-only variant.
#[test]
fn bench_loop_boots_under_qemu_tcg() {
    let Some(qemu) = find_qemu() else {
        println!("skipped: {QEMU} not installed (apt-get install qemu-system-x86)");
        return;
    };
    let per = krr_guest::BENCH_LOOP_INSTRUCTIONS_PER_ITERATION;
    for (kernel, iterations) in [
        (
            krr_guest::BENCH_LOOP_KERNEL,
            krr_guest::BENCH_LOOP_ITERATIONS,
        ),
        (krr_guest::BENCH_LOOP_BOOT_KERNEL, 0),
    ] {
        let run = boot(
            &qemu,
            &["-accel", "tcg"],
            kernel,
            Duration::from_secs(120),
            None,
        );
        assert!(
            !run.timed_out,
            "bench-loop ({iterations}) did not power off in time"
        );
        assert_eq!(run.status, Some(1), "QEMU exit status");
        let line = format!(
            "{}{:016x} after {iterations} iterations of {per} instructions",
            krr_guest::BENCH_LOOP_CHECKSUM_PREFIX,
            krr_guest::bench_loop_checksum(iterations)
        );
        assert!(
            run.output.lines().any(|l| l == line),
            "no line {line:?} in\n{}",
            run.output
        );
    }
}
