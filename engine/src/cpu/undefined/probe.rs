//! The probe that measures a host's undefined results, and the fit of the rules to what
//! it measured.
//!
//! [`ProbeProgram`] is ring-0 code (position independent; it needs a stack and an
//! identity mapping of its results area): for every [`Family`] and operand size, a few
//! dozen cases of the instruction with chosen operands and input flags, each storing RAX,
//! RDX and RFLAGS afterwards. The recorder runs it under KVM on the recording host (and
//! the differential tests on theirs). [`ProbeProgram::fit`] then runs the same program in
//! the replay CPU once per candidate [`FlagRule`] (applied to every flag at once) and
//! variant, and keeps, per family, size and flag, the first candidate that reproduces
//! the host in every case. A last run with the fitted rules must reproduce every case;
//! what does not becomes [`Unmodelled`].

use std::ops::Range;

use iced_x86::{Code, Encoder, Instruction, MemoryOperand, Register};

use super::{
    FLAGS, Family, FlagRule, UndefinedBehaviour, Unmodelled, WideDoubleShift,
    ZeroSourceDestination, size_index,
};
use crate::arch::{cr0, cr4, efer, pte, rflags, seg_attr};
use crate::cpu::flags::STATUS;
use crate::cpu::{Cpu, Exit};
use crate::memory::GuestMemory;
use crate::state::{
    CounterSourceKind, CpuState, CpuidEntry, DescriptorTable, MachineConfig, MemoryRegion, Quirks,
    RegionKind, Segment, Snapshot, SnapshotPage,
};

/// Bytes each case stores: RAX, RDX, RFLAGS.
pub const RESULT_BYTES: usize = 24;

/// Where the program keeps its results and stack, and the port it writes when done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeLayout {
    /// Identity-mapped, writable, [`ProbeProgram::results_len`] bytes.
    pub results: u64,
    /// Top of a stack of at least 64 bytes.
    pub stack_top: u64,
    /// The program ends with `out port, al`.
    pub done_port: u8,
}

/// How the instruction of a case takes its operands: the destination is RAX's sized
/// register (AL/AX/EAX/RAX), the source RBX's, the count CL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `op dst, cl`
    DstCl,
    /// `op dst, imm8`
    DstImm(u8),
    /// `op dst, src, cl`
    DstSrcCl,
    /// `op dst, src, imm8`
    DstSrcImm(u8),
    /// `op src` (mul, imul, div, idiv: RAX and RDX implied)
    Src,
    /// `op dst, src`
    DstSrc,
    /// `op dst, src, imm`
    DstSrcImm32(i32),
}

/// One case: the instruction and the registers and flags it starts with.
#[derive(Debug, Clone, Copy)]
struct Case {
    family: Family,
    size: usize,
    code: Code,
    form: Form,
    rax: u64,
    rbx: u64,
    rcx: u64,
    rdx: u64,
    rflags: u64,
}

/// What one case left: RAX, RDX, RFLAGS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    rax: u64,
    rdx: u64,
    rflags: u64,
}

/// Why the fit could not run (the host's answers themselves never make it fail: what
/// does not fit is reported in [`UndefinedBehaviour::unmodelled`]).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the probe's results are {found} bytes, expected {expected}")]
    ResultsLength { found: usize, expected: usize },
    #[error("the replay CPU could not run the probe: {0}")]
    Replay(String),
}

/// The probe program (see the module documentation). The cases are the same on every
/// host: they come from a fixed seed.
pub struct ProbeProgram {
    cases: Vec<Case>,
}

impl Default for ProbeProgram {
    fn default() -> Self {
        Self::new()
    }
}

/// xorshift64: the probe's operands (and the CPU unit tests' random values).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Operands that reach the edges: small, boundary, single-bit and random values.
    fn value(&mut self) -> u64 {
        const EDGES: [u64; 13] = [
            0,
            1,
            0x7f,
            0x80,
            0xff,
            0x7fff,
            0x8000,
            0xffff,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
            u64::MAX,
            1 << 63,
        ];
        match self.below(6) {
            0 => self.next() & 0xff,
            1 => EDGES[self.below(EDGES.len() as u64) as usize],
            2 => 1 << self.below(64),
            _ => self.next(),
        }
    }

    /// Input flags: any status flags (and the fixed bit 1).
    fn flags(&mut self) -> u64 {
        (self.next() & STATUS) | 2
    }
}

/// Cases per family and operand size.
const CASES: usize = 48;

/// The rules the fit tries, each for every flag at once.
const RULES: [FlagRule; 7] = [
    FlagRule::Keep,
    FlagRule::Clear,
    FlagRule::Set,
    FlagRule::Result,
    FlagRule::FirstStep,
    FlagRule::LastStep,
    FlagRule::SignChange,
];

/// The variants of the undefined results the fit tries: whether `tzcnt`/`lzcnt` run as
/// bit scans, the zero-source destination of bit scans, 16-bit double shifts by more
/// than 16. A group of cases picks the first that reproduces it.
const VARIANTS: [(bool, ZeroSourceDestination, WideDoubleShift); 4] = [
    (
        false,
        ZeroSourceDestination::Unchanged,
        WideDoubleShift::DstSrcSrc,
    ),
    (
        false,
        ZeroSourceDestination::UpperCleared,
        WideDoubleShift::DstSrcDst,
    ),
    (
        true,
        ZeroSourceDestination::Unchanged,
        WideDoubleShift::DstSrcSrc,
    ),
    (
        true,
        ZeroSourceDestination::UpperCleared,
        WideDoubleShift::DstSrcDst,
    ),
];

fn mask(size: usize) -> u64 {
    crate::cpu::flags::mask(size)
}

/// The iced-x86 code of a family's instruction at `size` in `form`'s shape (`index`
/// picks among several codes of a family, such as the logical ones' immediate form).
fn code_for(family: Family, size: usize, form: Form) -> Code {
    use Code::*;
    let i = size_index(size);
    let by4 = |c: [Code; 4]| c[i];
    let by3 = |c: [Code; 3]| c[i - 1];
    let shift_group = |cl: [Code; 4], imm: [Code; 4]| match form {
        Form::DstImm(_) => imm[i],
        _ => cl[i],
    };
    match family {
        Family::Shl => shift_group(
            [Shl_rm8_CL, Shl_rm16_CL, Shl_rm32_CL, Shl_rm64_CL],
            [Shl_rm8_imm8, Shl_rm16_imm8, Shl_rm32_imm8, Shl_rm64_imm8],
        ),
        Family::Shr => shift_group(
            [Shr_rm8_CL, Shr_rm16_CL, Shr_rm32_CL, Shr_rm64_CL],
            [Shr_rm8_imm8, Shr_rm16_imm8, Shr_rm32_imm8, Shr_rm64_imm8],
        ),
        Family::Sar => shift_group(
            [Sar_rm8_CL, Sar_rm16_CL, Sar_rm32_CL, Sar_rm64_CL],
            [Sar_rm8_imm8, Sar_rm16_imm8, Sar_rm32_imm8, Sar_rm64_imm8],
        ),
        Family::Rol => shift_group(
            [Rol_rm8_CL, Rol_rm16_CL, Rol_rm32_CL, Rol_rm64_CL],
            [Rol_rm8_imm8, Rol_rm16_imm8, Rol_rm32_imm8, Rol_rm64_imm8],
        ),
        Family::Ror => shift_group(
            [Ror_rm8_CL, Ror_rm16_CL, Ror_rm32_CL, Ror_rm64_CL],
            [Ror_rm8_imm8, Ror_rm16_imm8, Ror_rm32_imm8, Ror_rm64_imm8],
        ),
        Family::Rcl | Family::RclFullTurn => shift_group(
            [Rcl_rm8_CL, Rcl_rm16_CL, Rcl_rm32_CL, Rcl_rm64_CL],
            [Rcl_rm8_imm8, Rcl_rm16_imm8, Rcl_rm32_imm8, Rcl_rm64_imm8],
        ),
        Family::Rcr | Family::RcrFullTurn => shift_group(
            [Rcr_rm8_CL, Rcr_rm16_CL, Rcr_rm32_CL, Rcr_rm64_CL],
            [Rcr_rm8_imm8, Rcr_rm16_imm8, Rcr_rm32_imm8, Rcr_rm64_imm8],
        ),
        Family::Shld => match form {
            Form::DstSrcImm(_) => by3([Shld_rm16_r16_imm8, Shld_rm32_r32_imm8, Shld_rm64_r64_imm8]),
            _ => by3([Shld_rm16_r16_CL, Shld_rm32_r32_CL, Shld_rm64_r64_CL]),
        },
        Family::Shrd => match form {
            Form::DstSrcImm(_) => by3([Shrd_rm16_r16_imm8, Shrd_rm32_r32_imm8, Shrd_rm64_r64_imm8]),
            _ => by3([Shrd_rm16_r16_CL, Shrd_rm32_r32_CL, Shrd_rm64_r64_CL]),
        },
        Family::Mul => by4([Mul_rm8, Mul_rm16, Mul_rm32, Mul_rm64]),
        Family::Imul => by4([Imul_rm8, Imul_rm16, Imul_rm32, Imul_rm64]),
        Family::ImulMultiOperand => match form {
            Form::DstSrcImm32(_) => by3([
                Imul_r16_rm16_imm16,
                Imul_r32_rm32_imm32,
                Imul_r64_rm64_imm32,
            ]),
            _ => by3([Imul_r16_rm16, Imul_r32_rm32, Imul_r64_rm64]),
        },
        Family::Div => by4([Div_rm8, Div_rm16, Div_rm32, Div_rm64]),
        Family::Idiv => by4([Idiv_rm8, Idiv_rm16, Idiv_rm32, Idiv_rm64]),
        Family::Bsf => by3([Bsf_r16_rm16, Bsf_r32_rm32, Bsf_r64_rm64]),
        Family::Bsr => by3([Bsr_r16_rm16, Bsr_r32_rm32, Bsr_r64_rm64]),
        Family::Tzcnt => by3([Tzcnt_r16_rm16, Tzcnt_r32_rm32, Tzcnt_r64_rm64]),
        Family::Lzcnt => by3([Lzcnt_r16_rm16, Lzcnt_r32_rm32, Lzcnt_r64_rm64]),
        Family::Bt => match form {
            Form::DstImm(_) => by3([Bt_rm16_imm8, Bt_rm32_imm8, Bt_rm64_imm8]),
            _ => by3([Bt_rm16_r16, Bt_rm32_r32, Bt_rm64_r64]),
        },
        Family::Bts => match form {
            Form::DstImm(_) => by3([Bts_rm16_imm8, Bts_rm32_imm8, Bts_rm64_imm8]),
            _ => by3([Bts_rm16_r16, Bts_rm32_r32, Bts_rm64_r64]),
        },
        Family::Btr => match form {
            Form::DstImm(_) => by3([Btr_rm16_imm8, Btr_rm32_imm8, Btr_rm64_imm8]),
            _ => by3([Btr_rm16_r16, Btr_rm32_r32, Btr_rm64_r64]),
        },
        Family::Btc => match form {
            Form::DstImm(_) => by3([Btc_rm16_imm8, Btc_rm32_imm8, Btc_rm64_imm8]),
            _ => by3([Btc_rm16_r16, Btc_rm32_r32, Btc_rm64_r64]),
        },
        Family::And => match form {
            Form::DstImm(_) => by4([And_rm8_imm8, And_rm16_imm8, And_rm32_imm8, And_rm64_imm8]),
            _ => by4([And_rm8_r8, And_rm16_r16, And_rm32_r32, And_rm64_r64]),
        },
        Family::Or => match form {
            Form::DstImm(_) => by4([Or_rm8_imm8, Or_rm16_imm8, Or_rm32_imm8, Or_rm64_imm8]),
            _ => by4([Or_rm8_r8, Or_rm16_r16, Or_rm32_r32, Or_rm64_r64]),
        },
        Family::Xor => match form {
            Form::DstImm(_) => by4([Xor_rm8_imm8, Xor_rm16_imm8, Xor_rm32_imm8, Xor_rm64_imm8]),
            _ => by4([Xor_rm8_r8, Xor_rm16_r16, Xor_rm32_r32, Xor_rm64_r64]),
        },
        Family::Test => match form {
            Form::DstImm(_) => by4([
                Test_rm8_imm8,
                Test_rm16_imm16,
                Test_rm32_imm32,
                Test_rm64_imm32,
            ]),
            _ => by4([Test_rm8_r8, Test_rm16_r16, Test_rm32_r32, Test_rm64_r64]),
        },
    }
}

/// RAX's or RBX's register of `size` bytes.
fn sized(rbx: bool, size: usize) -> Register {
    match (rbx, size) {
        (false, 1) => Register::AL,
        (false, 2) => Register::AX,
        (false, 4) => Register::EAX,
        (false, _) => Register::RAX,
        (true, 1) => Register::BL,
        (true, 2) => Register::BX,
        (true, 4) => Register::EBX,
        (true, _) => Register::RBX,
    }
}

/// Shift counts around every boundary of every operand size.
const COUNTS: [u64; 20] = [
    0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 18, 24, 31, 32, 33, 48, 63, 64, 0xff,
];

/// The cases of one family at one size.
fn cases_of(family: Family, size: usize, rng: &mut Rng) -> Vec<Case> {
    let bits = size as u64 * 8;
    let m = mask(size);
    let mut out = Vec::with_capacity(CASES);
    for n in 0..CASES {
        let mut c = Case {
            family,
            size,
            code: Code::INVALID,
            form: Form::DstSrc,
            rax: rng.value(),
            rbx: rng.value(),
            rcx: rng.next(),
            rdx: rng.value(),
            rflags: rng.flags(),
        };
        // Half of the counts walk the boundaries, the rest are random.
        let count = if n < COUNTS.len() {
            COUNTS[n]
        } else {
            let range = if rng.below(2) == 0 { bits + 3 } else { 256 };
            rng.below(range)
        };
        match family {
            Family::Shl
            | Family::Shr
            | Family::Sar
            | Family::Rol
            | Family::Ror
            | Family::Rcl
            | Family::Rcr => {
                c.form = if n % 4 == 3 {
                    Form::DstImm(count as u8)
                } else {
                    Form::DstCl
                };
                c.rcx = (rng.next() & !0xff) | count;
            }
            Family::RclFullTurn | Family::RcrFullTurn => {
                let turns: &[u64] = if size == 1 { &[9, 18, 27] } else { &[17] };
                let count = turns[n % turns.len()];
                c.form = if n % 4 == 3 {
                    Form::DstImm(count as u8)
                } else {
                    Form::DstCl
                };
                c.rcx = (rng.next() & !0xff) | count;
            }
            Family::Shld | Family::Shrd => {
                c.form = if n % 4 == 3 {
                    Form::DstSrcImm(count as u8)
                } else {
                    Form::DstSrcCl
                };
                c.rcx = (rng.next() & !0xff) | count;
            }
            Family::Mul | Family::Imul => c.form = Form::Src,
            Family::ImulMultiOperand => {
                c.form = if n % 3 == 2 {
                    Form::DstSrcImm32(rng.value() as i32 >> (32 - bits.min(32)))
                } else {
                    Form::DstSrc
                };
            }
            Family::Div | Family::Idiv => {
                c.form = Form::Src;
                let mut divisor = c.rbx & m;
                if divisor == 0 {
                    divisor = 3;
                }
                c.rbx = (c.rbx & !m) | divisor;
                if family == Family::Div {
                    // A high half below the divisor: the quotient fits.
                    let high = rng.next() % divisor;
                    if size == 1 {
                        c.rax = (c.rax & !0xff00) | (high << 8);
                    } else {
                        c.rdx = (c.rdx & !m) | high;
                    }
                } else {
                    // A dividend of half the width, sign-extended: the quotient fits.
                    let half = crate::cpu::flags::sext(c.rax, size) >> (bits / 2);
                    let half = crate::cpu::flags::sext(half & m, size);
                    if size == 1 {
                        c.rax = (c.rax & !0xffff) | (half & 0xffff);
                    } else {
                        c.rax = (c.rax & !m) | (half & m);
                        c.rdx = (c.rdx & !m) | (((half as i64) >> 63) as u64 & m);
                    }
                }
            }
            Family::Bsf | Family::Bsr | Family::Tzcnt | Family::Lzcnt => {
                c.form = Form::DstSrc;
                if n % 3 == 0 {
                    c.rbx &= !m;
                }
            }
            Family::Bt | Family::Bts | Family::Btr | Family::Btc => {
                if n % 4 == 3 {
                    c.form = Form::DstImm(rng.next() as u8);
                } else {
                    c.form = Form::DstSrc;
                    c.rbx = rng.next() % 256;
                }
            }
            Family::And | Family::Or | Family::Xor | Family::Test => {
                c.form = if n % 4 == 3 {
                    Form::DstImm(rng.next() as u8)
                } else {
                    Form::DstSrc
                };
            }
        }
        c.code = code_for(family, size, c.form);
        out.push(c);
    }
    out
}

impl Case {
    fn instruction(&self) -> Instruction {
        let dst = sized(false, self.size);
        let src = sized(true, self.size);
        let r = match self.form {
            Form::DstCl => Instruction::with2(self.code, dst, Register::CL),
            // The logical operations sign-extend their 8-bit immediate.
            Form::DstImm(i)
                if matches!(
                    self.family,
                    Family::And | Family::Or | Family::Xor | Family::Test
                ) =>
            {
                Instruction::with2(self.code, dst, i as i8 as i32)
            }
            Form::DstImm(i) => Instruction::with2(self.code, dst, i as u32),
            Form::DstSrcCl => Instruction::with3(self.code, dst, src, Register::CL),
            Form::DstSrcImm(i) => Instruction::with3(self.code, dst, src, i as u32),
            Form::Src => Instruction::with1(self.code, src),
            Form::DstSrc => Instruction::with2(self.code, dst, src),
            Form::DstSrcImm32(i) => Instruction::with3(self.code, dst, src, i),
        };
        r.expect("a probe instruction of a known form")
    }

    /// Where the flags are undefined for this case's count (a superset is fine: the
    /// fit only needs it to name what differs).
    fn describe(&self) -> String {
        let mut text = String::new();
        let mut f = iced_x86::IntelFormatter::new();
        iced_x86::Formatter::format(&mut f, &self.instruction(), &mut text);
        format!(
            "{text} with rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rflags={:#x}",
            self.rax, self.rbx, self.rcx, self.rdx, self.rflags
        )
    }
}

/// The fit's own machine: identity-mapped with 2 MiB pages below 1 GiB.
mod machine {
    pub const RAM: u64 = 8 << 20;
    pub const GDT: u64 = 0x1000;
    pub const PML4: u64 = 0x2000;
    pub const PDPT: u64 = 0x3000;
    pub const PD: u64 = 0x4000;
    pub const STACK_TOP: u64 = 0x1_0000;
    pub const CODE: u64 = 0x10_0000;
    pub const RESULTS: u64 = 0x60_0000;
    pub const DONE_PORT: u8 = 0x80;
}

impl ProbeProgram {
    pub fn new() -> ProbeProgram {
        let mut rng = Rng(0x6b72_725f_7072_6f62);
        let mut cases = Vec::new();
        for family in Family::ALL {
            for &size in family.sizes() {
                cases.extend(cases_of(family, size, &mut rng));
            }
        }
        ProbeProgram { cases }
    }

    /// Bytes of results the program writes at [`ProbeLayout::results`].
    pub fn results_len(&self) -> usize {
        self.cases.len() * RESULT_BYTES
    }

    /// Instructions the program executes: two to start, 13 per case, the `out`.
    pub fn instructions(&self) -> u64 {
        3 + self.cases.len() as u64 * 13
    }

    /// The program's machine code, for `layout`; it runs at any address.
    pub fn assemble(&self, layout: &ProbeLayout) -> Vec<u8> {
        use Code::*;
        let mut ins = vec![
            Instruction::with2(Mov_r64_imm64, Register::RSP, layout.stack_top),
            Instruction::with2(Mov_r64_imm64, Register::R14, layout.results),
        ];
        for c in &self.cases {
            for (r, v) in [
                (Register::RAX, c.rax),
                (Register::RBX, c.rbx),
                (Register::RCX, c.rcx),
                (Register::RDX, c.rdx),
            ] {
                ins.push(Instruction::with2(Mov_r64_imm64, r, v));
            }
            ins.push(Instruction::with1(Pushq_imm32, c.rflags as i32));
            ins.push(Ok(Instruction::with(Popfq)));
            ins.push(Ok(c.instruction()));
            ins.push(Ok(Instruction::with(Pushfq)));
            ins.push(Instruction::with1(Pop_r64, Register::R15));
            for (k, r) in [Register::RAX, Register::RDX, Register::R15]
                .into_iter()
                .enumerate()
            {
                ins.push(Instruction::with2(
                    Mov_rm64_r64,
                    MemoryOperand::with_base_displ(Register::R14, 8 * k as i64),
                    r,
                ));
            }
            ins.push(Instruction::with2(
                Add_rm64_imm8,
                Register::R14,
                RESULT_BYTES as i32,
            ));
        }
        ins.push(Instruction::with2(
            Out_imm8_AL,
            layout.done_port as u32,
            Register::AL,
        ));
        let mut enc = Encoder::new(64);
        for i in ins {
            let i = i.expect("a probe instruction of a known form");
            enc.encode(&i, 0).expect("the probe's instructions encode");
        }
        enc.take_buffer()
    }

    /// Fits the rules to `host_results` (the [`ProbeProgram::results_len`] bytes the
    /// program wrote on the host) by running the program in the replay CPU with `cpuid`
    /// (the recording's table: it decides whether `tzcnt`/`lzcnt` can count).
    pub fn fit(&self, host_results: &[u8], cpuid: &[CpuidEntry]) -> Result<Quirks, ProbeError> {
        if host_results.len() != self.results_len() {
            return Err(ProbeError::ResultsLength {
                found: host_results.len(),
                expected: self.results_len(),
            });
        }
        let host: Vec<Outcome> = host_results.chunks(RESULT_BYTES).map(outcome).collect();
        let code = self.assemble(&ProbeLayout {
            results: machine::RESULTS,
            stack_top: machine::STACK_TOP,
            done_port: machine::DONE_PORT,
        });
        let machine = machine_with(&code).map_err(ProbeError::Replay)?;
        let mut fit = Fitting::new(self, &machine, cpuid, host)?;
        let mut start = 0;
        while start < self.cases.len() {
            let (family, size) = (self.cases[start].family, self.cases[start].size);
            let end = start
                + self.cases[start..]
                    .iter()
                    .take_while(|c| c.family == family && c.size == size)
                    .count();
            fit.group(start..end)?;
            start = end;
        }
        fit.finish()
    }

    /// Runs the program in the replay CPU with `quirks` and returns every case's outcome.
    fn replay(
        &self,
        machine: &(CpuState, GuestMemory),
        quirks: &Quirks,
        cpuid: &[CpuidEntry],
    ) -> Result<Vec<Outcome>, ProbeError> {
        let mut mem = machine.1.clone();
        let mut cpu = Cpu::new(machine.0.clone(), cpuid.to_vec());
        cpu.set_quirks(quirks.clone());
        let limit = self.instructions() + 16;
        match cpu.run(&mut mem, limit) {
            Exit::PortOut { port, .. } if port == machine::DONE_PORT as u16 => {}
            other => {
                return Err(ProbeError::Replay(format!(
                    "stopped with {other:?} at rip {:#x}",
                    cpu.state().rip
                )));
            }
        }
        let mut bytes = vec![0u8; self.results_len()];
        mem.read(machine::RESULTS, &mut bytes)
            .map_err(|e| ProbeError::Replay(format!("reading the results: {e}")))?;
        Ok(bytes.chunks(RESULT_BYTES).map(outcome).collect())
    }
}

/// Outcomes of the fit's runs, by variant and rule (run on demand).
type Runs = Vec<Vec<Option<Vec<Outcome>>>>;

/// The quirks of variant `v` (of [`VARIANTS`]) with `rule` for every flag.
fn variant(rule: FlagRule, v: usize) -> Quirks {
    let (ignores_rep, zero_source, wide) = VARIANTS[v];
    let mut u = UndefinedBehaviour::uniform(rule);
    u.zero_source = [[zero_source; 4]; 2];
    u.wide_double_shift = [wide; 2];
    Quirks {
        bit_scan_ignores_rep: ignores_rep,
        undefined: u,
    }
}

/// A fit in progress (see [`ProbeProgram::fit`]): the runs made so far and what has
/// been fitted.
struct Fitting<'a> {
    program: &'a ProbeProgram,
    machine: &'a (CpuState, GuestMemory),
    cpuid: &'a [CpuidEntry],
    /// What the host did in every case.
    host: Vec<Outcome>,
    /// Candidate rules under variants of the undefined results: first the results
    /// (rule-independent) under every variant, then every rule under the variants
    /// that groups chose, each run once.
    runs: Runs,
    fitted: UndefinedBehaviour,
    unmodelled: Vec<Unmodelled>,
    ignores_rep: Option<bool>,
}

impl<'a> Fitting<'a> {
    fn new(
        program: &'a ProbeProgram,
        machine: &'a (CpuState, GuestMemory),
        cpuid: &'a [CpuidEntry],
        host: Vec<Outcome>,
    ) -> Result<Self, ProbeError> {
        let mut fitted = UndefinedBehaviour::uniform(FlagRule::Clear);
        fitted.zero_source = [[ZeroSourceDestination::Unchanged; 4]; 2];
        fitted.wide_double_shift = [WideDoubleShift::DstSrcSrc; 2];
        let mut fit = Fitting {
            program,
            machine,
            cpuid,
            host,
            runs: vec![vec![None; RULES.len()]; VARIANTS.len()],
            fitted,
            unmodelled: Vec::new(),
            ignores_rep: None,
        };
        for v in 0..VARIANTS.len() {
            fit.ensure_run(FlagRule::Keep, v)?;
        }
        Ok(fit)
    }

    fn run(&self, quirks: &Quirks) -> Result<Vec<Outcome>, ProbeError> {
        self.program.replay(self.machine, quirks, self.cpuid)
    }

    /// Runs `rule` under variant `v` unless that was done.
    fn ensure_run(&mut self, rule: FlagRule, v: usize) -> Result<(), ProbeError> {
        let ri = rule_index(rule);
        if self.runs[v][ri].is_none() {
            self.runs[v][ri] = Some(self.run(&variant(rule, v))?);
        }
        Ok(())
    }

    /// Fits the cases `group` (one family and size): the variant of the results, then
    /// each flag's rule under it.
    fn group(&mut self, group: Range<usize>) -> Result<(), ProbeError> {
        let v = self.fit_results(group.clone());
        // The flags, one at a time, under the chosen variant.
        for r in RULES {
            self.ensure_run(r, v)?;
        }
        self.fit_flags(group, v);
        Ok(())
    }

    /// The results: which variants reproduce RAX and RDX. Bit scans choose the
    /// zero-source rule, 16-bit double shifts the wide one, tzcnt and lzcnt whether they
    /// count (as bit scans, with the zero-source rule fitted for bsf and bsr). Returns
    /// the variant chosen (the first, with the group listed as unmodelled, if none
    /// reproduces it).
    fn fit_results(&mut self, group: Range<usize>) -> usize {
        let case = &self.program.cases[group.start];
        let (family, size) = (case.family, case.size);
        let si = size_index(size);
        let host = &self.host;
        let results_match = |v: usize| {
            let o = outcome_of(&self.runs, FlagRule::Keep, v);
            group
                .clone()
                .all(|i| (o[i].rax, o[i].rdx) == (host[i].rax, host[i].rdx))
        };
        let allowed = |v: usize| {
            let (rep, zs, _) = VARIANTS[v];
            match family {
                Family::Tzcnt | Family::Lzcnt => {
                    let scan = (family == Family::Lzcnt) as usize;
                    self.ignores_rep.is_none_or(|r| r == rep)
                        && (!rep || zs == self.fitted.zero_source[scan][si])
                }
                _ => true,
            }
        };
        let chosen = (0..VARIANTS.len()).find(|&v| allowed(v) && results_match(v));
        let v = chosen.unwrap_or_else(|| {
            self.results_unmodelled(group);
            0
        });
        let (rep, zs, wide) = VARIANTS[v];
        match family {
            Family::Bsf => self.fitted.zero_source[0][si] = zs,
            Family::Bsr => self.fitted.zero_source[1][si] = zs,
            Family::Shld if size == 2 => self.fitted.wide_double_shift[0] = wide,
            Family::Shrd if size == 2 => self.fitted.wide_double_shift[1] = wide,
            Family::Tzcnt | Family::Lzcnt if chosen.is_some() => self.ignores_rep = Some(rep),
            _ => {}
        }
        v
    }

    /// Lists `group` as unmodelled: no variant reproduces its results.
    fn results_unmodelled(&mut self, group: Range<usize>) {
        let (host, cases) = (&self.host, &self.program.cases);
        let o = outcome_of(&self.runs, FlagRule::Keep, 0);
        let i = group
            .clone()
            .find(|&i| (o[i].rax, o[i].rdx) != (host[i].rax, host[i].rdx))
            .unwrap_or(group.start);
        self.unmodelled.push(Unmodelled {
            family: cases[i].family,
            size: cases[i].size as u8,
            flags: 0,
            detail: format!(
                "result: host rax={:#x} rdx={:#x}, replay rax={:#x} rdx={:#x} after {}",
                host[i].rax,
                host[i].rdx,
                o[i].rax,
                o[i].rdx,
                cases[i].describe()
            ),
        });
    }

    /// Each flag's rule for `group` under variant `v`: the first candidate that
    /// reproduces every case, else the one that reproduces most.
    fn fit_flags(&mut self, group: Range<usize>, v: usize) {
        let case = &self.program.cases[group.start];
        let (family, size) = (case.family, case.size);
        let under_v: Vec<&[Outcome]> = RULES
            .iter()
            .map(|&r| outcome_of(&self.runs, r, v))
            .collect();
        for (flag, _) in FLAGS {
            let candidates = family.candidates(flag);
            let bit_matches = |r: FlagRule| {
                let o = under_v[rule_index(r)];
                group
                    .clone()
                    .filter(|&i| (o[i].rflags ^ self.host[i].rflags) & flag == 0)
                    .count()
            };
            if candidates.is_empty() {
                continue;
            }
            let best = candidates
                .iter()
                .copied()
                .find(|&r| bit_matches(r) == group.len())
                .unwrap_or_else(|| {
                    candidates
                        .iter()
                        .copied()
                        .max_by_key(|&r| bit_matches(r))
                        .expect("candidates are not empty")
                });
            self.fitted.set_rule(family, size, flag, best);
        }
    }

    /// The fitted rules must reproduce every case: runs them, and lists each family
    /// and size where they do not (once) as unmodelled.
    fn finish(mut self) -> Result<Quirks, ProbeError> {
        let mut quirks = Quirks {
            bit_scan_ignores_rep: self.ignores_rep.unwrap_or(false),
            undefined: self.fitted.clone(),
        };
        let last = self.run(&quirks)?;
        let mut reported: Vec<(Family, usize)> = self
            .unmodelled
            .iter()
            .map(|u| (u.family, u.size as usize))
            .collect();
        for (i, c) in self.program.cases.iter().enumerate() {
            let (o, h) = (last[i], self.host[i]);
            let flags = (o.rflags ^ h.rflags) & STATUS;
            if (o.rax, o.rdx) == (h.rax, h.rdx) && flags == 0 {
                continue;
            }
            if reported.contains(&(c.family, c.size)) {
                continue;
            }
            reported.push((c.family, c.size));
            self.unmodelled.push(Unmodelled {
                family: c.family,
                size: c.size as u8,
                flags,
                detail: mismatch(c, flags, h, o),
            });
        }
        quirks.undefined.unmodelled = self.unmodelled;
        Ok(quirks)
    }
}

/// What differs between the host's outcome `h` and replay's `o` of case `c` (`flags`:
/// the status flags that differ).
fn mismatch(c: &Case, flags: u64, h: Outcome, o: Outcome) -> String {
    let names: Vec<&str> = FLAGS
        .iter()
        .filter(|(f, _)| flags & f != 0)
        .map(|(_, n)| *n)
        .collect();
    format!(
        "{} differ: host rax={:#x} rdx={:#x} rflags={:#x}, replay rax={:#x} rdx={:#x} rflags={:#x} after {}",
        if names.is_empty() {
            "results".to_string()
        } else {
            names.join(", ")
        },
        h.rax,
        h.rdx,
        h.rflags,
        o.rax,
        o.rdx,
        o.rflags,
        c.describe()
    )
}

fn rule_index(r: FlagRule) -> usize {
    RULES
        .iter()
        .position(|&x| x == r)
        .expect("a rule the fit tries")
}

fn outcome_of(runs: &Runs, r: FlagRule, v: usize) -> &[Outcome] {
    runs[v][rule_index(r)]
        .as_deref()
        .expect("the rule was run under the variant")
}

fn outcome(b: &[u8]) -> Outcome {
    let word = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Outcome {
        rax: word(0),
        rdx: word(1),
        rflags: word(2),
    }
}

/// The fit's machine (see [`machine`]) with `code` at its code address.
fn machine_with(code: &[u8]) -> Result<(CpuState, GuestMemory), String> {
    use machine::*;
    let mut image = vec![0u8; RAM as usize];
    let mut put = |gpa: u64, bytes: &[u8]| {
        image[gpa as usize..gpa as usize + bytes.len()].copy_from_slice(bytes);
    };
    if code.len() as u64 > RESULTS - CODE {
        return Err(format!(
            "the probe's code is too long ({} bytes)",
            code.len()
        ));
    }
    put(CODE, code);
    // GDT: null, 64-bit code, data.
    put(
        GDT,
        &[0u64, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff]
            .map(u64::to_le_bytes)
            .concat(),
    );
    put(PML4, &(PDPT | pte::P | pte::W).to_le_bytes());
    put(PDPT, &(PD | pte::P | pte::W).to_le_bytes());
    let pd: Vec<u8> = (0..512u64)
        .flat_map(|i| ((i << 21) | pte::P | pte::W | pte::PS).to_le_bytes())
        .collect();
    put(PD, &pd);
    let pages = image
        .chunks(4096)
        .enumerate()
        .filter(|(_, p)| p.iter().any(|&b| b != 0))
        .map(|(i, p)| SnapshotPage {
            gpa: i as u64 * 4096,
            data: p.to_vec(),
        })
        .collect();
    let seg = |selector, attr| Segment {
        selector,
        base: 0,
        limit: 0xffff_ffff,
        attr,
    };
    let data = seg(0x10, seg_attr::KERNEL_DATA);
    let state = CpuState {
        rip: CODE,
        rflags: rflags::FIXED1,
        seg: [
            data,
            seg(0x08, seg_attr::KERNEL_CODE64),
            data,
            data,
            data,
            data,
        ],
        tr: Segment {
            selector: 0,
            base: 0,
            limit: 0xffff,
            attr: seg_attr::P | seg_attr::TYPE_TSS64_BUSY,
        },
        ldtr: Segment {
            selector: 0,
            base: 0,
            limit: 0xffff,
            attr: seg_attr::P | seg_attr::TYPE_LDT,
        },
        gdtr: DescriptorTable {
            base: GDT,
            limit: 0x17,
        },
        cr0: cr0::PG | cr0::NE | cr0::ET | cr0::MP | cr0::PE,
        cr3: PML4,
        cr4: cr4::PAE,
        efer: efer::LME | efer::LMA,
        ..Default::default()
    };
    let config = MachineConfig {
        regions: vec![MemoryRegion {
            gpa: 0,
            size: RAM,
            kind: RegionKind::Ram,
        }],
        tsc_khz: None,
        counter: CounterSourceKind::None,
        quirks: Quirks::default(),
        msrs: Default::default(),
    };
    let mem = GuestMemory::from_snapshot(
        &config,
        &Snapshot {
            cpu: state.clone(),
            pages,
        },
    )
    .map_err(|e| format!("the probe's memory: {e}"))?;
    Ok((state, mem))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that behaves exactly as `quirks` fits to `quirks`: the replay CPU's own
    /// results, fed back as the host's, give back the rules they were made with (where
    /// the cases can tell candidates apart).
    #[test]
    fn the_fit_recovers_the_rules_it_is_given() {
        let p = ProbeProgram::new();
        let code = p.assemble(&ProbeLayout {
            results: machine::RESULTS,
            stack_top: machine::STACK_TOP,
            done_port: machine::DONE_PORT,
        });
        for host in [UndefinedBehaviour::legacy(), measured_elsewhere()] {
            let quirks = Quirks {
                bit_scan_ignores_rep: true,
                undefined: host.clone(),
            };
            let outcomes = p
                .replay(&machine_with(&code).unwrap(), &quirks, &[])
                .expect("replay");
            let bytes: Vec<u8> = outcomes
                .iter()
                .flat_map(|o| [o.rax, o.rdx, o.rflags].map(u64::to_le_bytes).concat())
                .collect();
            let fitted = p.fit(&bytes, &[]).expect("fit");
            assert!(
                fitted.undefined.unmodelled.is_empty(),
                "{:?}",
                fitted.undefined.unmodelled
            );
            // Equal behaviour: the fitted rules give the same results on every case.
            let again = p
                .replay(&machine_with(&code).unwrap(), &fitted, &[])
                .expect("replay");
            assert_eq!(again, outcomes);
            // Where candidates differ on some case, the fit names the same rule (for bsf,
            // "SF of the index" and 0 are the same thing).
            for f in [Family::Shl, Family::Rol, Family::Shld, Family::Mul] {
                for &s in f.sizes() {
                    assert_eq!(
                        fitted.undefined.describe(f, s),
                        host.describe(f, s),
                        "{}",
                        f.name()
                    );
                }
            }
        }
    }

    /// A host whose answers no rule gives is reported, not fitted silently.
    #[test]
    fn what_no_rule_gives_is_unmodelled() {
        let p = ProbeProgram::new();
        let code = p.assemble(&ProbeLayout {
            results: machine::RESULTS,
            stack_top: machine::STACK_TOP,
            done_port: machine::DONE_PORT,
        });
        let quirks = Quirks::default();
        let mut outcomes = p
            .replay(&machine_with(&code).unwrap(), &quirks, &[])
            .expect("replay");
        // AF after `or` made to follow bit 4 of the result, which no rule does.
        for (c, o) in p.cases.iter().zip(outcomes.iter_mut()) {
            if c.family == Family::Or && c.size == 4 {
                let af = if o.rax & 0x10 != 0 { 0x10 } else { 0 };
                o.rflags = (o.rflags & !0x10) | af;
            }
        }
        let bytes: Vec<u8> = outcomes
            .iter()
            .flat_map(|o| [o.rax, o.rdx, o.rflags].map(u64::to_le_bytes).concat())
            .collect();
        let fitted = p.fit(&bytes, &[]).expect("fit");
        let u = &fitted.undefined.unmodelled;
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!((u[0].family, u[0].size, u[0].flags), (Family::Or, 4, 0x10));
        assert!(u[0].detail.contains("AF"), "{}", u[0].detail);
    }

    #[test]
    fn results_of_the_wrong_length_are_an_error() {
        let p = ProbeProgram::new();
        assert!(matches!(
            p.fit(&[0; 24], &[]),
            Err(ProbeError::ResultsLength { .. })
        ));
    }

    /// Rules unlike the legacy ones in every family (as measured on an Intel host whose
    /// KVM emulates ring 0).
    fn measured_elsewhere() -> UndefinedBehaviour {
        let mut b = UndefinedBehaviour::legacy();
        for f in Family::ALL {
            for &s in f.sizes() {
                if f.undefined_flags() & super::super::OF != 0
                    && !matches!(
                        f,
                        Family::RclFullTurn
                            | Family::RcrFullTurn
                            | Family::Div
                            | Family::Idiv
                            | Family::Bsf
                            | Family::Bsr
                    )
                    && f.candidates(super::super::OF)
                        .contains(&FlagRule::FirstStep)
                {
                    b.set_rule(f, s, super::super::OF, FlagRule::FirstStep);
                }
                if matches!(f, Family::Shl | Family::Shr | Family::Sar) {
                    b.set_rule(f, s, super::super::AF, FlagRule::Clear);
                }
                if matches!(f, Family::RclFullTurn | Family::RcrFullTurn) {
                    b.set_rule(f, s, super::super::OF, FlagRule::Keep);
                }
                if matches!(f, Family::Mul | Family::Imul | Family::ImulMultiOperand) {
                    b.set_rule(f, s, super::super::ZF, FlagRule::Clear);
                }
                if matches!(f, Family::Bsf | Family::Bsr) {
                    for flag in [
                        super::super::CF,
                        super::super::OF,
                        super::super::SF,
                        super::super::AF,
                    ] {
                        b.set_rule(f, s, flag, FlagRule::Clear);
                    }
                    b.set_rule(f, s, super::super::PF, FlagRule::Result);
                }
            }
        }
        b.wide_double_shift = [WideDoubleShift::DstSrcDst; 2];
        b
    }
}
