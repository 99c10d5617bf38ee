//! The fast forms against the general path (no KVM needed).
//!
//! The replay CPU executes its commonest instructions through handlers specialised at
//! decode time (engine/src/cpu/exec/fast.rs), runs straight-line runs of them as blocks
//! (block.rs), and everything else through the general dispatch (exec/mod.rs). All must
//! give the same results. Each case here is a short random program built around one
//! fast form (every operation, operand size and encoding in turn, each checked to get a
//! fast form), with more random fast-form instructions around it, random registers,
//! flags, memory (data, stack, page crossings, MMIO, unmapped and non-canonical
//! addresses, the program's own code, page tables) and random rules for the undefined
//! flags. It runs three ways: with fast forms and blocks; with fast forms one
//! instruction at a time; and with fast forms off (`Cpu::set_fast_forms(false)`: every
//! instruction through the general path). The last two go in lockstep, compared after
//! every instruction; then the first is compared with the last. The CPU state
//! (registers, RFLAGS, segments, control registers...), the instruction count, the
//! exits and memory must agree.
//!
//! `KRR_FAST_FORM_CASES=N` runs N cases (default 3000, 500 in debug builds);
//! `KRR_FAST_FORM_SEED=S` uses another seed.

mod cpu_common;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::OnceLock;

use cpu_common::*;
use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Decoder, DecoderOptions, Formatter, Instruction,
    InstructionBlock, IntelFormatter, MemoryOperand, Register,
};
use krr_engine::arch::rflags::{DF, FIXED1, STATUS};
use krr_engine::cpu::undefined::{FLAGS, Family, FlagRule, UndefinedBehaviour};
use krr_engine::cpu::{Cpu, Exit, Quirks, has_fast_form};
use krr_engine::memory::GuestMemory;
use krr_engine::state::{CpuState, gpr, seg};

/// Instructions a run may execute at most (the programs have no loops).
const LIMIT: u64 = 2_000;
/// The data area the memory operands mostly address, filled with random bytes.
const DATA_LEN: u64 = 0x4000;
/// Guest-physical addresses from here on are MMIO (mapped, not RAM).
const MMIO: u64 = 0x200_0000;
/// The first linear address the page tables do not map.
const UNMAPPED: u64 = 0x4000_0000;
/// Fake addresses the program's instructions get before the block encoder places them.
const FAKE_IP: u64 = 0x7000_0000;

struct Rng(u64);

impl Rng {
    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
    /// A register or immediate value: boundaries, small, powers of two, anything.
    fn value(&mut self) -> u64 {
        const EDGES: [u64; 13] = [
            0x7f,
            0x80,
            0xff,
            0x7fff,
            0x8000,
            0xffff,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
            0x1_0000_0000,
            0x7fff_ffff_ffff_ffff,
            0x8000_0000_0000_0000,
            u64::MAX,
        ];
        match self.below(10) {
            0 => 0,
            1 => self.below(64),
            2 => self.below(64).wrapping_neg(),
            3 | 4 => self.pick(&EDGES),
            5 => 1 << self.below(64),
            6 => self.next() & 0xffff_ffff,
            _ => self.next(),
        }
    }
}

/// An iced code by name ("Add_rm32_imm8").
fn code(name: &str) -> Code {
    static CODES: OnceLock<HashMap<String, Code>> = OnceLock::new();
    let codes = CODES.get_or_init(|| Code::values().map(|c| (format!("{c:?}"), c)).collect());
    *codes
        .get(name)
        .unwrap_or_else(|| panic!("no iced code {name}"))
}

/// What fills an instruction's r/m operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rm {
    Reg,
    Mem,
}

/// Every fast form: a code and what its r/m operand (if any) is.
fn forms() -> Vec<(Code, Rm)> {
    let mut out = Vec::new();
    let mut add = |name: String, rms: &[Rm]| {
        for &rm in rms {
            out.push((code(&name), rm));
        }
    };
    let both = &[Rm::Reg, Rm::Mem][..];
    let (reg, mem) = (&[Rm::Reg][..], &[Rm::Mem][..]);
    for n in ["Nopd", "Nopq", "Nopw", "Pause", "Endbr64"] {
        add(n.into(), reg);
    }
    for n in ["Nop_rm16", "Nop_rm32", "Nop_rm64"] {
        add(n.into(), both);
    }
    for n in [32, 64] {
        add(format!("Mov_rm{n}_r{n}"), both);
        add(format!("Mov_r{n}_rm{n}"), both);
        add(format!("Mov_rm{n}_imm32"), both);
        add(format!("Lea_r{n}_m"), mem);
        add(format!("Imul_r{n}_rm{n}"), both);
        add(format!("Imul_r{n}_rm{n}_imm8"), both);
        add(format!("Imul_r{n}_rm{n}_imm32"), both);
        add(format!("Inc_rm{n}"), reg);
        add(format!("Dec_rm{n}"), reg);
        for src in [8, 16] {
            add(format!("Movzx_r{n}_rm{src}"), both);
            add(format!("Movsx_r{n}_rm{src}"), both);
        }
        add(format!("Movsxd_r{n}_rm32"), both);
        for op in ["Shl", "Sal", "Shr", "Sar", "Rol", "Ror"] {
            add(format!("{op}_rm{n}_imm8"), reg);
            add(format!("{op}_rm{n}_1"), reg);
        }
    }
    add("Mov_r32_imm32".into(), reg);
    add("Mov_r64_imm64".into(), reg);
    add("Mov_rm8_imm8".into(), mem);
    add("Mov_rm16_imm16".into(), mem);
    for op in ["Add", "Or", "And", "Sub", "Xor", "Cmp"] {
        for n in [32, 64] {
            add(format!("{op}_rm{n}_r{n}"), both);
            add(format!("{op}_r{n}_rm{n}"), both);
            add(format!("{op}_rm{n}_imm8"), both);
            add(format!("{op}_rm{n}_imm32"), both);
        }
        add(format!("{op}_EAX_imm32"), reg);
        add(format!("{op}_RAX_imm32"), reg);
        add(format!("{op}_rm8_imm8"), mem);
        add(format!("{op}_rm16_imm16"), mem);
    }
    add("Test_rm32_r32".into(), both);
    add("Test_rm64_r64".into(), both);
    add("Test_rm32_imm32".into(), both);
    add("Test_rm64_imm32".into(), both);
    add("Test_EAX_imm32".into(), reg);
    add("Test_RAX_imm32".into(), reg);
    add("Test_rm8_imm8".into(), mem);
    add("Test_rm16_imm16".into(), mem);
    for cc in [
        "o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g",
    ] {
        add(format!("J{cc}_rel8_64"), reg);
        add(format!("J{cc}_rel32_64"), reg);
    }
    for n in [
        "Jmp_rel8_64",
        "Jmp_rel32_64",
        "Call_rel32_64",
        "Retnq",
        "Push_r64",
        "Pop_r64",
    ] {
        add(n.into(), reg);
    }
    out
}

/// An operand of an instruction being built.
#[derive(Debug, Clone, Copy)]
enum Operand {
    Reg(Register),
    Mem(MemoryOperand),
    Imm(i64),
}

fn build(code: Code, ops: &[Operand]) -> Instruction {
    use Operand::*;
    match *ops {
        [] => Ok(Instruction::with(code)),
        [Reg(a)] => Instruction::with1(code, a),
        [Mem(m)] => Instruction::with1(code, m),
        [Reg(a), Reg(b)] => Instruction::with2(code, a, b),
        [Reg(a), Mem(m)] => Instruction::with2(code, a, m),
        [Mem(m), Reg(b)] => Instruction::with2(code, m, b),
        [Reg(a), Imm(i)] => Instruction::with2(code, a, i),
        [Mem(m), Imm(i)] => Instruction::with2(code, m, i as i32),
        [Reg(a), Reg(b), Imm(i)] => Instruction::with3(code, a, b, i as i32),
        [Reg(a), Mem(m), Imm(i)] => Instruction::with3(code, a, m, i as i32),
        _ => panic!("no builder for {code:?} {ops:?}"),
    }
    .unwrap_or_else(|e| panic!("{code:?} {ops:?}: {e}"))
}

const GPR8: [Register; 16] = {
    use Register::*;
    [
        AL, CL, DL, BL, SPL, BPL, SIL, DIL, R8L, R9L, R10L, R11L, R12L, R13L, R14L, R15L,
    ]
};
const GPR16: [Register; 16] = {
    use Register::*;
    [
        AX, CX, DX, BX, SP, BP, SI, DI, R8W, R9W, R10W, R11W, R12W, R13W, R14W, R15W,
    ]
};
const GPR32: [Register; 16] = {
    use Register::*;
    [
        EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI, R8D, R9D, R10D, R11D, R12D, R13D, R14D, R15D,
    ]
};
const GPR64: [Register; 16] = {
    use Register::*;
    [
        RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15,
    ]
};

/// A program under construction: instructions at fake addresses, branches to later
/// instructions by index.
#[derive(Default)]
struct Program {
    ins: Vec<Instruction>,
    /// (branch, index of its target).
    branches: Vec<(usize, usize)>,
    /// The instructions of the form under test.
    featured: Vec<usize>,
}

impl Program {
    fn push(&mut self, i: Instruction) -> usize {
        self.ins.push(i);
        self.ins.len() - 1
    }

    fn branch(&mut self, code: Code) -> usize {
        self.push(Instruction::with_branch(code, 0).expect("a branch"))
    }

    /// Points branch `b` at the next instruction pushed.
    fn land(&mut self, b: usize) {
        self.branches.push((b, self.ins.len()));
    }

    /// Encodes the program at CODE; returns the bytes and each instruction's offset.
    fn assemble(&self) -> (Vec<u8>, Vec<u32>) {
        let mut ins = self.ins.clone();
        for (i, x) in ins.iter_mut().enumerate() {
            x.set_ip(FAKE_IP + 16 * i as u64);
        }
        for &(b, to) in &self.branches {
            ins[b].set_near_branch64(FAKE_IP + 16 * to as u64);
        }
        let block = InstructionBlock::new(&ins, CODE);
        let r = BlockEncoder::encode(
            64,
            block,
            BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )
        .expect("the program encodes");
        (r.code_buffer, r.new_instruction_offsets)
    }
}

/// Builds one random case's program and machine.
struct Generator<'a> {
    rng: &'a mut Rng,
    prog: Program,
    fs_base: u64,
    gs_base: u64,
}

impl Generator<'_> {
    /// A random register of `bits` (RSP rarely: it is the stack).
    fn reg(&mut self, bits: u32) -> Register {
        let mut i = self.rng.below(16) as usize;
        if i == gpr::RSP && !self.rng.chance(10) {
            i = gpr::RBX;
        }
        match bits {
            8 => GPR8[i],
            16 => GPR16[i],
            32 => GPR32[i],
            _ => GPR64[i],
        }
    }

    /// An immediate that fits a `bits`-bit immediate field.
    fn imm(&mut self, bits: u32) -> i64 {
        let v = self.rng.value() as i64;
        match bits {
            8 => v as i8 as i64,
            16 => v as i16 as i64,
            32 => v as i32 as i64,
            _ => v,
        }
    }

    /// Where a memory operand of `size` bytes points: mostly the data area, sometimes
    /// across a page, the stack, MMIO, a non-canonical or unmapped address, the
    /// program's own code or a page table.
    fn target(&mut self, size: u64) -> u64 {
        let r = &mut *self.rng;
        match r.below(100) {
            0..=69 => DATA + r.below(DATA_LEN - 8),
            70..=77 => DATA + 0x1000 * (1 + r.below(3)) - 1 - r.below(size.max(2) - 1),
            78..=81 => STACK_TOP - 8 - r.below(0x200),
            82..=85 => MMIO + 8 * r.below(0x200),
            86..=88 => (1 << 47) + r.below(1 << 20),
            89..=91 => 0xffff_0000_0000_0000 + r.below(1 << 20),
            92..=94 => UNMAPPED + r.below(1 << 20),
            95..=97 => CODE + r.below(0x100),
            98 => PT + 8 * r.below(512),
            _ => DATA + 0x1000 - size,
        }
    }

    /// `mov reg, v` ahead of the instruction being built.
    fn set(&mut self, r: Register, v: u64) {
        self.prog.push(build(
            Code::Mov_r64_imm64,
            &[Operand::Reg(r), Operand::Imm(v as i64)],
        ));
    }

    /// A memory operand of `size` bytes with 64-bit addressing (the registers it uses
    /// are loaded first so that it points at [`Generator::target`]).
    fn mem(&mut self, size: u64) -> MemoryOperand {
        let seg = match self.rng.below(10) {
            0 => Register::FS,
            1 => Register::GS,
            2 => Register::SS,
            _ => Register::None,
        };
        let seg_base = match seg {
            Register::FS => self.fs_base,
            Register::GS => self.gs_base,
            _ => 0,
        };
        let ea = self.target(size).wrapping_sub(seg_base);
        let disp = match self.rng.below(4) {
            0 => 0,
            1 => self.rng.below(256) as i64 - 128,
            2 => self.rng.next() as i32 as i64,
            _ => self.rng.below(0x1000) as i64,
        };
        let shape = self.rng.below(6);
        if shape == 0 && ea < 0x8000_0000 {
            // [disp32]
            return MemoryOperand::new(Register::None, Register::None, 1, ea as i64, 4, false, seg);
        }
        if shape == 1 && ea < 0x8000_0000 && seg == Register::None {
            // [rip + disp32] (iced takes the target)
            return MemoryOperand::new(Register::RIP, Register::None, 1, ea as i64, 4, false, seg);
        }
        let base = self.reg(64);
        let (index, scale) = if shape >= 3 {
            let mut index = self.reg(64);
            if index == Register::RSP || index == base {
                index = if base == Register::R9 {
                    Register::R10
                } else {
                    Register::R9
                };
            }
            (index, self.rng.pick(&[1u32, 2, 4, 8]))
        } else {
            (Register::None, 1)
        };
        let mut rest = ea.wrapping_sub(disp as u64);
        if index != Register::None {
            let iv = self.rng.below(64).wrapping_sub(16);
            self.set(index, iv);
            rest = rest.wrapping_sub(iv.wrapping_mul(scale as u64));
        }
        self.set(base, rest);
        MemoryOperand::new(base, index, scale, disp, 1, false, seg)
    }

    /// The operand of one token of an iced code name ("rm32", "r64", "imm8", "EAX",
    /// "m", "1").
    fn operand(&mut self, token: &str, rm: Rm, size_hint: u64) -> Operand {
        let bits = |t: &str| {
            t.trim_start_matches(|c: char| c.is_alphabetic())
                .parse::<u32>()
        };
        match token {
            "EAX" => Operand::Reg(Register::EAX),
            "RAX" => Operand::Reg(Register::RAX),
            "m" => Operand::Mem(self.mem(size_hint)),
            "1" => Operand::Imm(1),
            t if t.starts_with("imm") => Operand::Imm(self.imm(bits(t).expect("imm size"))),
            t if t.starts_with("rm") && rm == Rm::Mem => {
                Operand::Mem(self.mem(bits(t).expect("rm size") as u64 / 8))
            }
            t if t.starts_with('r') => Operand::Reg(self.reg(bits(t).expect("register size"))),
            t => panic!("operand {t}"),
        }
    }

    /// One instruction of `code` (not a branch) with random operands, after the
    /// instructions that load its address registers. Returns its index.
    fn plain(&mut self, code: Code, rm: Rm) -> usize {
        let name = format!("{code:?}");
        let tokens: Vec<&str> = name.split('_').skip(1).collect();
        // Operands are built left to right; a memory operand's setup goes first.
        let ops: Vec<Operand> = tokens.iter().map(|t| self.operand(t, rm, 8)).collect();
        self.prog.push(build(code, &ops))
    }

    /// A random non-branch fast form.
    fn filler(&mut self, forms: &[(Code, Rm)]) {
        loop {
            let (c, rm) = self.rng.pick(forms);
            if !is_control(c) {
                self.plain(c, rm);
                return;
            }
        }
    }

    /// One item built around `code`: the instruction (and what it needs around it).
    /// Returns the index of the instruction of `code`.
    fn item(&mut self, code: Code, rm: Rm, forms: &[(Code, Rm)]) -> usize {
        let name = format!("{code:?}");
        match name.as_str() {
            "Call_rel32_64" | "Retnq" => {
                // call L1; jmp L2; L1: ret; L2:
                let call = self.prog.branch(Code::Call_rel32_64);
                let jmp = self
                    .prog
                    .branch(self.rng.pick(&[Code::Jmp_rel8_64, Code::Jmp_rel32_64]));
                self.prog.land(call);
                let ret = self.prog.push(Instruction::with(Code::Retnq));
                self.prog.land(jmp);
                if code == Code::Retnq { ret } else { call }
            }
            "Push_r64" | "Pop_r64" => {
                let r = self.reg(64);
                self.prog.push(build(code, &[Operand::Reg(r)]))
            }
            n if n.contains("_rel") => {
                // jcc/jmp over a random instruction.
                let b = self.prog.branch(code);
                self.filler(forms);
                self.prog.land(b);
                b
            }
            _ => self.plain(code, rm),
        }
    }
}

fn is_control(c: Code) -> bool {
    let n = format!("{c:?}");
    n.contains("_rel") || matches!(n.as_str(), "Retnq" | "Push_r64" | "Pop_r64")
}

/// A random undefined-flags table and its description: the legacy one, one rule for
/// everything, or a rule drawn for every family, size and flag (so that a fast form
/// taking another family's rule shows).
fn undefined_rules(rng: &mut Rng) -> (UndefinedBehaviour, String) {
    match rng.below(4) {
        0 => (UndefinedBehaviour::legacy(), "legacy".into()),
        1 => {
            let rule = rng.pick(&[
                FlagRule::Keep,
                FlagRule::Clear,
                FlagRule::Set,
                FlagRule::Result,
            ]);
            (
                UndefinedBehaviour::uniform(rule),
                format!("{rule:?} everywhere"),
            )
        }
        _ => {
            let mut b = UndefinedBehaviour::legacy();
            for f in Family::ALL {
                for &size in f.sizes() {
                    for (flag, _) in FLAGS {
                        let c = f.candidates(flag);
                        if !c.is_empty() {
                            b.set_rule(f, size, flag, rng.pick(c));
                        }
                    }
                }
            }
            let table = b.table().join("\n    ");
            (b, format!("drawn:\n    {table}"))
        }
    }
}

/// One case: the machine and the program.
struct Case {
    state: CpuState,
    mem: GuestMemory,
    quirks: Quirks,
    /// The undefined-flags rules, described.
    rules: String,
    prog: Program,
    code: Vec<u8>,
    offsets: Vec<u32>,
}

fn make_case(
    rng: &mut Rng,
    base: &GuestMemory,
    st0: &CpuState,
    forms: &[(Code, Rm)],
    featured: (Code, Rm),
) -> Case {
    let fs_base = DATA + rng.below(0x800);
    let gs_base = if rng.chance(20) {
        UNMAPPED + rng.below(0x1000)
    } else {
        DATA + rng.below(0x800)
    };
    let mut g = Generator {
        rng,
        prog: Program::default(),
        fs_base,
        gs_base,
    };
    let before = g.rng.below(4);
    let after = g.rng.below(4);
    for _ in 0..before {
        let (c, rm) = g.rng.pick(forms);
        g.item(c, rm, forms);
    }
    let f = g.item(featured.0, featured.1, forms);
    g.prog.featured.push(f);
    for _ in 0..after {
        let (c, rm) = g.rng.pick(forms);
        g.item(c, rm, forms);
    }
    g.prog
        .push(Instruction::with2(Code::Out_imm8_AL, END_PORT as u32, Register::AL).unwrap());
    let prog = g.prog;
    let (code, offsets) = prog.assemble();

    let mut state = st0.clone();
    for (i, r) in state.gpr.iter_mut().enumerate() {
        *r = if i == gpr::RSP {
            STACK_TOP - 8 * rng.below(64) - rng.below(8) * (rng.chance(10) as u64)
        } else {
            rng.value()
        };
    }
    state.rflags = (rng.next() & (STATUS | DF)) | FIXED1;
    state.seg[seg::FS].base = fs_base;
    state.seg[seg::GS].base = gs_base;
    let mut mem = base.clone();
    mem.write(CODE, &code).unwrap();
    let mut data = vec![0u8; DATA_LEN as usize];
    data.iter_mut().for_each(|b| *b = rng.next() as u8);
    mem.write(DATA, &data).unwrap();
    let stack: Vec<u8> = (0..0x800).map(|_| rng.next() as u8).collect();
    mem.write(STACK_TOP - 0x800, &stack).unwrap();
    let (undefined, rules) = undefined_rules(rng);
    let quirks = Quirks {
        bit_scan_ignores_rep: false,
        undefined,
    };
    Case {
        state,
        mem,
        quirks,
        rules,
        prog,
        code,
        offsets,
    }
}

/// A CPU running a case, with the exits it met.
struct Run {
    cpu: Cpu,
    mem: GuestMemory,
    exits: Vec<Exit>,
    done: bool,
}

impl Run {
    fn new(case: &Case, fast: bool) -> Run {
        let mut cpu = Cpu::new(case.state.clone(), default_cpuid());
        cpu.set_quirks(case.quirks.clone());
        cpu.set_fast_forms(fast);
        Run {
            cpu,
            mem: case.mem.clone(),
            exits: Vec::new(),
            done: false,
        }
    }

    /// Runs until the instruction count reaches `limit` or the program ends (the end
    /// marker, an exception stub, an error, `hlt`).
    fn advance(&mut self, limit: u64) {
        while !self.done {
            let e = self.cpu.run(&mut self.mem, limit);
            match e {
                Exit::Limit => return,
                Exit::PortIn { port, .. } => {
                    self.cpu.complete_input(port_in_value(port), false).unwrap()
                }
                Exit::MmioRead { gpa, .. } => {
                    self.cpu.complete_input(mmio_value(gpa), false).unwrap()
                }
                Exit::MmioWrite { .. } => {}
                Exit::PortOut { port, .. } if port != END_PORT && port != EXC_PORT => {}
                _ => self.done = true,
            }
            self.exits.push(e);
        }
    }
}

/// What differs between two runs (empty: nothing).
fn differences(a: &Run, b: &Run, memory: bool) -> String {
    let mut out = String::new();
    let (sa, sb) = (a.cpu.state(), b.cpu.state());
    for i in 0..16 {
        if sa.gpr[i] != sb.gpr[i] {
            let _ = writeln!(
                out,
                "  {}: {:#x} vs {:#x}",
                gpr::NAMES[i],
                sa.gpr[i],
                sb.gpr[i]
            );
        }
    }
    if sa.rip != sb.rip {
        let _ = writeln!(out, "  rip: {:#x} vs {:#x}", sa.rip, sb.rip);
    }
    if sa.rflags != sb.rflags {
        let _ = writeln!(out, "  rflags: {:#x} vs {:#x}", sa.rflags, sb.rflags);
    }
    if out.is_empty() && sa != sb {
        let _ = writeln!(out, "  state: {sa:?}\n    vs {sb:?}");
    }
    if a.cpu.icount() != b.cpu.icount() {
        let _ = writeln!(out, "  icount: {} vs {}", a.cpu.icount(), b.cpu.icount());
    }
    if a.exits != b.exits {
        let _ = writeln!(out, "  exits: {:?} vs {:?}", a.exits, b.exits);
    }
    if memory {
        let pages = a.mem.diff_pages(&b.mem).expect("same layout");
        if !pages.is_empty() {
            let _ = writeln!(out, "  memory pages differ: {pages:x?}");
        }
    }
    out
}

fn listing(case: &Case) -> String {
    let mut out = String::new();
    let mut f = IntelFormatter::new();
    let mut dec = Decoder::with_ip(64, &case.code, CODE, DecoderOptions::NONE);
    for i in dec.iter() {
        let mut s = String::new();
        f.format(&i, &mut s);
        let _ = writeln!(out, "  {:#x}: {s}", i.ip());
    }
    out
}

/// Runs a case three ways (see the module documentation); an error names what
/// differs.
fn check(case: &Case) -> Result<(), String> {
    let mut stepped = Run::new(case, true);
    let mut general = Run::new(case, false);
    for n in 1..=LIMIT {
        stepped.advance(n);
        general.advance(n);
        let d = differences(&stepped, &general, false);
        if !d.is_empty() {
            return Err(format!(
                "fast forms one at a time vs general path, after instruction {n} (rip {:#x} vs {:#x}):\n{d}",
                stepped.cpu.state().rip,
                general.cpu.state().rip
            ));
        }
        if stepped.done && general.done {
            break;
        }
    }
    let d = differences(&stepped, &general, true);
    if !d.is_empty() {
        return Err(format!(
            "fast forms one at a time vs general path, at the end:\n{d}"
        ));
    }
    let mut blocks = Run::new(case, true);
    blocks.advance(LIMIT);
    let d = differences(&blocks, &general, true);
    if !d.is_empty() {
        return Err(format!(
            "fast forms in blocks vs general path, at the end:\n{d}"
        ));
    }
    Ok(())
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn fast_forms_match_the_general_path() {
    // About a second in release builds.
    let cases = env(
        "KRR_FAST_FORM_CASES",
        if cfg!(debug_assertions) { 500 } else { 3000 },
    );
    let seed = env("KRR_FAST_FORM_SEED", 0x6b72_725f_6661_7374);
    let img = image();
    let base = img.memory();
    let forms = forms();
    let mut rng = Rng(seed);
    let mut featured: BTreeMap<String, u64> = BTreeMap::new();
    let mut ended = BTreeMap::<&str, u64>::new();
    for n in 0..cases {
        let form = forms[n as usize % forms.len()];
        let case = make_case(&mut rng, &base, &img.state, &forms, form);
        // The form under test must be a fast form where the CPU decodes it.
        for &i in &case.prog.featured {
            let at = case.offsets[i] as usize;
            let ins = Decoder::with_ip(64, &case.code[at..], 0, DecoderOptions::NONE).decode();
            assert!(
                has_fast_form(&ins),
                "case {n}: {:?} ({:?}) has no fast form:\n{}",
                form.0,
                form.1,
                listing(&case)
            );
        }
        if let Err(e) = check(&case) {
            panic!(
                "case {n} (seed {seed:#x}), form {:?} ({:?}):\n{e}program:\n{}initial registers: {:x?}\nrflags {:#x}, undefined flags: {}",
                form.0,
                form.1,
                listing(&case),
                case.state.gpr,
                case.state.rflags,
                case.rules,
            );
        }
        *featured
            .entry(format!("{:?} {:?}", form.0, form.1))
            .or_default() += 1;
        let mut run = Run::new(&case, true);
        run.advance(LIMIT);
        let how = match run.exits.last() {
            Some(Exit::PortOut { port, .. }) if *port == END_PORT => "end",
            Some(Exit::PortOut { .. }) => "exception",
            Some(Exit::Error(_)) => "error",
            _ => "other",
        };
        *ended.entry(how).or_default() += 1;
    }
    if cases >= forms.len() as u64 {
        assert_eq!(featured.len(), forms.len(), "every form was tested");
    }
    eprintln!(
        "{cases} cases over {} fast forms; runs ended: {ended:?}",
        forms.len()
    );
}
