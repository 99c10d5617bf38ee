//! The report of a divergence between the recording and its replay.

use crate::cpu::Cpu;
use crate::event::Icount;
use crate::memory::GuestMemory;
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
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
    /// The instructions executed just before, oldest first (filled in on request).
    pub last_instructions: Vec<String>,
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
        if !self.last_instructions.is_empty() {
            write!(f, "\n  last instructions:")?;
            for i in &self.last_instructions {
                write!(f, "\n    {i}")?;
            }
        }
        Ok(())
    }
}

/// `icount  rip  bytes  mnemonic` of the instruction at the CPU's RIP.
pub fn disassemble_at(cpu: &Cpu, mem: &GuestMemory) -> String {
    let rip = cpu.state().rip;
    let mut bytes = [0u8; 15];
    let n = (0..15)
        .take_while(|&i| {
            cpu.read_virtual(mem, rip + i as u64, &mut bytes[i..i + 1])
                .is_ok()
        })
        .count();
    let mut decoder = Decoder::with_ip(64, &bytes[..n], rip, DecoderOptions::NONE);
    let ins = decoder.decode();
    let mut text = String::new();
    IntelFormatter::new().format(&ins, &mut text);
    format!("{:>10}  {rip:#018x}  {text}", cpu.icount())
}
