//! `krr-tui replay`: replay a recording's kernel in the replay CPU.

use crate::record_cmd::RecordArgs;
use crate::stdout::outln;
use anyhow::{Context, Result, bail};
use krr_engine::replay::{DEFAULT_RECORDING_MEMORY, End, Replay, ReplayLimits, Stop, Target};
use krr_engine::symbols::Symbols;
use krr_engine::timeline::Timeline;
use krr_ui::{App, Keymap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The recording (.krr) to replay.
    pub file: PathBuf,
    /// Replay without the terminal UI, printing the guest console.
    #[arg(long)]
    pub headless: bool,
    /// Check the replay against the recording's digests and console output, and exit
    /// non-zero unless it replays to the end without divergence.
    #[arg(long)]
    pub verify: bool,
    /// Stop right after this event is applied.
    #[arg(long, value_name = "EVENT")]
    pub goto: Option<u64>,
    /// Serve the replay to gdb on this address (for example 127.0.0.1:1234), headless,
    /// until gdb detaches or kills it.
    #[arg(long, value_name = "ADDR")]
    pub gdb: Option<String>,
    /// Do not print the guest console.
    #[arg(long)]
    pub quiet: bool,
    /// Memory budget for the checkpoints of the terminal UI, e.g. 512M or 2G.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = crate::record_cmd::parse_size)]
    pub checkpoint_memory: u64,
    /// Memory budget for what replay holds of the recording: its decoded events and the
    /// map of its snapshot's pages (the pages themselves are read when first touched).
    /// Events past it are not replayed, as for a recording cut short.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = crate::record_cmd::parse_size)]
    pub recording_memory: u64,
    /// The guest kernel ELF with symbols and DWARF lines (default: the image embedded in
    /// the recording, else its symbol list).
    #[arg(long, visible_alias = "vmlinux", value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// A directory searched (by file name) for source files before the paths recorded in
    /// the DWARF information.
    #[arg(long, value_name = "DIR")]
    pub source_dir: Vec<PathBuf>,
}

impl ReplayArgs {
    fn limits(&self) -> ReplayLimits {
        ReplayLimits {
            recording_memory: self.recording_memory,
        }
    }
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Keep the recording in this file (default: a temporary file, removed afterwards).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Memory budget for the checkpoints, e.g. 512M or 2G.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = crate::record_cmd::parse_size)]
    pub checkpoint_memory: u64,
    /// Record without the terminal UI (the replay still opens in it).
    #[arg(long)]
    pub headless: bool,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `krr-tui demo`: records the built-in demo guest (showing it live), then opens the
/// recording in the replay UI.
pub fn run_demo(args: DemoArgs) -> Result<()> {
    let (output, temporary) = match &args.output {
        Some(p) => (p.clone(), false),
        None => (
            std::env::temp_dir().join(format!("krr-demo-{}.krr", std::process::id())),
            true,
        ),
    };
    let record = RecordArgs::demo(output.clone(), temporary || args.force);
    let stop = Arc::new(AtomicBool::new(false));
    let recorded = if args.headless {
        eprintln!("krr-tui: recording the demo guest to {}", output.display());
        crate::record_cmd::record(&record, &stop, &mut |_| {})?
    } else {
        crate::record_cmd::record_with_ui(&record, stop)?
    };
    if let Some(e) = recorded.error {
        return Err(e);
    }
    let replay = ReplayArgs {
        file: output.clone(),
        headless: false,
        verify: false,
        goto: None,
        gdb: None,
        quiet: false,
        checkpoint_memory: args.checkpoint_memory,
        recording_memory: DEFAULT_RECORDING_MEMORY,
        kernel: None,
        source_dir: Vec::new(),
    };
    let result = tui(&replay);
    if temporary {
        let _ = std::fs::remove_file(&output);
    }
    result
}

/// Opens the recording in the terminal UI.
pub fn tui(args: &ReplayArgs) -> Result<()> {
    let replay = Replay::open_with(&args.file, args.limits())
        .with_context(|| format!("{}", args.file.display()))?;
    let keymap = Keymap::load()?;
    // The directory of the image the symbols come from (the named one, else the file the
    // recording names): relative source paths in its DWARF information start there.
    let image = args
        .kernel
        .clone()
        .unwrap_or_else(|| PathBuf::from(&replay.header().kernel.name));
    let image_dir = image.parent().map(|d| match d.as_os_str().is_empty() {
        true => PathBuf::from("."),
        false => d.to_path_buf(),
    });
    let mut timeline = Timeline::new(replay, args.checkpoint_memory);
    if let Some(p) = &args.kernel {
        timeline.set_symbols(Symbols::from_path(p).with_context(|| format!("{}", p.display()))?);
    }
    // The events pane names the task of each entry from user mode.
    timeline.follow_tasks();
    let mut message = String::new();
    if let Some(n) = args.goto {
        if n >= timeline.replay().event_count() {
            bail!("event {n} does not exist");
        }
        timeline.goto_event(n);
        message = format!("goto event {n}");
    }
    let mut app = App::new(timeline, keymap);
    app.exporter = Some(Box::new(|replay| {
        crate::gdb::export(replay).map_err(|e| format!("{e:#}"))
    }));
    app.source_dirs = args.source_dir.clone();
    app.image_dir = image_dir;
    if !message.is_empty() {
        app.message = message;
    }
    krr_ui::run_in_terminal(app).context("the terminal UI needs a terminal (or use --headless)")
}

pub fn run(args: ReplayArgs) -> Result<()> {
    if let Some(addr) = &args.gdb {
        return crate::gdb::serve(&args.file, args.limits(), addr, args.goto);
    }
    if !args.headless {
        return tui(&args);
    }
    let mut replay = Replay::open_with(&args.file, args.limits())
        .with_context(|| format!("{}", args.file.display()))?;
    let target = match args.goto {
        Some(n) => {
            let total = replay.event_count();
            if n >= total {
                bail!("event {n} does not exist: the recording has {total} events");
            }
            Target::Event(n)
        }
        None => Target::End,
    };
    let started = Instant::now();
    let stop = replay.run(target);
    let elapsed = started.elapsed().as_secs_f64();
    if !args.quiet {
        let mut out = std::io::stdout().lock();
        out.write_all(&replay.console().to_vec())?;
        out.flush()?;
    }
    let mut divergences = 0;
    let mut ended = "";
    match &stop {
        Stop::Diverged(d) => {
            divergences = 1;
            let mut d = (**d).clone();
            d.causes = replay.explain(&d);
            d.last_instructions = replay.last_instructions(d.icount, 16);
            eprintln!("\n{d}");
        }
        Stop::Finished(End::PowerOff) => ended = " (guest powered off)",
        Stop::Finished(End::EndOfRecording) => ended = " (end of recording)",
        Stop::Reached(_) => {
            let n = replay.events_consumed();
            outln!(
                "stopped after event #{} at icount {}",
                n.saturating_sub(1),
                replay.icount()
            )?;
        }
        Stop::Breakpoint(a) => outln!("breakpoint at {a:#x}")?,
    }
    let instructions = replay.icount();
    outln!(
        "replayed {} events, {} instructions in {:.2} s ({:.1} MIPS), divergences: {}{}",
        replay.events_consumed(),
        instructions,
        elapsed,
        instructions as f64 / elapsed.max(1e-9) / 1e6,
        divergences,
        ended
    )?;
    let problem = replay.recording_problem();
    if let Some(p) = &problem
        && !args.verify
    {
        eprintln!("krr-tui: the recording is incomplete or damaged: {p}");
    }
    if args.verify {
        if divergences > 0 {
            bail!("the replay diverged");
        }
        if let Some(p) = problem {
            bail!("the recording is incomplete or damaged, so it was not verified to its end: {p}");
        }
        if args.goto.is_none() && !replay.fully_consumed() {
            bail!(
                "the replay stopped before the end: {} of {} events consumed",
                replay.events_consumed(),
                replay.event_count()
            );
        }
    }
    Ok(())
}
