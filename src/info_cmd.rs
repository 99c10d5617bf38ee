//! `krr-tui info`: a recording's summary and event statistics, its format version, the
//! undefined results replay reproduces and the recording host's MSR table.

use crate::stdout::outln;
use anyhow::{Context, Result};
use krr_engine::trace::{FORMAT_VERSION, RecordingReader, TraceError};
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
    let mut reader =
        RecordingReader::open(&args.file).with_context(|| format!("{}", args.file.display()))?;
    // Every section is decoded, so that damage anywhere is reported with its offset
    // (the index alone would call a finished file with a bad chunk complete).
    let damage = match reader.verify() {
        Ok(()) => None,
        Err(TraceError::Io(e)) => {
            return Err(e).with_context(|| format!("reading {}", args.file.display()));
        }
        Err(e) => Some(e.to_string()),
    };
    let mut stats = reader.stats().clone();
    if damage.is_some() {
        stats.complete = false;
    }
    let stats = &stats;
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
            obj.insert("damage".into(), damage.clone().into());
            obj.insert("format_version".into(), header.format_version.into());
            obj.insert(
                "kernel_command_line".into(),
                header.kernel_command_line.clone().into(),
            );
            let mut undefined = crate::host_cmd::undefined_json(&header.machine.quirks.undefined);
            if let Some(u) = undefined.as_object_mut() {
                u.insert(
                    "source".into(),
                    undefined_source(header.format_version).into(),
                );
            }
            obj.insert("undefined".into(), undefined);
            obj.insert(
                "msrs".into(),
                crate::host_cmd::msrs_json(&header.machine.msrs),
            );
        }
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    outln!("recording   {}", args.file.display())?;
    if header.format_version == FORMAT_VERSION {
        outln!("format      {}", header.format_version)?;
    } else {
        outln!(
            "format      {} (older; this build writes {FORMAT_VERSION})",
            header.format_version
        )?;
    }
    outln!(
        "kernel      {} ({} bytes, sha256 {})",
        header.kernel.name,
        header.kernel.size,
        hex(&header.kernel.sha256[..8])
    )?;
    if !header.kernel_command_line.is_empty() {
        outln!("cmdline     {}", header.kernel_command_line)?;
    }
    outln!("counter     {:?}", header.machine.counter)?;
    if header.machine.quirks.bit_scan_ignores_rep {
        outln!("quirks      tzcnt/lzcnt executed as bsf/bsr on the recording host")?;
    }
    if let Some(d) = &damage {
        outln!("DAMAGED     {d}")?;
    }
    if !recovery.complete {
        outln!(
            "INCOMPLETE  {} ({} events readable, {} bytes lost)",
            recovery.reason.as_deref().unwrap_or("cut short"),
            recovery.valid_events,
            recovery.lost_bytes
        )?;
    }
    outln!("{stats}")?;
    outln!()?;
    if undefined_source(header.format_version) == "legacy" {
        outln!(
            "undefined results (format {} recording, which does not store the host's: \
             replays with the legacy rules):",
            header.format_version
        )?;
    } else {
        outln!("undefined results (recording host):")?;
    }
    for line in header.machine.quirks.undefined.table() {
        outln!("{line}")?;
    }
    outln!()?;
    if header.machine.msrs.is_empty() {
        outln!(
            "MSRs (none measured{}: an MSR the replay CPU does not model stops replay)",
            if header.format_version < 5 {
                format!(", format {} recording", header.format_version)
            } else {
                String::new()
            }
        )?;
    } else {
        outln!("MSRs the replay CPU does not model (recording host):")?;
    }
    for line in header.machine.msrs.table() {
        outln!("{line}")?;
    }
    Ok(())
}

/// Where the undefined-results table replay follows comes from: the recording host
/// (measured by the recorder, format 3 on) or the legacy rules (older formats).
fn undefined_source(format_version: u32) -> &'static str {
    if format_version >= 3 {
        "recording host"
    } else {
        "legacy"
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
