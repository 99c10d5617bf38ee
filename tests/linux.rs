//! The Linux 6.1 guest (guest-agent/linux).
//!
//! Always: the checked-in boot recording (`tests/fixtures/linux-boot.krr`: the vmlinux
//! booted with `--initrd` and `krr.boot_only`, to power-off) replays with 0 divergences,
//! and the UI breaks at `start_kernel` and finishes back out of it, from the symbols the
//! recording holds (or from the vmlinux it was recorded from, where that file is still
//! there). The checked-in workload recordings (`tests/fixtures/linux-workload.krr`: the
//! busybox `/init` of guest-agent/linux/init.sh to power-off; `linux-stress.krr`: its
//! stress.sh) replay their user space with 0 divergences, their system calls are named,
//! and a copy without one user-space hook's events and symbol diverges.
//!
//! Where `KRR_LINUX_OUT` names a built guest (`guest-agent/linux/build.sh OUTDIR`;
//! `.ci/run` builds one): its vmlinux, which build.sh builds reproducibly, is checked to
//! be the one the checked-in workload was recorded from, and with it the UI shows the
//! vmlinux's source lines and follows the current task across a context switch on that
//! recording, gdb with `file vmlinux` breaks, backtraces and steps backwards in it, and
//! the kernel's gdb scripts (`lx-dmesg`, `lx-ps`) read what the UI reads. Where /dev/kvm
//! is usable too: the guest's boot and workload are recorded fresh and replay with 0
//! divergences and the workload's console, and recordings made with each user-space hook
//! off (`krr.hooks_off=`) diverge.

mod common;

use common::gdb::{Server, gdb_available, run_gdb};
use common::tmux::{available, start, status_icount};
use krr_engine::replay::Replay;
use krr_engine::symbols::Radix;
use krr_engine::timeline::Timeline;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/linux-boot.krr")
}

fn workload_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/linux-workload.krr")
}

/// The built Linux guest, or None (printing why the test is skipped).
fn linux_out() -> Option<PathBuf> {
    let Some(out) = std::env::var_os("KRR_LINUX_OUT").map(PathBuf::from) else {
        println!(
            "skipped: KRR_LINUX_OUT is not set (build the Linux guest with \
             guest-agent/linux/build.sh OUTDIR, then set KRR_LINUX_OUT=OUTDIR)"
        );
        return None;
    };
    for f in ["vmlinux", "initramfs.cpio"] {
        assert!(
            out.join(f).is_file(),
            "KRR_LINUX_OUT={} has no {f}: run guest-agent/linux/build.sh there",
            out.display()
        );
    }
    Some(out)
}

/// Records the built guest in `out` to `path` (its boot, then the user space the command
/// line asks for), to power-off, failing the test if recording fails.
fn record_linux(out: &Path, cmdline: Option<&str>, path: &Path) {
    let mut cmd = common::krr();
    cmd.args(["record", "--headless", "--quiet", "--force", "--kernel"])
        .arg(out.join("vmlinux"))
        .arg("--initrd")
        .arg(out.join("initramfs.cpio"))
        .arg("-o")
        .arg(path);
    if let Some(c) = cmdline {
        cmd.args(["--cmdline", c]);
    }
    let o = common::run_with_timeout(cmd, Duration::from_secs(1200));
    assert!(
        o.status.success(),
        "record {cmdline:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A directory of this test process for its recordings.
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("krr-linux-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The built guest's boot and workload (guest-agent/linux/init.sh, to power-off),
/// recorded once for this test process, or None (printing why) without a built guest or
/// without /dev/kvm.
fn fresh_recording() -> Option<&'static Path> {
    let out = linux_out()?;
    if !common::kvm() {
        return None;
    }
    static RECORDING: OnceLock<PathBuf> = OnceLock::new();
    let path = RECORDING.get_or_init(|| {
        let path = scratch_dir().join("workload.krr");
        record_linux(&out, None, &path);
        path
    });
    Some(path)
}

/// The built guest's vmlinux when it is, bit for bit, the one the checked-in workload
/// recording was made from (build.sh builds reproducibly: same SHA-256 as the
/// recording's header); None (printing why) without a built guest. A different vmlinux
/// fails the test: the UI would show another kernel's source and types.
fn checked_in_vmlinux() -> Option<PathBuf> {
    let vmlinux = linux_out()?.join("vmlinux");
    let header = Replay::open(workload_fixture())
        .expect("fixture")
        .header()
        .clone();
    let mut file = std::fs::File::open(&vmlinux).expect("the vmlinux");
    assert!(
        header.kernel.matches_file(&mut file),
        "{} is not the vmlinux tests/fixtures/linux-workload.krr was recorded from \
         ({} bytes, SHA-256 {}; guest-agent/linux/build.sh builds it reproducibly with \
         the same gcc; after a change to the patch or config, record the fixture again: \
         examples/record-replay-linux.sh --workload --keep DIR OUT 1)",
        vmlinux.display(),
        header.kernel.size,
        header
            .kernel
            .sha256
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    );
    Some(vmlinux)
}

/// The checked-in workload in a timeline with the built guest's vmlinux for symbols.
fn checked_in_timeline(vmlinux: &Path) -> Timeline {
    let mut t = Timeline::new(Replay::open(workload_fixture()).expect("fixture"), 1 << 30);
    t.set_symbols(krr_engine::symbols::Symbols::from_path(vmlinux).expect("vmlinux"));
    t
}

/// Replays `path` with --verify (the console compared line by line with the
/// recording's): the summary line says 0 divergences and power-off, and the console is
/// the Linux boot's. Returns the console.
fn assert_linux_replays(path: &Path) -> String {
    let out = common::replay_verify(path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success() && summary.contains("divergences: 0 (guest powered off)"),
        "{summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Linux version 6.1."), "{stdout}");
    stdout.into_owned()
}

/// The workload's console lines, md5 of 1 MiB of zeros included.
fn assert_workload_console(console: &str) {
    for line in [
        "Run /init as init process",
        "init: /tmp/blob: md5 b6d81b360a5672d80c27430f39153e2c, 1048576 bytes",
        "init: a child shell's pid: ",
        "init: done, powering off",
    ] {
        assert!(console.contains(line), "{line:?} not in\n{console}");
    }
}

#[test]
fn the_checked_in_boot_replays_to_power_off_without_divergence() {
    let console = assert_linux_replays(&fixture());
    assert!(console.contains("krr.boot_only"), "{console}");
}

/// The busybox workload: mounts, /proc reads, 8 x 1 MiB `dd` into tmpfs, `md5sum`, a
/// child shell, power-off. Its console (compared line by line by --verify) is the
/// workload's, md5 of 1 MiB of zeros included.
#[test]
fn the_checked_in_workload_replays_user_space_to_power_off_without_divergence() {
    assert_workload_console(&assert_linux_replays(&workload_fixture()));
}

/// The second workload (guest-agent/linux/stress.sh, `krr.workload=stress`): long
/// `execve`, copy-on-write, `/proc/<pid>/environ` of another process read through its
/// pages, pipes, `xargs`, a file written through a shared mapping and read back; replays
/// to power-off with 0 divergences and its console.
#[test]
fn the_checked_in_stress_workload_replays_without_divergence() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/linux-stress.krr");
    let console = assert_linux_replays(&path);
    for line in [
        "stress: exec with 500 arguments, BIG of 18892 bytes",
        "stress: copy-on-write: child saw 23898 bytes, parent keeps 23892",
        "environ: KRR_MARK=environ-of-another-process",
        "cmdline: sleep 1000",
        "stress: pipe: e071f707df7bbeee2a6a1eb48011ddd0, 20000 lines",
        "stress: xargs: 43 lines",
        "mmap-check: 13288 bytes written through a shared mapping, read(2) gave them back",
        "stress: done",
    ] {
        assert!(console.contains(line), "{line:?} not in\n{console}");
    }
}

/// System call events name the call as `strace` does, from the kernel's
/// `sys_call_table` and symbols: every number busybox used has a name, and the ones
/// the workload must have made are there.
#[test]
fn linux_system_calls_are_named_from_sys_call_table() {
    use krr_engine::event::{EntryKind, Event};
    let t = Timeline::new(
        Replay::open(workload_fixture()).expect("recording"),
        1 << 30,
    );
    let replay = t.replay();
    let mut named = std::collections::BTreeMap::new();
    for (_, e) in replay.events(0..replay.event_count()) {
        let e: &Event = &e;
        let Event::UserEntry(u) = e else { continue };
        if u.kind != EntryKind::Syscall && !u.is_syscall_fault() {
            continue;
        }
        let nr = u.regs.gpr[krr_engine::state::gpr::RAX];
        let text = t.event_text(e);
        let name = text
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(n, _)| n.to_string())
            .unwrap_or_else(|| panic!("system call {nr} has no name: {text}"));
        named.insert(nr, name);
    }
    for (nr, name) in [
        (0, "read"),
        (1, "write"),
        (59, "execve"),
        (61, "wait4"),
        (231, "exit_group"),
    ] {
        assert_eq!(named.get(&nr).map(String::as_str), Some(name), "{named:?}");
    }
}

/// A copy of the workload recording without one hook: its events taken out and its
/// symbol renamed, as a kernel without the hook would have recorded (replay then never
/// stops there). Returns where replay diverged, or None where it did not.
fn workload_without_hook(
    hook: &str,
    drop: impl Fn(&krr_engine::event::Event) -> bool,
) -> Option<String> {
    use krr_engine::trace::{FinishInfo, RecordingReader, RecordingWriter};
    let mut r = RecordingReader::open(workload_fixture()).unwrap();
    let mut header = r.header().clone();
    let symbol = header
        .symbols
        .iter_mut()
        .find(|s| s.name == hook)
        .expect(hook);
    symbol.name = format!("{hook}_absent");
    let snapshot = r.snapshot().unwrap();
    let stats = r.stats().clone();
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut w = RecordingWriter::create(file.path()).unwrap();
    w.write_header(&header).unwrap();
    w.write_snapshot(&snapshot).unwrap();
    let mut dropped = 0;
    for e in r.events_from(0).map(Result::unwrap) {
        if drop(&e) {
            dropped += 1;
        } else {
            w.push(e).unwrap();
        }
    }
    assert!(dropped > 0, "the workload has no events of {hook}");
    w.finish(FinishInfo {
        kernel_instructions: stats.kernel_instructions,
        duration_s: stats.duration_s,
        end_reason: stats.end_reason.clone(),
    })
    .unwrap();
    let mut replay = Replay::open(file.path()).unwrap();
    match replay.run(krr_engine::replay::Target::End) {
        krr_engine::replay::Stop::Diverged(d) => {
            Some(format!("{} at icount {}", d.expected, d.icount))
        }
        _ => None,
    }
}

/// Each agent hook for user space is needed: without it the kernel reads what user mode
/// left differently from how it was recorded, and replay diverges.
#[test]
fn the_workload_diverges_without_each_user_space_hook() {
    use krr_engine::event::Event;
    // Copies from user memory (write(2) data, structures): the kernel buffer keeps stale bytes.
    let copies = workload_without_hook(
        "krr_agent_user_read",
        |e| matches!(e, Event::UserRead(u) if u.dst != u.src),
    );
    // get_user, strncpy_from_user, strnlen_user: paths, argv, environment read stale.
    let sources = workload_without_hook(
        "krr_agent_user_source",
        |e| matches!(e, Event::UserRead(u) if u.dst == u.src),
    );
    // User page-table entries without the accessed and dirty bits user mode set.
    let ptes = workload_without_hook("krr_agent_pte_read", |e| matches!(e, Event::PteRead(_)));
    println!("without krr_agent_user_read: {copies:?}");
    println!("without krr_agent_user_source: {sources:?}");
    println!("without krr_agent_pte_read: {ptes:?}");
    assert!(copies.is_some(), "replayed without the user-read hook");
    assert!(sources.is_some(), "replayed without the user-source hook");
    assert!(ptes.is_some(), "replayed without the PTE-read hook");
}

#[test]
fn the_ui_breaks_at_start_kernel_and_finishes_back_to_its_caller() {
    if !available(false) {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_krr-tui");
    let cmd = format!("{bin} replay {}", fixture().display());
    let t = start("linux", &cmd, 160, 48, &[]);
    t.wait_for("press ? for help");
    t.break_at("start_kernel");
    t.send(&["c"]);
    let at_break = t.wait_for_status("start_kernel  ");
    t.send(&["F"]);
    let back = t.wait_for_status("x86_64_start_reservations");
    assert!(
        status_icount(&back) < status_icount(&at_break),
        "{at_break}\n{back}"
    );
}

#[test]
fn a_fresh_workload_records_and_replays_without_divergence() {
    let Some(path) = fresh_recording() else {
        return;
    };
    assert_workload_console(&assert_linux_replays(path));
}

/// Picks events of one kind.
type EventFilter = fn(&krr_engine::event::Event) -> bool;

/// The user-space hooks `krr.hooks_off` can leave out (guest-agent/linux: krr.c), each
/// with the events it records.
const USER_SPACE_HOOKS: [(&str, EventFilter); 6] = {
    use krr_engine::event::{EntryKind, Event};
    [
        (
            "syscall_entry",
            |e| matches!(e, Event::UserEntry(u) if u.kind == EntryKind::Syscall),
        ),
        (
            "user_trap",
            |e| matches!(e, Event::UserEntry(u) if u.kind != EntryKind::Syscall),
        ),
        (
            "user_read",
            |e| matches!(e, Event::UserRead(u) if u.dst != u.src),
        ),
        (
            "user_source",
            |e| matches!(e, Event::UserRead(u) if u.dst == u.src),
        ),
        ("pte_read", |e| matches!(e, Event::PteRead(_))),
        // CPUID faulting records nothing: the user's cpuid runs as kernel code.
        ("cpuid", |_| false),
    ]
};

/// How many of the recording's events `pred` picks.
fn count_events(path: &Path, pred: EventFilter) -> usize {
    let replay = Replay::open(path).expect("recording");
    replay
        .events(0..replay.event_count())
        .filter(|(_, e)| pred(e))
        .count()
}

/// Each agent hook for user space is needed: recorded with it off (`krr.hooks_off=NAME`,
/// the busybox /init up to its first programs, `krr.workload=none`), the recording has
/// none of the hook's records and its replay diverges, where the fresh recording with
/// every hook replays at 0 divergences. The one exception is a hook this host never
/// reaches: where `syscall` arrives as a page fault at LSTAR (this kind of host), no
/// system call enters through entry_SYSCALL_64 and the user-trap hook records them.
#[test]
fn recorded_with_a_user_space_hook_off_the_workload_diverges() {
    let Some(out) = linux_out() else {
        return;
    };
    let Some(with_all) = fresh_recording() else {
        return;
    };
    let dir = scratch_dir();
    // Two recordings at a time: each keeps one host core busy.
    let results: Vec<(&str, PathBuf, Option<String>)> = std::thread::scope(|scope| {
        let chunks: Vec<_> = USER_SPACE_HOOKS
            .chunks(USER_SPACE_HOOKS.len().div_ceil(2))
            .collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|hooks| {
                let (out, dir) = (&out, &dir);
                scope.spawn(move || {
                    hooks
                        .iter()
                        .map(|(name, _)| {
                            let path = dir.join(format!("hook-off-{name}.krr"));
                            let cmdline = format!("krr.workload=none krr.hooks_off={name}");
                            record_linux(out, Some(&cmdline), &path);
                            let mut replay = Replay::open(&path).unwrap();
                            let diverged = match replay.run(krr_engine::replay::Target::End) {
                                krr_engine::replay::Stop::Diverged(d) => {
                                    Some(format!("{} at icount {}", d.expected, d.icount))
                                }
                                _ => None,
                            };
                            (*name, path, diverged)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let all_console = String::from_utf8_lossy(&common::recorded_console(with_all)).into_owned();
    for ((name, records), (_, path, diverged)) in USER_SPACE_HOOKS.iter().zip(&results) {
        println!("krr.hooks_off={name}: {diverged:?}");
        let console = String::from_utf8_lossy(&common::recorded_console(path)).into_owned();
        assert!(
            console.contains(&format!("krr.hooks_off: {name} is off")),
            "{name}: the kernel did not take krr.hooks_off:\n{console}"
        );
        assert!(
            console.contains("krr.workload=none: powering off"),
            "{console}"
        );
        assert_eq!(
            count_events(path, *records),
            0,
            "{name} is off but recorded"
        );
        if *name == "cpuid" {
            let line = "user-mode cpuid runs in the kernel";
            assert!(
                all_console.contains(line) && !console.contains(line),
                "{console}"
            );
        }
        if *name == "syscall_entry" && count_events(with_all, *records) == 0 {
            println!(
                "krr.hooks_off=syscall_entry: no system call of this host enters through \
                 entry_SYSCALL_64 (all arrive as page faults at LSTAR): nothing to diverge"
            );
            assert!(
                diverged.is_none(),
                "a hook never reached changed replay: {diverged:?}"
            );
            continue;
        }
        assert!(diverged.is_some(), "recorded with {name} off, it replayed");
    }
    for (_, path, _) in &results {
        let _ = std::fs::remove_file(path);
    }
}

/// The UI on the checked-in workload recording with the built guest's vmlinux, in a tmux
/// session `name`, or None (printing why) without tmux or a built guest.
fn ui_on_checked_in_workload(name: &str) -> Option<common::tmux::Tmux> {
    if !available(false) {
        return None;
    }
    let vmlinux = checked_in_vmlinux()?;
    let bin = env!("CARGO_BIN_EXE_krr-tui");
    let cmd = format!(
        "{bin} replay {} --kernel {}",
        workload_fixture().display(),
        vmlinux.display()
    );
    Some(start(name, &cmd, 160, 48, &[]))
}

#[test]
fn the_ui_shows_the_vmlinux_source_of_the_checked_in_workload() {
    let Some(t) = ui_on_checked_in_workload("linux-source") else {
        return;
    };
    let s = t.wait_for("head_64.S");
    // The entry is startup_64 at its physical address (the vmlinux's program headers
    // map it to the symbol), listed from there with the current instruction marked.
    assert!(t.status().contains("startup_64"), "{s}");
    assert!(s.contains("→ 0000000001000000"), "{s}");
    t.break_at("start_kernel");
    t.send(&["c"]);
    t.wait_for_status("start_kernel  ");
    // The source itself, found beside the vmlinux (its DWARF paths are relative).
    let s = t.wait_for("void start_kernel(void)");
    assert!(s.contains("init/main.c"), "{s}");
    // The current task, through the vmlinux's task_struct: the boot runs as init_task
    // (pid 0, "swapper"); kernel_init runs as pid 1, its name still its parent's.
    assert!(t.status().contains("pid 0 swapper"), "{}", t.status());
    t.break_at("kernel_init");
    t.send(&["c"]);
    let status = t.wait_for_status("kernel_init  ");
    assert!(status.contains("pid 1 swapper"), "{status}");
    // Its locals pane and print read the vmlinux's variables.
    t.command("p $rip == kernel_init");
    t.wait_for_status("$rip == kernel_init = 1");
}

/// The status bar once it shows an icount other than `from` and contains `what`.
fn status_after_move(t: &common::tmux::Tmux, from: u64, what: &str) -> String {
    t.wait_for_status_where(
        Duration::from_secs(60),
        &format!("{what:?} at an icount other than {from}"),
        |s| s.contains(what) && s.contains("icount ") && status_icount(s) != from,
    )
}

/// The status bar follows the current task across a context switch: at
/// `do_sys_openat2` init (pid 1) opens first; continuing, a process of the workload
/// (forked and exec'd) opens, and the events pane names it beside its `openat`. There
/// `F` (reverse finish) goes back out to the caller and `N` (reverse next) further
/// back, in the same task.
#[test]
fn the_status_bar_follows_the_current_task_across_a_context_switch() {
    let Some(t) = ui_on_checked_in_workload("linux-tasks") else {
        return;
    };
    t.wait_for("press ? for help");
    t.break_at("do_sys_openat2");
    t.send(&["c"]);
    let first = t.wait_for_status("do_sys_openat2  ");
    assert!(first.contains("pid 1 init"), "{first}");
    let mut here = first.clone();
    let mut other = None;
    for _ in 0..80 {
        t.send(&["c"]);
        here = status_after_move(&t, status_icount(&here), "do_sys_openat2  ");
        if !here.contains("pid 1 ") {
            other = Some(here.clone());
            break;
        }
    }
    let other = other.unwrap_or_else(|| panic!("only init opened files: {here}"));
    let task = other
        .split("do_sys_openat2  ")
        .nth(1)
        .and_then(|r| r.split('│').next())
        .map(|r| r.trim().to_string())
        .expect("the task in the status bar");
    assert!(
        task.starts_with("pid ") && task.split_whitespace().count() == 3,
        "{other}"
    );
    // The events pane names the task that made the system call.
    let screen = t.wait_for(&format!("[{task}]"));
    assert!(
        screen
            .lines()
            .any(|l| l.contains("(openat)") && l.contains(&format!("[{task}]"))),
        "{screen}"
    );
    t.send(&["F"]);
    let caller = status_after_move(&t, status_icount(&other), &task);
    assert!(
        status_icount(&caller) < status_icount(&other),
        "{other}\n{caller}"
    );
    assert!(
        !caller.contains("do_sys_openat2  "),
        "F left do_sys_openat2: {caller}"
    );
    t.send(&["N"]);
    let before = status_after_move(&t, status_icount(&caller), &task);
    assert!(
        status_icount(&before) < status_icount(&caller),
        "{caller}\n{before}"
    );
}

/// Expressions printed at `start_kernel` by gdb and the UI: the first task's name and
/// pid, a global only declared in C (`jiffies`: the linker script defines it), a pointer
/// to a structure and one of its members through it.
const LINUX_PRINTS: [&str; 5] = [
    "init_task.comm",
    "init_task.pid",
    "jiffies",
    "&init_task",
    "(&init_task)->flags",
];

#[test]
fn gdb_with_the_vmlinux_breaks_backtraces_and_steps_back_in_the_checked_in_workload() {
    if !gdb_available() {
        return;
    }
    let Some(vmlinux) = checked_in_vmlinux() else {
        return;
    };
    let server = Server::start_on(&workload_fixture());
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "target remote {}\n\
         break start_kernel\n\
         continue\n\
         bt\n\
         set print entry-values no\n\
         set charset ASCII\n\
         {prints}\
         printf \"pc=%lx\\n\", $pc\n\
         stepi\n\
         stepi\n\
         printf \"pc=%lx\\n\", $pc\n\
         reverse-stepi\n\
         reverse-stepi\n\
         printf \"pc=%lx\\n\", $pc\n\
         reverse-finish\n\
         info symbol $pc\n\
         detach\n",
        server.addr,
        prints = LINUX_PRINTS
            .iter()
            .map(|e| format!("printf \"PRINT\\n\"\noutput {e}\nprintf \"\\n\"\n"))
            .collect::<String>(),
    );
    let text = run_gdb(Some(&vmlinux), &script, dir.path());
    // The UI's engine prints the same at the same stop.
    let gdb_prints: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "PRINT")
        .collect::<Vec<_>>()
        .split(|l| *l == "PRINT")
        .filter_map(|chunk| chunk.first().copied())
        .collect();
    let mut t = checked_in_timeline(&vmlinux);
    continue_to(&mut t, "start_kernel");
    let ui_prints: Vec<String> = LINUX_PRINTS
        .iter()
        .map(|e| {
            t.print_expression(e, 0, Radix::Natural)
                .unwrap_or_else(|err| format!("error: {err}"))
        })
        .collect();
    assert_eq!(gdb_prints.len(), LINUX_PRINTS.len(), "{text}");
    for ((e, u), g) in LINUX_PRINTS.iter().zip(&ui_prints).zip(&gdb_prints) {
        println!("print {e} = {u}");
        assert_eq!(u, g, "print {e}: the UI and gdb differ");
    }
    assert!(text.contains("Breakpoint 1, start_kernel"), "{text}");
    // x86_64_start_kernel and x86_64_start_reservations end in jumps (tail calls): the
    // frame below start_kernel is the one that called the first of them.
    assert!(
        text.contains("#0  start_kernel") && text.contains("in secondary_startup_64"),
        "the backtrace goes from start_kernel to its caller's frame:\n{text}"
    );
    let pcs: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("pc=")).collect();
    assert_eq!(pcs.len(), 3, "{text}");
    assert_ne!(pcs[0], pcs[1], "stepi moved:\n{text}");
    assert_eq!(pcs[0], pcs[2], "two reverse-stepi undo two stepi:\n{text}");
    // As the UI's F (the_ui_breaks_at_start_kernel_and_finishes_back_to_its_caller):
    // back to the jump into start_kernel.
    assert!(
        text.contains("x86_64_start_reservations + "),
        "reverse-finish from start_kernel:\n{text}"
    );
}

/// The UI's kernel log is lx-dmesg's, line for line. Times may differ in the last digit:
/// the UI prints them as the kernel's console does (microseconds truncated), lx-dmesg
/// rounds the seconds as a float.
fn assert_same_log(ui: &[String], gdb: &[String], at: &str) {
    let split = |l: &str| -> (f64, String) {
        let (time, text) = l
            .strip_prefix('[')
            .and_then(|r| r.split_once("] "))
            .unwrap_or_else(|| panic!("{at}: not a log line: {l:?}"));
        (time.trim().parse().expect("a time"), text.to_string())
    };
    assert_eq!(ui.len(), gdb.len(), "{at}: lines\n{ui:#?}\n{gdb:#?}");
    for (u, g) in ui.iter().zip(gdb) {
        let ((ut, utext), (gt, gtext)) = (split(u), split(g));
        assert_eq!(utext, gtext, "{at}");
        assert!((ut - gt).abs() <= 1.5e-6, "{at}: {u:?} vs {g:?}");
    }
}

/// Continues `t` to a breakpoint on `function`, checking it got there; its address.
fn continue_to(t: &mut Timeline, function: &str) -> u64 {
    let addr = t.symbols().address_of(function).expect(function);
    t.add_breakpoint(addr);
    t.continue_forward(None);
    assert_eq!(t.regs().rip, addr, "at {function}");
    addr
}

/// Whether `lx-ps`'s lines (`ADDRESS PID COMM`) list the task `pid` named `name`.
fn lx_ps_lists(lines: &[String], pid: u64, name: &str) -> bool {
    lines.iter().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.len() == 3 && w[1] == pid.to_string() && w[2] == name
    })
}

/// The kernel's own gdb scripts (`CONFIG_GDB_SCRIPTS`: the build tree's
/// `vmlinux-gdb.py`) work against the stub, and the UI reads what they read: at
/// `kernel_init` and where the workload's first child exits (`do_exit`), `lx-dmesg`
/// prints the same kernel log as the UI's `D`, and `lx-ps` lists the task the status
/// bar names; `lx-cmdline` is the recording's command line, `lx-version` the log's first
/// line, and `lx-symbols` loads the vmlinux (the kernel has no modules).
#[test]
fn lx_dmesg_and_lx_ps_read_what_the_ui_reads() {
    if !gdb_available() {
        return;
    }
    let Some(vmlinux) = checked_in_vmlinux() else {
        return;
    };
    let build = vmlinux.with_file_name("build");
    if !build.join("vmlinux-gdb.py").is_file() {
        panic!(
            "{} has no vmlinux-gdb.py: guest-agent/linux/build.sh builds the gdb scripts",
            build.display()
        );
    }
    let server = Server::start_on(&workload_fixture());
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "source {}\n\
         target remote {}\n\
         break kernel_init\n\
         continue\n\
         printf \"DMESG\\n\"\n\
         lx-dmesg\n\
         printf \"PS\\n\"\n\
         lx-ps\n\
         printf \"END\\n\"\n\
         delete\n\
         break do_exit\n\
         continue\n\
         printf \"DMESG2\\n\"\n\
         lx-dmesg\n\
         printf \"PS2\\n\"\n\
         lx-ps\n\
         printf \"CMDLINE\\n\"\n\
         lx-cmdline\n\
         printf \"VERSION\\n\"\n\
         lx-version\n\
         printf \"SYMBOLS\\n\"\n\
         lx-symbols\n\
         printf \"END2\\n\"\n\
         detach\n",
        build.join("vmlinux-gdb.py").display(),
        server.addr
    );
    let text = run_gdb(Some(&vmlinux), &script, dir.path());
    let section = |from: &str, to: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| *l != from)
            .skip(1)
            .take_while(|l| *l != to)
            .map(String::from)
            .collect()
    };
    let gdb_log = section("DMESG", "PS");
    let gdb_ps = section("PS", "END");
    assert!(
        gdb_log
            .first()
            .is_some_and(|l| l.contains("Linux version 6.1")),
        "lx-dmesg printed the log:\n{text}"
    );

    let mut t = checked_in_timeline(&vmlinux);
    let kernel_init = continue_to(&mut t, "kernel_init");
    let ui_log = t.kernel_log().expect("the kernel log");
    assert_same_log(&ui_log, &gdb_log, "at kernel_init");
    let task = t.current_process().expect("the current task");
    assert!(
        lx_ps_lists(&gdb_ps, task.pid, &task.name),
        "lx-ps lists pid {} {}:\n{}",
        task.pid,
        task.name,
        gdb_ps.join("\n")
    );

    // In user space, where the first child of the workload exits: the log then holds
    // init's lines too, and lx-ps lists the user tasks with the one exiting.
    let gdb_log = section("DMESG2", "PS2");
    let gdb_ps = section("PS2", "CMDLINE");
    t.remove_breakpoint(kernel_init);
    continue_to(&mut t, "do_exit");
    assert_same_log(
        &t.kernel_log().expect("the kernel log"),
        &gdb_log,
        "at do_exit",
    );
    let task = t.current_process().expect("the current task");
    assert!(task.pid > 1, "{task:?}");
    assert!(
        lx_ps_lists(&gdb_ps, task.pid, &task.name) && lx_ps_lists(&gdb_ps, 1, "init"),
        "lx-ps lists pid {} {} and init:\n{}",
        task.pid,
        task.name,
        gdb_ps.join("\n")
    );
    // The command line the recorder gave the kernel, the banner the console printed
    // first, and lx-symbols (which loads vmlinux; this kernel has no modules).
    let header = t.replay().header().clone();
    assert_eq!(
        section("CMDLINE", "VERSION"),
        [header.kernel_command_line.as_str()],
        "{text}"
    );
    let version = section("VERSION", "SYMBOLS");
    assert!(
        version
            .first()
            .is_some_and(|v| v.starts_with("Linux version 6.1.192 ")
                && gdb_log.first().is_some_and(|l| l.ends_with(v.trim_end()))),
        "lx-version is the log's first line:\n{text}"
    );
    assert!(
        section("SYMBOLS", "END2")
            .iter()
            .any(|l| l == "loading vmlinux"),
        "{text}"
    );
}
