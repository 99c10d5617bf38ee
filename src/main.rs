//! krr-tui: record a guest under KVM, replay its kernel in a software CPU.

mod gdb;
mod host_cmd;
mod info_cmd;
mod output;
mod record_cmd;
mod replay_cmd;
mod stdout;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "krr-tui",
    version,
    about = "Time-travel debugger for x86-64 kernels",
    long_about = "krr-tui records a guest virtual machine under KVM, capturing every \
                  non-deterministic input its kernel sees, and replays the kernel \
                  deterministically, instruction by instruction, in its own software \
                  x86-64 CPU. Only the kernel is replayed; user space is reduced to the \
                  recorded entries into the kernel."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a guest under KVM and record it (the built-in demo guest by default).
    Record(record_cmd::RecordArgs),
    /// Open a recording and replay its kernel.
    Replay(replay_cmd::ReplayArgs),
    /// Print a recording's summary and event statistics.
    Info(info_cmd::InfoArgs),
    /// Record the built-in demo guest, then open its replay.
    Demo(replay_cmd::DemoArgs),
    /// Print this machine as a recording host: its CPU, the counter source and the
    /// undefined results the recorder measures.
    Host(host_cmd::HostArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KRR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Record(args) => record_cmd::run(args),
        Command::Info(args) => info_cmd::run(args),
        Command::Replay(args) => replay_cmd::run(args),
        Command::Demo(args) => replay_cmd::run_demo(args),
        Command::Host(args) => host_cmd::run(args),
    };
    if let Err(e) = result {
        if stdout::is_broken_pipe(&e) {
            // The reader of our output went away: a normal end.
            return;
        }
        eprintln!("krr-tui: {e:#}");
        std::process::exit(1);
    }
}
