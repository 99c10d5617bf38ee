//! `krr-tui record`: run a guest under KVM and write a recording.

use anyhow::{Context, Result, bail};
use krr_engine::event::Event;
use krr_engine::trace::{FinishInfo, Header, RecordingWriter};
use krr_recorder::image::{self, DiskImage, FileKind};
use krr_recorder::{CounterChoice, EndReason, EventSink, RecordConfig, Recorder, SinkError};
use krr_ui::record::RecordMsg;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use crate::output::RecordingOutput;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct RecordArgs {
    /// Guest kernel: a 64-bit ELF, a Linux vmlinux (booted directly) or a Linux bzImage
    /// (default: the built-in demo guest).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial RAM disk for a Linux kernel, loaded high in guest RAM.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// The ELF to take the kernel's symbols from (a bzImage has none): its vmlinux.
    #[arg(long, value_name = "FILE")]
    pub vmlinux: Option<PathBuf>,
    /// Disk image, exposed to the guest as the fw_cfg file opt/krr/disk (default for the
    /// demo guest: its built-in disk).
    #[arg(long, value_name = "IMAGE")]
    pub disk: Option<PathBuf>,
    /// Guest RAM, e.g. 64M or 1G.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub memory: u64,
    /// Added to a Linux kernel's command line, after what the recorder gives it (the
    /// console, and the CPU features this host's guest must not use), so that these
    /// words win.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Output file (written as FILE.partial, renamed to FILE when the recording ends).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE",
        default_value = "recording.krr"
    )]
    pub output: PathBuf,
    /// Replace an existing output file (or the .partial file a recording that was cut
    /// short left).
    #[arg(long)]
    pub force: bool,
    /// Record without the terminal UI: the guest console goes to standard output.
    #[arg(long)]
    pub headless: bool,
    /// Do not use an instruction counter even where the host has one.
    #[arg(long)]
    pub no_counter: bool,
    /// Do not echo the guest console (headless mode).
    #[arg(long)]
    pub quiet: bool,
}

/// Parses sizes like `64M`, `1G`, `65536`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown size suffix in {s:?} (use K, M or G)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64M"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl RecordArgs {
    /// Recording the built-in demo guest to `output`, with every default.
    pub fn demo(output: PathBuf, force: bool) -> RecordArgs {
        RecordArgs {
            kernel: None,
            initrd: None,
            vmlinux: None,
            disk: None,
            memory: 64 << 20,
            cmdline: String::new(),
            output,
            force,
            headless: true,
            no_counter: false,
            quiet: true,
        }
    }
}

/// Writes events to the recording file and shows each to an observer.
struct TraceSink<'a> {
    writer: RecordingWriter<File>,
    observe: &'a mut dyn FnMut(&Event),
    last_flush: Instant,
}

/// Longest time events stay buffered: what a crash or kill -9 can lose at most.
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

impl EventSink for TraceSink<'_> {
    fn event(&mut self, event: Event) -> Result<(), SinkError> {
        (self.observe)(&event);
        self.writer.push(event)?;
        Ok(())
    }

    /// Writes the buffered events every [`FLUSH_INTERVAL`], whether or not new events
    /// come (the recorder calls this at every exit, and kicks a guest that stops
    /// exiting).
    fn caught_up(&mut self) -> Result<(), SinkError> {
        if self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.last_flush = Instant::now();
            self.writer.flush_events()?;
        }
        Ok(())
    }
}

/// How a recording ended.
pub struct Recorded {
    /// Why it ended, in words.
    pub end_reason: String,
    /// The event statistics, as `krr-tui info` prints them.
    pub stats: String,
    /// Something the user should know about how the recording went.
    pub note: Option<String>,
    /// The guest or the recorder failed (everything before the failure is recorded).
    pub error: Option<anyhow::Error>,
}

/// Records a guest as `args` says into `args.output` until it powers off, fails, or
/// `stop` is set; every event also goes to `observe`.
pub fn record(
    args: &RecordArgs,
    stop: &AtomicBool,
    observe: &mut dyn FnMut(&Event),
) -> Result<Recorded> {
    if let Err(why) = krr_recorder::kvm_available() {
        bail!("recording needs KVM: {why}");
    }
    let output = RecordingOutput::create(&args.output, args.force)?;
    let set_up = Timed::start();
    match start_recording(args, &output) {
        Ok((recorder, writer)) => {
            let set_up = set_up.end();
            let recorded = run_recording(recorder, writer, set_up, stop, observe);
            output.commit()?;
            recorded
        }
        Err(e) => {
            output.abandon();
            Err(e)
        }
    }
}

/// Creates the machine and writes the recording's header and snapshot.
fn start_recording(
    args: &RecordArgs,
    output: &RecordingOutput,
) -> Result<(Recorder, RecordingWriter<File>)> {
    // The kernel is read whole, but never beyond the guest's memory; the disk where the
    // guest reads it.
    let (image, name) = match &args.kernel {
        // The absolute path, so that replay finds the kernel's DWARF where it was
        // recorded (Symbols::from_header) wherever it runs from.
        Some(p) => (
            image::read_kernel(p, args.memory)?,
            std::path::absolute(p)
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string(),
        ),
        None => (krr_guest::DEMO_KERNEL.to_vec(), "builtin:demo".to_string()),
    };
    let disk = match (&args.disk, &args.kernel) {
        (Some(p), _) => Some(DiskImage::open(p)?),
        (None, None) => Some(DiskImage::from(krr_guest::demo_disk())),
        (None, Some(_)) => None,
    };
    // An initrd must fit in the guest's memory, as the kernel's own loader requires;
    // the symbols' ELF is read, not loaded.
    let initrd = match &args.initrd {
        Some(p) => Some(image::read_whole(p, FileKind::Initrd, args.memory)?),
        None => None,
    };
    let vmlinux = match &args.vmlinux {
        Some(p) => Some(image::read_whole(
            p,
            FileKind::SymbolFile,
            image::MAX_SYMBOL_FILE,
        )?),
        None => None,
    };
    let mut config = RecordConfig::new(image, name);
    config.disk = disk;
    config.memory = args.memory;
    config.cmdline = args.cmdline.clone();
    config.initrd = initrd;
    config.vmlinux = vmlinux;
    if args.no_counter {
        config.counter = CounterChoice::None;
    }

    let recorder = Recorder::new(config)?;
    let start = recorder.start()?;
    let mut writer = RecordingWriter::new(output.file()?)?;
    let mut header = Header::new(start.machine, start.kernel);
    header.cpuid = start.cpuid;
    header.symbols = start.symbols;
    header.kernel_image = start.kernel_image;
    header.kernel_command_line = start.kernel_command_line;
    header.command_line = std::env::args().collect::<Vec<_>>().join(" ");
    writer.write_header(&header)?;
    writer.write_snapshot(&start.snapshot)?;
    Ok((recorder, writer))
}

/// Runs the guest until it ends or `stop` is set, and finishes the file.
fn run_recording(
    mut recorder: Recorder,
    writer: RecordingWriter<File>,
    set_up: Waited,
    stop: &AtomicBool,
    observe: &mut dyn FnMut(&Event),
) -> Result<Recorded> {
    let mut sink = TraceSink {
        writer,
        observe,
        last_flush: Instant::now(),
    };
    let outcome = recorder.run(&mut sink, stop);
    let (end_reason, kernel_instructions, duration_s) = match &outcome {
        Ok(o) => (
            match &o.end {
                EndReason::Stopped if stop.load(Ordering::SeqCst) => "interrupted".to_string(),
                e => e.to_string(),
            },
            o.kernel_instructions,
            o.duration.as_secs_f64(),
        ),
        Err(e) => (format!("error: {}", error_chain(e)), 0, 0.0),
    };
    let stats = sink.writer.finish(FinishInfo {
        kernel_instructions,
        duration_s,
        end_reason: end_reason.clone(),
    })?;
    let note = match &outcome {
        Ok(o) => cpu_wait_note(set_up, o),
        Err(_) => None,
    };
    let error = match outcome {
        Ok(o) => match o.end {
            EndReason::GuestError(e) => Some(anyhow::anyhow!(
                "the guest failed: {e} (everything before it is recorded)"
            )),
            _ => None,
        },
        Err(e) => Some(e.into()),
    };
    Ok(Recorded {
        end_reason,
        stats: stats.to_string(),
        note,
        error,
    })
}

/// Wall time, and the part of it the calling thread spent ready to run but waiting for
/// a CPU, of one phase of the recording.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Waited {
    took: Duration,
    cpu_wait: Option<Duration>,
}

/// A phase being timed.
struct Timed {
    started: Instant,
    wait_before: Option<Duration>,
}

impl Timed {
    fn start() -> Timed {
        Timed {
            started: Instant::now(),
            wait_before: krr_recorder::cpuid::thread_run_delay(),
        }
    }

    fn end(self) -> Waited {
        Waited {
            took: self.started.elapsed(),
            cpu_wait: krr_recorder::cpuid::thread_run_delay()
                .zip(self.wait_before)
                .map(|(after, before)| after.saturating_sub(before)),
        }
    }
}

/// Says so when the recording thread spent much of the set-up (the host probes, the
/// snapshot) and of the run waiting for its CPU: the guest then started late and ran
/// slowly (fewer events by any given time), though nothing was lost. On a loaded
/// machine the set-up alone can take seconds instead of half a second.
fn cpu_wait_note(set_up: Waited, o: &krr_recorder::RecordOutcome) -> Option<String> {
    let wait = set_up.cpu_wait? + o.cpu_wait?;
    let total = set_up.took + o.duration;
    (wait >= CPU_WAIT_NOTE_MIN && wait.as_secs_f64() > total.as_secs_f64() * CPU_WAIT_NOTE_SHARE)
        .then(|| {
            format!(
                "the machine was busy: the recording thread waited {:.1} s of {:.1} s for \
                 CPU {}, which it is pinned to (other work on that CPU); the guest started \
                 {:.1} s after the recorder and ran slower, but nothing is lost",
                wait.as_secs_f64(),
                total.as_secs_f64(),
                o.cpu,
                set_up.took.as_secs_f64(),
            )
        })
}

/// Share of the time waiting for the CPU above which [`cpu_wait_note`] speaks (unloaded,
/// about 3%), and the least wait it speaks of.
const CPU_WAIT_NOTE_SHARE: f64 = 0.25;
const CPU_WAIT_NOTE_MIN: Duration = Duration::from_millis(500);

pub fn run(args: RecordArgs) -> Result<()> {
    if let Err(why) = krr_recorder::kvm_available() {
        bail!("recording needs KVM: {why}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    // Without a terminal there is nothing to draw on: record headless.
    let recorded = if args.headless || !std::io::stdout().is_terminal() {
        let echo = !args.quiet;
        record(&args, &stop, &mut |event| {
            if echo && let Event::Console(c) = event {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&c.bytes);
                let _ = out.flush();
            }
        })?
    } else {
        record_with_ui(&args, stop)?
    };
    eprintln!(
        "\nkrr-tui: recording ended: {}; wrote {}",
        recorded.end_reason,
        args.output.display()
    );
    eprintln!("{}", recorded.stats);
    if let Some(note) = &recorded.note {
        eprintln!("krr-tui: {note}");
    }
    match recorded.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Records on a thread while the terminal shows the live console and event counters; a
/// key ends the recording.
pub fn record_with_ui(args: &RecordArgs, stop: Arc<AtomicBool>) -> Result<Recorded> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread_args = args.clone();
    let thread_stop = stop.clone();
    let done_tx = tx.clone();
    let recorder = std::thread::spawn(move || {
        let result = record(&thread_args, &thread_stop, &mut |event| {
            let _ = tx.send(RecordMsg::Event(event.kind(), console_bytes(event)));
        });
        let summary = match &result {
            Ok(r) => format!("recording ended: {}", r.end_reason),
            Err(e) => format!("recording failed: {e:#}"),
        };
        let _ = done_tx.send(RecordMsg::Done(summary));
        result
    });
    let title = format!("recording {}", args.output.display());
    let ui = krr_ui::record::run_in_terminal(&title, rx, &stop);
    // The UI is gone (a key or an error): make sure the recording stops too.
    stop.store(true, Ordering::SeqCst);
    let result = recorder
        .join()
        .map_err(|_| anyhow::anyhow!("the recorder thread panicked"))?;
    ui.context("the recording view needs a terminal (or use --headless)")?;
    result
}

/// `e` and its sources, joined as anyhow's `{:#}` joins them.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn console_bytes(event: &Event) -> Option<Vec<u8>> {
    match event {
        Event::Console(c) => Some(c.bytes.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{Waited, cpu_wait_note, parse_size};
    use krr_recorder::{EndReason, RecordOutcome};
    use std::time::Duration;

    fn outcome(duration: f64, cpu_wait: Option<f64>) -> RecordOutcome {
        RecordOutcome {
            end: EndReason::Stopped,
            kernel_instructions: 0,
            duration: Duration::from_secs_f64(duration),
            exits: 0,
            counts: Default::default(),
            cpu: 1,
            cpu_wait: cpu_wait.map(Duration::from_secs_f64),
        }
    }

    fn set_up(took: f64, cpu_wait: Option<f64>) -> Waited {
        Waited {
            took: Duration::from_secs_f64(took),
            cpu_wait: cpu_wait.map(Duration::from_secs_f64),
        }
    }

    #[test]
    fn a_busy_cpu_is_noted_with_the_set_up_it_delayed() {
        // A loaded machine: the set-up took 3 s, 2.4 of them waiting, then the run waited
        // half of its time.
        let note = cpu_wait_note(set_up(3.0, Some(2.4)), &outcome(2.0, Some(1.0))).unwrap();
        assert!(
            note.contains("waited 3.4 s of 5.0 s for CPU 1")
                && note.contains("started 3.0 s after"),
            "{note}"
        );
        // Unloaded: a few percent.
        assert_eq!(
            cpu_wait_note(set_up(0.5, Some(0.01)), &outcome(5.0, Some(0.15))),
            None
        );
        // A short recording that waited most of its few milliseconds says nothing.
        assert_eq!(
            cpu_wait_note(set_up(0.4, Some(0.1)), &outcome(0.05, Some(0.04))),
            None
        );
        // Where the kernel does not report the wait, nothing either.
        assert_eq!(
            cpu_wait_note(set_up(3.0, None), &outcome(2.0, Some(1.0))),
            None
        );
    }

    #[test]
    fn sizes_parse_with_suffixes_and_reject_garbage() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
