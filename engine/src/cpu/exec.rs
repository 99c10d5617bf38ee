//! Instruction execution.
//!
//! Every instruction reads all its inputs before it writes anything, and writes memory
//! before registers, so an instruction that faults leaves the state as it was (string
//! instructions with `rep` keep the iterations already done, as the architecture says).

use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, OpKind, Register};

use super::flags::{self, CF, DF, IF, OF, PF, SF, STATUS, ShiftOp, ZF, mask, sext};
use super::undefined::{Family, ZeroSourceDestination, size_index};
use super::{Cpu, Exit, Pending, R, Retired, exc, exit, gp0, ud, vector};
use crate::icount::REP_CHUNK;
use crate::memory::GuestMemory;
use crate::state::seg;

mod fast;
pub(crate) use fast::{FastOp, classify};

const AL: u32 = Register::AL as u32;
const R15L: u32 = Register::R15L as u32;
const AX: u32 = Register::AX as u32;
const EAX: u32 = Register::EAX as u32;
const RAX: u32 = Register::RAX as u32;
const R15: u32 = Register::R15 as u32;
const ES: u32 = Register::ES as u32;
const GS: u32 = Register::GS as u32;
const CR0: u32 = Register::CR0 as u32;
const DR0: u32 = Register::DR0 as u32;

#[inline]
fn reg_size(r: Register) -> usize {
    match r as u32 {
        AL..=R15L => 1,
        AX..EAX => 2,
        EAX..RAX => 4,
        RAX..=R15 => 8,
        ES..=GS => 2,
        _ => 8,
    }
}

#[inline]
fn op_size(ins: &Instruction, n: u32) -> usize {
    match ins.op_kind(n) {
        OpKind::Register => reg_size(ins.op_register(n)),
        _ => ins.memory_size().size(),
    }
}

/// The GPR index of a 64-bit register, for fixed-register instructions.
#[inline]
fn gpr_index(r: Register) -> usize {
    match r as u32 {
        v @ AL..=R15L => {
            if (5..=8).contains(&v) {
                (v - 5) as usize
            } else if v <= 4 {
                (v - 1) as usize
            } else {
                (v - 5) as usize
            }
        }
        v @ AX..EAX => (v - AX) as usize,
        v @ EAX..RAX => (v - EAX) as usize,
        v @ RAX..=R15 => (v - RAX) as usize,
        _ => 0,
    }
}

fn seg_index(r: Register) -> usize {
    (r as u32 - ES) as usize
}

impl Cpu {
    #[inline]
    pub(crate) fn reg_get(&self, r: Register) -> u64 {
        let v = r as u32;
        let g = &self.st.gpr;
        match v {
            AL..=R15L => {
                if (5..=8).contains(&v) {
                    (g[(v - 5) as usize] >> 8) & 0xff
                } else if v <= 4 {
                    g[(v - 1) as usize] & 0xff
                } else {
                    g[(v - 5) as usize] & 0xff
                }
            }
            AX..EAX => g[(v - AX) as usize] & 0xffff,
            EAX..RAX => g[(v - EAX) as usize] & 0xffff_ffff,
            RAX..=R15 => g[(v - RAX) as usize],
            ES..=GS => self.st.seg[(v - ES) as usize].selector as u64,
            _ => 0,
        }
    }

    #[inline]
    pub(crate) fn reg_set(&mut self, r: Register, x: u64) {
        let v = r as u32;
        let g = &mut self.st.gpr;
        match v {
            AL..=R15L => {
                if (5..=8).contains(&v) {
                    let i = (v - 5) as usize;
                    g[i] = (g[i] & !0xff00) | ((x & 0xff) << 8);
                } else {
                    let i = if v <= 4 { v - 1 } else { v - 5 } as usize;
                    g[i] = (g[i] & !0xff) | (x & 0xff);
                }
            }
            AX..EAX => {
                let i = (v - AX) as usize;
                g[i] = (g[i] & !0xffff) | (x & 0xffff);
            }
            EAX..RAX => g[(v - EAX) as usize] = x & 0xffff_ffff,
            RAX..=R15 => g[(v - RAX) as usize] = x,
            _ => {}
        }
    }

    /// Sets the accumulator of `size` bytes (AL, AX, EAX, RAX) with the usual merging.
    fn set_acc(&mut self, size: usize, x: u64) {
        let r = match size {
            1 => Register::AL,
            2 => Register::AX,
            4 => Register::EAX,
            _ => Register::RAX,
        };
        self.reg_set(r, x);
    }

    /// Sets register `i` as a `size`-byte register (no high-byte registers).
    fn set_gpr_sized(&mut self, i: usize, size: usize, x: u64) {
        let g = &mut self.st.gpr[i];
        *g = match size {
            1 => (*g & !0xff) | (x & 0xff),
            2 => (*g & !0xffff) | (x & 0xffff),
            4 => x & 0xffff_ffff,
            _ => x,
        };
    }

    /// Effective address of the memory operand (no segment base).
    #[inline]
    fn ea(&self, ins: &Instruction) -> u64 {
        let base = ins.memory_base();
        let mut a = ins.memory_displacement64();
        let mut narrow = false;
        match base {
            Register::None => {}
            Register::RIP => a = a.wrapping_add(self.st.rip),
            Register::EIP => {
                a = a.wrapping_add(self.st.rip);
                narrow = true;
            }
            b => {
                narrow = (EAX..RAX).contains(&(b as u32));
                a = a.wrapping_add(self.reg_get(b));
            }
        }
        let idx = ins.memory_index();
        if idx != Register::None {
            narrow |= (EAX..RAX).contains(&(idx as u32));
            a = a.wrapping_add(
                self.reg_get(idx)
                    .wrapping_mul(ins.memory_index_scale() as u64),
            );
        }
        if narrow { a & 0xffff_ffff } else { a }
    }

    #[inline]
    fn seg_base(&self, r: Register) -> u64 {
        match r {
            Register::FS => self.st.seg[seg::FS].base,
            Register::GS => self.st.seg[seg::GS].base,
            _ => 0,
        }
    }

    /// Linear address of the memory operand.
    #[inline]
    fn mem_la(&self, ins: &Instruction) -> u64 {
        self.ea(ins)
            .wrapping_add(self.seg_base(ins.memory_segment()))
    }

    #[inline]
    fn mem_ss(ins: &Instruction) -> bool {
        ins.memory_segment() == Register::SS
    }

    #[inline]
    fn rd(&mut self, mem: &mut GuestMemory, ins: &Instruction, n: u32, size: usize) -> R<u64> {
        match ins.op_kind(n) {
            OpKind::Register => Ok(self.reg_get(ins.op_register(n))),
            OpKind::Memory => {
                let la = self.mem_la(ins);
                self.read_lin(mem, la, size, Self::mem_ss(ins))
            }
            _ => Ok(ins.immediate(n) & mask(size)),
        }
    }

    #[inline]
    fn wr(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        n: u32,
        size: usize,
        v: u64,
    ) -> R<()> {
        match ins.op_kind(n) {
            OpKind::Register => {
                self.reg_set(ins.op_register(n), v);
                Ok(())
            }
            OpKind::Memory => {
                let la = self.mem_la(ins);
                self.write_lin(mem, la, size, v, Self::mem_ss(ins))
            }
            _ => Ok(()),
        }
    }

    #[inline]
    fn set_status(&mut self, f: u64) {
        self.st.rflags = (self.st.rflags & !STATUS) | (f & STATUS);
    }

    #[inline]
    fn cond(&self, cc: ConditionCode) -> bool {
        let f = self.st.rflags;
        let cf = f & CF != 0;
        let zf = f & ZF != 0;
        let sf = f & SF != 0;
        let of = f & OF != 0;
        let pf = f & PF != 0;
        match cc {
            ConditionCode::o => of,
            ConditionCode::no => !of,
            ConditionCode::b => cf,
            ConditionCode::ae => !cf,
            ConditionCode::e => zf,
            ConditionCode::ne => !zf,
            ConditionCode::be => cf || zf,
            ConditionCode::a => !cf && !zf,
            ConditionCode::s => sf,
            ConditionCode::ns => !sf,
            ConditionCode::p => pf,
            ConditionCode::np => !pf,
            ConditionCode::l => sf != of,
            ConditionCode::ge => sf == of,
            ConditionCode::le => zf || sf != of,
            ConditionCode::g => !zf && sf == of,
            ConditionCode::None => true,
        }
    }

    #[inline]
    fn push(&mut self, mem: &mut GuestMemory, v: u64, size: usize) -> R<()> {
        let rsp = self.st.gpr[4].wrapping_sub(size as u64);
        self.write_lin(mem, rsp, size, v, true)?;
        self.st.gpr[4] = rsp;
        Ok(())
    }

    /// Reads the value at the top of the stack without popping it.
    #[inline]
    fn peek(&mut self, mem: &mut GuestMemory, off: u64, size: usize) -> R<u64> {
        let rsp = self.st.gpr[4].wrapping_add(off);
        self.read_lin(mem, rsp, size, true)
    }

    #[inline]
    fn jump(&mut self, target: u64) -> R<()> {
        if !super::mmu::canonical(target) {
            return Err(gp0());
        }
        self.next_rip = target;
        Ok(())
    }

    fn shift_count(
        &mut self,
        mem: &mut GuestMemory,
        ins: &Instruction,
        n: u32,
        size: usize,
    ) -> R<u32> {
        let c = self.rd(mem, ins, n, 1)? as u32;
        Ok(c & if size == 8 { 63 } else { 31 })
    }

    /// Executes one decoded instruction. `Ok(exit)` retires it (RIP becomes
    /// `self.next_rip`); `Err` leaves it unretired.
    pub(crate) fn exec(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<Retired> {
        use Mnemonic as M;
        let m = ins.mnemonic();
        match m {
            M::Add | M::Or | M::Adc | M::Sbb | M::And | M::Sub | M::Xor | M::Cmp | M::Test => {
                let size = op_size(ins, 0);
                let a = self.rd(mem, ins, 0, size)?;
                let b = self.rd(mem, ins, 1, size)?;
                let cf = self.st.rflags & CF != 0;
                let (r, f) = match m {
                    M::Add => flags::add(a, b, false, size),
                    M::Adc => flags::add(a, b, cf, size),
                    M::Sub | M::Cmp => flags::sub(a, b, false, size),
                    M::Sbb => flags::sub(a, b, cf, size),
                    M::And | M::Test => {
                        let family = if m == M::And {
                            Family::And
                        } else {
                            Family::Test
                        };
                        let r = a & b;
                        (
                            r,
                            flags::logic(family, r, size, self.st.rflags, &self.undefined),
                        )
                    }
                    M::Or => {
                        let r = a | b;
                        (
                            r,
                            flags::logic(Family::Or, r, size, self.st.rflags, &self.undefined),
                        )
                    }
                    _ => {
                        let r = a ^ b;
                        (
                            r,
                            flags::logic(Family::Xor, r, size, self.st.rflags, &self.undefined),
                        )
                    }
                };
                if m != M::Cmp && m != M::Test {
                    self.wr(mem, ins, 0, size, r)?;
                }
                self.set_status(f);
            }
            M::Inc | M::Dec => {
                let size = op_size(ins, 0);
                let a = self.rd(mem, ins, 0, size)?;
                let (r, f) = if m == M::Inc {
                    flags::add(a, 1, false, size)
                } else {
                    flags::sub(a, 1, false, size)
                };
                self.wr(mem, ins, 0, size, r)?;
                self.set_status((f & !CF) | (self.st.rflags & CF));
            }
            M::Neg => {
                let size = op_size(ins, 0);
                let a = self.rd(mem, ins, 0, size)?;
                let (r, f) = flags::sub(0, a, false, size);
                self.wr(mem, ins, 0, size, r)?;
                self.set_status(f);
            }
            M::Not => {
                let size = op_size(ins, 0);
                let a = self.rd(mem, ins, 0, size)?;
                self.wr(mem, ins, 0, size, !a & mask(size))?;
            }
            M::Mov => return self.exec_mov(mem, ins),
            M::Movnti => {
                let size = op_size(ins, 0);
                let v = self.rd(mem, ins, 1, size)?;
                self.wr(mem, ins, 0, size, v)?;
            }
            M::Movzx | M::Movsx | M::Movsxd => {
                let dsize = op_size(ins, 0);
                let ssize = op_size(ins, 1);
                let v = self.rd(mem, ins, 1, ssize)?;
                let v = if m == M::Movzx {
                    v
                } else {
                    sext(v, ssize) & mask(dsize)
                };
                self.wr(mem, ins, 0, dsize, v)?;
            }
            M::Lea => {
                let size = op_size(ins, 0);
                let a = self.ea(ins);
                self.wr(mem, ins, 0, size, a & mask(size))?;
            }
            M::Xchg => {
                let size = op_size(ins, 0);
                let a = self.rd(mem, ins, 0, size)?;
                let b = self.rd(mem, ins, 1, size)?;
                self.wr(mem, ins, 0, size, b)?;
                self.wr(mem, ins, 1, size, a)?;
            }
            M::Cmpxchg => {
                let size = op_size(ins, 0);
                let d = self.rd(mem, ins, 0, size)?;
                let s = self.rd(mem, ins, 1, size)?;
                let acc = self.st.gpr[0] & mask(size);
                let (_, f) = flags::sub(acc, d, false, size);
                if acc == d {
                    self.wr(mem, ins, 0, size, s)?;
                } else {
                    // The destination is written back unchanged (a locked write cycle),
                    // then the accumulator receives it.
                    self.wr(mem, ins, 0, size, d)?;
                    self.set_acc(size, d);
                }
                self.set_status(f);
            }
            M::Cmpxchg8b => {
                let la = self.mem_la(ins);
                let ss = Self::mem_ss(ins);
                let d = self.read_lin(mem, la, 8, ss)?;
                let g = &self.st.gpr;
                let cmp = (g[0] & 0xffff_ffff) | (g[2] << 32);
                if d == cmp {
                    let nv = (g[3] & 0xffff_ffff) | (g[1] << 32);
                    self.write_lin(mem, la, 8, nv, ss)?;
                    self.st.rflags |= ZF;
                } else {
                    self.write_lin(mem, la, 8, d, ss)?;
                    self.st.gpr[0] = d & 0xffff_ffff;
                    self.st.gpr[2] = d >> 32;
                    self.st.rflags &= !ZF;
                }
            }
            M::Xadd => {
                let size = op_size(ins, 0);
                let d = self.rd(mem, ins, 0, size)?;
                let s = self.rd(mem, ins, 1, size)?;
                let (r, f) = flags::add(d, s, false, size);
                if ins.op_kind(0) == OpKind::Memory {
                    self.wr(mem, ins, 0, size, r)?;
                    self.wr(mem, ins, 1, size, d)?;
                } else {
                    self.wr(mem, ins, 1, size, d)?;
                    self.wr(mem, ins, 0, size, r)?;
                }
                self.set_status(f);
            }
            M::Push => {
                let size = (-ins.stack_pointer_increment()) as usize;
                let v = if ins.op_kind(0) == OpKind::Register {
                    let r = ins.op_register(0);
                    self.reg_get(r)
                } else {
                    self.rd(mem, ins, 0, size)?
                };
                self.push(mem, v & mask(size), size)?;
            }
            M::Pop => {
                let size = ins.stack_pointer_increment() as usize;
                let v = self.peek(mem, 0, size)?;
                let old_rsp = self.st.gpr[4];
                self.st.gpr[4] = old_rsp.wrapping_add(size as u64);
                let r = if ins.op_kind(0) == OpKind::Register
                    && (ES..=GS).contains(&(ins.op_register(0) as u32))
                {
                    self.load_data_segment(mem, seg_index(ins.op_register(0)), v as u16, true)
                } else {
                    // The destination address uses the incremented RSP.
                    self.wr(mem, ins, 0, size, v)
                };
                if let Err(e) = r {
                    self.st.gpr[4] = old_rsp;
                    return Err(e);
                }
            }
            M::Pushf | M::Pushfq => {
                let size = if m == M::Pushfq { 8 } else { 2 };
                let v = self.st.rflags & !(flags::VM | flags::RF);
                self.push(mem, v & mask(size), size)?;
            }
            M::Popf | M::Popfq => {
                let size = if m == M::Popfq { 8 } else { 2 };
                let v = self.peek(mem, 0, size)?;
                let writable =
                    (flags::WRITABLE & !(flags::RF | flags::VIF | flags::VIP)) & mask(size);
                self.st.gpr[4] = self.st.gpr[4].wrapping_add(size as u64);
                self.st.rflags =
                    ((self.st.rflags & !writable) | (v & writable) | flags::FIXED1) & !flags::RF;
            }
            M::Call => match ins.code() {
                Code::Call_rel32_64 => {
                    let t = self.st.rip.wrapping_add(ins.near_branch64());
                    self.push(mem, self.next_rip, 8)?;
                    self.next_rip = t;
                }
                Code::Call_rm64 => {
                    let t = self.rd(mem, ins, 0, 8)?;
                    if !super::mmu::canonical(t) {
                        return Err(gp0());
                    }
                    self.push(mem, self.next_rip, 8)?;
                    self.next_rip = t;
                }
                _ => return Err(self.unimplemented(mem, ins)),
            },
            M::Ret => {
                let t = self.peek(mem, 0, 8)?;
                if ins.code() != Code::Retnq && ins.code() != Code::Retnq_imm16 {
                    return Err(self.unimplemented(mem, ins));
                }
                self.jump(t)?;
                let extra = if ins.code() == Code::Retnq_imm16 {
                    ins.immediate16() as u64
                } else {
                    0
                };
                self.st.gpr[4] = self.st.gpr[4].wrapping_add(8 + extra);
            }
            M::Jmp => match ins.code() {
                Code::Jmp_rel8_64 | Code::Jmp_rel32_64 => {
                    self.next_rip = self.st.rip.wrapping_add(ins.near_branch64());
                }
                Code::Jmp_rm64 => {
                    let t = self.rd(mem, ins, 0, 8)?;
                    self.jump(t)?;
                }
                Code::Jmp_m1664 | Code::Jmp_m1632 => {
                    let osz = if ins.code() == Code::Jmp_m1664 { 8 } else { 4 };
                    let la = self.mem_la(ins);
                    let ss = Self::mem_ss(ins);
                    let off = self.read_lin(mem, la, osz, ss)?;
                    let sel = self.read_lin(mem, la.wrapping_add(osz as u64), 2, ss)? as u16;
                    let cs = self.load_code_segment(mem, sel, true)?;
                    if !cs.long_mode() {
                        return Err(self.unsupported("far jump to a non-64-bit code segment"));
                    }
                    if !super::mmu::canonical(off) {
                        return Err(gp0());
                    }
                    self.st.seg[seg::CS] = cs;
                    self.next_rip = off;
                }
                _ => return Err(self.unimplemented(mem, ins)),
            },
            M::Retf => {
                let osz = match ins.code() {
                    Code::Retfq | Code::Retfq_imm16 => 8,
                    Code::Retfd | Code::Retfd_imm16 => 4,
                    _ => return Err(self.unimplemented(mem, ins)),
                };
                let off = self.peek(mem, 0, osz)?;
                let sel = self.peek(mem, osz as u64, osz)? as u16;
                if sel & 3 != 0 {
                    return Err(self.unsupported("far return to another privilege level"));
                }
                let cs = self.load_code_segment(mem, sel, true)?;
                if !cs.long_mode() {
                    return Err(self.unsupported("far return to a non-64-bit code segment"));
                }
                if !super::mmu::canonical(off) {
                    return Err(gp0());
                }
                let extra = if matches!(ins.code(), Code::Retfq_imm16 | Code::Retfd_imm16) {
                    ins.immediate16() as u64
                } else {
                    0
                };
                self.st.seg[seg::CS] = cs;
                self.st.gpr[4] = self.st.gpr[4].wrapping_add(2 * osz as u64 + extra);
                self.next_rip = off;
            }
            _ if ins.is_jcc_short_or_near() => {
                if self.cond(ins.condition_code()) {
                    self.next_rip = self.st.rip.wrapping_add(ins.near_branch64());
                }
            }
            M::Jrcxz | M::Jecxz => {
                let c = if m == M::Jrcxz {
                    self.st.gpr[1]
                } else {
                    self.st.gpr[1] & 0xffff_ffff
                };
                if c == 0 {
                    self.next_rip = self.st.rip.wrapping_add(ins.near_branch64());
                }
            }
            M::Loop | M::Loope | M::Loopne => {
                let amask = if ins.op_register(1) == Register::ECX {
                    0xffff_ffff
                } else {
                    u64::MAX
                };
                let c = self.st.gpr[1].wrapping_sub(1) & amask;
                let zf = self.st.rflags & ZF != 0;
                let take = c != 0
                    && match m {
                        M::Loope => zf,
                        M::Loopne => !zf,
                        _ => true,
                    };
                self.st.gpr[1] = c;
                if take {
                    self.next_rip = self.st.rip.wrapping_add(ins.near_branch64());
                }
            }
            M::Seto
            | M::Setno
            | M::Setb
            | M::Setae
            | M::Sete
            | M::Setne
            | M::Setbe
            | M::Seta
            | M::Sets
            | M::Setns
            | M::Setp
            | M::Setnp
            | M::Setl
            | M::Setge
            | M::Setle
            | M::Setg => {
                let v = self.cond(ins.condition_code()) as u64;
                self.wr(mem, ins, 0, 1, v)?;
            }
            M::Cmovo
            | M::Cmovno
            | M::Cmovb
            | M::Cmovae
            | M::Cmove
            | M::Cmovne
            | M::Cmovbe
            | M::Cmova
            | M::Cmovs
            | M::Cmovns
            | M::Cmovp
            | M::Cmovnp
            | M::Cmovl
            | M::Cmovge
            | M::Cmovle
            | M::Cmovg => {
                let size = op_size(ins, 0);
                let v = self.rd(mem, ins, 1, size)?;
                if self.cond(ins.condition_code()) {
                    self.wr(mem, ins, 0, size, v)?;
                } else if size == 4 {
                    // A 32-bit destination is zero-extended even when nothing moves.
                    let r = ins.op_register(0);
                    let old = self.reg_get(r);
                    self.reg_set(r, old);
                }
            }
            M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror | M::Rcl | M::Rcr => {
                let size = op_size(ins, 0);
                let count = self.shift_count(mem, ins, 1, size)?;
                let a = self.rd(mem, ins, 0, size)?;
                let op = match m {
                    M::Shl | M::Sal => ShiftOp::Shl,
                    M::Shr => ShiftOp::Shr,
                    M::Sar => ShiftOp::Sar,
                    M::Rol => ShiftOp::Rol,
                    M::Ror => ShiftOp::Ror,
                    M::Rcl => ShiftOp::Rcl,
                    _ => ShiftOp::Rcr,
                };
                let (r, f) = flags::shift(op, a, count, size, self.st.rflags, &self.undefined);
                if count != 0 || ins.op_kind(0) == OpKind::Register {
                    // A 32-bit register destination is written (zero-extended) even
                    // for a zero count.
                    self.wr(mem, ins, 0, size, r)?;
                }
                self.st.rflags = f;
            }
            M::Shld | M::Shrd => {
                let size = op_size(ins, 0);
                let count = self.shift_count(mem, ins, 2, size)?;
                let d = self.rd(mem, ins, 0, size)?;
                let s = self.rd(mem, ins, 1, size)?;
                let (r, f) = flags::double_shift(
                    m == M::Shld,
                    d,
                    s,
                    count,
                    size,
                    self.st.rflags,
                    &self.undefined,
                );
                if count != 0 || ins.op_kind(0) == OpKind::Register {
                    self.wr(mem, ins, 0, size, r)?;
                }
                self.st.rflags = f;
            }
            M::Mul | M::Imul if ins.op_count() == 1 => self.exec_mul1(mem, ins, m == M::Imul)?,
            M::Imul => {
                let size = op_size(ins, 0);
                let (a, b) = if ins.op_count() == 2 {
                    (self.rd(mem, ins, 0, size)?, self.rd(mem, ins, 1, size)?)
                } else {
                    (self.rd(mem, ins, 1, size)?, self.rd(mem, ins, 2, size)?)
                };
                let p = (sext(a, size) as i64 as i128) * (sext(b, size) as i64 as i128);
                let r = (p as u64) & mask(size);
                let overflow = sext(r, size) as i64 as i128 != p;
                self.wr(mem, ins, 0, size, r)?;
                self.set_mul_flags(Family::ImulMultiOperand, r, size, overflow);
            }
            M::Div | M::Idiv => self.exec_div(mem, ins, m == M::Idiv)?,
            M::Bt | M::Bts | M::Btr | M::Btc => self.exec_bt(mem, ins, m)?,
            M::Bsf | M::Bsr | M::Tzcnt | M::Lzcnt => self.exec_bit_scan(mem, ins, m)?,
            M::Bswap => {
                let r = ins.op_register(0);
                let v = self.reg_get(r);
                let n = match reg_size(r) {
                    8 => v.swap_bytes(),
                    4 => (v as u32).swap_bytes() as u64,
                    _ => 0,
                };
                self.reg_set(r, n);
            }
            M::Cbw => self.set_gpr_sized(0, 2, sext(self.st.gpr[0], 1)),
            M::Cwde => self.set_gpr_sized(0, 4, sext(self.st.gpr[0], 2)),
            M::Cdqe => self.st.gpr[0] = sext(self.st.gpr[0], 4),
            M::Cwd | M::Cdq | M::Cqo => {
                let size = match m {
                    M::Cwd => 2,
                    M::Cdq => 4,
                    _ => 8,
                };
                let neg = self.st.gpr[0] & flags::sign_bit(size) != 0;
                self.set_gpr_sized(2, size, if neg { u64::MAX } else { 0 });
            }
            M::Enter => self.exec_enter(mem, ins)?,
            M::Leave => {
                let size = match ins.code() {
                    Code::Leavew => 2,
                    Code::Leaved => 4,
                    _ => 8,
                };
                let rbp = self.st.gpr[5];
                let v = self.read_lin(mem, rbp, size, true)?;
                self.st.gpr[4] = rbp.wrapping_add(size as u64);
                self.set_gpr_sized(5, size, v);
            }
            M::Nop
            | M::Pause
            | M::Lfence
            | M::Mfence
            | M::Sfence
            | M::Prefetchnta
            | M::Prefetcht0
            | M::Prefetcht1
            | M::Prefetcht2
            | M::Prefetchw
            | M::Prefetch
            | M::Clflush
            | M::Clflushopt
            | M::Clwb
            | M::Wbinvd
            | M::Invd
            | M::Endbr64 => {}
            M::Movsb
            | M::Movsw
            | M::Movsq
            | M::Stosb
            | M::Stosw
            | M::Stosd
            | M::Stosq
            | M::Lodsb
            | M::Lodsw
            | M::Lodsd
            | M::Lodsq
            | M::Cmpsb
            | M::Cmpsw
            | M::Cmpsq
            | M::Scasb
            | M::Scasw
            | M::Scasd
            | M::Scasq => self.exec_string(mem, ins, m)?,
            M::Movsd | M::Cmpsd
                if matches!(ins.code(), Code::Movsd_m32_m32 | Code::Cmpsd_m32_m32) =>
            {
                self.exec_string(mem, ins, m)?
            }
            M::Cli => self.st.rflags &= !IF,
            M::Sti => {
                if self.st.rflags & IF == 0 {
                    self.st.interrupt_shadow = true;
                }
                self.st.rflags |= IF;
            }
            M::Clc => self.st.rflags &= !CF,
            M::Stc => self.st.rflags |= CF,
            M::Cmc => self.st.rflags ^= CF,
            M::Cld => self.st.rflags &= !DF,
            M::Std => self.st.rflags |= DF,
            M::Clac => self.st.rflags &= !flags::AC,
            M::Stac => self.st.rflags |= flags::AC,
            M::Lahf => {
                let v = self.st.rflags & (SF | ZF | flags::AF | PF | CF) | flags::FIXED1;
                self.st.gpr[0] = (self.st.gpr[0] & !0xff00) | (v << 8);
            }
            M::Sahf => {
                let ah = (self.st.gpr[0] >> 8) & (SF | ZF | flags::AF | PF | CF);
                self.st.rflags = (self.st.rflags & !(SF | ZF | flags::AF | PF | CF)) | ah;
            }
            M::Xlatb => {
                let a = self.st.gpr[3].wrapping_add(self.st.gpr[0] & 0xff);
                let la = a.wrapping_add(self.seg_base(ins.memory_segment()));
                let v = self.read_lin(mem, la, 1, false)?;
                self.reg_set(Register::AL, v);
            }
            M::Lgdt | M::Lidt => {
                let la = self.mem_la(ins);
                let ss = Self::mem_ss(ins);
                let limit = self.read_lin(mem, la, 2, ss)? as u16;
                let base = self.read_lin(mem, la.wrapping_add(2), 8, ss)?;
                if !super::mmu::canonical(base) {
                    return Err(gp0());
                }
                let t = if m == M::Lgdt {
                    &mut self.st.gdtr
                } else {
                    &mut self.st.idtr
                };
                t.base = base;
                t.limit = limit;
            }
            M::Sgdt | M::Sidt => {
                let t = if m == M::Sgdt {
                    self.st.gdtr
                } else {
                    self.st.idtr
                };
                let la = self.mem_la(ins);
                let ss = Self::mem_ss(ins);
                self.probe_write(mem, la, 10)?;
                self.write_lin(mem, la, 2, t.limit as u64, ss)?;
                self.write_lin(mem, la.wrapping_add(2), 8, t.base, ss)?;
            }
            M::Ltr | M::Lldt => {
                let sel = self.rd(mem, ins, 0, 2)? as u16;
                self.load_system_segment(mem, sel, m == M::Ltr)?;
            }
            M::Str | M::Sldt => {
                let sel = if m == M::Str {
                    self.st.tr.selector
                } else {
                    self.st.ldtr.selector
                } as u64;
                let size = op_size(ins, 0);
                self.wr(mem, ins, 0, size, sel)?;
            }
            M::Smsw => {
                let size = op_size(ins, 0);
                let v = self.st.cr0 & mask(size);
                self.wr(mem, ins, 0, size, v)?;
            }
            M::Lmsw => {
                // Only PE, MP, EM and TS; PE cannot be cleared.
                let v = self.rd(mem, ins, 0, 2)?;
                let cr0 = (self.st.cr0 & !0xe) | (v & 0xf) | (self.st.cr0 & 1);
                self.write_cr(0, cr0)?;
            }
            M::Clts => self.st.cr0 &= !8,
            M::Invlpg => {
                let la = self.mem_la(ins);
                self.tlb_flush_page(la);
            }
            M::Invpcid => {
                self.tlb_flush(true);
            }
            M::Rdmsr => {
                let idx = self.st.gpr[1] as u32;
                match self.rdmsr(idx)? {
                    Some(v) => {
                        self.st.gpr[0] = v & 0xffff_ffff;
                        self.st.gpr[2] = v >> 32;
                    }
                    None => {
                        self.pending = Some(Pending::EdxEax {
                            next_rip: self.next_rip,
                        });
                        return Err(exit(Exit::Rdtsc));
                    }
                }
            }
            M::Wrmsr => {
                let v = (self.st.gpr[0] & 0xffff_ffff) | (self.st.gpr[2] << 32);
                self.wrmsr(self.st.gpr[1] as u32, v)?;
            }
            M::Swapgs => self.swapgs(),
            M::Syscall => self.syscall()?,
            M::Sysret | M::Sysretq => return self.sysret(m == M::Sysretq),
            M::Iret | M::Iretd | M::Iretq => {
                let size = match m {
                    M::Iretq => 8,
                    M::Iretd => 4,
                    _ => 2,
                };
                self.keep_rf = true;
                return self.iret(mem, size);
            }
            M::Cpuid => {
                let out = self.cpuid(self.st.gpr[0] as u32, self.st.gpr[1] as u32);
                for (i, r) in [0usize, 3, 1, 2].iter().enumerate() {
                    self.st.gpr[*r] = out[i] as u64;
                }
            }
            M::In => {
                let size = reg_size(ins.op_register(0)) as u8;
                let port = if ins.op_kind(1) == OpKind::Register {
                    self.st.gpr[2] as u16
                } else {
                    ins.immediate8() as u16
                };
                self.pending = Some(Pending::PortIn {
                    size,
                    port,
                    next_rip: self.next_rip,
                });
                return Err(exit(Exit::PortIn { port, size }));
            }
            M::Out => {
                let size = reg_size(ins.op_register(1)) as u8;
                let port = if ins.op_kind(0) == OpKind::Register {
                    self.st.gpr[2] as u16
                } else {
                    ins.immediate8() as u16
                };
                let value = (self.st.gpr[0] & mask(size as usize)) as u32;
                return Ok(Retired::PortOut { port, size, value });
            }
            M::Rdtsc => {
                self.pending = Some(Pending::EdxEax {
                    next_rip: self.next_rip,
                });
                return Err(exit(Exit::Rdtsc));
            }
            M::Rdrand | M::Rdseed => {
                let r = ins.op_register(0);
                self.pending = Some(Pending::Random {
                    reg: gpr_index(r),
                    size: reg_size(r) as u8,
                    next_rip: self.next_rip,
                    seed: m == M::Rdseed,
                });
                return Err(exit(if m == M::Rdseed {
                    Exit::Rdseed
                } else {
                    Exit::Rdrand
                }));
            }
            M::Hlt => {
                self.st.halted = true;
                return Ok(Retired::Hlt);
            }
            M::Ud0 | M::Ud1 | M::Ud2 | M::INVALID => return Err(ud()),
            M::Int | M::Int3 | M::Into | M::Int1 => {
                return Err(self.unsupported(
                    "software interrupt instruction in kernel code (the recording host cannot execute it)",
                ));
            }
            _ => return Err(self.unimplemented(mem, ins)),
        }
        Ok(Retired::Continue)
    }

    fn exec_mov(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<Retired> {
        let k0 = ins.op_kind(0);
        let k1 = ins.op_kind(1);
        if k0 == OpKind::Register {
            let r0 = ins.op_register(0) as u32;
            if (ES..=GS).contains(&r0) {
                let sel = self.rd(mem, ins, 1, 2)? as u16;
                let idx = seg_index(ins.op_register(0));
                if idx == seg::CS {
                    return Err(ud());
                }
                self.load_data_segment(mem, idx, sel, true)?;
                return Ok(Retired::Continue);
            }
            if (CR0..CR0 + 16).contains(&r0) {
                let v = self.reg_get(ins.op_register(1));
                self.write_cr(r0 - CR0, v)?;
                return Ok(Retired::Continue);
            }
            if (DR0..DR0 + 16).contains(&r0) {
                let v = self.reg_get(ins.op_register(1));
                let n = (r0 - DR0) as usize;
                let n = if n == 4 || n == 5 { n + 2 } else { n };
                if n < 8 {
                    self.dr[n] = v;
                }
                return Ok(Retired::Continue);
            }
        }
        if k1 == OpKind::Register {
            let r1 = ins.op_register(1) as u32;
            if (ES..=GS).contains(&r1) {
                let v = self.reg_get(ins.op_register(1));
                let size = op_size(ins, 0);
                // A register destination receives the zero-extended selector.
                let size = if k0 == OpKind::Register { size } else { 2 };
                self.wr(mem, ins, 0, size, v)?;
                return Ok(Retired::Continue);
            }
            if (CR0..CR0 + 16).contains(&r1) {
                let v = self.read_cr(r1 - CR0)?;
                self.reg_set(ins.op_register(0), v);
                return Ok(Retired::Continue);
            }
            if (DR0..DR0 + 16).contains(&r1) {
                let n = (r1 - DR0) as usize;
                let n = if n == 4 || n == 5 { n + 2 } else { n };
                let v = if n < 8 { self.dr[n] } else { 0 };
                self.reg_set(ins.op_register(0), v);
                return Ok(Retired::Continue);
            }
        }
        let size = op_size(ins, 0);
        let v = self.rd(mem, ins, 1, size)?;
        self.wr(mem, ins, 0, size, v)?;
        Ok(Retired::Continue)
    }

    fn read_cr(&self, n: u32) -> R<u64> {
        Ok(match n {
            0 => self.st.cr0,
            2 => self.st.cr2,
            3 => self.st.cr3,
            4 => self.st.cr4,
            8 => self.st.cr8,
            _ => return Err(ud()),
        })
    }

    pub(crate) fn write_cr(&mut self, n: u32, v: u64) -> R<()> {
        match n {
            0 => {
                if v >> 32 != 0
                    || (v & (1 << 31) != 0 && v & 1 == 0)
                    || (v & (1 << 29) != 0 && v & (1 << 30) == 0)
                {
                    return Err(gp0());
                }
                if v & (1 << 31) == 0 && self.st.efer & (1 << 10) != 0 {
                    return Err(self.unsupported("leaving long mode (clearing CR0.PG)"));
                }
                let v = v | 0x10;
                if (v ^ self.st.cr0) & ((1 << 31) | (1 << 16) | 1) != 0 {
                    self.tlb_flush(true);
                }
                self.st.cr0 = v;
            }
            2 => self.st.cr2 = v,
            3 => {
                let pcide = self.st.cr4 & (1 << 17) != 0;
                let v = if pcide { v & !(1 << 63) } else { v };
                if v >> self.max_phys_bits != 0 {
                    return Err(gp0());
                }
                self.st.cr3 = v;
                self.tlb_flush(false);
            }
            4 => {
                // PAE cannot be cleared in long mode; VMXE/SMXE and unknown bits fault.
                let known: u64 = 0x1
                    | 0x2
                    | 0x4
                    | 0x8
                    | 0x10
                    | 0x20
                    | 0x40
                    | 0x80
                    | 0x100
                    | 0x200
                    | 0x400
                    | 0x800
                    | (1 << 16)
                    | (1 << 17)
                    | (1 << 18)
                    | (1 << 20)
                    | (1 << 21)
                    | (1 << 22)
                    | (1 << 23)
                    | (1 << 24);
                if v & !known != 0 || v & 0x20 == 0 {
                    return Err(gp0());
                }
                if (v ^ self.st.cr4) & ((1 << 7) | (1 << 17) | (1 << 20) | (1 << 21) | 0x20) != 0 {
                    self.tlb_flush(true);
                }
                self.st.cr4 = v;
            }
            8 => {
                if v & !0xf != 0 {
                    return Err(gp0());
                }
                self.st.cr8 = v;
            }
            _ => return Err(ud()),
        }
        Ok(())
    }

    fn load_system_segment(&mut self, mem: &mut GuestMemory, sel: u16, tss: bool) -> R<()> {
        let err = Some(sel as u32 & !3);
        if sel & !3 == 0 {
            if tss {
                return Err(gp0());
            }
            self.st.ldtr = crate::state::Segment {
                selector: sel,
                base: 0,
                limit: 0,
                attr: 0,
            };
            return Ok(());
        }
        if sel & 4 != 0 {
            return Err(exc(vector::GP, err));
        }
        let off = (sel & !7) as u64;
        if off + 15 > self.st.gdtr.limit as u64 {
            return Err(exc(vector::GP, err));
        }
        let la = self.st.gdtr.base.wrapping_add(off);
        let lo = self.read_lin(mem, la, 8, false)?;
        let hi = self.read_lin(mem, la.wrapping_add(8), 8, false)?;
        let mut s = super::system::segment_from_descriptor(sel, lo);
        let ty = s.attr & 0x1f;
        let want = if tss { 9 } else { 2 };
        if ty != want {
            return Err(exc(vector::GP, err));
        }
        if s.attr & 0x80 == 0 {
            return Err(exc(vector::NP, err));
        }
        s.base |= (hi & 0xffff_ffff) << 32;
        if tss {
            // Mark the TSS busy in the GDT.
            self.write_lin(mem, la, 8, lo | (2 << 40), false)?;
            s.attr |= 2;
            self.st.tr = s;
        } else {
            self.st.ldtr = s;
        }
        Ok(())
    }

    pub(crate) fn set_mul_flags(&mut self, family: Family, low: u64, size: usize, overflow: bool) {
        let f = flags::multiply(family, low, size, overflow, self.st.rflags, &self.undefined);
        self.set_status(f);
    }

    fn exec_mul1(&mut self, mem: &mut GuestMemory, ins: &Instruction, signed: bool) -> R<()> {
        let size = op_size(ins, 0);
        let s = self.rd(mem, ins, 0, size)?;
        let a = self.st.gpr[0] & mask(size);
        let bits = size * 8;
        let (lo, hi, overflow) = if signed {
            let p = (sext(a, size) as i64 as i128) * (sext(s, size) as i64 as i128);
            let lo = (p as u64) & mask(size);
            let hi = ((p >> bits) as u64) & mask(size);
            (lo, hi, sext(lo, size) as i64 as i128 != p)
        } else {
            let p = (a as u128) * (s as u128);
            let lo = (p as u64) & mask(size);
            let hi = ((p >> bits) as u64) & mask(size);
            (lo, hi, hi != 0)
        };
        if size == 1 {
            self.set_gpr_sized(0, 2, lo | (hi << 8));
        } else {
            self.set_gpr_sized(0, size, lo);
            self.set_gpr_sized(2, size, hi);
        }
        let family = if signed { Family::Imul } else { Family::Mul };
        self.set_mul_flags(family, lo, size, overflow);
        Ok(())
    }

    fn exec_div(&mut self, mem: &mut GuestMemory, ins: &Instruction, signed: bool) -> R<()> {
        let size = op_size(ins, 0);
        let s = self.rd(mem, ins, 0, size)?;
        if s & mask(size) == 0 {
            return Err(exc(vector::DE, None));
        }
        let bits = size * 8;
        let g = &self.st.gpr;
        let dividend: u128 = if size == 1 {
            (g[0] & 0xffff) as u128
        } else {
            ((g[2] & mask(size)) as u128) << bits | (g[0] & mask(size)) as u128
        };
        let (q, r) = if signed {
            // Sign-extend the 2*bits-wide dividend.
            let sh = 128 - 2 * bits as u32;
            let n = ((dividend << sh) as i128) >> sh;
            let d = sext(s, size) as i64 as i128;
            let q = n.checked_div(d).ok_or_else(|| exc(vector::DE, None))?;
            let r = n - q * d;
            let min = -(1i128 << (bits - 1));
            let max = (1i128 << (bits - 1)) - 1;
            if q < min || q > max {
                return Err(exc(vector::DE, None));
            }
            ((q as u64) & mask(size), (r as u64) & mask(size))
        } else {
            let d = s as u128;
            let q = dividend / d;
            if q > mask(size) as u128 {
                return Err(exc(vector::DE, None));
            }
            (q as u64, (dividend % d) as u64)
        };
        if size == 1 {
            self.set_gpr_sized(0, 2, q | (r << 8));
        } else {
            self.set_gpr_sized(0, size, q);
            self.set_gpr_sized(2, size, r);
        }
        let family = if signed { Family::Idiv } else { Family::Div };
        let f = flags::divide(family, q, size, self.st.rflags, &self.undefined);
        self.set_status(f);
        Ok(())
    }

    /// `bsf`, `bsr`, and `tzcnt`/`lzcnt`, which count where CPUID has them and the
    /// recording host did not run them as bit scans ([`Quirks`]).
    fn exec_bit_scan(&mut self, mem: &mut GuestMemory, ins: &Instruction, m: Mnemonic) -> R<()> {
        use Mnemonic as M;
        let size = op_size(ins, 0);
        let s = self.rd(mem, ins, 1, size)? & mask(size);
        let bits = size as u64 * 8;
        let counting = !self.quirks.bit_scan_ignores_rep
            && ((m == M::Tzcnt && self.has_tzcnt) || (m == M::Lzcnt && self.has_lzcnt));
        if counting {
            let r = if s == 0 {
                bits
            } else if m == M::Tzcnt {
                s.trailing_zeros() as u64
            } else {
                s.leading_zeros() as u64 - (64 - bits)
            };
            self.wr(mem, ins, 0, size, r)?;
            let family = if m == M::Tzcnt {
                Family::Tzcnt
            } else {
                Family::Lzcnt
            };
            let f = flags::count_zeros(family, s == 0, r, size, self.st.rflags, &self.undefined);
            self.set_status(f);
            return Ok(());
        }
        let forward = matches!(m, M::Bsf | M::Tzcnt);
        let family = if forward { Family::Bsf } else { Family::Bsr };
        let index = if s == 0 {
            // The destination is undefined: the recording host's rule says what it
            // became.
            let rule = self.undefined.zero_source[!forward as usize][size_index(size)];
            if rule == ZeroSourceDestination::UpperCleared && size == 4 {
                let r = ins.op_register(0);
                let old = self.reg_get(r);
                self.reg_set(r, old);
            }
            0
        } else {
            let i = if forward {
                s.trailing_zeros() as u64
            } else {
                63 - s.leading_zeros() as u64
            };
            self.wr(mem, ins, 0, size, i)?;
            i
        };
        let f = flags::bit_scan(family, s == 0, index, size, self.st.rflags, &self.undefined);
        self.set_status(f);
        Ok(())
    }

    fn exec_bt(&mut self, mem: &mut GuestMemory, ins: &Instruction, m: Mnemonic) -> R<()> {
        let size = op_size(ins, 0);
        let bits = size as u64 * 8;
        let off = self.rd(mem, ins, 1, size)?;
        let (val, bit, la) = if ins.op_kind(0) == OpKind::Memory {
            let base = self.mem_la(ins);
            if ins.op_kind(1) == OpKind::Register {
                // A register bit offset is signed and may address memory far away.
                let o = sext(off, size) as i64;
                let unit = o >> bits.trailing_zeros();
                let la = base.wrapping_add((unit * size as i64) as u64);
                let v = self.read_lin(mem, la, size, Self::mem_ss(ins))?;
                (v, (o as u64) & (bits - 1), Some(la))
            } else {
                let v = self.read_lin(mem, base, size, Self::mem_ss(ins))?;
                (v, off & (bits - 1), Some(base))
            }
        } else {
            (self.rd(mem, ins, 0, size)?, off & (bits - 1), None)
        };
        let was = (val >> bit) & 1;
        let nv = match m {
            Mnemonic::Bts => val | (1 << bit),
            Mnemonic::Btr => val & !(1 << bit),
            Mnemonic::Btc => val ^ (1 << bit),
            _ => val,
        };
        if m != Mnemonic::Bt {
            match la {
                Some(la) => self.write_lin(mem, la, size, nv, Self::mem_ss(ins))?,
                None => self.wr(mem, ins, 0, size, nv)?,
            }
        }
        let family = match m {
            Mnemonic::Bts => Family::Bts,
            Mnemonic::Btr => Family::Btr,
            Mnemonic::Btc => Family::Btc,
            _ => Family::Bt,
        };
        let f = flags::bit_test(family, was != 0, size, self.st.rflags, &self.undefined);
        self.set_status(f);
        Ok(())
    }

    fn exec_enter(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<()> {
        let size = if ins.code() == Code::Enterq_imm16_imm8 {
            8
        } else {
            2
        };
        let alloc = ins.immediate16() as u64;
        let level = (ins.immediate8_2nd() & 31) as u64;
        let mut rsp = self.st.gpr[4];
        let rbp = self.st.gpr[5];
        rsp = rsp.wrapping_sub(size as u64);
        self.write_lin(mem, rsp, size, rbp, true)?;
        let frame = rsp;
        if level > 0 {
            let mut p = rbp;
            for _ in 1..level {
                p = p.wrapping_sub(size as u64);
                let v = self.read_lin(mem, p, size, true)?;
                rsp = rsp.wrapping_sub(size as u64);
                self.write_lin(mem, rsp, size, v, true)?;
            }
            rsp = rsp.wrapping_sub(size as u64);
            self.write_lin(mem, rsp, size, frame, true)?;
        }
        rsp = rsp.wrapping_sub(alloc);
        // The new stack top must be accessible.
        self.probe_write(mem, rsp, 1)
            .or_else(|f| if alloc == 0 { Ok(()) } else { Err(f) })?;
        self.set_gpr_sized(5, size, frame);
        self.st.gpr[4] = rsp;
        Ok(())
    }

    /// String instructions. With a repeat prefix, one call runs iterations until the
    /// REPE/REPNE condition ends it (RIP advances) or RCX reaches a multiple of
    /// [`REP_CHUNK`], zero included (it retires without advancing RIP); executed with
    /// RCX = 0 it completes at once (see [`crate::icount`]).
    fn exec_string(&mut self, mem: &mut GuestMemory, ins: &Instruction, m: Mnemonic) -> R<()> {
        use Mnemonic as M;
        let size = ins.memory_size().size();
        let addr32 = matches!(ins.op_kind(0), OpKind::MemorySegESI | OpKind::MemoryESEDI)
            || matches!(ins.op_kind(1), OpKind::MemorySegESI | OpKind::MemoryESEDI);
        let amask = if addr32 { 0xffff_ffffu64 } else { u64::MAX };
        let step = if self.st.rflags & DF != 0 {
            (size as u64).wrapping_neg()
        } else {
            size as u64
        };
        let src_base = self.seg_base(ins.memory_segment());
        let rep = ins.has_rep_prefix() || ins.has_repe_prefix() || ins.has_repne_prefix();
        let repne = ins.has_repne_prefix();
        let compares = matches!(
            m,
            M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq | M::Scasb | M::Scasw | M::Scasd | M::Scasq
        );
        let set_addr = |v: &mut u64, nv: u64| {
            *v = if addr32 { nv & amask } else { nv };
        };
        loop {
            if rep && self.st.gpr[1] & amask == 0 {
                return Ok(());
            }
            let rsi = self.st.gpr[6] & amask;
            let rdi = self.st.gpr[7] & amask;
            match m {
                M::Movsb | M::Movsw | M::Movsd | M::Movsq => {
                    let v = self.read_lin(mem, src_base.wrapping_add(rsi), size, false)?;
                    self.write_lin(mem, rdi, size, v, false)?;
                    set_addr(&mut self.st.gpr[6], rsi.wrapping_add(step));
                    set_addr(&mut self.st.gpr[7], rdi.wrapping_add(step));
                }
                M::Stosb | M::Stosw | M::Stosd | M::Stosq => {
                    let v = self.st.gpr[0] & mask(size);
                    self.write_lin(mem, rdi, size, v, false)?;
                    set_addr(&mut self.st.gpr[7], rdi.wrapping_add(step));
                }
                M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => {
                    let v = self.read_lin(mem, src_base.wrapping_add(rsi), size, false)?;
                    self.set_acc(size, v);
                    set_addr(&mut self.st.gpr[6], rsi.wrapping_add(step));
                }
                M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq => {
                    let a = self.read_lin(mem, src_base.wrapping_add(rsi), size, false)?;
                    let b = self.read_lin(mem, rdi, size, false)?;
                    let (_, f) = flags::sub(a, b, false, size);
                    self.set_status(f);
                    set_addr(&mut self.st.gpr[6], rsi.wrapping_add(step));
                    set_addr(&mut self.st.gpr[7], rdi.wrapping_add(step));
                }
                _ => {
                    let b = self.read_lin(mem, rdi, size, false)?;
                    let (_, f) = flags::sub(self.st.gpr[0] & mask(size), b, false, size);
                    self.set_status(f);
                    set_addr(&mut self.st.gpr[7], rdi.wrapping_add(step));
                }
            }
            if !rep {
                return Ok(());
            }
            let c = self.st.gpr[1].wrapping_sub(1) & amask;
            set_addr(&mut self.st.gpr[1], c);
            if compares {
                let zf = self.st.rflags & ZF != 0;
                if (repne && zf) || (!repne && !zf) {
                    return Ok(());
                }
            }
            if self.mmio_write.is_some() {
                return Err(self.unsupported("rep string instruction writing MMIO"));
            }
            // RCX reaching zero also ends a chunk: the instruction then completes when it
            // is executed again and finds RCX = 0.
            if self.st.gpr[1].is_multiple_of(REP_CHUNK) {
                // Retire this chunk; the instruction continues at the same RIP.
                self.next_rip = self.st.rip;
                return Ok(());
            }
        }
    }
}
