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

use anyhow::{Context, Result, anyhow, bail};
use framing::{Framer, Unit};
use gdbstub::conn::Connection;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStub};
use krr_engine::replay::{Replay, ReplayLimits};
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
/// Largest memory read served in one `m` packet: what gdb asks for at most with our
/// PacketSize (half of it, the reply being hex; gdbstub streams the reply, so it need
/// not fit the packet buffer). Less made gdb's read of a 16 KiB array fail.
const MAX_READ: u64 = (MAX_PACKET / 2) as u64;
/// How often a blocked read wakes up.
const POLL: Duration = Duration::from_millis(20);

/// Where a replay stands: its icount and the events applied (what a following UI
/// moves to).
pub type Position = (u64, u64);

/// Serves the recording at `path` to gdb on `addr` until gdb detaches or kills it,
/// starting right after event `goto` if given. A connection that breaks or speaks
/// garbage is closed and the next one accepted.
pub fn serve(path: &Path, limits: ReplayLimits, addr: &str, goto: Option<u64>) -> Result<()> {
    let replay = Replay::open_with(path, limits).with_context(|| format!("{}", path.display()))?;
    let mut tl = Timeline::new(replay, DEFAULT_CHECKPOINT_BUDGET);
    if let Some(n) = goto {
        let total = tl.replay().event_count();
        if n >= total {
            bail!("event {n} does not exist: the recording has {total} events");
        }
        tl.goto_event(n);
    }
    let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    serve_on(tl, listener, None)
}

/// Exports `replay` at its current position to gdb: a server on a free port of
/// 127.0.0.1 runs on its own thread with its own timeline (sharing the replay's pages),
/// quietly. Returns the address and the positions gdb moves to, for the UI to follow.
pub fn export(replay: &Replay) -> Result<(String, std::sync::mpsc::Receiver<Position>)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("listening for gdb")?;
    let addr = listener.local_addr()?.to_string();
    // Full history: from the recording's start, then to where the UI stands.
    let mut tl = Timeline::new(replay.restart(), DEFAULT_CHECKPOINT_BUDGET);
    move_to(&mut tl, (replay.icount(), replay.events_consumed()));
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
///
/// One client at a time, but never held by an idle or silent peer: a new connection
/// takes over from the current one (a move in progress is cancelled), and the replay
/// stays where the last client left it (a move a client did not see the end of, because
/// it went away or was taken over, is undone).
pub fn serve_on(
    tl: Timeline,
    listener: TcpListener,
    follow: Option<std::sync::mpsc::Sender<Position>>,
) -> Result<()> {
    let quiet = follow.is_some();
    let local = listener.local_addr()?;
    let files = write_gdb_files(tl.replay(), &local.to_string())?;
    let mut target = ReplayTarget::new(tl);
    if let Some(k) = &files.kernel {
        target.set_exec_file(k);
        if !quiet {
            println!("gdb: kernel ELF with symbols: {}", k.display());
        }
    }
    if !quiet {
        println!(
            "gdb: commands that connect gdb and keep it in step with monitor moves: gdb -x {}",
            files.script.display()
        );
        println!("gdb: listening on {local} (in gdb: target remote {local})");
        std::io::stdout().flush()?;
    }
    let incoming = Incoming::accept_on(listener)?;
    let mut next = incoming.wait();
    loop {
        let (stream, peer) = next?;
        if !quiet {
            eprintln!("krr-tui: gdb connected from {peer}");
        }
        match session(stream, &mut target, follow.as_ref(), &incoming) {
            Ok(Ended::Client(reason)) => {
                if !quiet {
                    eprintln!("krr-tui: gdb {}", describe(reason));
                }
                return Ok(());
            }
            Ok(Ended::TakenOver) => {
                if !quiet {
                    eprintln!("krr-tui: gdb connection from {peer} taken over by a new one");
                }
            }
            Err(e) if !quiet => {
                eprintln!("krr-tui: gdb connection from {peer} closed: {e:#}; waiting for another")
            }
            Err(_) => {}
        }
        next = incoming.wait();
    }
}

/// Connections accepted on a thread of their own, so that a session sees a newer one
/// arrive and gives way to it.
struct Incoming {
    queue: Arc<std::sync::Mutex<VecDeque<(TcpStream, std::net::SocketAddr)>>>,
    failed: Arc<std::sync::Mutex<Option<std::io::Error>>>,
}

impl Incoming {
    fn accept_on(listener: TcpListener) -> Result<Incoming> {
        let queue = Arc::new(std::sync::Mutex::new(VecDeque::new()));
        let failed = Arc::new(std::sync::Mutex::new(None));
        let (q, f) = (queue.clone(), failed.clone());
        std::thread::Builder::new()
            .name("gdb-accept".into())
            .spawn(move || {
                loop {
                    match listener.accept() {
                        Ok(c) => lock(&q).push_back(c),
                        Err(e) => {
                            *lock(&f) = Some(e);
                            return;
                        }
                    }
                }
            })
            .context("starting the gdb accept thread")?;
        Ok(Incoming { queue, failed })
    }

    /// Whether a connection is waiting (the current session should give way).
    fn waiting(&self) -> bool {
        !lock(&self.queue).is_empty()
    }

    /// The next connection (the newest: older waiting ones were already overtaken).
    fn wait(&self) -> Result<(TcpStream, std::net::SocketAddr)> {
        loop {
            {
                let mut q = lock(&self.queue);
                if let Some(c) = q.pop_back() {
                    // Older waiting connections were overtaken by this one.
                    q.clear();
                    return Ok(c);
                }
            }
            if let Some(e) = lock(&self.failed).take() {
                return Err(e).context("accepting a gdb connection");
            }
            std::thread::sleep(POLL);
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How a session ended, other than by an error of its connection.
enum Ended {
    /// The client detached or killed the session.
    Client(DisconnectReason),
    /// A newer connection took over.
    TakenOver,
}

/// Moves `tl` to `pos` (an icount, then the events applied there).
pub fn move_to(tl: &mut Timeline, pos: Position) {
    tl.goto_icount(pos.0);
    if tl.replay().events_consumed() < pos.1 {
        tl.goto_event(pos.1 - 1);
    }
}

/// What the server writes for gdb while it runs (removed when it ends): the kernel ELF
/// embedded in the recording, offered to gdb as the executable, and a command file that
/// connects gdb and keeps it in step with moves gdb does not see.
struct GdbFiles {
    dir: std::path::PathBuf,
    kernel: Option<std::path::PathBuf>,
    script: std::path::PathBuf,
}

/// gdb keeps the registers (and frames) it read until the target reports a stop, and a
/// `monitor goto` moves the replay without one: as rr's gdb commands do after its own
/// moves, this hook makes gdb read them again after every `monitor` command.
const GDB_COMMANDS: &str = "\
# krr-tui: gdb commands for a replay served to gdb (gdb -x THIS_FILE).
# A `monitor goto` or `monitor goto-icount` moves the replay without a stop gdb sees;
# gdb reads the registers again after every `monitor` command.
define hookpost-monitor
maintenance flush register-cache
end
";

fn write_gdb_files(replay: &Replay, addr: &str) -> Result<GdbFiles> {
    let dir = std::env::temp_dir().join(format!("krr-gdb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let kernel = match &replay.header().kernel_image {
        Some(image) => {
            let path = dir.join("kernel.elf");
            std::fs::write(&path, image).with_context(|| format!("{}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    let script = dir.join("krr.gdb");
    std::fs::write(&script, format!("{GDB_COMMANDS}target remote {addr}\n"))
        .with_context(|| format!("{}", script.display()))?;
    Ok(GdbFiles {
        dir,
        kernel,
        script,
    })
}

impl Drop for GdbFiles {
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

/// The reading side of a session: raw bytes framed into units. Shared with the thread
/// that watches for Ctrl-C while a move runs, so that bytes read there (acks, a stray
/// `+`) are framed and kept, not lost or mistaken.
struct Input {
    stream: TcpStream,
    framer: Framer,
    units: VecDeque<Unit>,
    /// gdb asked for no-ack mode (and gdbstub agreed).
    no_ack: bool,
    /// The peer closed the connection.
    closed: bool,
}

impl Input {
    /// Reads what the connection has (waiting at most [`POLL`]) into `units`.
    fn fill(&mut self) -> Result<()> {
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.closed = true;
                Err(anyhow!("gdb closed the connection"))
            }
            Ok(n) => {
                for &b in &buf[..n] {
                    self.framer
                        .push(b, &mut self.units)
                        .map_err(|_| anyhow!("gdb sent a packet over {MAX_PACKET} bytes"))?;
                }
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(e) => {
                self.closed = true;
                Err(e.into())
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

/// The next unit of the session, or None when a newer connection is waiting.
fn next_unit(input: &std::sync::Mutex<Input>, incoming: &Incoming) -> Result<Option<Unit>> {
    loop {
        let mut i = lock(input);
        if let Some(u) = i.units.pop_front() {
            return Ok(Some(u));
        }
        if incoming.waiting() {
            return Ok(None);
        }
        i.fill()?;
    }
}

fn session(
    stream: TcpStream,
    target: &mut ReplayTarget,
    follow: Option<&std::sync::mpsc::Sender<Position>>,
    incoming: &Incoming,
) -> Result<Ended> {
    let position = |t: &ReplayTarget| (t.tl.icount(), t.tl.replay().events_consumed());
    let mut reported = position(target);
    stream.set_read_timeout(Some(POLL))?;
    let input = Arc::new(std::sync::Mutex::new(Input {
        stream: stream.try_clone()?,
        framer: Framer::new(MAX_PACKET),
        units: VecDeque::new(),
        no_ack: false,
        closed: false,
    }));
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
            GdbStubStateMachine::Idle(gdb) => match next_unit(&input, incoming)? {
                None => return Ok(Ended::TakenOver),
                Some(Unit::Ack(b)) => gdb.incoming_data(target, b),
                // Ctrl-C while stopped: nothing runs, nothing to interrupt.
                Some(Unit::Interrupt) => Ok(GdbStubStateMachine::Idle(gdb)),
                Some(Unit::BadChecksum) => {
                    let mut i = lock(&input);
                    if !i.no_ack {
                        Write::write_all(&mut i.stream, b"-")?;
                    }
                    Ok(GdbStubStateMachine::Idle(gdb))
                }
                Some(Unit::Packet(p)) => {
                    if framing::memory_read_ok(&p, MAX_READ) == Some(false) {
                        lock(&input).reply(b"E16")?;
                        // gdbstub still owes nothing: the packet never reached it.
                        Ok(GdbStubStateMachine::Idle(gdb))
                    } else {
                        if p.starts_with(b"$QStartNoAckMode#") {
                            lock(&input).no_ack = true;
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
                let before = position(target);
                let (reason, left) = run_move(target, &input, incoming)?;
                if let Some(left) = left {
                    // The client will not see where this move ended: leave the replay
                    // where it last saw it.
                    move_to(&mut target.tl, before);
                    return match left {
                        Left::Closed => Err(anyhow!("gdb closed the connection during a move")),
                        Left::TakenOver => Ok(Ended::TakenOver),
                    };
                }
                gdb.report_stop(target, reason)
            }
            GdbStubStateMachine::CtrlCInterrupt(gdb) => {
                gdb.interrupt_handled(target, None::<target::StopReason>)
            }
            GdbStubStateMachine::Disconnected(gdb) => return Ok(Ended::Client(gdb.get_reason())),
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

/// Why a client is gone in the middle of a move.
enum Left {
    Closed,
    TakenOver,
}

/// Carries out the move gdb asked for. A continue in either direction runs while a
/// watcher thread reads what gdb sends (framed: acks and packets are kept for the
/// session) and stops the move on Ctrl-C (0x03), when the connection closes, or when a
/// newer connection is waiting.
fn run_move(
    target: &mut ReplayTarget,
    input: &Arc<std::sync::Mutex<Input>>,
    incoming: &Incoming,
) -> Result<(target::StopReason, Option<Left>)> {
    let cancel = Arc::new(AtomicBool::new(false));
    let interruptible = target.pending().is_some_and(|r| r.interruptible());
    if !interruptible {
        return Ok((target.execute(&cancel), None));
    }
    let done = Arc::new(AtomicBool::new(false));
    let left = Arc::new(std::sync::Mutex::new(None));
    let reason = std::thread::scope(|scope| {
        let (cancel, done, left_w) = (&cancel, &done, &left);
        let watcher = scope.spawn(move || watch_during_move(input, incoming, cancel, done, left_w));
        let reason = target.execute(cancel);
        done.store(true, Ordering::SeqCst);
        let _ = watcher.join();
        reason
    });
    let left = lock(&left).take();
    Ok((reason, left))
}

fn watch_during_move(
    input: &std::sync::Mutex<Input>,
    incoming: &Incoming,
    cancel: &AtomicBool,
    done: &AtomicBool,
    left: &std::sync::Mutex<Option<Left>>,
) {
    while !done.load(Ordering::SeqCst) {
        if incoming.waiting() {
            *lock(left) = Some(Left::TakenOver);
            cancel.store(true, Ordering::SeqCst);
            return;
        }
        let mut i = lock(input);
        if i.fill().is_err() {
            if i.closed {
                *lock(left) = Some(Left::Closed);
            }
            cancel.store(true, Ordering::SeqCst);
            return;
        }
        let before = i.units.len();
        i.units.retain(|u| *u != Unit::Interrupt);
        if i.units.len() != before {
            cancel.store(true, Ordering::SeqCst);
            return;
        }
    }
}
