//! Fast forms: the commonest instructions, pre-classified at decode time into a compact
//! [`FastOp`] that carries everything the instruction needs (registers, immediate,
//! memory operand) and a handler specialised for its operation and operand size, so
//! that executing them is one indirect jump into straight-line code that neither copies
//! nor consults the decoded `Instruction`. Anything else has no handler and goes
//! through the general dispatch ([`Cpu::exec`]).
//!
//! A handler executes its operation, moves RIP, and then runs the rest of its block
//! (see [`crate::cpu::block`]) as a tail call: the operations of a block run one into
//! the next, with no loop between them. Handlers that access memory come in two
//! instances: the fast one (`FAST`) takes only the TLB and the memory's cache, calls
//! nothing (so it needs no stack frame), and hands anything else to the slow one
//! before it has changed anything; the slow one takes the whole memory path and
//! reports faults, MMIO writes and writes to code or page tables ([`Stop`]).
//!
//! The handlers take their semantics from the instruction families, as the general path
//! does: [`ArithOp`] and [`UnaryOp`] for the ALU, [`imul_truncated`], [`flags::shift`],
//! [`extend`], and the stack primitives ([`Cpu::push`], [`Cpu::pop`]); conditions come
//! from [`Cpu::cond`]. What is theirs alone is reading the pre-classified operands and
//! moving RIP. engine/tests/cpu_fast_forms.rs runs every form through both paths on
//! random inputs, in blocks and one instruction at a time.

use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, OpKind, Register};

use super::super::flags::{self, AF, CF, STATUS, ShiftOp, mask};
use super::super::mmu::canonical;
use super::super::undefined::{Family, UndefinedRules};
use super::super::{Cpu, Fault, gp0};
use super::arith::XorOp;
use super::arith::{AddOp, AndOp, ArithOp, CmpOp, DecOp, IncOp, OrOp, SubOp, TestOp, UnaryOp};
use super::data::extend;
use super::muldiv::imul_truncated;
use super::operand::{REG_AH, REG_AL, REG_AX, REG_EAX, REG_R15, REG_R15L, REG_RAX, REG_SPL};
use crate::memory::GuestMemory;
use crate::state::gpr::RSP;
use crate::state::seg;

/// No register: an immediate or memory source.
const NO_REG: u8 = u8::MAX;
/// [`MemOperand::base`] for RIP-relative addressing.
const BASE_RIP: u8 = 16;
const SEG_FLAT: u8 = 0;
const SEG_FS: u8 = 1;
const SEG_GS: u8 = 2;

/// A memory operand with 64-bit addressing, evaluated without the decoded instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemOperand {
    /// The displacement as decoded at IP 0: for RIP-relative operands it is relative to
    /// the start of the instruction, so the instruction's RIP is added.
    disp: u64,
    /// A GPR index, [`BASE_RIP`] or [`NO_REG`].
    base: u8,
    /// A GPR index or [`NO_REG`].
    index: u8,
    scale_shift: u8,
    /// [`SEG_FS`], [`SEG_GS`] or [`SEG_FLAT`] (base 0 in 64-bit mode).
    seg: u8,
    /// A stack-segment access (#SS rather than #GP on a non-canonical address).
    ss: bool,
    /// Flat (segment base 0) and not RIP-relative: the address is `disp`, `base` and
    /// `index` alone.
    flat: bool,
}

impl MemOperand {
    const NONE: MemOperand = MemOperand {
        disp: 0,
        base: NO_REG,
        index: NO_REG,
        scale_shift: 0,
        seg: SEG_FLAT,
        ss: false,
        flat: true,
    };

    /// The memory operand of `ins` if it uses 64-bit addressing (no 32-bit address
    /// registers, which truncate the address).
    fn of(ins: &Instruction) -> Option<MemOperand> {
        let gpr64 = |r: Register| match r {
            Register::None => Some(NO_REG),
            Register::RIP => Some(BASE_RIP),
            r if (REG_RAX..=REG_R15).contains(&(r as u32)) => Some((r as u32 - REG_RAX) as u8),
            _ => None,
        };
        let base = gpr64(ins.memory_base())?;
        let index = gpr64(ins.memory_index())?;
        if index == BASE_RIP {
            return None;
        }
        let seg = match ins.memory_segment() {
            Register::FS => SEG_FS,
            Register::GS => SEG_GS,
            _ => SEG_FLAT,
        };
        Some(MemOperand {
            disp: ins.memory_displacement64(),
            base,
            index,
            scale_shift: ins.memory_index_scale().trailing_zeros() as u8,
            seg,
            ss: ins.memory_segment() == Register::SS,
            flat: seg == SEG_FLAT && base != BASE_RIP,
        })
    }
}

/// How an instruction transfers control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transfer {
    /// It goes on at the next instruction.
    None,
    /// `jmp` to its RIP plus `imm`.
    Jump,
    /// `call` to its RIP plus `imm`.
    Call,
    /// `jcc` to its RIP plus `imm` if the condition holds, else the next instruction.
    Conditional,
    /// `ret`.
    Return,
    /// Anything else that may not go on at the next instruction.
    Other,
}

/// A decoded instruction's fast form: its handler and operands.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastOp {
    /// `None`: the instruction takes the general path.
    pub(crate) handler: Option<Handler>,
    /// Length of the instruction in bytes.
    pub(crate) len: u8,
    /// How it transfers control, if it does (see [`crate::cpu::block`] for what a
    /// block does at each kind).
    pub(crate) transfer: Transfer,
    /// It may write memory (which may be code or a page table).
    pub(crate) writes_memory: bool,
    /// It may fault or exit (it accesses memory): everything before it is observable.
    pub(crate) may_fault: bool,
    /// The same operation without its status flags, for a block in which nothing can
    /// observe them before they are written again (see [`crate::cpu::block`]).
    pub(crate) quiet: Option<Handler>,
    /// The same operation giving every flag the architecture leaves undefined its
    /// natural value (no rules consulted), for a block on a recording whose rules say
    /// so for this operation (see [`FlagEffect::natural_under`]).
    pub(crate) natural: Option<Handler>,
    /// The status flags it may write.
    pub(crate) flags: FlagEffect,
    /// Destination and source GPR indexes (or [`NO_REG`]), as the handler defines them.
    d: u8,
    s: u8,
    /// Extra form bits of [`imul`].
    aux: u8,
    mem: MemOperand,
    /// The immediate masked to the operand size, the shift count, or the branch
    /// displacement from RIP; for a `ret` a block predicts, the predicted return's
    /// displacement from RIP (see [`ret_predicted`]).
    pub(crate) imm: u64,
}

impl FastOp {
    /// Where a [`Transfer::Jump`], [`Transfer::Call`] or (taken)
    /// [`Transfer::Conditional`] at `rip` goes.
    pub(crate) fn target(&self, rip: u64) -> u64 {
        rip.wrapping_add(self.imm)
    }

    /// The form of an instruction that takes the general path.
    pub(crate) fn generic(len: usize) -> FastOp {
        FastOp {
            handler: None,
            len: len as u8,
            transfer: Transfer::Other,
            writes_memory: true,
            may_fault: true,
            quiet: None,
            natural: None,
            flags: FlagEffect::NONE,
            d: NO_REG,
            s: NO_REG,
            aux: 0,
            mem: MemOperand::NONE,
            imm: 0,
        }
    }
}

/// The status flags an instruction writes, given the recording host's rules for those
/// the architecture leaves undefined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlagEffect {
    /// The status flags it may change.
    written: u16,
    /// Those of them whose value the family's rules decide (the others are defined).
    undefined: u16,
    family: Option<Family>,
    /// The operand size in bytes (for the rules).
    size: u8,
}

impl FlagEffect {
    pub(crate) const NONE: FlagEffect = FlagEffect {
        written: 0,
        undefined: 0,
        family: None,
        size: 8,
    };

    fn new(written: u64, undefined: u64, family: Option<Family>, size: u8) -> FlagEffect {
        FlagEffect {
            written: written as u16,
            undefined: undefined as u16,
            family,
            size,
        }
    }

    /// The status flags the instruction sets whatever their value before: all it
    /// writes but the undefined ones the rules keep.
    pub(crate) fn overwritten(&self, rules: &UndefinedRules) -> u64 {
        let kept = match self.family {
            Some(f) => rules.masks(f, self.size as usize).keep & self.undefined as u64,
            None => 0,
        };
        self.written as u64 & !kept
    }
}

impl FlagEffect {
    /// Whether `rules` give every flag this operation leaves undefined its natural
    /// value (then its natural form computes the same flags without consulting them).
    pub(crate) fn natural_under(&self, rules: &UndefinedRules) -> bool {
        match self.family {
            None => true,
            Some(f) => rules
                .masks(f, self.size as usize)
                .is_natural(self.undefined as u64, f.natural_zero()),
        }
    }
}

/// The index and size of a 32- or 64-bit GPR.
fn gpr32_64(r: Register) -> Option<(u8, u8)> {
    match r as u32 {
        v @ REG_EAX..REG_RAX => Some(((v - REG_EAX) as u8, 4)),
        v @ REG_RAX..=REG_R15 => Some(((v - REG_RAX) as u8, 8)),
        _ => None,
    }
}

/// The index and size of a GPR usable as the source of a zero or sign extension: an
/// 8-bit register other than AH, CH, DH, BH, or a 16- or 32-bit register.
fn gpr_extend_source(r: Register) -> Option<(u8, u8)> {
    match r as u32 {
        v @ REG_AL..REG_AH => Some(((v - REG_AL) as u8, 1)),
        v @ REG_SPL..=REG_R15L => Some(((v - REG_AL - 4) as u8, 1)),
        v @ REG_AX..REG_EAX => Some(((v - REG_AX) as u8, 2)),
        v @ REG_EAX..REG_RAX => Some(((v - REG_EAX) as u8, 4)),
        _ => None,
    }
}

/// Picks `$f::<..., SIZE>` (or `$f::<..., SIZE, T...>`) for a register operand size
/// of 4 or 8.
macro_rules! by_size48 {
    ($size:expr, $f:ident $(, $c:tt)* ; $($t:tt),+) => {
        if $size == 4 {
            $f::<$($c,)* 4, $($t),+> as Handler
        } else {
            $f::<$($c,)* 8, $($t),+> as Handler
        }
    };
    ($size:expr, $f:ident $(, $c:tt)*) => {
        if $size == 4 {
            $f::<$($c,)* 4> as Handler
        } else {
            $f::<$($c,)* 8> as Handler
        }
    };
}

/// Picks `$f::<..., SIZE>` (or `$f::<..., SIZE, T...>`) for a memory operand size of 1,
/// 2, 4 or 8.
macro_rules! by_size {
    ($size:expr, $f:ident $(, $c:tt)* ; $($t:tt),+) => {
        match $size {
            1 => $f::<$($c,)* 1, $($t),+> as Handler,
            2 => $f::<$($c,)* 2, $($t),+> as Handler,
            4 => $f::<$($c,)* 4, $($t),+> as Handler,
            _ => $f::<$($c,)* 8, $($t),+> as Handler,
        }
    };
    ($size:expr, $f:ident $(, $c:tt)*) => {
        match $size {
            1 => $f::<$($c,)* 1> as Handler,
            2 => $f::<$($c,)* 2> as Handler,
            4 => $f::<$($c,)* 4> as Handler,
            _ => $f::<$($c,)* 8> as Handler,
        }
    };
}

/// Picks `$f::<Op, SIZE>` (or `$f::<Op, SIZE, T...>`) for the ALU operation of
/// mnemonic `$m`.
macro_rules! by_alu_op {
    ($m:expr, $pick:ident, $size:expr, $f:ident ; $($t:tt),+) => {
        match $m {
            Mnemonic::Add => $pick!($size, $f, AddOp; $($t),+),
            Mnemonic::Or => $pick!($size, $f, OrOp; $($t),+),
            Mnemonic::And => $pick!($size, $f, AndOp; $($t),+),
            Mnemonic::Sub => $pick!($size, $f, SubOp; $($t),+),
            Mnemonic::Xor => $pick!($size, $f, XorOp; $($t),+),
            Mnemonic::Cmp => $pick!($size, $f, CmpOp; $($t),+),
            _ => $pick!($size, $f, TestOp; $($t),+),
        }
    };
    ($m:expr, $pick:ident, $size:expr, $f:ident) => {
        match $m {
            Mnemonic::Add => $pick!($size, $f, AddOp),
            Mnemonic::Or => $pick!($size, $f, OrOp),
            Mnemonic::And => $pick!($size, $f, AndOp),
            Mnemonic::Sub => $pick!($size, $f, SubOp),
            Mnemonic::Xor => $pick!($size, $f, XorOp),
            Mnemonic::Cmp => $pick!($size, $f, CmpOp),
            _ => $pick!($size, $f, TestOp),
        }
    };
}

/// How a handler computes the status flags: not at all (a block where nothing can read
/// them), through the recording host's rules for the undefined ones, or giving those
/// their natural values (where the rules say so: see [`FlagEffect::natural_under`]).
const QUIET: u8 = 0;
const RULES: u8 = 1;
const NATURAL: u8 = 2;

const SHL: u8 = 0;
const SHR: u8 = 1;
const SAR: u8 = 2;
const ROL: u8 = 3;
const ROR: u8 = 4;

fn shift_op(op: u8) -> ShiftOp {
    match op {
        SHL => ShiftOp::Shl,
        SHR => ShiftOp::Shr,
        SAR => ShiftOp::Sar,
        ROL => ShiftOp::Rol,
        _ => ShiftOp::Ror,
    }
}

/// The condition codes by number (iced's `ConditionCode as u8`).
const CONDITIONS: [ConditionCode; 17] = [
    ConditionCode::None,
    ConditionCode::o,
    ConditionCode::no,
    ConditionCode::b,
    ConditionCode::ae,
    ConditionCode::e,
    ConditionCode::ne,
    ConditionCode::be,
    ConditionCode::a,
    ConditionCode::s,
    ConditionCode::ns,
    ConditionCode::p,
    ConditionCode::np,
    ConditionCode::l,
    ConditionCode::ge,
    ConditionCode::le,
    ConditionCode::g,
];

fn jcc_handler(cc: ConditionCode) -> Handler {
    macro_rules! ccs {
        ($($n:literal)*) => {
            match cc as u8 {
                $($n => jcc::<$n> as Handler,)*
                _ => jcc::<0> as Handler,
            }
        };
    }
    ccs!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

/// The form of one instruction, before its memory operand is attached.
struct Form {
    handler: Handler,
    quiet: Option<Handler>,
    natural: Option<Handler>,
    flags: FlagEffect,
    d: u8,
    s: u8,
    aux: u8,
    imm: u64,
}

/// A form that writes no status flags.
fn form(handler: Handler, d: u8, s: u8, imm: u64) -> Option<Form> {
    Some(Form {
        handler,
        quiet: None,
        natural: None,
        flags: FlagEffect::NONE,
        d,
        s,
        aux: 0,
        imm,
    })
}

/// A form that writes the status flags `flags`, and `quiet`, the same without them.
/// Its natural form, if it has one, is set by the caller.
fn flagged(
    (handler, quiet): (Handler, Handler),
    flags: FlagEffect,
    d: u8,
    s: u8,
    imm: u64,
) -> Option<Form> {
    Some(Form {
        handler,
        quiet: Some(quiet),
        natural: None,
        flags,
        d,
        s,
        aux: 0,
        imm,
    })
}

/// `form` with `natural`, its form that gives every undefined flag its natural value.
fn with_natural(form: Option<Form>, natural: Handler) -> Option<Form> {
    form.map(|f| Form {
        natural: Some(natural),
        ..f
    })
}

/// Classifies a decoded instruction (see [`FastOp`]).
pub(crate) fn classify(ins: &Instruction) -> FastOp {
    let generic = FastOp::generic(ins.len());
    if ins.has_lock_prefix()
        || ins.has_rep_prefix()
        || ins.has_repne_prefix()
        || ins.code() == Code::INVALID
    {
        return generic;
    }
    let has_mem = (0..ins.op_count()).any(|n| ins.op_kind(n) == OpKind::Memory);
    let mem = if has_mem {
        match MemOperand::of(ins) {
            Some(m) => m,
            None => return generic,
        }
    } else {
        MemOperand::NONE
    };
    let Some(f) = classify_form(ins) else {
        return generic;
    };
    let m = ins.mnemonic();
    FastOp {
        handler: Some(f.handler),
        len: ins.len() as u8,
        transfer: match ins.code() {
            _ if ins.flow_control() == iced_x86::FlowControl::Next => Transfer::None,
            Code::Jmp_rel8_64 | Code::Jmp_rel32_64 => Transfer::Jump,
            Code::Call_rel32_64 => Transfer::Call,
            Code::Retnq => Transfer::Return,
            _ if ins.is_jcc_short_or_near() => Transfer::Conditional,
            _ => Transfer::Other,
        },
        writes_memory: matches!(m, Mnemonic::Push | Mnemonic::Call)
            || (ins.op_count() > 0
                && ins.op_kind(0) == OpKind::Memory
                && !matches!(m, Mnemonic::Cmp | Mnemonic::Test)),
        may_fault: matches!(
            m,
            Mnemonic::Push | Mnemonic::Pop | Mnemonic::Call | Mnemonic::Ret
        ) || (has_mem && !matches!(m, Mnemonic::Lea | Mnemonic::Nop)),
        quiet: f.quiet,
        natural: f.natural,
        flags: f.flags,
        d: f.d,
        s: f.s,
        aux: f.aux,
        mem,
        imm: f.imm,
    }
}

/// The operands of an instruction as the fast forms see them.
struct Operands<'a> {
    ins: &'a Instruction,
    /// The memory operand's size in bytes.
    msize: usize,
}

impl Operands<'_> {
    /// Operand `n` as a 32- or 64-bit GPR (index, size).
    fn reg(&self, n: u32) -> Option<(u8, u8)> {
        if self.ins.op_kind(n) == OpKind::Register {
            gpr32_64(self.ins.op_register(n))
        } else {
            None
        }
    }

    fn imm(&self, n: u32) -> bool {
        matches!(
            self.ins.op_kind(n),
            OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate64
                | OpKind::Immediate8to32
                | OpKind::Immediate8to64
                | OpKind::Immediate32to64
        )
    }

    fn mem(&self, n: u32) -> bool {
        self.ins.op_kind(n) == OpKind::Memory
    }

    /// A memory operand of a size the handlers have.
    fn mem_sized(&self) -> bool {
        matches!(self.msize, 1 | 2 | 4 | 8)
    }

    /// Operand 1's immediate masked to `size` bytes.
    fn imm1(&self, size: usize) -> u64 {
        self.ins.immediate(1) & mask(size)
    }
}

fn classify_form(ins: &Instruction) -> Option<Form> {
    use Mnemonic as M;
    let o = Operands {
        ins,
        msize: ins.memory_size().size(),
    };
    let m = ins.mnemonic();
    let two = ins.op_count() == 2;
    match m {
        M::Nop | M::Pause | M::Endbr64 => form(nop, NO_REG, NO_REG, 0),
        M::Mov if two => mov_form(&o),
        M::Movzx | M::Movsx | M::Movsxd if two => extend_form(&o, m != M::Movzx),
        M::Add | M::Or | M::And | M::Sub | M::Xor | M::Cmp | M::Test if two => alu_form(&o, m),
        M::Imul if matches!(ins.op_count(), 2 | 3) => imul_form(&o),
        M::Inc | M::Dec if ins.op_count() == 1 => {
            let (d, size) = o.reg(0)?;
            let h = if m == M::Inc {
                (
                    by_size48!(size, unary_r, IncOp; true),
                    by_size48!(size, unary_r, IncOp; false),
                )
            } else {
                (
                    by_size48!(size, unary_r, DecOp; true),
                    by_size48!(size, unary_r, DecOp; false),
                )
            };
            // CF is kept.
            let flags = FlagEffect::new(STATUS & !CF, 0, None, size);
            flagged(h, flags, d, NO_REG, 0)
        }
        M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror if two => shift_form(&o, m),
        M::Lea => {
            let (d, size) = o.reg(0)?;
            form(by_size48!(size, lea), d, NO_REG, 0)
        }
        _ if ins.is_jcc_short_or_near() => form(
            jcc_handler(ins.condition_code()),
            NO_REG,
            NO_REG,
            ins.near_branch64(),
        ),
        M::Jmp if matches!(ins.code(), Code::Jmp_rel8_64 | Code::Jmp_rel32_64) => {
            form(jmp_rel, NO_REG, NO_REG, ins.near_branch64())
        }
        M::Call if ins.code() == Code::Call_rel32_64 => {
            form(call_rel::<true>, NO_REG, NO_REG, ins.near_branch64())
        }
        M::Ret if ins.code() == Code::Retnq => form(ret::<true>, NO_REG, NO_REG, 0),
        M::Push if ins.code() == Code::Push_r64 => match o.reg(0)? {
            (s, 8) => form(push::<true>, NO_REG, s, 0),
            _ => None,
        },
        M::Pop if ins.code() == Code::Pop_r64 => match o.reg(0)? {
            (d, 8) => form(pop::<true>, d, NO_REG, 0),
            _ => None,
        },
        _ => None,
    }
}

fn mov_form(o: &Operands) -> Option<Form> {
    let msize = o.msize;
    match (o.reg(0), o.reg(1)) {
        (Some((d, a)), Some((s, b))) if a == b => form(by_size48!(a, mov_rr), d, s, 0),
        (Some((d, size)), None) if o.imm(1) => {
            form(by_size48!(size, mov_ri), d, NO_REG, o.imm1(size as usize))
        }
        (Some((d, size)), None) if o.mem(1) && msize == size as usize => {
            form(by_size48!(size, mov_rm; true), d, NO_REG, 0)
        }
        (None, Some((s, size))) if o.mem(0) && msize == size as usize => {
            form(by_size48!(size, mov_mr; true), NO_REG, s, 0)
        }
        (None, None) if o.mem(0) && o.imm(1) && o.mem_sized() => {
            form(by_size!(msize, mov_mi; true), NO_REG, NO_REG, o.imm1(msize))
        }
        _ => None,
    }
}

/// `movzx` and (`signed`) `movsx`, `movsxd`.
fn extend_form(o: &Operands, signed: bool) -> Option<Form> {
    let (d, size) = o.reg(0)?;
    let (s, src_size) = match o.ins.op_kind(1) {
        OpKind::Register => gpr_extend_source(o.ins.op_register(1))?,
        OpKind::Memory if matches!(o.msize, 1 | 2 | 4) => (NO_REG, o.msize as u8),
        _ => return None,
    };
    macro_rules! pick {
        ($f:ident $(; $t:tt)?) => {
            match (src_size, signed) {
                (1, false) => by_size48!(size, $f, 1, false $(; $t)?),
                (2, false) => by_size48!(size, $f, 2, false $(; $t)?),
                (4, false) => by_size48!(size, $f, 4, false $(; $t)?),
                (1, true) => by_size48!(size, $f, 1, true $(; $t)?),
                (2, true) => by_size48!(size, $f, 2, true $(; $t)?),
                _ => by_size48!(size, $f, 4, true $(; $t)?),
            }
        };
    }
    let handler = if s == NO_REG {
        pick!(extend_m; true)
    } else {
        pick!(extend_r)
    };
    form(handler, d, s, 0)
}

/// The status flags of `add`, `or`, `and`, `sub`, `xor`, `cmp`, `test` (mnemonic `m`)
/// on `size`-byte operands: all of them; AF undefined for the logical ones.
fn alu_flags(m: Mnemonic, size: usize) -> FlagEffect {
    let family = match m {
        Mnemonic::And => Family::And,
        Mnemonic::Or => Family::Or,
        Mnemonic::Xor => Family::Xor,
        Mnemonic::Test => Family::Test,
        _ => return FlagEffect::new(STATUS, 0, None, size as u8),
    };
    FlagEffect::new(STATUS, AF, Some(family), size as u8)
}

/// `add`, `or`, `and`, `sub`, `xor`, `cmp`, `test` (mnemonic `m`).
fn alu_form(o: &Operands, m: Mnemonic) -> Option<Form> {
    let msize = o.msize;
    match (o.reg(0), o.reg(1)) {
        (Some((d, a)), Some((s, b))) if a == b => with_natural(
            flagged(
                (
                    by_alu_op!(m, by_size48, a, alu_rr; { RULES }),
                    by_alu_op!(m, by_size48, a, alu_rr; { QUIET }),
                ),
                alu_flags(m, a as usize),
                d,
                s,
                0,
            ),
            by_alu_op!(m, by_size48, a, alu_rr; { NATURAL }),
        ),
        (Some((d, size)), None) if o.imm(1) => with_natural(
            flagged(
                (
                    by_alu_op!(m, by_size48, size, alu_ri; { RULES }),
                    by_alu_op!(m, by_size48, size, alu_ri; { QUIET }),
                ),
                alu_flags(m, size as usize),
                d,
                NO_REG,
                o.imm1(size as usize),
            ),
            by_alu_op!(m, by_size48, size, alu_ri; { NATURAL }),
        ),
        (Some((d, size)), None) if o.mem(1) && msize == size as usize => with_natural(
            flagged(
                (
                    by_alu_op!(m, by_size48, size, alu_rm; { RULES }, true),
                    by_alu_op!(m, by_size48, size, alu_rm; { QUIET }, true),
                ),
                alu_flags(m, size as usize),
                d,
                NO_REG,
                0,
            ),
            by_alu_op!(m, by_size48, size, alu_rm; { NATURAL }, true),
        ),
        (None, Some((s, size))) if o.mem(0) && msize == size as usize => {
            form(by_alu_op!(m, by_size, size, alu_mr; true), NO_REG, s, 0)
        }
        (None, None) if o.mem(0) && o.imm(1) && o.mem_sized() => form(
            by_alu_op!(m, by_size, msize, alu_mi; true),
            NO_REG,
            NO_REG,
            o.imm1(msize),
        ),
        _ => None,
    }
}

/// `imul` with two or three operands.
fn imul_form(o: &Operands) -> Option<Form> {
    let ins = o.ins;
    let (d, size) = o.reg(0)?;
    let s = match ins.op_kind(1) {
        OpKind::Register => match o.reg(1)? {
            (s, sz) if sz == size => s,
            _ => return None,
        },
        OpKind::Memory if o.msize == size as usize => NO_REG,
        _ => return None,
    };
    let with_imm = ins.op_count() == 3;
    if with_imm && !o.imm(2) {
        return None;
    }
    Some(Form {
        handler: by_size48!(size, imul; true, true),
        quiet: Some(by_size48!(size, imul; false, true)),
        natural: None,
        flags: FlagEffect::new(
            STATUS,
            Family::ImulMultiOperand.undefined_flags(),
            Some(Family::ImulMultiOperand),
            size,
        ),
        d,
        s,
        aux: with_imm as u8,
        imm: if with_imm {
            ins.immediate(2) & mask(size as usize)
        } else {
            0
        },
    })
}

/// Shifts and rotates of a register by an immediate (mnemonic `m`).
fn shift_form(o: &Operands, m: Mnemonic) -> Option<Form> {
    use Mnemonic as M;
    let (d, size) = o.reg(0)?;
    if o.ins.op_kind(1) != OpKind::Immediate8 {
        return None;
    }
    let count = (o.ins.immediate(1) & 0xff) & if size == 8 { 63 } else { 31 };
    macro_rules! pair {
        ($op:tt) => {
            (
                (
                    by_size48!(size, shift_ri, $op; { RULES }),
                    by_size48!(size, shift_ri, $op; { QUIET }),
                ),
                by_size48!(size, shift_ri, $op; { NATURAL }),
            )
        };
    }
    let ((h, natural), op) = match m {
        M::Shl | M::Sal => (pair!(SHL), SHL),
        M::Shr => (pair!(SHR), SHR),
        M::Sar => (pair!(SAR), SAR),
        M::Rol => (pair!(ROL), ROL),
        _ => (pair!(ROR), ROR),
    };
    let (written, undefined, family) =
        flags::shift_flags(shift_op(op), count as u32, size as usize);
    with_natural(
        flagged(
            h,
            FlagEffect::new(written, undefined, family, size),
            d,
            NO_REG,
            count,
        ),
        natural,
    )
}

// ---- the handlers ----

/// An operation as blocks run it: a fast form and the handler it runs with (its own,
/// its quiet form or its natural form). A block is a slice of them, in the order they
/// execute.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockOp {
    pub(crate) handler: Handler,
    pub(crate) op: FastOp,
}

/// Where and why a run of operations stopped before its end: the operation with
/// [`Stop::remaining`] operations after it either faulted (it is not retired; the fault
/// is in `Cpu::stop_fault`), or retired and left the block (a branch taken in its
/// middle, a return to elsewhere than predicted), or retired and wrote what must be
/// seen before anything else runs: an MMIO write, or a write to code or a page table
/// (which may change what the rest of the block is). Four bytes, so that a handler's
/// result is one register and handlers can run one another as tail calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stop(std::num::NonZeroU32);

impl Stop {
    const FAULT: u32 = 1 << 31;
    const LEFT: u32 = 1 << 30;
    const KINDS: u32 = Self::FAULT | Self::LEFT;

    fn new(remaining: usize, kind: u32) -> Stop {
        // A block has at most a few dozen operations: `remaining + 1` is below bit 30
        // and not zero.
        let v = (remaining as u32 & !Self::KINDS).wrapping_add(1) | kind;
        Stop(std::num::NonZeroU32::new(v).unwrap_or(std::num::NonZeroU32::MIN))
    }

    /// The operation faulted.
    pub(crate) fn fault(remaining: usize) -> Stop {
        Stop::new(remaining, Self::FAULT)
    }

    /// The operation retired and left the block.
    pub(crate) fn left(remaining: usize) -> Stop {
        Stop::new(remaining, Self::LEFT)
    }

    /// The operation retired and what it wrote must be seen first.
    pub(crate) fn after_write(remaining: usize) -> Stop {
        Stop::new(remaining, 0)
    }

    /// How many operations followed the one that stopped.
    pub(crate) fn remaining(self) -> u32 {
        (self.0.get() & !Self::KINDS).wrapping_sub(1)
    }

    /// Whether the operation faulted (rather than stopping after it retired).
    pub(crate) fn faulted(self) -> bool {
        self.0.get() & Self::FAULT != 0
    }

    /// Whether the operation retired and left the block (execution goes on at RIP).
    pub(crate) fn left_block(self) -> bool {
        self.0.get() & Self::LEFT != 0
    }
}

/// What a handler returns: `Ok` when it and every operation after it in `rest`
/// retired.
pub(crate) type Flow = Result<(), Stop>;

/// Executes the operation `b` and then, as a tail call, the operations in `rest` (a
/// block's remaining operations; none when the CPU steps one instruction). Each
/// handler leaves RIP at the next instruction (or the branch target); one that stops
/// leaves it at the operation that faulted, or after the one that must be seen.
pub(crate) type Handler = fn(&mut Cpu, &mut GuestMemory, &BlockOp, &[BlockOp]) -> Flow;

/// A fault of the operation before `rest`, kept in the CPU. Out of line and cold, so
/// that a handler's common path does not carry it.
#[cold]
#[inline(never)]
fn fault(cpu: &mut Cpu, f: Fault, rest: &[BlockOp]) -> Stop {
    cpu.stop_fault = Some(f);
    Stop::fault(rest.len())
}

/// Runs the operations in `rest` (RIP is already theirs).
#[inline(always)]
fn go_on(cpu: &mut Cpu, mem: &mut GuestMemory, rest: &[BlockOp]) -> Flow {
    match rest {
        [next, rest @ ..] => (next.handler)(cpu, mem, next, rest),
        [] => Ok(()),
    }
}

/// After an operation that retired and moved RIP elsewhere than the block goes on:
/// leaves the block (nothing to leave at its end).
#[inline(always)]
fn leave(rest: &[BlockOp]) -> Flow {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(Stop::left(rest.len()))
    }
}

/// Retires `b` (RIP moves past it) and runs the operations in `rest`.
#[inline(always)]
fn next(cpu: &mut Cpu, mem: &mut GuestMemory, b: &BlockOp, rest: &[BlockOp]) -> Flow {
    cpu.st.rip = cpu.st.rip.wrapping_add(b.op.len as u64);
    go_on(cpu, mem, rest)
}

/// After an operation that wrote memory and left RIP where execution goes on: stops
/// the block if the write must be seen first (see [`Stop`]), else runs `rest`. A write
/// through the memory's cache (`FAST`) never needs to be seen first.
#[inline(always)]
fn go_on_after_write<const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    rest: &[BlockOp],
) -> Flow {
    if !FAST
        && (cpu.mmio_write.is_some()
            || mem.code_generation() != cpu.seen_code_generation
            || mem.pt_generation() != cpu.seen_pt_generation)
    {
        return Err(Stop::after_write(rest.len()));
    }
    go_on(cpu, mem, rest)
}

/// [`next`] for an operation that wrote memory (see [`go_on_after_write`]).
#[inline(always)]
fn next_after_write<const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    cpu.st.rip = cpu.st.rip.wrapping_add(b.op.len as u64);
    go_on_after_write::<FAST>(cpu, mem, rest)
}

/// Runs `slow`, the instance of a handler without `FAST`, out of line (last, so that
/// the other arguments stay in the registers they came in): the fast
/// instance gave up before changing anything, and `slow` runs the whole operation
/// with the complete memory path (translation, faults, MMIO, code and page-table
/// writes). As a tail call, so that the fast instance needs no stack frame.
#[inline(never)]
fn retry(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
    slow: Handler,
) -> Flow {
    slow(cpu, mem, b, rest)
}

/// Reads `$size` bytes at linear `$la` in a handler: with `$fast`, only through the TLB
/// and the memory's cache, running the handler's slow instance `$slow` instead if they
/// do not hold it; without, through the whole memory path, returning a fault.
macro_rules! read_mem {
    ($fast:expr, $slow:expr, $cpu:ident, $mem:ident, $b:ident, $rest:ident, $la:expr, $size:expr, $ss:expr) => {
        if $fast {
            match $cpu.read_lin_cached($mem, $la, $size) {
                Some(v) => v,
                None => return retry($cpu, $mem, $b, $rest, $slow),
            }
        } else {
            $cpu.read_lin($mem, $la, $size, $ss)
                .map_err(|f| fault($cpu, f, $rest))?
        }
    };
}

/// Writes the low `$size` bytes of `$v` at linear `$la` in a handler, as [`read_mem`]
/// reads.
macro_rules! write_mem {
    ($fast:expr, $slow:expr, $cpu:ident, $mem:ident, $b:ident, $rest:ident, $la:expr, $size:expr, $v:expr, $ss:expr) => {
        if $fast {
            if !$cpu.write_lin_cached($mem, $la, $size, $v) {
                return retry($cpu, $mem, $b, $rest, $slow);
            }
        } else {
            $cpu.write_lin($mem, $la, $size, $v, $ss)
                .map_err(|f| fault($cpu, f, $rest))?;
        }
    };
}

/// [`read_mem`] of the operation's own memory operand.
macro_rules! read_operand {
    ($fast:expr, $slow:expr, $cpu:ident, $mem:ident, $b:ident, $rest:ident, $size:expr) => {{
        let la = $cpu.fast_la(&$b.op.mem);
        read_mem!($fast, $slow, $cpu, $mem, $b, $rest, la, $size, $b.op.mem.ss)
    }};
}

/// [`write_mem`] of the operation's own memory operand.
macro_rules! write_operand {
    ($fast:expr, $slow:expr, $cpu:ident, $mem:ident, $b:ident, $rest:ident, $size:expr, $v:expr) => {{
        let la = $cpu.fast_la(&$b.op.mem);
        write_mem!(
            $fast,
            $slow,
            $cpu,
            $mem,
            $b,
            $rest,
            la,
            $size,
            $v,
            $b.op.mem.ss
        )
    }};
}

#[inline(always)]
fn set_gpr<const SIZE: usize>(cpu: &mut Cpu, i: u8, v: u64) {
    // Only 32- and 64-bit registers: a 32-bit write zero-extends.
    cpu.st.gpr[i as usize & 15] = v & mask(SIZE);
}

#[inline(always)]
fn gpr<const SIZE: usize>(cpu: &Cpu, i: u8) -> u64 {
    cpu.st.gpr[i as usize & 15] & mask(SIZE)
}

impl Cpu {
    /// The effective address of a fast form's memory operand (no segment base).
    #[inline(always)]
    fn fast_ea(&self, m: &MemOperand) -> u64 {
        let mut a = m.disp;
        if (m.base as usize) < 16 {
            a = a.wrapping_add(self.st.gpr[m.base as usize]);
        } else if m.base == BASE_RIP {
            a = a.wrapping_add(self.st.rip);
        }
        if (m.index as usize) < 16 {
            a = a.wrapping_add(self.st.gpr[m.index as usize] << m.scale_shift);
        }
        a
    }

    /// The linear address of a fast form's memory operand.
    #[inline(always)]
    fn fast_la(&self, m: &MemOperand) -> u64 {
        if m.flat {
            // A missing register (NO_REG) reads as 0.
            let reg = |i: u8| self.st.gpr.get(i as usize).copied().unwrap_or(0);
            return m
                .disp
                .wrapping_add(reg(m.base))
                .wrapping_add(reg(m.index) << m.scale_shift);
        }
        let a = self.fast_ea(m);
        match m.seg {
            SEG_FLAT => a,
            SEG_FS => a.wrapping_add(self.st.seg[seg::FS].base),
            _ => a.wrapping_add(self.st.seg[seg::GS].base),
        }
    }
}

fn nop(cpu: &mut Cpu, mem: &mut GuestMemory, b: &BlockOp, rest: &[BlockOp]) -> Flow {
    next(cpu, mem, b, rest)
}

fn mov_rr<const SIZE: usize>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let v = gpr::<SIZE>(cpu, b.op.s);
    set_gpr::<SIZE>(cpu, b.op.d, v);
    next(cpu, mem, b, rest)
}

fn mov_ri<const SIZE: usize>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    set_gpr::<SIZE>(cpu, b.op.d, b.op.imm);
    next(cpu, mem, b, rest)
}

fn mov_rm<const SIZE: usize, const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let v = read_operand!(FAST, mov_rm::<SIZE, false>, cpu, mem, b, rest, SIZE);
    set_gpr::<SIZE>(cpu, b.op.d, v);
    next(cpu, mem, b, rest)
}

fn mov_mr<const SIZE: usize, const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let v = gpr::<SIZE>(cpu, b.op.s);
    write_operand!(FAST, mov_mr::<SIZE, false>, cpu, mem, b, rest, SIZE, v);
    next_after_write::<FAST>(cpu, mem, b, rest)
}

fn mov_mi<const SIZE: usize, const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    write_operand!(
        FAST,
        mov_mi::<SIZE, false>,
        cpu,
        mem,
        b,
        rest,
        SIZE,
        b.op.imm
    );
    next_after_write::<FAST>(cpu, mem, b, rest)
}

/// movzx/movsx/movsxd (`SIGNED`) of the `SRC`-byte register `s`.
fn extend_r<const SRC: usize, const SIGNED: bool, const SIZE: usize>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let v = cpu.st.gpr[b.op.s as usize & 15] & mask(SRC);
    set_gpr::<SIZE>(cpu, b.op.d, extend(v, SRC, SIGNED));
    next(cpu, mem, b, rest)
}

/// movzx/movsx/movsxd (`SIGNED`) of `SRC` bytes of memory.
fn extend_m<const SRC: usize, const SIGNED: bool, const SIZE: usize, const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let slow = extend_m::<SRC, SIGNED, SIZE, false>;
    let v = read_operand!(FAST, slow, cpu, mem, b, rest, SRC);
    set_gpr::<SIZE>(cpu, b.op.d, extend(v, SRC, SIGNED));
    next(cpu, mem, b, rest)
}

/// `d op= b` for a register destination; the status flags as `FLAGS` says.
#[inline(always)]
fn alu_to_reg<Op: ArithOp, const SIZE: usize, const FLAGS: u8>(cpu: &mut Cpu, d: u8, b: u64) {
    let a = gpr::<SIZE>(cpu, d);
    let (r, f) = if FLAGS == NATURAL {
        Op::natural(a, b, SIZE)
    } else {
        Op::apply(a, b, SIZE, cpu.st.rflags, &cpu.undefined)
    };
    if FLAGS != QUIET {
        cpu.set_status(f);
    }
    if Op::WRITES {
        set_gpr::<SIZE>(cpu, d, r);
    }
}

/// `[mem] op= v` (any operand size); `slow` is the handler's instance without `FAST`.
#[inline(always)]
fn alu_to_mem<Op: ArithOp, const SIZE: usize, const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
    v: u64,
    slow: Handler,
) -> Flow {
    let (la, ss) = (cpu.fast_la(&b.op.mem), b.op.mem.ss);
    let a = read_mem!(FAST, slow, cpu, mem, b, rest, la, SIZE, ss);
    let (r, f) = Op::apply(a, v, SIZE, cpu.st.rflags, &cpu.undefined);
    if Op::WRITES {
        write_mem!(FAST, slow, cpu, mem, b, rest, la, SIZE, r, ss);
    }
    cpu.set_status(f);
    if Op::WRITES {
        next_after_write::<FAST>(cpu, mem, b, rest)
    } else {
        next(cpu, mem, b, rest)
    }
}

fn alu_rr<Op: ArithOp, const SIZE: usize, const FLAGS: u8>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let v = gpr::<SIZE>(cpu, b.op.s);
    alu_to_reg::<Op, SIZE, FLAGS>(cpu, b.op.d, v);
    next(cpu, mem, b, rest)
}

fn alu_ri<Op: ArithOp, const SIZE: usize, const FLAGS: u8>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    alu_to_reg::<Op, SIZE, FLAGS>(cpu, b.op.d, b.op.imm);
    next(cpu, mem, b, rest)
}

fn alu_rm<Op: ArithOp, const SIZE: usize, const FLAGS: u8, const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let slow = alu_rm::<Op, SIZE, FLAGS, false>;
    let v = read_operand!(FAST, slow, cpu, mem, b, rest, SIZE);
    alu_to_reg::<Op, SIZE, FLAGS>(cpu, b.op.d, v);
    next(cpu, mem, b, rest)
}

/// op [mem], reg (any operand size: the register's low bytes).
fn alu_mr<Op: ArithOp, const SIZE: usize, const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let v = gpr::<SIZE>(cpu, b.op.s);
    alu_to_mem::<Op, SIZE, FAST>(cpu, mem, b, rest, v, alu_mr::<Op, SIZE, false>)
}

fn alu_mi<Op: ArithOp, const SIZE: usize, const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    alu_to_mem::<Op, SIZE, FAST>(cpu, mem, b, rest, b.op.imm, alu_mi::<Op, SIZE, false>)
}

/// imul reg, reg or [mem] (`s` = [`NO_REG`]), times the immediate if `aux` is 1, else
/// times the destination.
/// The status flags only with `FLAGS`.
fn imul<const SIZE: usize, const FLAGS: bool, const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let op = &b.op;
    let a = if op.s == NO_REG {
        read_operand!(FAST, imul::<SIZE, FLAGS, false>, cpu, mem, b, rest, SIZE)
    } else {
        gpr::<SIZE>(cpu, op.s)
    };
    let m = if op.aux != 0 {
        op.imm
    } else {
        gpr::<SIZE>(cpu, op.d)
    };
    let (r, overflow) = imul_truncated(a, m, SIZE);
    set_gpr::<SIZE>(cpu, op.d, r);
    if FLAGS {
        cpu.set_mul_flags(Family::ImulMultiOperand, r, SIZE, overflow);
    }
    next(cpu, mem, b, rest)
}

/// `inc` and `dec` of a register; the status flags only with `FLAGS`.
fn unary_r<Op: UnaryOp, const SIZE: usize, const FLAGS: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let d = b.op.d;
    let a = gpr::<SIZE>(cpu, d);
    let (r, f) = Op::apply(a, SIZE, cpu.st.rflags);
    set_gpr::<SIZE>(cpu, d, r);
    if FLAGS {
        cpu.set_status(f);
    }
    next(cpu, mem, b, rest)
}

/// The status flags as `FLAGS` says.
fn shift_ri<const OP: u8, const SIZE: usize, const FLAGS: u8>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let op = &b.op;
    let a = gpr::<SIZE>(cpu, op.d);
    // The count is masked at decode time; masking it again tells the compiler that
    // it is below the operand width.
    let count = op.imm as u32 & (SIZE as u32 * 8 - 1);
    // A register destination is written even for a zero count.
    if FLAGS != QUIET {
        let (r, f) = if FLAGS == NATURAL {
            flags::shift_natural(shift_op(OP), a, count, SIZE, cpu.st.rflags)
        } else {
            flags::shift(shift_op(OP), a, count, SIZE, cpu.st.rflags, &cpu.undefined)
        };
        set_gpr::<SIZE>(cpu, op.d, r);
        cpu.st.rflags = f;
    } else {
        set_gpr::<SIZE>(cpu, op.d, flags::shift_result(shift_op(OP), a, count, SIZE));
    }
    next(cpu, mem, b, rest)
}

fn lea<const SIZE: usize>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let a = cpu.fast_ea(&b.op.mem);
    set_gpr::<SIZE>(cpu, b.op.d, a);
    next(cpu, mem, b, rest)
}

/// A conditional jump: a block goes on at the next instruction and leaves when the
/// jump is taken.
fn jcc<const CC: u8>(cpu: &mut Cpu, mem: &mut GuestMemory, b: &BlockOp, rest: &[BlockOp]) -> Flow {
    if cpu.cond(CONDITIONS[CC as usize]) {
        // `imm` is the target's offset from this instruction.
        cpu.st.rip = cpu.st.rip.wrapping_add(b.op.imm);
        return leave(rest);
    }
    next(cpu, mem, b, rest)
}

fn jmp_rel(cpu: &mut Cpu, mem: &mut GuestMemory, b: &BlockOp, rest: &[BlockOp]) -> Flow {
    cpu.st.rip = cpu.st.rip.wrapping_add(b.op.imm);
    go_on(cpu, mem, rest)
}

fn call_rel<const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let (rip, rsp) = (cpu.st.rip, cpu.st.gpr[RSP].wrapping_sub(8));
    let ret = rip.wrapping_add(b.op.len as u64);
    write_mem!(
        FAST,
        call_rel::<false>,
        cpu,
        mem,
        b,
        rest,
        rsp,
        8,
        ret,
        true
    );
    cpu.st.gpr[RSP] = rsp;
    cpu.st.rip = rip.wrapping_add(b.op.imm);
    go_on_after_write::<FAST>(cpu, mem, rest)
}

/// Pops the return address of a near `ret` in handler instance `$fast` (`$slow` the
/// other): RSP moves past it; a non-canonical one is a #GP with RSP unchanged.
macro_rules! pop_return {
    ($fast:expr, $slow:expr, $cpu:ident, $mem:ident, $b:ident, $rest:ident) => {{
        let rsp = $cpu.st.gpr[RSP];
        let t = read_mem!($fast, $slow, $cpu, $mem, $b, $rest, rsp, 8, true);
        if !canonical(t) {
            if $fast {
                return retry($cpu, $mem, $b, $rest, $slow);
            }
            return Err(fault($cpu, gp0(), $rest));
        }
        $cpu.st.gpr[RSP] = rsp.wrapping_add(8);
        t
    }};
}

fn ret<const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    cpu.st.rip = pop_return!(FAST, ret::<false>, cpu, mem, b, rest);
    go_on(cpu, mem, rest)
}

/// `ret` in a block that goes on where it predicts the return goes: at the return
/// address of the `call` earlier in the block, `imm` from the `ret`'s RIP. A return
/// elsewhere leaves the block.
fn ret_predicted<const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let predicted = cpu.st.rip.wrapping_add(b.op.imm);
    let t = pop_return!(FAST, ret_predicted::<false>, cpu, mem, b, rest);
    cpu.st.rip = t;
    if t == predicted {
        go_on(cpu, mem, rest)
    } else {
        leave(rest)
    }
}

/// The handler of a `ret` whose return a block predicts (see [`ret_predicted`]).
pub(crate) fn predicted_return() -> Handler {
    ret_predicted::<true>
}

fn push<const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let (v, rsp) = (
        cpu.st.gpr[b.op.s as usize & 15],
        cpu.st.gpr[RSP].wrapping_sub(8),
    );
    write_mem!(FAST, push::<false>, cpu, mem, b, rest, rsp, 8, v, true);
    cpu.st.gpr[RSP] = rsp;
    next_after_write::<FAST>(cpu, mem, b, rest)
}

fn pop<const FAST: bool>(
    cpu: &mut Cpu,
    mem: &mut GuestMemory,
    b: &BlockOp,
    rest: &[BlockOp],
) -> Flow {
    let rsp = cpu.st.gpr[RSP];
    let v = read_mem!(FAST, pop::<false>, cpu, mem, b, rest, rsp, 8, true);
    cpu.st.gpr[RSP] = rsp.wrapping_add(8);
    cpu.st.gpr[b.op.d as usize & 15] = v;
    next(cpu, mem, b, rest)
}

#[cfg(test)]
mod tests {
    use super::Stop;

    /// A stop keeps where it happened and whether it was a fault, for any place in a
    /// block.
    #[test]
    fn stop_keeps_its_place_and_kind() {
        for remaining in 0..=crate::cpu::block::MAX_BLOCK_OPS {
            for (s, fault, left) in [
                (Stop::fault(remaining), true, false),
                (Stop::left(remaining), false, true),
                (Stop::after_write(remaining), false, false),
            ] {
                assert_eq!(s.remaining(), remaining as u32);
                assert_eq!((s.faulted(), s.left_block()), (fault, left));
            }
        }
    }
}
