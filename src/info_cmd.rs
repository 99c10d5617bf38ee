//! `krr-tui info`: a recording's summary and event statistics.

use anyhow::{Context, Result};
use krr_engine::trace::RecordingReader;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct InfoArgs {
    /// The recording (.krr).
    file: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let reader =
        RecordingReader::open(&args.file).with_context(|| format!("{}", args.file.display()))?;
    let stats = reader.stats();
    let header = reader.header();
    let recovery = reader.recovery();
    if args.json {
        let mut v = stats.to_json();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("kernel".into(), header.kernel.name.clone().into());
            obj.insert(
                "counter".into(),
                format!("{:?}", header.machine.counter).into(),
            );
            obj.insert(
                "bit_scan_ignores_rep".into(),
                header.machine.quirks.bit_scan_ignores_rep.into(),
            );
            obj.insert("lost_bytes".into(), recovery.lost_bytes.into());
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("recording   {}", args.file.display());
    println!(
        "kernel      {} ({} bytes, sha256 {})",
        header.kernel.name,
        header.kernel.size,
        hex(&header.kernel.sha256[..8])
    );
    println!("counter     {:?}", header.machine.counter);
    if header.machine.quirks.bit_scan_ignores_rep {
        println!("quirks      tzcnt/lzcnt executed as bsf/bsr on the recording host");
    }
    if !recovery.complete {
        println!(
            "INCOMPLETE  {} ({} events readable, {} bytes lost)",
            recovery.reason.as_deref().unwrap_or("cut short"),
            recovery.valid_events,
            recovery.lost_bytes
        );
    }
    println!("{stats}");
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
