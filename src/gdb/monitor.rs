//! `monitor` commands, in the spirit of rr's: where am I in the recording, go to an
//! event, and what happens around here.

use super::target::ReplayTarget;
use krr_engine::timeline::Moved;

const HELP: &str = "\
krr-tui monitor commands:
  when               the current event number, icount and rip
  goto EVENT         go to the position right after EVENT was applied
  goto NAME          go to the bookmark NAME
  goto-icount K      go to icount K
  bookmark NAME      name the current position (the UI's :mark)
  bookmarks          the bookmarks
  events [N]         the N events (default 5) before and after the current position
  help               this text
After `goto` or `goto-icount`, gdb shows the registers it read before the move until
`maint flush register-cache`; gdb started with the server's command file (gdb -x, see
its output) does that after every monitor command.";

/// Runs one monitor command and returns its output.
pub fn run(t: &mut ReplayTarget, line: &str) -> String {
    let mut words = line.split_whitespace();
    let cmd = words.next().unwrap_or("help");
    let arg = words.next();
    match (cmd, arg) {
        ("when", _) => when(t),
        ("goto", Some(n)) => match parse_number(n) {
            Some(n) => {
                let total = t.tl.replay().event_count();
                if n >= total {
                    return format!("event {n} does not exist: the recording has {total} events");
                }
                let moved = t.tl.goto_event(n);
                moved_text(t, moved)
            }
            None => {
                let Some(moved) = t.tl.goto_bookmark(n) else {
                    return format!("no bookmark {n:?} (nor an event number)");
                };
                moved_text(t, moved)
            }
        },
        ("bookmark", Some(name)) => {
            if parse_number(name).is_some() {
                return format!("{name:?} cannot name a bookmark: goto takes it as an event");
            }
            let p = t.tl.set_bookmark(name);
            format!("bookmark {name}: icount {}", p.icount)
        }
        ("bookmarks", _) => {
            let marks = t.tl.bookmarks();
            if marks.is_empty() {
                return "no bookmarks".into();
            }
            marks
                .iter()
                .map(|(name, p)| {
                    let ev = p.event.map_or("-".to_string(), |n| n.to_string());
                    format!(
                        "{name}: event {ev}, icount {}, rip {:#x}\n",
                        p.icount, p.rip
                    )
                })
                .collect()
        }
        ("goto-icount", Some(k)) => match parse_number(k) {
            Some(k) => {
                let moved = t.tl.goto_icount(k);
                moved_text(t, moved)
            }
            None => format!("not an instruction count: {k}"),
        },
        ("events", n) => {
            let n = n.and_then(parse_number).unwrap_or(5).min(1000);
            events(t, n)
        }
        ("help", _) => HELP.to_string(),
        _ => format!("unknown monitor command: {}\n{HELP}", line.trim()),
    }
}

fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn moved_text(t: &mut ReplayTarget, moved: Moved) -> String {
    t.moved_elsewhere();
    let prefix = match moved {
        Moved::Arrived => String::new(),
        Moved::End(_) => "reached the end of the recording\n".to_string(),
        Moved::Start => "reached the start of the recording\n".to_string(),
        Moved::Diverged(d) => {
            let text = d.to_string();
            t.divergence = Some(text.clone());
            format!("replay diverged:\n{text}\n")
        }
        other => format!("{other:?}\n"),
    };
    format!("{prefix}{}", when(t))
}

/// `Current event: N, icount: K, rip: ...` where N is the last event applied.
fn when(t: &ReplayTarget) -> String {
    let p = t.tl.position();
    let total = t.tl.replay().event_count();
    let event = p.event.map_or("none".to_string(), |n| n.to_string());
    let sym =
        t.tl.symbols()
            .lookup(p.rip)
            .map(|l| format!(" <{l}>"))
            .unwrap_or_default();
    // Without a counter the events are placed by deterministic-exit ordinal: say it.
    let exit = p.exit.map(|e| format!(", exit: {e}")).unwrap_or_default();
    let rip = p.rip;
    let mut out = format!(
        "Current event: {event} (of {total}), icount: {}{exit}, rip: {rip:#x}{sym}",
        p.icount
    );
    if let Some(d) = &t.divergence {
        out.push_str(&format!("\nlast divergence:\n{d}"));
    }
    out
}

fn events(t: &ReplayTarget, n: u64) -> String {
    let replay = t.tl.replay();
    let next = replay.events_consumed();
    let from = next.saturating_sub(n);
    let to = next.saturating_add(n).min(replay.event_count());
    t.tl.learn_events_through(to.saturating_sub(1));
    let mut out = String::new();
    for (i, e) in replay.events(from..to.max(from)) {
        if i == next {
            out.push_str(&format!("   --> icount {} (here)\n", t.icount()));
        }
        // Where replay applied it; for an event stamped with the exit that collected it,
        // that exit's position is only an upper bound, shown as such.
        let at = match replay.event_position_of(i, &e) {
            (p, true) => format!("<={p}"),
            (p, false) => p.to_string(),
        };
        let bound = if e.position_is_bound() && replay.applied_position(i).is_some() {
            format!(" (bound {})", e.icount())
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  #{i:<8} icount {at:<12} {:<16} {}{bound}\n",
            e.kind().name(),
            t.tl.event_text(&e)
        ));
    }
    if next >= to {
        out.push_str(&format!("   --> icount {} (here)\n", t.icount()));
    }
    out
}
