//! `krr-tui host`: this machine as a recording host. The host CPU (from /proc/cpuinfo),
//! whether KVM emulates ring-0 code here, the instruction-counter source `record` would
//! use, and what the recorder measures of the host for the recording's header: whether
//! `tzcnt`/`lzcnt` run as bit scans, how the host computes the flags and results the
//! architecture leaves undefined (DESIGN.md section 5), and what its `rdmsr`/`wrmsr` do
//! with the MSRs the replay CPU does not model.

use crate::stdout::outln;
use anyhow::{Context, Result};
use krr_engine::cpu::undefined::{FLAGS, UndefinedBehaviour};
use krr_engine::cpu::{MsrRead, MsrTable, MsrWrite, measured_msr_name};
use krr_engine::state::{CounterSourceKind, Quirks};
use krr_recorder::counter::KvmInsnEmulation;
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;

#[derive(clap::Args)]
pub struct HostArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Where KVM emulates ring-0 guest code (and its `insn_emulation` statistic can count
/// the guest kernel's instructions).
const PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// One processor of /proc/cpuinfo; a field it does not have is `None`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CpuInfo {
    pub processor: Option<String>,
    pub model_name: Option<String>,
    pub vendor: Option<String>,
    pub family: Option<String>,
    pub model: Option<String>,
    pub stepping: Option<String>,
}

/// The block of `processor` in the text of /proc/cpuinfo, or the first block where
/// there is none (or `processor` is `None`). Lines that are not `key : value` are
/// skipped.
pub fn parse_cpuinfo(text: &str, processor: Option<usize>) -> CpuInfo {
    let blocks: Vec<CpuInfo> = text
        .split("\n\n")
        .map(parse_block)
        .filter(|b| *b != CpuInfo::default())
        .collect();
    let wanted = processor.map(|p| p.to_string());
    let pick = blocks
        .iter()
        .position(|b| wanted.is_some() && b.processor == wanted)
        .unwrap_or(0);
    blocks.into_iter().nth(pick).unwrap_or_default()
}

fn parse_block(block: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    for line in block.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let slot = match key.trim() {
            "processor" => &mut info.processor,
            "model name" => &mut info.model_name,
            "vendor_id" => &mut info.vendor,
            "cpu family" => &mut info.family,
            "model" => &mut info.model,
            "stepping" => &mut info.stepping,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(value.to_string());
        }
    }
    info
}

/// What was measured in scratch VMs, or why nothing was.
enum Measurement {
    Measured {
        /// The CPU the measurement ran on (the thread was pinned to it).
        cpu: usize,
        counter: CounterSourceKind,
        quirks: Box<Quirks>,
        msrs: MsrTable,
    },
    NotMeasured(String),
}

/// Pins the thread to its CPU (as `record` does: what the guest observes depends on
/// it) where KVM is usable; `Err` says why KVM is not.
fn pin() -> Result<std::result::Result<usize, String>> {
    match krr_recorder::kvm_available() {
        Ok(()) => {
            Ok(Ok(krr_recorder::cpuid::pin_current_thread()
                .context("pinning the thread to its CPU")?))
        }
        Err(why) => Ok(Err(why)),
    }
}

/// Measures what `record` measures, on `cpu` (the thread is pinned there): the CPUID
/// the guest observes, the quirks and the MSR table for the header, and the counter
/// source.
fn measure(cpu: usize) -> Result<Measurement> {
    let (given, cpuid) = {
        let vm = krr_recorder::vm::create(2 << 20, None).context("creating a scratch VM")?;
        let observed =
            krr_recorder::cpuid::observe(vm.cpuid()).context("observing the guest's CPUID")?;
        (vm.cpuid().to_vec(), observed)
    };
    let quirks =
        krr_recorder::quirks::measure(&cpuid).context("measuring the host's undefined results")?;
    // For a vCPU given KVM's supported CPUID (a Linux guest's is given less).
    let msrs = krr_recorder::quirks::measure_msrs(&given)
        .context("measuring the host's rdmsr and wrmsr")?;
    // As `record` chooses without --no-counter.
    let counter = if KvmInsnEmulation::host_counts_ring0()
        .context("calibrating KVM's insn_emulation statistic")?
    {
        CounterSourceKind::KvmInsnEmulation
    } else {
        CounterSourceKind::None
    };
    Ok(Measurement::Measured {
        cpu,
        counter,
        quirks: Box::new(quirks),
        msrs,
    })
}

pub fn run(args: HostArgs) -> Result<()> {
    let pinned = pin()?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")
        .map(|text| parse_cpuinfo(&text, pinned.as_ref().ok().copied()))
        .map_err(|e| format!("/proc/cpuinfo: {e}"));
    let ring0_emulated = Path::new(PVM_MODULE).exists();
    if args.json {
        let measurement = match &pinned {
            Ok(cpu) => measure(*cpu)?,
            Err(why) => Measurement::NotMeasured(not_measured(why)),
        };
        let v = to_json(&cpuinfo, &pinned, ring0_emulated, &measurement);
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }

    // The CPU first, so that it is shown even if a measurement fails.
    print_cpu(&cpuinfo)?;
    match &pinned {
        Ok(_) => outln!("{:<14}usable (/dev/kvm)", "kvm")?,
        Err(why) => outln!("{:<14}not usable: {why}", "kvm")?,
    }
    outln!("{:<14}{}", "ring 0", ring0_text(ring0_emulated))?;
    let _ = std::io::stdout().flush();
    let measurement = match &pinned {
        Ok(cpu) => measure(*cpu)?,
        Err(why) => Measurement::NotMeasured(not_measured(why)),
    };
    match measurement {
        Measurement::NotMeasured(why) => {
            outln!("{:<14}not measured", "counter")?;
            outln!()?;
            outln!("not measured: {why}")?;
        }
        Measurement::Measured {
            cpu,
            counter,
            quirks,
            msrs,
        } => {
            outln!("{:<14}{}", "counter", counter_text(counter))?;
            outln!(
                "{:<14}{} (bit_scan_ignores_rep: {})",
                "bit scans",
                if quirks.bit_scan_ignores_rep {
                    "tzcnt/lzcnt run as bsf/bsr"
                } else {
                    "tzcnt/lzcnt as the guest's CPUID says"
                },
                quirks.bit_scan_ignores_rep
            )?;
            outln!()?;
            outln!("undefined results (measured on CPU {cpu}):")?;
            for line in quirks.undefined.table() {
                outln!("{line}")?;
            }
            let unmodelled = &quirks.undefined.unmodelled;
            if unmodelled.is_empty() {
                outln!("every undefined result above is modelled: replay reproduces this host")?;
            } else {
                outln!(
                    "{} behaviour(s) NOT MODELLED: replay of a recording made here may \
                     diverge where it depends on them",
                    unmodelled.len()
                )?;
            }
            outln!()?;
            outln!("MSRs the replay CPU does not model (measured on CPU {cpu}):")?;
            for line in msrs.table() {
                outln!("{line}")?;
            }
        }
    }
    Ok(())
}

fn not_measured(why: &str) -> String {
    format!(
        "KVM is not usable here ({why}), so the counter source, the bit scans and the \
         undefined results were not measured; recording needs /dev/kvm"
    )
}

fn ring0_text(emulated: bool) -> &'static str {
    if emulated {
        "emulated by KVM (kvm_pvm loaded)"
    } else {
        "not emulated by KVM (no kvm_pvm module)"
    }
}

fn counter_text(counter: CounterSourceKind) -> &'static str {
    match counter {
        CounterSourceKind::KvmInsnEmulation => {
            "KvmInsnEmulation: KVM's insn_emulation statistic counts every ring-0 \
             instruction (record's default; --no-counter records without)"
        }
        CounterSourceKind::None => {
            "None: no exact instruction counter here (insn_emulation does not count \
             ring-0 instructions); record places kernel-mode interrupts at deterministic \
             exits"
        }
        CounterSourceKind::PerfGuestKernel => "PerfGuestKernel",
    }
}

fn print_cpu(cpuinfo: &std::result::Result<CpuInfo, String>) -> std::io::Result<()> {
    match cpuinfo {
        Ok(c) => {
            let show = |v: &Option<String>| {
                v.clone()
                    .unwrap_or_else(|| "unknown (not in /proc/cpuinfo)".into())
            };
            outln!("{:<14}{}", "model name", show(&c.model_name))?;
            outln!("{:<14}{}", "vendor", show(&c.vendor))?;
            outln!("{:<14}{}", "family", show(&c.family))?;
            outln!("{:<14}{}", "model", show(&c.model))?;
            outln!("{:<14}{}", "stepping", show(&c.stepping))
        }
        Err(why) => outln!("{:<14}unknown ({why})", "model name"),
    }
}

/// A /proc/cpuinfo value as JSON: a number where it is one, else the text.
fn field_json(v: &Option<String>) -> Value {
    match v {
        None => Value::Null,
        Some(s) => s
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or(s.clone().into()),
    }
}

fn to_json(
    cpuinfo: &std::result::Result<CpuInfo, String>,
    pinned: &std::result::Result<usize, String>,
    ring0_emulated: bool,
    measurement: &Measurement,
) -> Value {
    let cpu = match cpuinfo {
        Ok(c) => json!({
            "model_name": c.model_name,
            "vendor": c.vendor,
            "family": field_json(&c.family),
            "model": field_json(&c.model),
            "stepping": field_json(&c.stepping),
            "processor": field_json(&c.processor),
        }),
        Err(why) => json!({ "error": why }),
    };
    let mut v = json!({
        "cpu": cpu,
        "kvm": pinned.is_ok(),
        "ring0_emulated": ring0_emulated,
    });
    let obj = v.as_object_mut().expect("an object");
    match measurement {
        Measurement::NotMeasured(why) => {
            obj.insert("measured".into(), false.into());
            obj.insert("not_measured_reason".into(), why.clone().into());
            obj.insert("counter".into(), Value::Null);
            obj.insert("bit_scan_ignores_rep".into(), Value::Null);
            obj.insert("undefined".into(), Value::Null);
            obj.insert("msrs".into(), Value::Null);
        }
        Measurement::Measured {
            cpu,
            counter,
            quirks,
            msrs,
        } => {
            obj.insert("measured".into(), true.into());
            obj.insert("measured_on_cpu".into(), (*cpu).into());
            obj.insert("counter".into(), format!("{counter:?}").into());
            obj.insert(
                "bit_scan_ignores_rep".into(),
                quirks.bit_scan_ignores_rep.into(),
            );
            obj.insert("undefined".into(), undefined_json(&quirks.undefined));
            obj.insert("msrs".into(), msrs_json(msrs));
        }
    }
    v
}

/// The MSR table as JSON (`host` and `info`): one object per MSR, with its number (hex), name, what
/// `rdmsr` gave (hex value or "#GP") and what `wrmsr` did.
pub fn msrs_json(table: &MsrTable) -> Value {
    table
        .entries()
        .iter()
        .map(|&(index, b)| {
            json!({
                "msr": format!("{index:#x}"),
                "name": measured_msr_name(index),
                "read": match b.read {
                    MsrRead::Value(v) => format!("{v:#x}"),
                    MsrRead::Faults => "#GP".to_string(),
                },
                "write": match b.write {
                    MsrWrite::Faults => "#GP",
                    MsrWrite::Ignored => "ignored",
                    MsrWrite::Kept => "kept",
                    MsrWrite::NotMeasured => "not measured",
                },
            })
        })
        .collect()
}

/// An undefined-behaviour table as JSON: `table`, its lines as `krr-tui host` and
/// `info` print them, and `unmodelled`, what no rule reproduces.
pub fn undefined_json(u: &UndefinedBehaviour) -> Value {
    let unmodelled: Vec<Value> = u
        .unmodelled
        .iter()
        .map(|m| {
            let flags: Vec<&str> = FLAGS
                .iter()
                .filter(|(f, _)| m.flags & f != 0)
                .map(|&(_, name)| name)
                .collect();
            json!({
                "family": m.family.name(),
                "bits": m.size as u32 * 8,
                "flags": flags,
                "detail": m.detail,
            })
        })
        .collect();
    json!({
        "table": u.table(),
        "unmodelled": unmodelled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_CPUS: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n\
        model\t\t: 207\nmodel name\t: Intel(R) Xeon(R) Processor\nstepping\t: 2\n\
        flags\t\t: fpu vme\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n\
        model\t\t: 183\nmodel name\t: Other core\nstepping\t: 1\n\n";

    #[test]
    fn cpuinfo_gives_the_pinned_processor_or_the_first() {
        let c = parse_cpuinfo(TWO_CPUS, Some(1));
        assert_eq!(c.model_name.as_deref(), Some("Other core"));
        assert_eq!(c.model.as_deref(), Some("183"));
        let c = parse_cpuinfo(TWO_CPUS, None);
        assert_eq!(c.model_name.as_deref(), Some("Intel(R) Xeon(R) Processor"));
        assert_eq!(c.vendor.as_deref(), Some("GenuineIntel"));
        assert_eq!(
            (c.family.as_deref(), c.stepping.as_deref()),
            (Some("6"), Some("2"))
        );
        assert_eq!(
            parse_cpuinfo(TWO_CPUS, Some(7)).processor.as_deref(),
            Some("0")
        );
    }

    #[test]
    fn cpuinfo_without_the_fields_gives_none() {
        for text in [
            "",
            "\n\n\n",
            "garbage",
            "model name:\n: 3\nstepping : unknown",
        ] {
            let c = parse_cpuinfo(text, Some(0));
            assert_eq!(c.model_name, None, "{text:?}");
            assert_eq!(c.family, None, "{text:?}");
        }
        let c = parse_cpuinfo("stepping : unknown", None);
        assert_eq!(field_json(&c.stepping), Value::from("unknown"));
        assert_eq!(field_json(&Some("6".into())), Value::from(6));
    }

    #[test]
    fn the_json_table_has_every_line() {
        let u = UndefinedBehaviour::legacy();
        let v = undefined_json(&u);
        assert_eq!(v["table"].as_array().unwrap().len(), u.table().len());
        assert!(v["unmodelled"].as_array().unwrap().is_empty());
    }
}
