//! `krr-tui record`: run a guest under KVM and write a recording.

use anyhow::{Context, Result, bail};
use krr_engine::event::Event;
use krr_engine::trace::{FinishInfo, Header, RecordingWriter};
use krr_recorder::{CounterChoice, EndReason, EventSink, RecordConfig, Recorder, RecorderError};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct RecordArgs {
    /// Guest kernel: a 64-bit ELF or a Linux bzImage (default: the built-in demo guest).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Disk image, exposed to the guest as the fw_cfg file opt/krr/disk (default for the
    /// demo guest: its built-in disk).
    #[arg(long, value_name = "IMAGE")]
    disk: Option<PathBuf>,
    /// Guest RAM, e.g. 64M or 1G.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    memory: u64,
    /// Kernel command line (bzImage guests).
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Output file.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE",
        default_value = "recording.krr"
    )]
    output: PathBuf,
    /// Record without the terminal UI: the guest console goes to standard output.
    #[arg(long)]
    headless: bool,
    /// Do not use an instruction counter even where the host has one.
    #[arg(long)]
    no_counter: bool,
    /// Do not echo the guest console (headless mode).
    #[arg(long)]
    quiet: bool,
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

/// Writes events to the recording file and echoes the console.
struct TraceSink {
    writer: RecordingWriter<File>,
    echo: bool,
    last_flush: Instant,
}

/// Longest time events stay buffered: what a crash or kill -9 can lose at most.
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

impl EventSink for TraceSink {
    fn event(&mut self, event: Event) -> Result<(), RecorderError> {
        if self.echo
            && let Event::Console(c) = &event
        {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&c.bytes);
            let _ = out.flush();
        }
        self.writer
            .push(event)
            .map_err(|e| RecorderError::Sink(e.to_string()))?;
        if self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.last_flush = Instant::now();
            self.writer
                .flush_events()
                .map_err(|e| RecorderError::Sink(e.to_string()))?;
        }
        Ok(())
    }
}

pub fn run(args: RecordArgs) -> Result<()> {
    if let Err(why) = krr_recorder::kvm_available() {
        bail!("recording needs KVM: {why}");
    }
    if !args.headless {
        eprintln!("krr-tui: the recording terminal UI is not available yet; recording headless");
    }
    let (image, name) = match &args.kernel {
        Some(p) => (
            std::fs::read(p).with_context(|| format!("reading kernel {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (krr_guest::DEMO_KERNEL.to_vec(), "builtin:demo".to_string()),
    };
    let disk = match (&args.disk, &args.kernel) {
        (Some(p), _) => {
            Some(std::fs::read(p).with_context(|| format!("reading disk {}", p.display()))?)
        }
        (None, None) => Some(krr_guest::demo_disk()),
        (None, Some(_)) => None,
    };
    let mut config = RecordConfig::new(image, name);
    config.disk = disk;
    config.memory = args.memory;
    config.cmdline = args.cmdline.clone();
    if args.no_counter {
        config.counter = CounterChoice::None;
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }

    let mut recorder = Recorder::new(config)?;
    let start = recorder.start()?;
    let file = File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let mut writer = RecordingWriter::new(file)?;
    let mut header = Header::new(start.machine, start.kernel);
    header.cpuid = start.cpuid;
    header.symbols = start.symbols;
    header.kernel_image = start.kernel_image;
    header.command_line = std::env::args().collect::<Vec<_>>().join(" ");
    writer.write_header(&header)?;
    writer.write_snapshot(&start.snapshot)?;

    let mut sink = TraceSink {
        writer,
        echo: !args.quiet,
        last_flush: Instant::now(),
    };
    let outcome = recorder.run(&mut sink, &stop);
    let (end_reason, kernel_instructions, duration_s) = match &outcome {
        Ok(o) => (
            match &o.end {
                EndReason::Stopped if stop.load(Ordering::SeqCst) => {
                    "interrupted (signal)".to_string()
                }
                e => e.to_string(),
            },
            o.kernel_instructions,
            o.duration.as_secs_f64(),
        ),
        Err(e) => (format!("error: {e}"), 0, 0.0),
    };
    let stats = sink.writer.finish(FinishInfo {
        kernel_instructions,
        duration_s,
        end_reason: end_reason.clone(),
    })?;
    eprintln!(
        "\nkrr-tui: recording ended: {end_reason}; wrote {}",
        args.output.display()
    );
    eprintln!("{stats}");
    match outcome {
        Ok(o) => match o.end {
            EndReason::GuestError(e) => {
                bail!("the guest failed: {e} (everything before it is recorded)")
            }
            _ => Ok(()),
        },
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

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
