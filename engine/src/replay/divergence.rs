//! The report of a divergence between the recording and its replay.

use crate::cpu::undefined::FLAGS;
use crate::event::Icount;
use crate::state::gpr;
use std::fmt;

/// The first point where replay and recording disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// Number of the event that was expected next.
    pub event: u64,
    pub icount: Icount,
    pub rip: u64,
    pub expected: String,
    pub actual: String,
    /// The registers and flags that differ, where the recording stored them.
    pub differences: Vec<Difference>,
    /// Where each difference was last written (filled in on request:
    /// [`super::Replay::explain`]).
    pub causes: Vec<Cause>,
    /// The instructions executed just before, oldest first (filled in on request).
    pub last_instructions: Vec<String>,
}

impl Divergence {
    /// Whether only bits the architecture leaves undefined differ: every difference
    /// was last written by an instruction that leaves it undefined. None where the
    /// causes are not known.
    pub fn only_undefined(&self) -> Option<bool> {
        if self.differences.is_empty() || self.causes.is_empty() {
            return None;
        }
        Some(
            self.differences
                .iter()
                .all(|d| self.causes.iter().any(|c| c.what == d.what && c.undefined)),
        )
    }
}

/// The last instruction that wrote a register or flag that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// What differs, as [`Difference::what`] names it.
    pub what: String,
    /// The instruction's position (the icount before it retired) and address.
    pub icount: Icount,
    pub rip: u64,
    /// Its disassembly (and what else changed the value after it, if not itself).
    pub instruction: String,
    /// The architecture leaves `what` undefined after this instruction.
    pub undefined: bool,
    /// The recording host's rule for it, as stored in the recording, where the replay
    /// CPU models it (`shr 64-bit: AF=0`).
    pub rule: Option<String>,
    /// Where an earlier instruction of the same kind (and operand size) since the last
    /// digest that matched left `what` undefined first: icount, rip, disassembly (its
    /// result was overwritten before the digest, but it depended on the same rule).
    pub first_undefined: Option<(Icount, u64, String)>,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} last written at icount {} rip {:#x} by `{}`",
            self.what, self.icount, self.rip, self.instruction
        )?;
        if self.undefined {
            write!(f, ", which leaves it architecturally undefined")?;
            if let Some(r) = &self.rule {
                write!(f, " (the recording's rule for it: {r})")?;
            }
        }
        if let Some((icount, rip, text)) = &self.first_undefined {
            write!(
                f,
                "; the same rule first applied since the last matching digest at icount \
                 {icount} rip {rip:#x} by `{text}`"
            )?;
        }
        Ok(())
    }
}

/// A register (`rax`...), a status flag (`AF`...) or the other RFLAGS bits (`rflags`)
/// whose recorded value differs from the replayed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub what: String,
    pub expected: u64,
    pub actual: u64,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.what.ends_with('F') && self.expected <= 1 && self.actual <= 1 {
            write!(
                f,
                "{} recorded {} replayed {}",
                self.what, self.expected, self.actual
            )
        } else {
            write!(
                f,
                "{} recorded {:#x} replayed {:#x}",
                self.what, self.expected, self.actual
            )
        }
    }
}

/// What differs between recorded and replayed general registers and RFLAGS: each
/// register, each status flag, and the other RFLAGS bits together.
pub fn register_differences(
    expected: (&[u64; 16], u64),
    actual: (&[u64; 16], u64),
) -> Vec<Difference> {
    let mut out = Vec::new();
    for i in 0..16 {
        if expected.0[i] != actual.0[i] {
            out.push(Difference {
                what: gpr::NAMES[i].to_string(),
                expected: expected.0[i],
                actual: actual.0[i],
            });
        }
    }
    let (e, a) = (expected.1, actual.1);
    let mut status = 0;
    for (flag, name) in FLAGS {
        status |= flag;
        if (e ^ a) & flag != 0 {
            out.push(Difference {
                what: name.to_string(),
                expected: (e & flag != 0) as u64,
                actual: (a & flag != 0) as u64,
            });
        }
    }
    if (e ^ a) & !status != 0 {
        out.push(Difference {
            what: "rflags".into(),
            expected: e,
            actual: a,
        });
    }
    out
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "divergence at event #{} icount {} rip {:#x}",
            self.event, self.icount, self.rip
        )?;
        writeln!(f, "  expected: {}", self.expected)?;
        write!(f, "  actual:   {}", self.actual)?;
        if !self.differences.is_empty() {
            let list: Vec<String> = self.differences.iter().map(|d| d.to_string()).collect();
            write!(f, "\n  differs:  {}", list.join(", "))?;
        }
        for c in &self.causes {
            write!(f, "\n  cause:    {c}")?;
        }
        match self.only_undefined() {
            Some(true) => write!(f, "\n  only architecturally undefined bits differ")?,
            Some(false) => write!(f, "\n  defined results differ")?,
            None => {}
        }
        if !self.last_instructions.is_empty() {
            write!(f, "\n  last instructions:")?;
            for i in &self.last_instructions {
                write!(f, "\n    {i}")?;
            }
        }
        Ok(())
    }
}

/// `icount  rip  mnemonic` of the instruction at the replay's RIP.
pub fn disassemble_at(r: &super::Replay) -> String {
    let rip = r.rip();
    let text = super::format_instruction(&r.decode_at(rip));
    format!("{:>10}  {rip:#018x}  {text}", r.icount())
}
