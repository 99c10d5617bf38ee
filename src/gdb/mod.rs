//! The gdb remote stub: serves a replay to gdb over TCP, forwards and backwards
//! (gdbstub's reverse-execution extensions), with the recording's start and end
//! reported as the ends of the replay log.
//!
//! The session loop drives gdbstub's state machine itself rather than its blocking
//! loop, so that incoming bytes are framed and checked first (see [`framing`]) and a
//! long continue can be interrupted with Ctrl-C from gdb.

mod arch;
mod framing;
mod monitor;
mod target;

use anyhow::{Context, Result, anyhow};
use framing::{Framer, Unit};
use gdbstub::conn::Connection;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStub};
use krr_engine::replay::Replay;
use krr_engine::timeline::{DEFAULT_CHECKPOINT_BUDGET, Timeline};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use target::ReplayTarget;

/// Largest packet accepted from gdb, `$`, `#` and checksum included.
const MAX_PACKET: usize = 16 * 1024;
/// Largest memory read served in one `m` packet (its reply is twice as long in hex).
const MAX_READ: u64 = (MAX_PACKET / 2 - 16) as u64;
/// How often a blocked read wakes up.
const POLL: Duration = Duration::from_millis(20);

/// Where a replay stands: its icount and the events applied (what a following UI
/// moves to).
pub type Position = (u64, u64);

/// Serves the recording at `path` to gdb on `addr` until gdb detaches or kills it.
/// A connection that breaks or speaks garbage is closed and the next one accepted.
pub fn serve(path: &Path, addr: &str) -> Result<()> {
    let replay = Replay::open(path).with_context(|| format!("{}", path.display()))?;
    let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    serve_on(
        Timeline::new(replay, DEFAULT_CHECKPOINT_BUDGET),
        listener,
        None,
    )
}

/// Exports `replay` at its current position to gdb: a server on a free port of
/// 127.0.0.1 runs on its own thread with its own timeline (sharing the replay's pages),
/// quietly. Returns the address and the positions gdb moves to, for the UI to follow.
pub fn export(replay: &Replay) -> Result<(String, std::sync::mpsc::Receiver<Position>)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("listening for gdb")?;
    let addr = listener.local_addr()?.to_string();
    // Full history: from the recording's start, then to where the UI stands.
    let mut tl = Timeline::new(replay.restart(), DEFAULT_CHECKPOINT_BUDGET);
    tl.goto_icount(replay.icount());
    if tl.replay().events_consumed() < replay.events_consumed() {
        tl.goto_event(replay.events_consumed() - 1);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("gdb-export".into())
        .spawn(move || {
            // Errors end the session; the UI sees the channel close.
            let _ = serve_on(tl, listener, Some(tx));
        })?;
    Ok((addr, rx))
}

/// Serves `tl` on `listener`. With `follow`, nothing is printed (a terminal UI owns the
/// screen) and every position gdb moves to is sent there.
pub fn serve_on(
    tl: Timeline,
    listener: TcpListener,
    follow: Option<std::sync::mpsc::Sender<Position>>,
) -> Result<()> {
    let quiet = follow.is_some();
    let kernel = write_kernel_image(tl.replay())?;
    let mut target = ReplayTarget::new(tl);
    let local = listener.local_addr()?;
    if let Some(k) = &kernel {
        target.set_exec_file(k.path());
        if !quiet {
            println!("gdb: kernel ELF with symbols: {}", k.path().display());
        }
    }
    if !quiet {
        println!("gdb: listening on {local} (in gdb: target remote {local})");
        std::io::stdout().flush()?;
    }
    loop {
        let (stream, peer) = listener.accept().context("accepting a gdb connection")?;
        if !quiet {
            eprintln!("krr-tui: gdb connected from {peer}");
        }
        match session(stream, &mut target, follow.as_ref()) {
            Ok(reason) => {
                if !quiet {
                    eprintln!("krr-tui: gdb {}", describe(reason));
                }
                return Ok(());
            }
            Err(e) if !quiet => {
                eprintln!("krr-tui: gdb connection from {peer} closed: {e:#}; waiting for another")
            }
            Err(_) => {}
        }
    }
}

/// The kernel ELF embedded in the recording, written out for gdb's `file` command while
/// the server runs.
fn write_kernel_image(replay: &Replay) -> Result<Option<KernelFile>> {
    let Some(image) = &replay.header().kernel_image else {
        return Ok(None);
    };
    let dir = std::env::temp_dir().join(format!("krr-gdb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let path = dir.join("kernel.elf");
    std::fs::write(&path, image).with_context(|| format!("{}", path.display()))?;
    Ok(Some(KernelFile { dir, path }))
}

/// A kernel image written for gdb, removed when the server ends.
struct KernelFile {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl KernelFile {
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for KernelFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn describe(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::Disconnect => "detached",
        DisconnectReason::Kill => "killed the session",
        DisconnectReason::TargetExited(_) | DisconnectReason::TargetTerminated(_) => {
            "session ended"
        }
    }
}

/// gdbstub's side of the connection: replies are buffered and sent whole.
struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
}

impl Connection for Conn {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.out.push(byte);
        if self.out.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        buf.iter().try_for_each(|b| self.write(*b))
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Write::write_all(&mut self.stream, &self.out)?;
        self.out.clear();
        Ok(())
    }

    fn on_session_start(&mut self) -> Result<(), Self::Error> {
        self.stream.set_nodelay(true)
    }
}

/// The reading side of a session: raw bytes framed into units.
struct Input {
    stream: TcpStream,
    framer: Framer,
    units: VecDeque<Unit>,
    /// gdb asked for no-ack mode (and gdbstub agreed).
    no_ack: bool,
}

impl Input {
    /// The next unit, blocking until one arrives.
    fn next(&mut self) -> Result<Unit> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(u) = self.units.pop_front() {
                return Ok(u);
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(anyhow!("gdb closed the connection")),
                Ok(n) => {
                    for &b in &buf[..n] {
                        self.framer
                            .push(b, &mut self.units)
                            .map_err(|_| anyhow!("gdb sent a packet over {MAX_PACKET} bytes"))?;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Answers a packet the stub handles before gdbstub.
    fn reply(&mut self, body: &[u8]) -> Result<()> {
        let mut out = Vec::new();
        if !self.no_ack {
            out.push(b'+');
        }
        out.extend(framing::packet(body));
        Write::write_all(&mut self.stream, &out)?;
        Ok(())
    }
}

fn session(
    stream: TcpStream,
    target: &mut ReplayTarget,
    follow: Option<&std::sync::mpsc::Sender<Position>>,
) -> Result<DisconnectReason> {
    let position = |t: &ReplayTarget| (t.tl.icount(), t.tl.replay().events_consumed());
    let mut reported = position(target);
    stream.set_read_timeout(Some(POLL))?;
    let mut input = Input {
        stream: stream.try_clone()?,
        framer: Framer::new(MAX_PACKET),
        units: VecDeque::new(),
        no_ack: false,
    };
    let conn = Conn {
        stream,
        out: Vec::new(),
    };
    let stub = GdbStub::<ReplayTarget, Conn>::builder(conn)
        .packet_buffer_size(MAX_PACKET)
        .build()
        .map_err(|e| anyhow!("gdbstub: {e:?}"))?;
    let mut sm = stub
        .run_state_machine(target)
        .map_err(|e| anyhow!("gdbstub: {e}"))?;
    loop {
        sm = match sm {
            GdbStubStateMachine::Idle(gdb) => match input.next()? {
                Unit::Ack(b) => gdb.incoming_data(target, b),
                // Ctrl-C while stopped: nothing runs, nothing to interrupt.
                Unit::Interrupt => Ok(GdbStubStateMachine::Idle(gdb)),
                Unit::BadChecksum => {
                    if !input.no_ack {
                        Write::write_all(&mut input.stream, b"-")?;
                    }
                    Ok(GdbStubStateMachine::Idle(gdb))
                }
                Unit::Packet(p) => {
                    if framing::memory_read_ok(&p, MAX_READ) == Some(false) {
                        input.reply(b"E16")?;
                        // gdbstub still owes nothing: the packet never reached it.
                        Ok(GdbStubStateMachine::Idle(gdb))
                    } else {
                        if p.starts_with(b"$QStartNoAckMode#") {
                            input.no_ack = true;
                        }
                        let mut state = Ok(GdbStubStateMachine::Idle(gdb));
                        for &b in &p {
                            state = match state {
                                Ok(GdbStubStateMachine::Idle(g)) => g.incoming_data(target, b),
                                other => other,
                            };
                        }
                        state
                    }
                }
            },
            GdbStubStateMachine::Running(gdb) => {
                let reason = run_move(target, &input.stream)?;
                gdb.report_stop(target, reason)
            }
            GdbStubStateMachine::CtrlCInterrupt(gdb) => {
                gdb.interrupt_handled(target, None::<target::StopReason>)
            }
            GdbStubStateMachine::Disconnected(gdb) => return Ok(gdb.get_reason()),
        }
        .map_err(|e| anyhow!("gdbstub: {e}"))?;
        if let Some(tx) = follow {
            let now = position(target);
            if now != reported {
                reported = now;
                // A UI that went away no longer follows; the session goes on.
                let _ = tx.send(now);
            }
        }
    }
}

/// Carries out the move gdb asked for. A continue in either direction runs while a
/// watcher thread looks for gdb's Ctrl-C (0x03) without consuming anything else.
fn run_move(target: &mut ReplayTarget, stream: &TcpStream) -> Result<target::StopReason> {
    let cancel = Arc::new(AtomicBool::new(false));
    let interruptible = target.pending().is_some_and(|r| r.interruptible());
    if !interruptible {
        return Ok(target.execute(&cancel));
    }
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stream = stream.try_clone()?;
        let (cancel, done) = (cancel.clone(), done.clone());
        std::thread::spawn(move || watch_for_interrupt(stream, &cancel, &done))
    };
    let reason = target.execute(&cancel);
    done.store(true, Ordering::SeqCst);
    // The watcher only ever takes a 0x03, so it may finish on its own time.
    drop(watcher);
    Ok(reason)
}

fn watch_for_interrupt(mut stream: TcpStream, cancel: &AtomicBool, done: &AtomicBool) {
    let mut byte = [0u8; 1];
    while !done.load(Ordering::SeqCst) {
        match stream.peek(&mut byte) {
            Ok(0) => {
                // gdb went away: stop the move, the session loop sees the close.
                cancel.store(true, Ordering::SeqCst);
                return;
            }
            Ok(_) if byte[0] == 0x03 => {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                let _ = stream.read(&mut byte);
                cancel.store(true, Ordering::SeqCst);
                return;
            }
            // Anything else belongs to the session loop.
            Ok(_) => return,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}
