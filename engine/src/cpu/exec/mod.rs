//! Instruction execution, by instruction family:
//!
//! * [`operand`]: operands of the general path (registers, memory, immediates).
//! * [`arith`]: the integer ALU; each operation's result and flags are defined once
//!   ([`arith::ArithOp`], [`arith::UnaryOp`]) for both paths.
//! * [`muldiv`]: `mul`, `imul`, `div`, `idiv`.
//! * [`shift_rotate`]: shifts, rotates, `shld`/`shrd`.
//! * [`bit`]: bit tests, bit scans and counts, `bswap`.
//! * [`data`]: `mov` and its relatives, `lea`, `xchg`, `cmovcc`, `setcc`, conversions.
//! * [`stack`]: `push`, `pop`, `pushf`, `popf`, `enter`, `leave`.
//! * [`control`]: conditions, jumps, calls, returns, loops.
//! * [`string`]: `movs`, `stos`, `lods`, `cmps`, `scas`, `ins`, `outs` with repeat
//!   prefixes.
//! * [`system`]: flag control, descriptor tables, control registers, MSRs, `cpuid`,
//!   `iret`, `hlt`, `lar`, no-ops.
//! * [`io`]: `in`, `out`, `rdtsc`, `rdrand`, `rdseed`.
//! * [`fpu`]: the x87 and SSE state: `fninit`, `fnclex`, `fwait`, `fnstcw`, `fnstsw`,
//!   `ldmxcsr`, `stmxcsr`, `fxsave`, `fxrstor`.
//! * [`fast`]: the fast forms, pre-classified at decode time; their handlers call the
//!   same primitives as the general path.
//!
//! [`Cpu::exec`], the general path, dispatches a decoded instruction to its family.
//! Every instruction reads all its inputs before it writes anything, and writes memory
//! before registers, so an instruction that faults leaves the state as it was (string
//! instructions with `rep` keep the iterations already done, as the architecture says).

use iced_x86::{Instruction, Mnemonic};

use super::flags::ShiftOp;
use super::{Cpu, R, Retired, ud};
use crate::memory::GuestMemory;

mod arith;
mod bit;
mod control;
mod data;
mod fast;
mod fpu;
mod io;
mod muldiv;
mod operand;
mod shift_rotate;
mod stack;
mod string;
mod system;

use arith::{AdcOp, AddOp, AndOp, CmpOp, DecOp, IncOp, NegOp, NotOp, OrOp, SbbOp, SubOp};
use arith::{TestOp, XorOp};
use bit::{BitOp, ScanOp};
pub(crate) use fast::{BlockOp, FastOp, Transfer, classify, predicted_return};
use string::StringOp;

impl Cpu {
    /// Executes one decoded instruction. `Ok(exit)` retires it (RIP becomes
    /// `self.next_rip`); `Err` leaves it unretired.
    pub(crate) fn exec(&mut self, mem: &mut GuestMemory, ins: &Instruction) -> R<Retired> {
        use Mnemonic as M;
        let m = ins.mnemonic();
        match m {
            M::Add => self.arith::<AddOp>(mem, ins)?,
            M::Or => self.arith::<OrOp>(mem, ins)?,
            M::Adc => self.arith::<AdcOp>(mem, ins)?,
            M::Sbb => self.arith::<SbbOp>(mem, ins)?,
            M::And => self.arith::<AndOp>(mem, ins)?,
            M::Sub => self.arith::<SubOp>(mem, ins)?,
            M::Xor => self.arith::<XorOp>(mem, ins)?,
            M::Cmp => self.arith::<CmpOp>(mem, ins)?,
            M::Test => self.arith::<TestOp>(mem, ins)?,
            M::Inc => self.unary::<IncOp>(mem, ins)?,
            M::Dec => self.unary::<DecOp>(mem, ins)?,
            M::Neg => self.unary::<NegOp>(mem, ins)?,
            M::Not => self.unary::<NotOp>(mem, ins)?,
            M::Xadd => self.xadd(mem, ins)?,
            M::Cmpxchg => self.cmpxchg(mem, ins)?,
            M::Cmpxchg8b => self.cmpxchg8b(mem, ins)?,
            M::Mul | M::Imul if ins.op_count() == 1 => self.multiply_acc(mem, ins, m == M::Imul)?,
            M::Imul => self.imul_truncating(mem, ins)?,
            M::Div => self.divide_acc(mem, ins, false)?,
            M::Idiv => self.divide_acc(mem, ins, true)?,
            M::Shl | M::Sal => self.shift(mem, ins, ShiftOp::Shl)?,
            M::Shr => self.shift(mem, ins, ShiftOp::Shr)?,
            M::Sar => self.shift(mem, ins, ShiftOp::Sar)?,
            M::Rol => self.shift(mem, ins, ShiftOp::Rol)?,
            M::Ror => self.shift(mem, ins, ShiftOp::Ror)?,
            M::Rcl => self.shift(mem, ins, ShiftOp::Rcl)?,
            M::Rcr => self.shift(mem, ins, ShiftOp::Rcr)?,
            M::Shld => self.double_shift(mem, ins, true)?,
            M::Shrd => self.double_shift(mem, ins, false)?,
            M::Bt => self.bit_test(mem, ins, BitOp::Test)?,
            M::Bts => self.bit_test(mem, ins, BitOp::Set)?,
            M::Btr => self.bit_test(mem, ins, BitOp::Reset)?,
            M::Btc => self.bit_test(mem, ins, BitOp::Complement)?,
            M::Bsf => self.bit_scan(mem, ins, ScanOp::Bsf)?,
            M::Bsr => self.bit_scan(mem, ins, ScanOp::Bsr)?,
            M::Tzcnt => self.bit_scan(mem, ins, ScanOp::Tzcnt)?,
            M::Lzcnt => self.bit_scan(mem, ins, ScanOp::Lzcnt)?,
            M::Bswap => self.bswap(ins),
            M::Mov => self.mov(mem, ins)?,
            M::Movnti => self.mov_plain(mem, ins)?,
            M::Movzx => self.mov_extend(mem, ins, false)?,
            M::Movsx | M::Movsxd => self.mov_extend(mem, ins, true)?,
            M::Lea => self.lea(mem, ins)?,
            M::Xchg => self.xchg(mem, ins)?,
            M::Cbw => self.widen_acc(2),
            M::Cwde => self.widen_acc(4),
            M::Cdqe => self.widen_acc(8),
            M::Cwd => self.sign_fill_rdx(2),
            M::Cdq => self.sign_fill_rdx(4),
            M::Cqo => self.sign_fill_rdx(8),
            M::Lahf => self.lahf(),
            M::Sahf => self.sahf(),
            M::Xlatb => self.xlat(mem, ins)?,
            M::Push => self.push_operand(mem, ins)?,
            M::Pop => self.pop_operand(mem, ins)?,
            M::Pushf => self.pushf(mem, 2)?,
            M::Pushfq => self.pushf(mem, 8)?,
            M::Popf => self.popf(mem, 2)?,
            M::Popfq => self.popf(mem, 8)?,
            M::Enter => self.enter(mem, ins)?,
            M::Leave => self.leave(mem, ins)?,
            M::Call => self.call(mem, ins)?,
            M::Ret => self.ret(mem, ins)?,
            M::Jmp => self.jmp(mem, ins)?,
            M::Retf => self.retf(mem, ins)?,
            M::Jrcxz => self.jrcxz(ins, true),
            M::Jecxz => self.jrcxz(ins, false),
            M::Loop | M::Loope | M::Loopne => self.loop_rcx(ins, m),
            M::Movsb | M::Movsw | M::Movsq => self.string(mem, ins, StringOp::Movs)?,
            M::Stosb | M::Stosw | M::Stosd | M::Stosq => self.string(mem, ins, StringOp::Stos)?,
            M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => self.string(mem, ins, StringOp::Lods)?,
            M::Cmpsb | M::Cmpsw | M::Cmpsq => self.string(mem, ins, StringOp::Cmps)?,
            M::Scasb | M::Scasw | M::Scasd | M::Scasq => self.string(mem, ins, StringOp::Scas)?,
            M::Movsd | M::Cmpsd => self.string_dword(mem, ins)?,
            M::Insb | M::Insw | M::Insd => self.port_in_string(mem, ins)?,
            M::Outsb | M::Outsw | M::Outsd => return self.port_out_string(mem, ins),
            M::Cli => self.cli(),
            M::Sti => self.sti(),
            M::Clc | M::Stc | M::Cmc | M::Cld | M::Std | M::Clac | M::Stac => self.flag_control(m),
            M::Lgdt | M::Lidt => self.load_descriptor_table(mem, ins, m == M::Lgdt)?,
            M::Sgdt | M::Sidt => self.store_descriptor_table(mem, ins, m == M::Sgdt)?,
            M::Ltr | M::Lldt => self.load_system_register(mem, ins, m == M::Ltr)?,
            M::Str | M::Sldt => self.store_system_register(mem, ins, m == M::Str)?,
            M::Smsw => self.smsw(mem, ins)?,
            M::Lmsw => self.lmsw(mem, ins)?,
            M::Clts => self.clts(),
            M::Invlpg => self.invlpg(ins),
            M::Invpcid => self.tlb_flush(true),
            M::Rdmsr => self.rdmsr_instruction()?,
            M::Wrmsr => self.wrmsr_instruction()?,
            M::Swapgs => self.swapgs(),
            M::Syscall => self.syscall()?,
            M::Sysret | M::Sysretq => return self.sysret(m == M::Sysretq),
            M::Iret | M::Iretd | M::Iretq => return self.iret_instruction(mem, m),
            M::Cpuid => self.cpuid_instruction(),
            M::In => return self.port_in(ins),
            M::Out => return self.port_out(ins),
            M::Rdtsc => return self.rdtsc(),
            M::Rdrand | M::Rdseed => return self.random(ins, m == M::Rdseed),
            M::Fninit => self.fninit()?,
            M::Fnclex => self.fnclex()?,
            M::Wait => self.fwait()?,
            M::Fnstcw => self.x87_store_word(mem, ins, true)?,
            M::Fnstsw => self.x87_store_word(mem, ins, false)?,
            M::Ldmxcsr => self.ldmxcsr(mem, ins)?,
            M::Stmxcsr => self.stmxcsr(mem, ins)?,
            M::Fxsave | M::Fxsave64 => self.fxsave(mem, ins)?,
            M::Fxrstor | M::Fxrstor64 => self.fxrstor(mem, ins)?,
            M::Lar => self.lar(mem, ins)?,
            M::Hlt => return Ok(self.hlt()),
            M::Ud0 | M::Ud1 | M::Ud2 | M::INVALID => return Err(ud()),
            M::Int | M::Int3 | M::Into | M::Int1 => return self.software_interrupt(),
            _ if ins.is_jcc_short_or_near() => self.jcc(ins),
            _ if data::is_setcc(m) => self.setcc(mem, ins)?,
            _ if data::is_cmovcc(m) => self.cmovcc(mem, ins)?,
            _ if system::is_nop(m) => {}
            _ => return Err(self.unimplemented(mem, ins)),
        }
        Ok(Retired::Continue)
    }
}
