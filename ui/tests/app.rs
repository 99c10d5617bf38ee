//! Keys to moves to status, on the checked-in demo recording.

mod common;

use common::{app, key, keys};
use krr_ui::Pane;
use krr_ui::app::Mode;
use ratatui::crossterm::event::KeyCode;

#[test]
fn stepi_and_reverse_stepi_move_one_instruction_and_the_start_is_reported() {
    let mut a = app();
    keys(&mut a, "i");
    assert_eq!(a.timeline.icount(), 1);
    assert_eq!(a.message, "stepi");
    assert_ne!(
        a.prev_regs.rip,
        a.rip(),
        "the registers before the move are kept"
    );
    keys(&mut a, "I");
    assert_eq!(a.timeline.icount(), 0);
    assert!(
        a.message.contains("start of the recording"),
        "{}",
        a.message
    );
    keys(&mut a, "I");
    assert_eq!(a.timeline.icount(), 0);
    assert!(
        a.message.contains("start of the recording"),
        "{}",
        a.message
    );
    assert!(
        a.position().starts_with("#-  icount 0  0.0%"),
        "{}",
        a.position()
    );
}

#[test]
fn goto_prompt_goes_to_an_event_and_rejects_a_missing_one() {
    let mut a = app();
    keys(&mut a, "g");
    assert!(matches!(a.mode, Mode::Prompt { .. }));
    keys(&mut a, "12");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.mode, Mode::Normal);
    assert_eq!(a.replay().events_consumed(), 13);
    assert_eq!(a.timeline.position().event, Some(12));
    assert!(a.position().starts_with("#12  icount "), "{}", a.position());
    let here = a.timeline.icount();
    keys(&mut a, "g99999999");
    key(&mut a, KeyCode::Enter);
    assert!(a.message.contains("does not exist"), "{}", a.message);
    assert_eq!(a.timeline.icount(), here);
    // Past the end by icount: the end is reported, not an error.
    keys(&mut a, ":goto icount 999999999999");
    key(&mut a, KeyCode::Enter);
    assert!(a.message.contains("end of the recording"), "{}", a.message);
    assert!((a.percent() - 100.0).abs() < 1e-9);
}

#[test]
fn break_on_a_symbol_continue_to_it_and_reverse_continue_back_to_it() {
    let mut a = app();
    let hook = a.symbols().address_of("krr_agent_rdtsc").expect("symbol");
    keys(&mut a, ":break krr_agent_rdtsc");
    key(&mut a, KeyCode::Enter);
    assert!(a.timeline.breakpoints().contains(&hook));
    keys(&mut a, "c");
    assert_eq!(a.rip(), hook);
    assert!(
        a.message.contains("breakpoint at krr_agent_rdtsc"),
        "{}",
        a.message
    );
    let first = a.timeline.icount();
    keys(&mut a, "c");
    let second = a.timeline.icount();
    assert!(second > first);
    keys(&mut a, "iiii");
    keys(&mut a, "C");
    assert_eq!(a.timeline.icount(), second);
    keys(&mut a, "C");
    assert_eq!(a.timeline.icount(), first);
    assert!(
        a.message.starts_with("reverse-continue: breakpoint"),
        "{}",
        a.message
    );
    // `b` toggles the breakpoint at the cursor (RIP): off, then continue runs past.
    keys(&mut a, "b");
    assert!(a.timeline.breakpoints().is_empty());
    keys(&mut a, ":info breakpoints");
    key(&mut a, KeyCode::Enter);
    assert_eq!(
        a.mode,
        Mode::Output(vec!["no breakpoints or watchpoints".into()])
    );
    keys(&mut a, "x");
    assert_eq!(a.mode, Mode::Normal, "any key closes the output");
}

#[test]
fn next_finish_and_step_move_and_report() {
    let mut a = app();
    keys(&mut a, ":goto event 300");
    key(&mut a, KeyCode::Enter);
    let before = a.timeline.icount();
    keys(&mut a, "s");
    assert!(a.timeline.icount() > before);
    let line = a.symbols().line(a.rip());
    keys(&mut a, "S");
    assert!(a.timeline.icount() < before + 1000);
    assert_ne!(
        a.symbols().line(a.rip()),
        line,
        "reverse-step left the line"
    );
    // next: another line, not in a deeper frame.
    let line = a.symbols().line(a.rip());
    let sp = a.regs().gpr[4];
    keys(&mut a, "n");
    assert_eq!(a.message, "next");
    assert_ne!(a.symbols().line(a.rip()), line);
    assert!(a.regs().gpr[4] >= sp);
    let after_next = a.timeline.icount();
    keys(&mut a, "N");
    assert!(a.message.starts_with("reverse-next"), "{}", a.message);
    assert!(a.timeline.icount() < after_next);
    keys(&mut a, "o");
    assert_eq!(a.message, "nexti");
    keys(&mut a, "f");
    assert!(a.message.starts_with("finish"), "{}", a.message);
    keys(&mut a, "F");
    assert!(a.message.starts_with("reverse-finish"), "{}", a.message);
}

#[test]
fn a_watchpoint_from_the_prompt_stops_continue() {
    let mut a = app();
    keys(&mut a, ":goto event 400");
    key(&mut a, KeyCode::Enter);
    let slot = a.regs().gpr[4] - 8;
    keys(&mut a, &format!("w{slot:#x} 8"));
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.timeline.watchpoints().len(), 1);
    keys(&mut a, "c");
    assert!(a.message.contains("watchpoint"), "{}", a.message);
}

#[test]
fn panes_hide_focus_skips_hidden_ones_resize_help_and_quit() {
    let mut a = app();
    assert_eq!(a.focus, Pane::Disassembly);
    keys(&mut a, "3");
    assert!(!a.is_visible(Pane::Source));
    key(&mut a, KeyCode::Tab);
    assert_eq!(a.focus, Pane::Events, "the hidden source pane is skipped");
    let w = a.weights[Pane::Events.index()];
    keys(&mut a, "++");
    assert_eq!(a.weights[Pane::Events.index()], w + 2);
    keys(&mut a, "-");
    assert_eq!(a.weights[Pane::Events.index()], w + 1);
    keys(&mut a, "3");
    assert!(a.is_visible(Pane::Source));
    keys(&mut a, "?");
    assert_eq!(a.mode, Mode::Help);
    key(&mut a, KeyCode::Esc);
    assert_eq!(a.mode, Mode::Normal);
    keys(&mut a, ":nonsense");
    key(&mut a, KeyCode::Enter);
    assert!(a.message.contains("unknown command"));
    assert!(!a.quit);
    keys(&mut a, "q");
    assert!(a.quit);
}

#[test]
fn the_events_cursor_and_enter_goto_an_event() {
    let mut a = app();
    keys(&mut a, ":goto event 100");
    key(&mut a, KeyCode::Enter);
    while a.focus != Pane::Events {
        key(&mut a, KeyCode::Tab);
    }
    keys(&mut a, "jjj");
    assert_eq!(a.selected_event(), Some(103));
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.timeline.position().event, Some(103));
    assert_eq!(a.message, "goto event 103");
    keys(&mut a, "kk");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.timeline.position().event, Some(101));
}

#[test]
fn a_cancelled_reverse_continue_reports_the_interruption_and_progress_is_reported() {
    use krr_ui::MoveCtl;
    use ratatui::crossterm::event::{KeyEvent, KeyModifiers};
    use std::sync::atomic::AtomicBool;
    let mut a = app();
    keys(&mut a, ":break krr_agent_rdtsc");
    key(&mut a, KeyCode::Enter);
    keys(&mut a, ":goto event 2000");
    key(&mut a, KeyCode::Enter);
    let here = a.timeline.icount();
    let cancel = AtomicBool::new(true);
    let mut seen = Vec::new();
    let mut progress = |p: f64| seen.push(p);
    let mut ctl = MoveCtl {
        cancel: Some(&cancel),
        progress: &mut progress,
    };
    a.press(
        KeyEvent::new(KeyCode::Char('C'), KeyModifiers::NONE),
        &mut ctl,
    );
    assert_eq!(a.message, "reverse-continue: interrupted");
    let cancel = AtomicBool::new(false);
    let mut seen = Vec::new();
    let mut progress = |p: f64| seen.push(p);
    let mut ctl = MoveCtl {
        cancel: Some(&cancel),
        progress: &mut progress,
    };
    a.timeline.goto_icount(here);
    a.press(
        KeyEvent::new(KeyCode::Char('C'), KeyModifiers::NONE),
        &mut ctl,
    );
    assert!(
        a.message.starts_with("reverse-continue: breakpoint"),
        "{}",
        a.message
    );
    assert!(
        !seen.is_empty() && seen.iter().all(|p| (0.0..=1.0).contains(p)),
        "{seen:?}"
    );
}

#[test]
fn backtrace_unwinds_through_call_frame_information() {
    let mut a = app();
    keys(&mut a, ":break copy_from_user");
    key(&mut a, KeyCode::Enter);
    keys(&mut a, "c");
    assert!(a.message.contains("copy_from_user"), "{}", a.message);
    let (frames, how) = a.backtrace(16);
    assert_eq!(how, "DWARF call-frame information");
    assert!(frames.len() >= 3, "{frames:x?}");
    let caller = a.symbols().describe(frames[1]);
    assert!(caller.starts_with("syscall_dispatch"), "{caller}");
}

/// Goes to `icount`, then presses `keys`; the icount it lands at.
fn from_icount(a: &mut krr_ui::App, icount: u64, keys_: &str) -> u64 {
    a.timeline.goto_icount(icount);
    assert_eq!(a.timeline.icount(), icount);
    keys(a, keys_);
    a.timeline.icount()
}

// The positions below are gdb's answers on the same recording (issue 12; the
// `line_steps` test compares every line with gdb itself).

#[test]
fn next_at_a_return_to_user_stops_at_the_next_kernel_entry() {
    let mut a = app();
    // trap_return's iretq; the user page fault (#218) enters isr14 right after it.
    assert_eq!(a.symbols().describe(0xffffffff80100b0b), "trap_return+0x1b");
    assert_eq!(from_icount(&mut a, 317251, "n"), 317252);
    assert_eq!(a.symbols().describe(a.rip()), "isr14");
    assert_eq!(a.timeline.position().event, Some(218));
}

#[test]
fn reverse_next_at_a_kernel_entry_goes_back_to_the_return_to_user() {
    let mut a = app();
    assert_eq!(from_icount(&mut a, 317252, "N"), 317251);
    assert_eq!(a.symbols().describe(a.rip()), "trap_return+0x1b");
}

#[test]
fn reverse_next_over_a_call_that_slept_stays_in_its_thread() {
    let mut a = app();
    // Right after `call proc_sleep` returned, 357 k instructions (and other
    // processes) after it was made.
    a.timeline.goto_icount(713800);
    assert!(
        a.symbols()
            .describe(a.rip())
            .starts_with("syscall_dispatch+"),
        "{}",
        a.symbols().describe(a.rip())
    );
    assert_eq!(from_icount(&mut a, 713800, "N"), 357017);
    assert_eq!(
        a.symbols().line(a.rip()).map(|l| l.line),
        Some(80),
        "the line of the call"
    );
}

#[test]
fn reverse_next_from_a_functions_first_line_goes_back_into_its_caller() {
    let mut a = app();
    keys(&mut a, ":break syscall_dispatch");
    key(&mut a, KeyCode::Enter);
    keys(&mut a, "c");
    assert_eq!(a.timeline.icount(), 317139);
    keys(&mut a, "N");
    assert_eq!(a.timeline.icount(), 317134);
    let line = a.symbols().line(a.rip()).expect("a line");
    assert!(line.file.ends_with("trap.c"), "{line:?}");
    assert_eq!(line.line, 88);
}

#[test]
fn the_source_line_at_a_functions_entry_is_gdbs() {
    let a = app();
    let entry = a.symbols().address_of("syscall_dispatch").expect("symbol");
    let line = a.symbols().line(entry).expect("a line");
    // The line table has rows for lines 69 and 70 at the entry; gdb takes the
    // statement (70), as the UI now does.
    assert!(line.file.ends_with("syscall.c"), "{line:?}");
    assert_eq!(line.line, 70);
}

#[test]
fn bad_breakpoint_and_watch_addresses_are_refused() {
    let mut a = app();
    keys(&mut a, ":goto event 300");
    key(&mut a, KeyCode::Enter);
    for (cmd, says) in [
        (":break 0x1234", "no breakpoint at 0x1234"),
        (
            ":break syscall_dispatch+0x10000000",
            "syscall_dispatch is 0x",
        ),
        ("w0 8", "cannot watch 0x0 (8 bytes): not mapped"),
        ("w$rsp 0", "cannot watch 0 bytes"),
        ("w$rsp 100000", "cannot watch 100000 bytes"),
    ] {
        keys(&mut a, cmd);
        key(&mut a, KeyCode::Enter);
        assert!(a.message.contains(says), "{cmd}: {}", a.message);
    }
    assert!(a.timeline.breakpoints().is_empty());
    assert!(a.timeline.watchpoints().is_empty());
    // Good ones still work.
    keys(&mut a, ":break syscall_dispatch+0x10");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.timeline.breakpoints().len(), 1, "{}", a.message);
    keys(&mut a, "w$rsp 8");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.timeline.watchpoints().len(), 1, "{}", a.message);
}

/// At an inlined call's entry where a source-line step stopped, `s` and `S` enter the
/// inlined call without moving, as gdb's step and reverse-step do; the next `s` steps
/// in it (gdb: 153651, 153651, 153657 in uart_init's first outb calls).
#[test]
fn step_at_an_inlined_calls_entry_enters_it_without_moving() {
    let mut a = app();
    assert_eq!(from_icount(&mut a, 153642, "n"), 153651);
    assert_eq!(a.symbols().describe(a.rip()), "uart_init+0x19");
    // Before the call, the source pane shows the call, as gdb does.
    let line = |a: &krr_ui::App| match a.source() {
        krr_ui::app::SourceView::Text { file, line, .. }
        | krr_ui::app::SourceView::Missing { file, line } => {
            format!("{}:{line}", file.file_name().unwrap().to_string_lossy())
        }
        other => format!("{other:?}"),
    };
    assert_eq!(line(&a), "uart.c:13");
    keys(&mut a, "S");
    assert_eq!(a.timeline.icount(), 153651, "reverse-step entered the call");
    assert_eq!(line(&a), "kernel.h:33", "in the inlined outb");
    keys(&mut a, "s");
    assert_eq!(a.timeline.icount(), 153657);
}

/// Variables by name: `:x ticks` shows its memory, `w ticks` watches its 8 bytes (the
/// symbol's size), `sym+off` works for both, a breakpoint on a variable is refused, and
/// the disassembly names the variable an instruction reads.
#[test]
fn data_symbols_in_x_watch_break_and_the_disassembly() {
    let mut a = app();
    let ticks = a.symbols().address_of("ticks").expect("ticks");
    assert_eq!(a.symbols().data_symbol("ticks").map(|d| d.size), Some(8));
    keys(&mut a, ":goto event 300");
    key(&mut a, KeyCode::Enter);
    keys(&mut a, ":x ticks");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.message, format!("memory at {ticks:#x}"));
    key(&mut a, KeyCode::Esc);
    keys(&mut a, ":x ticks+0x8");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.message, format!("memory at {:#x}", ticks + 8));
    key(&mut a, KeyCode::Esc);
    keys(&mut a, ":break ticks");
    key(&mut a, KeyCode::Enter);
    assert!(a.message.contains("ticks is a variable"), "{}", a.message);
    assert!(a.timeline.breakpoints().is_empty());
    keys(&mut a, "wticks");
    key(&mut a, KeyCode::Enter);
    let w: Vec<_> = a.timeline.watchpoints().iter().copied().collect();
    assert_eq!(
        (w.len(), w[0].addr, w[0].len),
        (1, ticks, 8),
        "{}",
        a.message
    );
    keys(&mut a, "c");
    assert!(a.message.contains("watchpoint"), "{}", a.message);
    // The write that stopped it was to ticks (in the timer's handler).
    let at = a.symbols().describe(a.rip());
    assert!(at.starts_with("sched_timer_tick+"), "{at}");
    // The instructions around here read or write ticks by its address.
    let rows = a.disassembly(40);
    assert!(
        rows.iter().any(|l| l.text.ends_with("<ticks>")),
        "{:#?}",
        rows.iter().map(|l| &l.text).collect::<Vec<_>>()
    );
}

/// A watchpoint stop gives the old and new value in the watch's width and what wrote
/// it: forward and backward the instruction (`ticks++`), and a device's DMA write as
/// the event that replay applied, not the `out` that started it.
#[test]
fn watchpoint_stops_say_old_and_new_value_and_name_a_dma_write_as_its_event() {
    let mut a = app();
    keys(&mut a, ":goto event 300");
    key(&mut a, KeyCode::Enter);
    keys(&mut a, "wticks");
    key(&mut a, KeyCode::Enter);
    keys(&mut a, "c");
    let ticks = a.symbols().address_of("ticks").unwrap();
    let now = a.timeline.read_u64(ticks).unwrap();
    let by = a.symbols().describe(a.timeline.replay().regs().rip);
    assert!(
        a.message.starts_with(&format!(
            "continue: watchpoint ticks (8 bytes): {} -> {now}, by sched_timer_tick+",
            now - 1
        )),
        "{} (rip {by})",
        a.message
    );
    // Backward: stopped before the write, which the message names.
    keys(&mut a, "iC");
    assert!(
        a.message.starts_with(&format!(
            "reverse-continue: watchpoint ticks (8 bytes): {} -> {now}, next: by sched_timer_tick+",
            now - 1
        )),
        "{}",
        a.message
    );
    keys(&mut a, ":unwatch ticks");
    key(&mut a, KeyCode::Enter);

    // fw_cfg's file directory count is written by the device's DMA.
    let mut a = app();
    keys(&mut a, ":break disk_init");
    key(&mut a, KeyCode::Enter);
    keys(&mut a, "c");
    assert!(
        a.message.contains("breakpoint at disk_init"),
        "{}",
        a.message
    );
    keys(&mut a, ":delete");
    key(&mut a, KeyCode::Enter);
    keys(&mut a, "wdir_count");
    key(&mut a, KeyCode::Enter);
    keys(&mut a, "c");
    // The event named is a DMA write replay applied in the step that stopped.
    let n: u64 = a
        .message
        .rsplit_once(", by event #")
        .and_then(|(_, rest)| rest.strip_suffix(" dma_write"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", a.message));
    assert_eq!(
        a.replay().event(n).expect("event").kind(),
        krr_engine::event::EventKind::DmaWrite
    );
    assert!(a.replay().events_consumed() > n);
    assert!(
        a.message
            .starts_with("continue: watchpoint dir_count (4 bytes): 0 -> 0x01000000"),
        "{}",
        a.message
    );
}

/// A system call that arrived as a page fault at the kernel entry reads as the system
/// call it is: its number (RAX) and name from the demo kernel's table, and the user RIP
/// it returns to (RCX), not the kernel entry; the status bar names the current process.
#[test]
fn syscall_events_show_number_name_and_user_rip_and_the_status_bar_the_process() {
    use krr_engine::event::{Event, EventKind};
    let mut a = app();
    let events: Vec<_> = a.replay().events(0..a.replay().event_count()).collect();
    assert_eq!(events.len() as u64, a.replay().event_count());
    let mut checked = 0;
    for (n, e) in &events {
        let e: &Event = e;
        let Event::UserEntry(u) = e else { continue };
        if e.kind() != EventKind::Syscall || !u.is_syscall_fault() {
            continue;
        }
        let (nr, rcx) = (u.regs.gpr[0], u.regs.gpr[1]);
        let name = krr_engine::guest_kernel::DEMO_SYSCALLS[nr as usize];
        let text = a.timeline.event_text(e);
        assert!(
            text.starts_with(&format!(
                "syscall {nr} ({name}) from user rip {rcx:#x} (as #PF at "
            )),
            "#{n}: {text}"
        );
        assert!(rcx < 0x8000_0000_0000, "#{n}: user rip {rcx:#x}");
        checked += 1;
    }
    assert!(checked > 10, "{checked} system calls");
    // In a system call, the process that made it.
    keys(&mut a, ":break syscall_dispatch");
    key(&mut a, KeyCode::Enter);
    keys(&mut a, "c");
    let status = a.position();
    let pid_at = status.find("  pid ").unwrap_or_else(|| panic!("{status}"));
    let mut words = status[pid_at..].split_whitespace().skip(1);
    let pid: u64 = words.next().unwrap().parse().unwrap();
    let name = words.next().unwrap();
    assert!((1..=8).contains(&pid), "{status}");
    assert!(
        ["primes", "disk", "clock", "pager", "crash-ud", "crash-pf"].contains(&name),
        "{status}"
    );
    // At the start no process runs: none is shown.
    keys(&mut a, ":goto icount 0");
    key(&mut a, KeyCode::Enter);
    assert!(!a.position().contains("pid"), "{}", a.position());
}

/// User memory, which user code wrote unrecorded, shows as `??` rather than the zeros
/// replay would read; kernel memory next to it still shows.
#[test]
fn memory_that_was_not_recorded_shows_as_unavailable() {
    use krr_engine::event::Event;
    let mut a = app();
    let n = 240;
    let Event::UserEntry(u) = a.replay().event(n).as_deref().cloned().expect("event") else {
        panic!("event {n} is not a user entry");
    };
    keys(&mut a, &format!(":goto event {n}"));
    key(&mut a, KeyCode::Enter);
    // The user stack: mapped (the page tables say so), but not recorded.
    let rsp = u.regs.gpr[4] & !0xf;
    let mut b = [0u8; 8];
    assert_eq!(
        a.timeline.read_memory(rsp, &mut b),
        Err(krr_engine::timeline::ReadError::NotRecorded)
    );
    assert_eq!(a.replay().read_memory(rsp, &mut b), Ok(()), "mapped");
    keys(&mut a, &format!(":x {rsp:#x} 1"));
    key(&mut a, KeyCode::Enter);
    let Mode::Output(rows) = &a.mode else {
        panic!("{:?}", a.mode)
    };
    assert!(
        rows[0].starts_with(&format!("{rsp:016x}  ??")),
        "{}",
        rows[0]
    );
    assert_eq!(rows[0].matches("??").count(), 16, "{}", rows[0]);
    key(&mut a, KeyCode::Esc);
    // The kernel's variable reads.
    keys(&mut a, ":x ticks 1");
    key(&mut a, KeyCode::Enter);
    let Mode::Output(rows) = &a.mode else {
        panic!("{:?}", a.mode)
    };
    assert!(!rows[0].contains("??"), "{}", rows[0]);
}

/// Bookmarks: `:mark NAME` names the position, `'NAME` and `:goto NAME` come back to
/// it, `:marks` lists them.
#[test]
fn a_bookmark_round_trip() {
    let mut a = app();
    keys(&mut a, ":goto event 300");
    key(&mut a, KeyCode::Enter);
    keys(&mut a, "sss");
    let here = a.timeline.position();
    keys(&mut a, ":mark before");
    key(&mut a, KeyCode::Enter);
    assert_eq!(
        a.message,
        format!("bookmark before: icount {}", here.icount)
    );
    keys(&mut a, ":goto event 900");
    key(&mut a, KeyCode::Enter);
    assert_ne!(a.timeline.position(), here);
    keys(&mut a, "'before");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.timeline.position(), here, "{}", a.message);
    keys(&mut a, ":goto icount 0");
    key(&mut a, KeyCode::Enter);
    keys(&mut a, ":goto before");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.timeline.position(), here, "{}", a.message);
    keys(&mut a, ":goto nowhere");
    key(&mut a, KeyCode::Enter);
    assert!(
        a.message.contains("no bookmark \"nowhere\""),
        "{}",
        a.message
    );
    keys(&mut a, ":marks");
    key(&mut a, KeyCode::Enter);
    let Mode::Output(rows) = &a.mode else {
        panic!("{:?}", a.mode)
    };
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0].starts_with("before") && rows[0].contains(&format!("icount {}", here.icount)),
        "{rows:?}"
    );
}

/// UDB's `last`: back to right before the last change of the bytes, naming what changed
/// them: the instruction (ticks++) or the event (a DMA write).
#[test]
fn last_goes_back_to_the_last_write_and_says_by_what() {
    let mut a = app();
    keys(&mut a, ":goto event 500");
    key(&mut a, KeyCode::Enter);
    let ticks = a.symbols().address_of("ticks").unwrap();
    let value = a.timeline.read_u64(ticks).unwrap();
    let from = a.timeline.icount();
    keys(&mut a, ":last ticks");
    key(&mut a, KeyCode::Enter);
    assert!(
        a.message.starts_with(&format!(
            "last: ticks (8 bytes): {} -> {value}, next: by sched_timer_tick+",
            value - 1
        )),
        "{}",
        a.message
    );
    assert!(a.timeline.icount() < from);
    assert_eq!(a.timeline.read_u64(ticks), Some(value - 1));
    // The next instruction writes it; nothing changes it from there to where we were.
    keys(&mut a, "i");
    assert_eq!(a.timeline.read_u64(ticks), Some(value));
    // Written by a device: named as its event.
    keys(&mut a, ":last dir_count 4");
    key(&mut a, KeyCode::Enter);
    assert!(
        a.message
            .starts_with("last: dir_count (4 bytes): 0 -> 0x01000000, next: by event #")
            && a.message.ends_with(" dma_write"),
        "{}",
        a.message
    );
}
