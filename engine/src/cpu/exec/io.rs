//! Instructions whose value comes from the replay driver or goes to it: `in`, `out`,
//! `rdtsc`, `rdrand`, `rdseed`. An input instruction stays pending (see
//! [`super::super::Pending`]) until [`Cpu::complete_input`] supplies its value.

use iced_x86::{Instruction, OpKind};

use super::super::flags::mask;
use super::super::{Cpu, Exit, Pending, R, Retired, exit};
use super::operand::{gpr_index, reg_size};
use crate::state::gpr::{RAX, RDX};

impl Cpu {
    /// The port of `in` (operand 1) or `out` (operand 0): DX or an immediate.
    fn port_operand(&self, ins: &Instruction, n: u32) -> u16 {
        if ins.op_kind(n) == OpKind::Register {
            self.st.gpr[RDX] as u16
        } else {
            ins.immediate8() as u16
        }
    }

    pub(super) fn port_in(&mut self, ins: &Instruction) -> R<Retired> {
        let size = reg_size(ins.op_register(0)) as u8;
        let port = self.port_operand(ins, 1);
        self.pending = Some(Pending::PortIn {
            size,
            port,
            next_rip: self.next_rip,
        });
        Err(exit(Exit::PortIn { port, size }))
    }

    pub(super) fn port_out(&mut self, ins: &Instruction) -> R<Retired> {
        let size = reg_size(ins.op_register(1)) as u8;
        let port = self.port_operand(ins, 0);
        let value = (self.st.gpr[RAX] & mask(size as usize)) as u32;
        Ok(Retired::PortOut { port, size, value })
    }

    pub(super) fn rdtsc(&mut self) -> R<Retired> {
        self.pending = Some(Pending::EdxEax {
            next_rip: self.next_rip,
        });
        Err(exit(Exit::Rdtsc))
    }

    /// `rdrand` and (`seed`) `rdseed`.
    pub(super) fn random(&mut self, ins: &Instruction, seed: bool) -> R<Retired> {
        let r = ins.op_register(0);
        self.pending = Some(Pending::Random {
            reg: gpr_index(r),
            size: reg_size(r) as u8,
            next_rip: self.next_rip,
            seed,
        });
        Err(exit(if seed { Exit::Rdseed } else { Exit::Rdrand }))
    }
}
