//! The krr-tui command line end to end: recording under KVM (where /dev/kvm exists),
//! replay and info on the checked-in fixture (everywhere), signals, kill -9, hostile
//! guests.

mod common;

use common::{
    assert_verifies_to_its_end, first_line, krr, kvm, recorded_console, replay_verify,
    run_with_timeout, wait_with_timeout, write_guest,
};
use krr_engine::cpu::undefined::{Family, UndefinedBehaviour};
use krr_engine::trace::RecordingReader;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demo.krr")
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

/// The fixture is a format 2 recording: `info` gives its format version and the legacy
/// undefined-results table it replays with, in text and in JSON.
#[test]
fn info_reports_the_format_and_the_undefined_results_table() {
    let legacy = UndefinedBehaviour::legacy().table();
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
    assert_eq!(v["format_version"].as_u64(), Some(2), "{v}");
    assert_eq!(v["undefined"]["source"], "legacy", "{v}");
    let table: Vec<&str> = v["undefined"]["table"]
        .as_array()
        .expect("undefined.table is an array")
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(table, legacy);
    assert_eq!(v["undefined"]["unmodelled"], serde_json::json!([]));
    assert_eq!(
        v["msrs"],
        serde_json::json!([]),
        "format 2 has no MSR table"
    );

    let out = krr().arg("info").arg(fixture()).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let format_line = format!(
        "format      2 (older; this build writes {})",
        krr_engine::trace::FORMAT_VERSION
    );
    assert!(lines.contains(&format_line.as_str()), "{text}");
    let heading = lines
        .iter()
        .position(|l| l.starts_with("undefined results (") && l.contains("legacy rules"))
        .unwrap_or_else(|| panic!("no undefined-results heading:\n{text}"));
    assert_eq!(
        lines[heading + 1..heading + 1 + legacy.len()],
        legacy[..],
        "{text}"
    );
    assert!(
        lines.contains(
            &"MSRs (none measured, format 2 recording: an MSR the replay CPU does not model \
              stops replay)"
        ),
        "{text}"
    );
}

/// The family lines of an undefined-results table in `lines`: one per family, in order,
/// each starting with the family's name.
fn assert_every_family(lines: &[&str], all: &str) {
    let families: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            Family::ALL
                .iter()
                .any(|f| l.starts_with(&format!("{:<14}", f.name())))
        })
        .collect();
    assert_eq!(families.len(), Family::COUNT, "{all}");
    for (line, f) in families.iter().zip(Family::ALL) {
        assert!(
            line.starts_with(&format!("{:<14}", f.name())),
            "{line}\n{all}"
        );
        assert!(line.len() > 14, "{line}: no rules\n{all}");
    }
    for name in ["shl", "bsf", "test"] {
        assert!(
            families.iter().any(|l| l.starts_with(name)),
            "{name}\n{all}"
        );
    }
    assert!(!all.contains("NOT MODELLED"), "{all}");
}

/// `krr-tui host`: the CPU from /proc/cpuinfo, and where KVM is usable the measured
/// behaviour, every family of the undefined-results table modelled, and the MSR table,
/// one line per listed MSR; where it is not,
/// why nothing was measured.
#[test]
fn host_prints_the_cpu_and_the_measured_undefined_results() {
    let out = run_with_timeout(
        {
            let mut c = krr();
            c.arg("host");
            c
        },
        Duration::from_secs(120),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map(|(_, v)| v.trim().to_string());
    let model_line = lines
        .iter()
        .find(|l| l.starts_with("model name"))
        .unwrap_or_else(|| panic!("no model name line:\n{text}"));
    if let Some(model) = model {
        assert!(model_line.ends_with(&model), "{model_line} vs {model}");
    }
    if !kvm() {
        assert!(
            text.contains("not measured: KVM is not usable here"),
            "{text}"
        );
        assert!(!text.contains("undefined results ("), "{text}");
        return;
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("bit scans") && l.contains("bit_scan_ignores_rep: ")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("counter       KvmInsnEmulation")
                || l.starts_with("counter       None")),
        "{text}"
    );
    let heading = lines
        .iter()
        .position(|l| l.starts_with("undefined results (measured on CPU "))
        .unwrap_or_else(|| panic!("no undefined-results heading:\n{text}"));
    assert_every_family(&lines[heading + 1..], &text);
    let msrs = lines
        .iter()
        .position(|l| l.starts_with("MSRs the replay CPU does not model (measured on CPU "))
        .unwrap_or_else(|| panic!("no MSR heading:\n{text}"));
    let msr_lines = &lines[msrs + 1..];
    assert_eq!(
        msr_lines.len(),
        krr_engine::cpu::MEASURED_MSRS.len(),
        "{text}"
    );
    assert!(
        msr_lines
            .iter()
            .any(|l| l.contains("IA32_BIOS_SIGN_ID") && l.ends_with("wrmsr ignored")),
        "{text}"
    );
}

/// `krr-tui host --json` is one JSON object with the same content.
#[test]
fn host_json_is_one_object() {
    let out = run_with_timeout(
        {
            let mut c = krr();
            c.args(["host", "--json"]);
            c
        },
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(v["cpu"].is_object(), "{v}");
    if std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains("model name")) {
        assert!(v["cpu"]["model_name"].is_string(), "{v}");
    }
    assert!(v["ring0_emulated"].is_boolean(), "{v}");
    if !kvm() {
        assert_eq!(v["measured"], false, "{v}");
        assert!(v["not_measured_reason"].is_string(), "{v}");
        return;
    }
    assert_eq!(v["measured"], true, "{v}");
    assert!(v["bit_scan_ignores_rep"].is_boolean(), "{v}");
    assert!(
        ["KvmInsnEmulation", "None"].contains(&v["counter"].as_str().unwrap_or("")),
        "{v}"
    );
    let table: Vec<&str> = v["undefined"]["table"]
        .as_array()
        .expect("undefined.table is an array")
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(table.len(), Family::COUNT, "{v}");
    assert_every_family(&table, &v.to_string());
    assert_eq!(v["undefined"]["unmodelled"], serde_json::json!([]));
    let msrs = v["msrs"].as_array().expect("msrs is an array");
    assert_eq!(msrs.len(), krr_engine::cpu::MEASURED_MSRS.len(), "{v}");
    assert!(
        msrs.iter().any(|m| m["msr"] == "0x3a"
            && m["read"] == "#GP"
            && m["name"] == "IA32_FEATURE_CONTROL"),
        "{v}"
    );
}

/// Where /dev/kvm cannot be opened, `host` still prints the CPU, says why nothing was
/// measured and succeeds. Exercised by running it as an unprivileged user (possible
/// where the tests run as root and /dev/kvm is not open to every user).
#[test]
fn host_without_kvm_says_why_nothing_was_measured() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if let Ok(m) = std::fs::metadata("/dev/kvm")
        && m.permissions().mode() & 0o006 == 0o006
    {
        println!("skipped: /dev/kvm is open to every user, so no user here lacks KVM");
        return;
    }
    const NOBODY: u32 = 65534;
    let mut cmd = krr();
    cmd.arg("host").uid(NOBODY).gid(NOBODY);
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => {
            println!("skipped: cannot run krr-tui as an unprivileged user here: {e}");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.lines().any(|l| l.starts_with("model name")), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("kvm           not usable: /dev/kvm: ")),
        "{text}"
    );
    assert!(
        text.contains("not measured: KVM is not usable here (/dev/kvm: "),
        "{text}"
    );
    assert!(!text.contains("undefined results ("), "{text}");
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
        // A fresh recording is in the current format and stores this host's undefined
        // results, every family modelled.
        let info = krr().args(["info", "--json"]).arg(&file).output().unwrap();
        assert!(info.status.success(), "round {round}");
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).expect("JSON");
        assert_eq!(
            v["format_version"].as_u64(),
            Some(krr_engine::trace::FORMAT_VERSION.into()),
            "{v}"
        );
        assert_eq!(v["undefined"]["source"], "recording host", "{v}");
        // The demo kernel takes no command line (only Linux is given one).
        assert_eq!(v["kernel_command_line"], "", "{v}");
        let table: Vec<&str> = v["undefined"]["table"]
            .as_array()
            .expect("undefined.table is an array")
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert_every_family(&table, &v.to_string());
        // And what its rdmsr and wrmsr do with the MSRs the replay CPU does not model.
        let sign_id = v["msrs"]
            .as_array()
            .expect("msrs is an array")
            .iter()
            .find(|m| m["msr"] == "0x8b")
            .unwrap_or_else(|| panic!("IA32_BIOS_SIGN_ID measured: {v}"));
        assert_eq!(sign_id["name"], "IA32_BIOS_SIGN_ID", "{v}");
        assert_eq!(sign_id["write"], "ignored", "{v}");
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

/// Starts `krr-tui record --headless` of `kernel` into `file`, its output piped.
fn start_recording(kernel: &Path, file: &Path, no_counter: bool, args: &[&str]) -> Child {
    let mut cmd = krr();
    cmd.args(["record", "--headless", "--kernel"])
        .arg(kernel)
        .arg("-o")
        .arg(file)
        .args(args);
    if no_counter {
        cmd.arg("--no-counter");
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
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
        let mut child = start_recording(&kernel, &file, no_counter, &["--quiet"]);
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
        assert_verifies_to_its_end(&file, &format!("signal {signal}"));
    }
}

/// A stop (SIGINT) that finds console bytes waiting for the end of their line ends the
/// recording at the guest's next port write, where replay compares them, so the
/// recording verifies; a guest that never writes again leaves them out of the recording
/// (replay still prints them). About one SIGINT in forty at a random moment of the demo
/// found a line pending, and such a recording failed `replay --verify`.
#[test]
fn a_stop_with_a_console_line_pending_leaves_a_recording_that_verifies() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (guest, pending, kept) in [
        ("partial-line", "no newline yet", true),
        ("partial-line-silent", "never ended", false),
    ] {
        let kernel = write_guest(dir.path(), guest);
        for no_counter in [false, true] {
            let what = format!("{guest}, no counter: {no_counter}");
            let file = dir.path().join(format!("{guest}-{no_counter}.krr"));
            let mut child = start_recording(&kernel, &file, no_counter, &[]);
            // The guest's first line is echoed once complete; the pending bytes follow it
            // at once.
            let first = first_line(&mut child);
            assert!(first.contains(guest), "{what}: {first}");
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let out = wait_with_timeout(&mut child, Duration::from_secs(20));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{what}: {stderr}");
            let console = String::from_utf8_lossy(&recorded_console(&file)).into_owned();
            assert_eq!(
                console.ends_with(pending),
                kept,
                "{what}: recorded console {console:?}"
            );
            if !kept {
                assert!(
                    stderr.contains("not in the recording") && !console.contains(pending),
                    "{what}: {stderr}"
                );
            }
            let stdout = assert_verifies_to_its_end(&file, &what);
            assert!(stdout.contains(pending), "{what}: replay printed {stdout}");
        }
    }
}

/// Events are written at least every half second even when the guest stops producing
/// them: a guest that prints a line and then computes without an exit keeps that line
/// through a kill -9 (it was lost: events were written only when a newer one came).
#[test]
fn kill_9_keeps_what_a_silent_guest_did() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_guest(dir.path(), "partial-line-silent");
    let file = dir.path().join("silent.krr");
    let mut child = start_recording(&kernel, &file, false, &[]);
    let first = first_line(&mut child);
    assert!(first.contains("partial-line-silent"), "{first}");
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = dir.path().join("silent.krr.partial");
    let console = String::from_utf8_lossy(&recorded_console(&partial)).into_owned();
    assert_eq!(console, first, "what the guest printed before the kill");
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
    // Killed, it never got its final name: the file is FILE.partial.
    assert!(
        !file.exists(),
        "a killed recording is not under its final name"
    );
    let file = dir.path().join("killed.krr.partial");
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

/// Port input as Linux does it: timer interrupts injected while the kernel reads ports
/// (KVM completes an `in` before the guest takes the interrupt, so the interrupt must be
/// recorded after it), and string input (`insb`, `rep insb`, `rep insw`, up and down,
/// across pages and KVM's 1 KiB read-ahead): one port-input event per element, each the
/// device's own value; and the UART transmitting from its THRE interrupt on IRQ4. The
/// recording replays with no divergence, its console (checksums of what was read, and
/// what the interrupt handler sent) included.
#[test]
fn interrupts_at_port_reads_and_string_input_replay_exactly() {
    use krr_engine::event::Event;
    use krr_engine::machine::{PORT_FW_CFG_DATA, PORT_PIT};
    use std::collections::{BTreeMap, BTreeSet};
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_guest(dir.path(), "port-input");
    let file = dir.path().join("port-input.krr");
    let mut cmd = krr();
    cmd.args(["record", "--headless", "--quiet", "--kernel"])
        .arg(&kernel)
        .arg("-o")
        .arg(&file);
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let console = String::from_utf8_lossy(&recorded_console(&file)).into_owned();
    assert!(
        console.contains("port-input: signature QEMU, fw_cfg checksum")
            && console.contains("powering off"),
        "{console}"
    );
    // Transmission driven by the UART's THRE interrupt (IRQ4), one byte per interrupt.
    let message = "port-input: sent byte by byte by the THRE interrupt\n";
    assert!(console.contains(message), "{console}");
    let irq4 = format!("port-input: {} IRQ4 interrupts", message.len() + 1);
    assert!(console.contains(&irq4), "{console}");
    let events: Vec<Event> = RecordingReader::open(&file)
        .unwrap()
        .events_from(0)
        .collect::<Result<_, _>>()
        .unwrap();
    // Port inputs by (position, port): a string input chunk is one exit, one position.
    let mut inputs: BTreeMap<(u64, u16), Vec<u32>> = BTreeMap::new();
    for e in &events {
        if let Event::PortIn(p) = e {
            inputs.entry((p.icount, p.port)).or_default().push(p.value);
        }
    }
    let chunk_sizes = |port: u16| -> BTreeSet<usize> {
        inputs
            .iter()
            .filter(|((_, p), _)| *p == port)
            .map(|(_, v)| v.len())
            .collect()
    };
    // 1500 bytes from 0x100 before a page end: chunks of 256 (to the page end), 1024
    // (the read-ahead) and 220.
    let fw_cfg = chunk_sizes(PORT_FW_CFG_DATA);
    for size in [256, 1024, 220] {
        assert!(fw_cfg.contains(&size), "fw_cfg chunks {fw_cfg:?}");
    }
    // Each element is the device's own value: the signature, byte by byte.
    assert!(
        inputs
            .iter()
            .any(|((_, p), v)| *p == PORT_FW_CFG_DATA && v.starts_with(&[0x51, 0x45, 0x4d, 0x55])),
        "no chunk starts with the signature"
    );
    // The PIT counter's low and high bytes alternate within a chunk.
    assert!(
        inputs
            .iter()
            .any(|((_, p), v)| *p == PORT_PIT && v.len() > 2 && v[0] != v[1]),
        "PIT chunks of one value"
    );
    // Interrupts recorded at the position of a port read (the `in` exit they followed).
    let at_inputs = events
        .iter()
        .filter(|e| match e {
            Event::KernelInterrupt(k) => inputs.keys().any(|(icount, _)| *icount == k.icount),
            _ => false,
        })
        .count();
    assert!(at_inputs >= 10, "{at_inputs} interrupts at port reads");
    let out = replay_verify(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("divergences: 0 (guest powered off)"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `record -o FILE` never replaces FILE without `--force`, admits one writer per path,
/// and keeps the `.partial` file a killed recording left.
#[test]
fn the_output_file_is_never_replaced_by_accident() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.krr");
    std::fs::write(&file, b"not a recording, but mine").unwrap();
    let out = krr()
        .args(["record", "--headless", "--quiet", "-o"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a recording, but mine");

    // Two recordings to one path: the second is refused while the first runs, and the
    // first ends with a complete file.
    let mut first = krr()
        .args(["record", "--headless", "--quiet", "--force", "-o"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let partial = dir.path().join("r.krr.partial");
    let t0 = std::time::Instant::now();
    while !partial.exists() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = krr()
        .args(["record", "--headless", "--quiet", "--force", "-o"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(err.contains("another recording"), "{err}");
    let out = wait_with_timeout(&mut first, Duration::from_secs(120));
    assert!(out.status.success());
    assert!(!partial.exists());
    let r = RecordingReader::open(&file).expect("the first recording is complete");
    assert!(r.recovery().complete);

    // A killed recording leaves r.krr.partial; a new one to that path is refused without
    // --force, and r.krr is untouched.
    let mut killed = krr()
        .args(["record", "--headless", "--quiet", "--force", "-o"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(partial.exists());
    assert!(RecordingReader::open(&file).unwrap().recovery().complete);
    let again = krr()
        .args(["record", "--headless", "--quiet", "--force"])
        .arg("-o")
        .arg(dir.path().join("elsewhere.krr"))
        .output()
        .unwrap();
    assert!(again.status.success());
    let refused = krr()
        .args(["record", "--headless", "--quiet", "-o"])
        .arg(dir.path().join("r.krr"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("exists"), "{err}");
    std::fs::remove_file(&file).unwrap();
    let refused = krr()
        .args(["record", "--headless", "--quiet", "-o"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(err.contains("cut short"), "{err}");
}

/// A copy of the fixture with one bit flipped inside the payload of its `n`-th event
/// chunk (found by its section header: magic `KRRS`, kind 5).
fn fixture_with_damaged_chunk(dir: &Path, n: usize) -> (PathBuf, usize) {
    let mut bytes = std::fs::read(fixture()).unwrap();
    let chunks: Vec<usize> = bytes
        .windows(8)
        .enumerate()
        .filter(|(_, w)| w[..4] == *b"KRRS" && w[4..8] == 5u32.to_le_bytes())
        .map(|(i, _)| i)
        .collect();
    assert!(
        chunks.len() > n + 1,
        "the fixture has {} chunks",
        chunks.len()
    );
    let at = chunks[n] + 72 + 16;
    bytes[at] ^= 0x10;
    let path = dir.join("damaged.krr");
    std::fs::write(&path, bytes).unwrap();
    (path, chunks[n])
}

/// A finished recording with a damaged chunk: `info` says so with the offset (not
/// "complete"), replay replays every event before it, and `--verify` fails with a
/// clear last line while a plain replay says so and exits 0.
#[test]
fn a_damaged_chunk_is_reported_and_the_events_before_it_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (file, offset) = fixture_with_damaged_chunk(dir.path(), 3);
    let out = krr().arg("info").arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("DAMAGED"), "{text}");
    assert!(text.contains(&format!("offset {offset}")), "{text}");
    assert!(!text.contains("Recording: complete"), "{text}");
    let out = krr().args(["info", "--json"]).arg(&file).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["damage"]
            .as_str()
            .is_some_and(|d| d.contains("event chunk")),
        "{v}"
    );

    let out = krr()
        .args(["replay", "--headless", "--quiet"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("divergences: 0"), "{stdout}");
    assert!(stderr.contains("incomplete or damaged"), "{stderr}");
    let replayed: u64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        replayed > 100,
        "the events before the damage replay: {stdout}"
    );

    let out = krr()
        .args(["replay", "--headless", "--quiet", "--verify"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("incomplete or damaged"), "{stderr}");
}

/// A recording cut short replays its prefix; `--verify` does not call that a success.
#[test]
fn verify_fails_on_a_recording_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture()).unwrap();
    let file = dir.path().join("short.krr");
    std::fs::write(&file, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let out = krr()
        .args(["replay", "--headless", "--quiet", "--verify"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or_default()
            .contains("incomplete"),
        "{stderr}"
    );
}

/// A closed standard output ends `info` quietly; an I/O error is said once.
#[test]
fn closed_stdout_and_io_errors_are_plain() {
    use std::process::Stdio;
    for args in [vec!["info"], vec!["info", "--json"]] {
        let mut child = krr()
            .args(&args)
            .arg(fixture())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the pipe before it writes (it reads and checks the file first).
        drop(child.stdout.take());
        let out = wait_with_timeout_stderr(&mut child);
        assert!(out.0.success(), "{args:?}: {}", out.1);
        assert!(!out.1.contains("panicked"), "{args:?}: {}", out.1);
    }
    let out = krr().arg("info").arg("/").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}

fn wait_with_timeout_stderr(child: &mut Child) -> (std::process::ExitStatus, String) {
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap(), err)
}
