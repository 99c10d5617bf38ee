//! Differential tests: the same ring-0 code under KVM and in the replay CPU must leave
//! the same registers, flags, memory, and instruction count.

mod cpu_common;

use cpu_common::compare::*;
use cpu_common::kvm::{KvmExit, KvmMachine, available, observed_cpuid};
use cpu_common::*;
use iced_x86::code_asm::*;
use krr_engine::cpu::Exit;

/// The recorder's probe, run here, finds a rule for every undefined flag and result of
/// this host (the table is printed for the CI log).
#[test]
fn this_host_is_modelled_by_the_probe() {
    if !available() {
        return;
    }
    let q = cpu_common::kvm::host_quirks();
    println!("bit_scan_ignores_rep: {}", q.bit_scan_ignores_rep);
    for line in q.undefined.table() {
        println!("{line}");
    }
    assert!(
        q.undefined.unmodelled.is_empty(),
        "not modelled: {:#?}",
        q.undefined.unmodelled
    );
}

/// The comparisons can fail: with any one undefined flag of a shift or a multiply
/// given another rule than this host's, a program of those instructions differs from
/// KVM.
#[test]
fn a_wrong_rule_for_an_undefined_flag_is_caught() {
    use krr_engine::cpu::undefined::{Family, FlagRule};
    if !available() {
        return;
    }
    const AF: u64 = 0x10;
    const OF: u64 = 0x800;
    const ZF: u64 = 0x40;
    let mut a = asm();
    for (i, v) in [0x8000_0001u64, 0x1234_5678_9abc_def0, 0xc000_0000_0000_0003]
        .iter()
        .enumerate()
    {
        a.mov(rax, *v).unwrap();
        a.mov(rbx, 0x10u64 << i).unwrap();
        a.shl(rax, 2).unwrap();
        a.pushfq().unwrap();
        a.shr(rax, 3).unwrap();
        a.pushfq().unwrap();
        a.mul(rbx).unwrap();
        a.pushfq().unwrap();
        a.xor(edx, edx).unwrap();
        a.mul(rdx).unwrap();
        a.pushfq().unwrap();
    }
    end(&mut a);
    let mut img = image();
    img.load_code(&mut a);
    let host = cpu_common::kvm::host_quirks();
    let (diffs, _) = differences(&img, Some(host.clone()), true, &|_| String::new());
    assert!(diffs.is_empty(), "this host's rules: {diffs:?}");
    for (family, size, flag) in [
        (Family::Shr, 8, AF),
        (Family::Shl, 8, OF),
        (Family::Mul, 8, ZF),
    ] {
        let mut wrong = host.clone();
        let mine = host.undefined.rule(family, size, flag);
        let other = family
            .candidates(flag)
            .iter()
            .copied()
            .find(|&r| r != mine && !matches!(r, FlagRule::SignChange))
            .expect("another candidate");
        wrong.undefined.set_rule(family, size, flag, other);
        let (diffs, _) = differences(&img, Some(wrong), true, &|_| String::new());
        assert!(
            !diffs.is_empty(),
            "{} {flag:#x} as {other:?} instead of {mine:?} went unnoticed",
            family.name()
        );
    }
}

#[test]
fn basic_sequence() {
    if !available() {
        return;
    }
    let mut img = image();
    let mut a = asm();
    a.mov(eax, 1u32).unwrap();
    a.add(eax, 2i32).unwrap();
    a.mov(rbx, 0xffff_ffff_ffff_fff0u64).unwrap();
    a.add(rbx, 0x20i32).unwrap();
    a.mov(qword_ptr(DATA), rbx).unwrap();
    end(&mut a);
    img.load_code(&mut a);
    let c = compare("basic", &img);
    assert_eq!(c.ours_icount, 6);
}

/// `rep movsb`/`rep stosq`/`repe cmpsb` with various counts: measures KVM's count and
/// checks the replay CPU's rule (engine/src/icount.rs) against it.
#[test]
fn rep_string_counts() {
    if !available() {
        return;
    }
    let mut report = Vec::new();
    for &n in &[0u64, 1, 3, 1023, 1024, 1025, 2048, 2049, 5000] {
        for kind in 0..3 {
            let mut img = image();
            let mut a = asm();
            a.mov(rcx, n).unwrap();
            a.mov(rsi, DATA).unwrap();
            a.mov(rdi, DATA + 0x4000).unwrap();
            a.mov(rax, 0x1122_3344_5566_7788u64).unwrap();
            match kind {
                0 => a.rep().movsb().unwrap(),
                1 => a.rep().stosq().unwrap(),
                _ => a.repe().cmpsb().unwrap(),
            }
            end(&mut a);
            img.load_code(&mut a);
            for i in 0..0x4000u64 {
                img.ram[(DATA + i) as usize] = (i * 7 % 251) as u8;
            }
            let c = compare(&format!("rep kind {kind} n {n}"), &img);
            report.push(format!(
                "kind {kind} rcx {n}: kvm {} ours {}",
                c.kvm_count, c.ours_icount
            ));
            if kind < 2 {
                // 4 setup instructions, the rep, the end marker.
                assert_eq!(
                    c.ours_icount,
                    5 + 1 + n.div_ceil(1024),
                    "rep rule for rcx {n}"
                );
            }
        }
    }
    println!("{}", report.join("\n"));
}

/// A load that page-faults, handled by a handler that maps the page and returns with
/// iretq: measures whether KVM counts the faulting instruction.
#[test]
fn faulting_instruction_count() {
    if !available() {
        return;
    }
    let mut img = image();
    let target = DATA + 0x3000;
    let pte = Image::pte_addr(target);
    img.write_u64(pte, img.read_u64(pte) & !1);
    // #PF handler: set P in the PTE, pop the error code, iretq.
    let mut h = asm();
    h.push(rax).unwrap();
    h.mov(rax, pte).unwrap();
    h.or(qword_ptr(rax), 1i32).unwrap();
    h.pop(rax).unwrap();
    h.add(rsp, 8i32).unwrap();
    h.iretq().unwrap();
    img.load_at(HANDLERS, &mut h);
    img.set_gate(14, HANDLERS, false, 0);
    let mut a = asm();
    a.mov(rbx, target).unwrap();
    a.mov(rax, qword_ptr(rbx)).unwrap();
    a.mov(rcx, 5u64).unwrap();
    end(&mut a);
    img.load_code(&mut a);
    let c = compare("faulting load", &img);
    println!("faulting load: kvm {} ours {}", c.kvm_count, c.ours_icount);
    // mov, faulting mov, 6 handler instructions, mov again, mov, out.
    assert_eq!(c.ours_icount, 11);

    // An instruction fetch from a non-present page.
    let mut img = image();
    let code2 = 0x1f_f000u64;
    let pte = Image::pte_addr(code2);
    img.write_u64(pte, img.read_u64(pte) & !1);
    let mut h = asm();
    h.push(rax).unwrap();
    h.mov(rax, pte).unwrap();
    h.or(qword_ptr(rax), 1i32).unwrap();
    h.pop(rax).unwrap();
    h.add(rsp, 8i32).unwrap();
    h.iretq().unwrap();
    img.load_at(HANDLERS, &mut h);
    img.set_gate(14, HANDLERS, false, 0);
    let mut b = asm();
    b.mov(rcx, 7u64).unwrap();
    end(&mut b);
    img.load_at(code2, &mut b);
    let mut a = asm();
    a.mov(rbx, code2).unwrap();
    a.jmp(rbx).unwrap();
    img.load_code(&mut a);
    let c = compare("faulting fetch", &img);
    println!("faulting fetch: kvm {} ours {}", c.kvm_count, c.ours_icount);
    // mov, jmp, the fetch that faults, 6 handler instructions, mov, out.
    assert_eq!(c.ours_icount, 11);
}

// ---------------------------------------------------------------------------------
// Randomized instruction blocks.

use iced_x86::{Code, Encoder, Formatter, Instruction, IntelFormatter, MemoryOperand, Register};

const OUT: u64 = 0x100000;
/// Where generated programs go (2 MiB pages; up to 1 MiB).
const PROG: u64 = 0x40_0000;
const SCRATCH: u64 = 0x90000;
const BLOCK_OUT: u64 = 96;

const REGS64: [Register; 10] = [
    Register::RAX,
    Register::RBX,
    Register::RCX,
    Register::RDX,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
];

fn sized(r: Register, size: usize) -> Register {
    let base = match size {
        1 => Register::AL,
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    };
    let n = match r {
        Register::RAX => 0,
        Register::RCX => 1,
        Register::RDX => 2,
        Register::RBX => 3,
        Register::RSP => 4,
        Register::RBP => 5,
        Register::RSI => 6,
        Register::RDI => 7,
        other => other as u32 - Register::RAX as u32,
    };
    if size == 1 && n >= 4 {
        // SPL..DIL, R8L.. follow AH..BH in iced's numbering.
        return reg_number(Register::SPL as u32 + n - 4);
    }
    reg_number(base as u32 + n)
}

fn reg_number(v: u32) -> Register {
    Register::values().nth(v as usize).expect("register number")
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
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
    fn pick<T: Copy>(&mut self, s: &[T]) -> T {
        s[self.below(s.len() as u64) as usize]
    }
    /// Interesting operand values: boundaries as often as random ones.
    fn value(&mut self) -> u64 {
        match self.below(8) {
            0 => self.pick(&[0, 1, u64::MAX, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff]),
            1 => self.pick(&[
                0x7fff_ffff,
                0x8000_0000,
                0xffff_ffff,
                0x1_0000_0000,
                0x7fff_ffff_ffff_ffff,
                0x8000_0000_0000_0000,
            ]),
            2 => self.below(64),
            3 => self.next() | 0x8000_0000_0000_0000,
            _ => self.next(),
        }
    }
}

struct Program {
    ins: Vec<Instruction>,
    blocks: Vec<String>,
}

fn i2(code: Code, a: Register, b: Register) -> Instruction {
    Instruction::with2(code, a, b).unwrap()
}

impl Program {
    fn new() -> Program {
        let mut p = Program {
            ins: Vec::new(),
            blocks: Vec::new(),
        };
        p.ins
            .push(Instruction::with2(Code::Mov_r64_imm64, Register::R14, OUT).unwrap());
        p.ins
            .push(Instruction::with2(Code::Mov_r64_imm64, Register::R12, SCRATCH).unwrap());
        p
    }

    /// Appends one block: random registers, scratch memory and flags, the instructions
    /// under test, then every register and the flags stored.
    fn block(
        &mut self,
        rng: &mut Rng,
        body: &[Instruction],
        setup: &dyn Fn(&mut Rng, &mut [u64; 10]),
    ) {
        let mut vals = [0u64; 10];
        for v in vals.iter_mut() {
            *v = rng.value();
        }
        setup(rng, &mut vals);
        for (r, v) in REGS64.iter().zip(vals) {
            self.ins
                .push(Instruction::with2(Code::Mov_r64_imm64, *r, v).unwrap());
        }
        let m = rng.value();
        self.ins
            .push(Instruction::with2(Code::Mov_r64_imm64, Register::R15, m).unwrap());
        self.ins.push(
            Instruction::with2(
                Code::Mov_rm64_r64,
                MemoryOperand::with_base(Register::R12),
                Register::R15,
            )
            .unwrap(),
        );
        let fl = (rng.next() & 0x8d5) as i32 | 2;
        self.ins
            .push(Instruction::with1(Code::Pushq_imm32, fl).unwrap());
        self.ins.push(Instruction::with(Code::Popfq));
        self.ins.extend_from_slice(body);
        self.ins.push(Instruction::with(Code::Pushfq));
        self.ins
            .push(Instruction::with1(Code::Pop_r64, Register::R15).unwrap());
        // Erase the raw flags image left below the stack pointer.
        self.ins.push(
            Instruction::with2(
                Code::Mov_rm64_imm32,
                MemoryOperand::with_base_displ(Register::RSP, -8),
                0,
            )
            .unwrap(),
        );
        for (i, r) in REGS64.iter().enumerate() {
            self.ins.push(
                Instruction::with2(
                    Code::Mov_rm64_r64,
                    MemoryOperand::with_base_displ(Register::R14, 8 * i as i64),
                    *r,
                )
                .unwrap(),
            );
        }
        self.ins.push(
            Instruction::with2(
                Code::Mov_rm64_r64,
                MemoryOperand::with_base_displ(Register::R14, 80),
                Register::R15,
            )
            .unwrap(),
        );
        self.ins.push(
            Instruction::with2(
                Code::Mov_r64_rm64,
                Register::R15,
                MemoryOperand::with_base(Register::R12),
            )
            .unwrap(),
        );
        self.ins.push(
            Instruction::with2(
                Code::Mov_rm64_r64,
                MemoryOperand::with_base_displ(Register::R14, 88),
                Register::R15,
            )
            .unwrap(),
        );
        self.ins.push(
            Instruction::with2(Code::Add_rm64_imm8, Register::R14, BLOCK_OUT as i32).unwrap(),
        );
        let mut f = IntelFormatter::new();
        let mut text = String::new();
        for i in body {
            let mut s = String::new();
            f.format(i, &mut s);
            text += &s;
            text += "; ";
        }
        self.blocks.push(format!(
            "{text} (inputs {vals:x?}, mem {m:#x}, flags {fl:#x})"
        ));
    }

    fn image(&self) -> Image {
        let mut img = image();
        let mut enc = Encoder::new(64);
        let mut bytes = Vec::new();
        let mut ip = PROG;
        for i in &self.ins {
            let n = enc.encode(i, ip).expect("encode");
            ip += n as u64;
        }
        bytes.extend_from_slice(&enc.take_buffer());
        let mut a = asm();
        end(&mut a);
        bytes.extend_from_slice(&a.assemble(ip).unwrap());
        assert!(bytes.len() < 0x10_0000, "program too long: {}", bytes.len());
        img.write(PROG, &bytes);
        img.state.rip = PROG;
        img
    }

    fn check(&self, name: &str) {
        let img = self.image();
        let blocks = &self.blocks;
        compare_annotated(name, &img, &|addr| {
            if (OUT..OUT + BLOCK_OUT * blocks.len() as u64).contains(&addr) {
                let b = ((addr - OUT) / BLOCK_OUT) as usize;
                let slot = (addr - OUT) % BLOCK_OUT / 8;
                let what = match slot {
                    0..=9 => format!("{:?}", REGS64[slot as usize]),
                    10 => "rflags".into(),
                    _ => "memory operand".into(),
                };
                format!("block {b} {what}: {}", blocks[b])
            } else {
                String::new()
            }
        });
    }
}

fn alu_codes(op: usize) -> [[Code; 4]; 3] {
    // [rm,r], [r,rm], [rm,imm] for sizes 1, 2, 4, 8.
    use Code::*;
    match op {
        0 => [
            [Add_rm8_r8, Add_rm16_r16, Add_rm32_r32, Add_rm64_r64],
            [Add_r8_rm8, Add_r16_rm16, Add_r32_rm32, Add_r64_rm64],
            [Add_rm8_imm8, Add_rm16_imm16, Add_rm32_imm32, Add_rm64_imm32],
        ],
        1 => [
            [Or_rm8_r8, Or_rm16_r16, Or_rm32_r32, Or_rm64_r64],
            [Or_r8_rm8, Or_r16_rm16, Or_r32_rm32, Or_r64_rm64],
            [Or_rm8_imm8, Or_rm16_imm16, Or_rm32_imm32, Or_rm64_imm32],
        ],
        2 => [
            [Adc_rm8_r8, Adc_rm16_r16, Adc_rm32_r32, Adc_rm64_r64],
            [Adc_r8_rm8, Adc_r16_rm16, Adc_r32_rm32, Adc_r64_rm64],
            [Adc_rm8_imm8, Adc_rm16_imm16, Adc_rm32_imm32, Adc_rm64_imm32],
        ],
        3 => [
            [Sbb_rm8_r8, Sbb_rm16_r16, Sbb_rm32_r32, Sbb_rm64_r64],
            [Sbb_r8_rm8, Sbb_r16_rm16, Sbb_r32_rm32, Sbb_r64_rm64],
            [Sbb_rm8_imm8, Sbb_rm16_imm16, Sbb_rm32_imm32, Sbb_rm64_imm32],
        ],
        4 => [
            [And_rm8_r8, And_rm16_r16, And_rm32_r32, And_rm64_r64],
            [And_r8_rm8, And_r16_rm16, And_r32_rm32, And_r64_rm64],
            [And_rm8_imm8, And_rm16_imm16, And_rm32_imm32, And_rm64_imm32],
        ],
        5 => [
            [Sub_rm8_r8, Sub_rm16_r16, Sub_rm32_r32, Sub_rm64_r64],
            [Sub_r8_rm8, Sub_r16_rm16, Sub_r32_rm32, Sub_r64_rm64],
            [Sub_rm8_imm8, Sub_rm16_imm16, Sub_rm32_imm32, Sub_rm64_imm32],
        ],
        6 => [
            [Xor_rm8_r8, Xor_rm16_r16, Xor_rm32_r32, Xor_rm64_r64],
            [Xor_r8_rm8, Xor_r16_rm16, Xor_r32_rm32, Xor_r64_rm64],
            [Xor_rm8_imm8, Xor_rm16_imm16, Xor_rm32_imm32, Xor_rm64_imm32],
        ],
        7 => [
            [Cmp_rm8_r8, Cmp_rm16_r16, Cmp_rm32_r32, Cmp_rm64_r64],
            [Cmp_r8_rm8, Cmp_r16_rm16, Cmp_r32_rm32, Cmp_r64_rm64],
            [Cmp_rm8_imm8, Cmp_rm16_imm16, Cmp_rm32_imm32, Cmp_rm64_imm32],
        ],
        _ => [
            [Test_rm8_r8, Test_rm16_r16, Test_rm32_r32, Test_rm64_r64],
            [Test_rm8_r8, Test_rm16_r16, Test_rm32_r32, Test_rm64_r64],
            [
                Test_rm8_imm8,
                Test_rm16_imm16,
                Test_rm32_imm32,
                Test_rm64_imm32,
            ],
        ],
    }
}

const SIZES: [usize; 4] = [1, 2, 4, 8];

/// A register or the scratch memory operand for operand position "rm".
fn rm_operand(rng: &mut Rng, size: usize) -> Result<Register, MemoryOperand> {
    if rng.below(3) == 0 {
        Err(MemoryOperand::with_base(Register::R12))
    } else {
        Ok(sized(rng.pick(&REGS64), size))
    }
}

fn with_rm(
    code: Code,
    rm: Result<Register, MemoryOperand>,
    other: Option<Register>,
    imm: Option<i32>,
    rm_first: bool,
) -> Instruction {
    match (rm, other, imm) {
        (Ok(r), Some(o), _) if rm_first => i2(code, r, o),
        (Ok(r), Some(o), _) => i2(code, o, r),
        (Err(m), Some(o), _) if rm_first => Instruction::with2(code, m, o).unwrap(),
        (Err(m), Some(o), _) => Instruction::with2(code, o, m).unwrap(),
        (Ok(r), None, Some(i)) => Instruction::with2(code, r, i).unwrap(),
        (Err(m), None, Some(i)) => Instruction::with2(code, m, i).unwrap(),
        (Ok(r), None, None) => Instruction::with1(code, r).unwrap(),
        (Err(m), None, None) => Instruction::with1(code, m).unwrap(),
    }
}

fn imm_for(rng: &mut Rng, size: usize) -> i32 {
    let v = rng.value();
    match size {
        1 => v as i8 as i32,
        2 => v as i16 as i32,
        _ => v as i32,
    }
}

fn no_setup(_: &mut Rng, _: &mut [u64; 10]) {}

/// Adjusts a block's random register values (indices into REGS64).
type Setup = Box<dyn Fn(&mut Rng, &mut [u64; 10])>;

#[test]
fn random_alu() {
    if !available() {
        return;
    }
    for seed in 1..=4u64 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        let mut p = Program::new();
        for _ in 0..250 {
            let op = rng.below(9) as usize;
            let szi = rng.below(4) as usize;
            let size = SIZES[szi];
            let codes = alu_codes(op);
            let mut form = rng.below(3) as usize;
            if op == 8 && form == 1 {
                // `test` has no r, r/m form.
                form = 0;
            }
            let rm = rm_operand(&mut rng, size);
            let reg = sized(rng.pick(&REGS64), size);
            let ins = match form {
                0 => with_rm(codes[0][szi], rm, Some(reg), None, true),
                1 => with_rm(codes[1][szi], rm, Some(reg), None, false),
                _ => with_rm(codes[2][szi], rm, None, Some(imm_for(&mut rng, size)), true),
            };
            p.block(&mut rng, &[ins], &no_setup);
        }
        p.check(&format!("alu seed {seed}"));
    }
}

#[test]
fn random_unary_and_shifts() {
    if !available() {
        return;
    }
    use Code::*;
    let unary = [
        [Inc_rm8, Inc_rm16, Inc_rm32, Inc_rm64],
        [Dec_rm8, Dec_rm16, Dec_rm32, Dec_rm64],
        [Neg_rm8, Neg_rm16, Neg_rm32, Neg_rm64],
        [Not_rm8, Not_rm16, Not_rm32, Not_rm64],
    ];
    let shifts_cl = [
        [Rol_rm8_CL, Rol_rm16_CL, Rol_rm32_CL, Rol_rm64_CL],
        [Ror_rm8_CL, Ror_rm16_CL, Ror_rm32_CL, Ror_rm64_CL],
        [Rcl_rm8_CL, Rcl_rm16_CL, Rcl_rm32_CL, Rcl_rm64_CL],
        [Rcr_rm8_CL, Rcr_rm16_CL, Rcr_rm32_CL, Rcr_rm64_CL],
        [Shl_rm8_CL, Shl_rm16_CL, Shl_rm32_CL, Shl_rm64_CL],
        [Shr_rm8_CL, Shr_rm16_CL, Shr_rm32_CL, Shr_rm64_CL],
        [Sar_rm8_CL, Sar_rm16_CL, Sar_rm32_CL, Sar_rm64_CL],
    ];
    let shifts_1 = [
        [Rol_rm8_1, Rol_rm16_1, Rol_rm32_1, Rol_rm64_1],
        [Ror_rm8_1, Ror_rm16_1, Ror_rm32_1, Ror_rm64_1],
        [Rcl_rm8_1, Rcl_rm16_1, Rcl_rm32_1, Rcl_rm64_1],
        [Rcr_rm8_1, Rcr_rm16_1, Rcr_rm32_1, Rcr_rm64_1],
        [Shl_rm8_1, Shl_rm16_1, Shl_rm32_1, Shl_rm64_1],
        [Shr_rm8_1, Shr_rm16_1, Shr_rm32_1, Shr_rm64_1],
        [Sar_rm8_1, Sar_rm16_1, Sar_rm32_1, Sar_rm64_1],
    ];
    let shifts_imm = [
        [Rol_rm8_imm8, Rol_rm16_imm8, Rol_rm32_imm8, Rol_rm64_imm8],
        [Ror_rm8_imm8, Ror_rm16_imm8, Ror_rm32_imm8, Ror_rm64_imm8],
        [Rcl_rm8_imm8, Rcl_rm16_imm8, Rcl_rm32_imm8, Rcl_rm64_imm8],
        [Rcr_rm8_imm8, Rcr_rm16_imm8, Rcr_rm32_imm8, Rcr_rm64_imm8],
        [Shl_rm8_imm8, Shl_rm16_imm8, Shl_rm32_imm8, Shl_rm64_imm8],
        [Shr_rm8_imm8, Shr_rm16_imm8, Shr_rm32_imm8, Shr_rm64_imm8],
        [Sar_rm8_imm8, Sar_rm16_imm8, Sar_rm32_imm8, Sar_rm64_imm8],
    ];
    for seed in 1..=4u64 {
        let mut rng = Rng(0x1234_5678_9abc_def1 ^ (seed << 32));
        let mut p = Program::new();
        for _ in 0..250 {
            let szi = rng.below(4) as usize;
            let size = SIZES[szi];
            let kind = rng.below(4);
            // The destination must not be CL/RCX for the CL forms.
            let mut rm = rm_operand(&mut rng, size);
            if let Ok(r) = rm
                && r.full_register() == Register::RCX
            {
                rm = Ok(sized(Register::RDX, size));
            }
            let ins = match kind {
                0 => with_rm(rng.pick(&unary)[szi], rm, None, None, true),
                1 => with_rm(
                    rng.pick(&shifts_cl)[szi],
                    rm,
                    Some(Register::CL),
                    None,
                    true,
                ),
                2 => with_rm(rng.pick(&shifts_1)[szi], rm, None, Some(1), true),
                _ => {
                    let c =
                        rng.pick(&[0i32, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 200]);
                    with_rm(rng.pick(&shifts_imm)[szi], rm, None, Some(c), true)
                }
            };
            let setup = |rng: &mut Rng, v: &mut [u64; 10]| {
                // RCX: shift counts around the interesting boundaries.
                v[2] = rng.pick(&[
                    0u64, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 0xff,
                ]);
            };
            p.block(&mut rng, &[ins], &setup);
        }
        p.check(&format!("unary/shift seed {seed}"));
    }
}

fn code_at(base: Code, offset: usize) -> Code {
    Code::values().nth(base as usize + offset).expect("code")
}

/// A register other than RAX, RDX (and RCX), as a value index and register.
fn other_reg(rng: &mut Rng) -> (usize, Register) {
    let i = rng.pick(&[1usize, 4, 5, 6, 7, 8, 9]);
    (i, REGS64[i])
}

#[test]
fn random_mul_div_bits() {
    if !available() {
        return;
    }
    use Code::*;
    for seed in 1..=4u64 {
        let mut rng = Rng(0xdead_beef_1234_5679 ^ (seed << 40));
        let mut p = Program::new();
        for _ in 0..250 {
            let szi = rng.below(4) as usize;
            let size = SIZES[szi];
            let s16 = 1 + rng.below(3) as usize; // 16/32/64 only
            let size16 = SIZES[s16];
            let (body, setup): (Vec<Instruction>, Setup) = match rng.below(9) {
                0 => {
                    let code = rng.pick(&[
                        [Mul_rm8, Mul_rm16, Mul_rm32, Mul_rm64],
                        [Imul_rm8, Imul_rm16, Imul_rm32, Imul_rm64],
                    ])[szi];
                    (
                        vec![with_rm(code, rm_operand(&mut rng, size), None, None, true)],
                        Box::new(no_setup),
                    )
                }
                1 => {
                    let r = sized(rng.pick(&REGS64), size16);
                    let rm = rm_operand(&mut rng, size16);
                    let ins = match rng.below(3) {
                        0 => with_rm(
                            [Imul_r16_rm16, Imul_r32_rm32, Imul_r64_rm64][s16 - 1],
                            rm,
                            Some(r),
                            None,
                            false,
                        ),
                        1 => {
                            let c = [Imul_r16_rm16_imm8, Imul_r32_rm32_imm8, Imul_r64_rm64_imm8]
                                [s16 - 1];
                            let imm = rng.next() as i8 as i32;
                            match rm {
                                Ok(x) => Instruction::with3(c, r, x, imm).unwrap(),
                                Err(m) => Instruction::with3(c, r, m, imm).unwrap(),
                            }
                        }
                        _ => {
                            let c = [
                                Imul_r16_rm16_imm16,
                                Imul_r32_rm32_imm32,
                                Imul_r64_rm64_imm32,
                            ][s16 - 1];
                            let imm = imm_for(&mut rng, size16);
                            match rm {
                                Ok(x) => Instruction::with3(c, r, x, imm).unwrap(),
                                Err(m) => Instruction::with3(c, r, m, imm).unwrap(),
                            }
                        }
                    };
                    (vec![ins], Box::new(no_setup))
                }
                2 => {
                    // div/idiv with a dividend whose quotient fits.
                    let signed = rng.below(2) == 1;
                    let (dix, dr) = other_reg(&mut rng);
                    let code = if signed {
                        [Idiv_rm8, Idiv_rm16, Idiv_rm32, Idiv_rm64][szi]
                    } else {
                        [Div_rm8, Div_rm16, Div_rm32, Div_rm64][szi]
                    };
                    let setup = move |rng: &mut Rng, v: &mut [u64; 10]| {
                        let m = if size == 8 {
                            u64::MAX
                        } else {
                            (1u64 << (size * 8)) - 1
                        };
                        let mut d = v[dix] & m;
                        if d == 0 || (signed && d == m) {
                            d = 3;
                        }
                        v[dix] = (v[dix] & !m) | d;
                        let bits = size as u32 * 8;
                        if signed {
                            // High half = sign extension of a half-size value: the
                            // quotient always fits.
                            let lo = v[0] & m;
                            let small =
                                ((lo << (64 - bits)) as i64 >> (64 - bits + bits / 2)) as u64;
                            let (hi_part, lo_part) = ((small as i64 >> 63) as u64 & m, small & m);
                            if size == 1 {
                                v[0] =
                                    (v[0] & !0xffff) | ((hi_part & 0xff) << 8) | (lo_part & 0xff);
                            } else {
                                v[0] = (v[0] & !m) | lo_part;
                                v[3] = (v[3] & !m) | hi_part;
                            }
                        } else if size == 1 {
                            let ahv = (rng.next() % d) & 0xff;
                            v[0] = (v[0] & !0xff00) | (ahv << 8);
                        } else {
                            v[3] = (v[3] & !m) | (rng.next() % d);
                        }
                    };
                    let ins = Instruction::with1(code, sized(dr, size)).unwrap();
                    (vec![ins], Box::new(setup))
                }
                3 => {
                    // bt/bts/btr/btc with register, immediate and memory operands.
                    let group = rng.below(4) as usize;
                    let rcodes = [
                        [Bt_rm16_r16, Bt_rm32_r32, Bt_rm64_r64],
                        [Bts_rm16_r16, Bts_rm32_r32, Bts_rm64_r64],
                        [Btr_rm16_r16, Btr_rm32_r32, Btr_rm64_r64],
                        [Btc_rm16_r16, Btc_rm32_r32, Btc_rm64_r64],
                    ];
                    let icodes = [
                        [Bt_rm16_imm8, Bt_rm32_imm8, Bt_rm64_imm8],
                        [Bts_rm16_imm8, Bts_rm32_imm8, Bts_rm64_imm8],
                        [Btr_rm16_imm8, Btr_rm32_imm8, Btr_rm64_imm8],
                        [Btc_rm16_imm8, Btc_rm32_imm8, Btc_rm64_imm8],
                    ];
                    let rm = rm_operand(&mut rng, size16);
                    let (oi, or) = other_reg(&mut rng);
                    let ins = if rng.below(2) == 0 {
                        let rm = match rm {
                            Ok(r) if r.full_register() == or => Ok(sized(Register::RAX, size16)),
                            x => x,
                        };
                        with_rm(
                            rcodes[group][s16 - 1],
                            rm,
                            Some(sized(or, size16)),
                            None,
                            true,
                        )
                    } else {
                        with_rm(
                            icodes[group][s16 - 1],
                            rm,
                            None,
                            Some(rng.below(256) as i32),
                            true,
                        )
                    };
                    let setup = move |rng: &mut Rng, v: &mut [u64; 10]| {
                        // Bit offsets reaching a few bytes around the operand.
                        v[oi] = (rng.below(384) as i64 - 128) as u64;
                    };
                    (vec![ins], Box::new(setup))
                }
                4 => {
                    let code = rng.pick(&[
                        [Bsf_r16_rm16, Bsf_r32_rm32, Bsf_r64_rm64],
                        [Bsr_r16_rm16, Bsr_r32_rm32, Bsr_r64_rm64],
                        [Lzcnt_r16_rm16, Lzcnt_r32_rm32, Lzcnt_r64_rm64],
                        [Tzcnt_r16_rm16, Tzcnt_r32_rm32, Tzcnt_r64_rm64],
                    ])[s16 - 1];
                    let (si_, sr) = other_reg(&mut rng);
                    let dst = sized(rng.pick(&REGS64), size16);
                    let zero = rng.below(3) == 0;
                    let setup = move |_: &mut Rng, v: &mut [u64; 10]| {
                        if zero {
                            v[si_] = 0;
                        }
                    };
                    (vec![i2(code, dst, sized(sr, size16))], Box::new(setup))
                }
                5 => {
                    let r = rng.pick(&REGS64);
                    let ins = if rng.below(2) == 0 {
                        Instruction::with1(Bswap_r64, r).unwrap()
                    } else {
                        Instruction::with1(Bswap_r32, sized(r, 4)).unwrap()
                    };
                    (vec![ins], Box::new(no_setup))
                }
                6 => {
                    let cc = rng.below(16) as usize;
                    let ins = if rng.below(2) == 0 {
                        let rm = rm_operand(&mut rng, size16);
                        with_rm(
                            code_at(Cmovo_r16_rm16, cc * 3 + s16 - 1),
                            rm,
                            Some(sized(rng.pick(&REGS64), size16)),
                            None,
                            false,
                        )
                    } else {
                        with_rm(
                            code_at(Seto_rm8, cc),
                            rm_operand(&mut rng, 1),
                            None,
                            None,
                            true,
                        )
                    };
                    (vec![ins], Box::new(no_setup))
                }
                7 => {
                    let codes = [
                        Movzx_r16_rm8,
                        Movzx_r32_rm8,
                        Movzx_r64_rm8,
                        Movzx_r32_rm16,
                        Movzx_r64_rm16,
                        Movsx_r16_rm8,
                        Movsx_r32_rm8,
                        Movsx_r64_rm8,
                        Movsx_r32_rm16,
                        Movsx_r64_rm16,
                        Movsxd_r64_rm32,
                    ];
                    let dsz = [2, 4, 8, 4, 8, 2, 4, 8, 4, 8, 8];
                    let ssz = [1, 1, 1, 2, 2, 1, 1, 1, 2, 2, 4];
                    let k = rng.below(codes.len() as u64) as usize;
                    let rm = rm_operand(&mut rng, ssz[k]);
                    let ins = with_rm(
                        codes[k],
                        rm,
                        Some(sized(rng.pick(&REGS64), dsz[k])),
                        None,
                        false,
                    );
                    (vec![ins], Box::new(no_setup))
                }
                _ => {
                    let code = rng.pick(&[
                        [Shld_rm16_r16_CL, Shld_rm32_r32_CL, Shld_rm64_r64_CL],
                        [Shrd_rm16_r16_CL, Shrd_rm32_r32_CL, Shrd_rm64_r64_CL],
                    ])[s16 - 1];
                    let mut rm = rm_operand(&mut rng, size16);
                    if let Ok(r) = rm
                        && r.full_register() == Register::RCX
                    {
                        rm = Ok(sized(Register::RDX, size16));
                    }
                    let src = sized(
                        rng.pick(&[Register::RBX, Register::RSI, Register::R8]),
                        size16,
                    );
                    let ins = match rm {
                        Ok(r) => Instruction::with3(code, r, src, Register::CL).unwrap(),
                        Err(m) => Instruction::with3(code, m, src, Register::CL).unwrap(),
                    };
                    let setup = |rng: &mut Rng, v: &mut [u64; 10]| {
                        v[2] = rng.pick(&[0u64, 1, 2, 8, 15, 16, 17, 31, 32, 33, 63]);
                    };
                    (vec![ins], Box::new(setup))
                }
            };
            p.block(&mut rng, &body, &*setup);
        }
        p.check(&format!("mul/div/bits seed {seed}"));
    }
}

#[test]
fn random_moves_and_exchanges() {
    if !available() {
        return;
    }
    use Code::*;
    for seed in 1..=3u64 {
        let mut rng = Rng(0x0123_4567_89ab_cdef ^ (seed << 20));
        let mut p = Program::new();
        for _ in 0..250 {
            let szi = rng.below(4) as usize;
            let size = SIZES[szi];
            let body: Vec<Instruction> = match rng.below(7) {
                0 => {
                    let code = rng.pick(&[
                        [Xchg_rm8_r8, Xchg_rm16_r16, Xchg_rm32_r32, Xchg_rm64_r64],
                        [Xadd_rm8_r8, Xadd_rm16_r16, Xadd_rm32_r32, Xadd_rm64_r64],
                        [
                            Cmpxchg_rm8_r8,
                            Cmpxchg_rm16_r16,
                            Cmpxchg_rm32_r32,
                            Cmpxchg_rm64_r64,
                        ],
                    ])[szi];
                    let mut ins = with_rm(
                        code,
                        rm_operand(&mut rng, size),
                        Some(sized(rng.pick(&REGS64), size)),
                        None,
                        true,
                    );
                    if ins.op0_kind() == iced_x86::OpKind::Memory && rng.below(2) == 0 {
                        ins.set_has_lock_prefix(true);
                    }
                    vec![ins]
                }
                1 => {
                    // cmpxchg that succeeds: the accumulator equals the destination.
                    let code = [
                        Cmpxchg_rm8_r8,
                        Cmpxchg_rm16_r16,
                        Cmpxchg_rm32_r32,
                        Cmpxchg_rm64_r64,
                    ][szi];
                    let d = sized(
                        rng.pick(&[Register::RBX, Register::RSI, Register::R9]),
                        size,
                    );
                    let s = sized(rng.pick(&[Register::RDI, Register::R10]), size);
                    vec![
                        i2(Mov_r64_rm64, Register::RAX, d.full_register()),
                        i2(code, d, s),
                    ]
                }
                2 => vec![Instruction::with(rng.pick(&[
                    Cbw, Cwde, Cdqe, Cwd, Cdq, Cqo, Lahf, Sahf, Clc, Stc, Cmc,
                ]))],
                3 => {
                    // lea with base, index, scale and displacement, 32- and 64-bit.
                    let base = rng.pick(&REGS64);
                    let index =
                        rng.pick(&[Register::RBX, Register::RSI, Register::R8, Register::R11]);
                    let scale = rng.pick(&[1u32, 2, 4, 8]);
                    let disp = rng.next() as i32 as i64;
                    let (b, i, dsz) = if rng.below(3) == 0 {
                        (sized(base, 4), sized(index, 4), 4)
                    } else {
                        (base, index, 8)
                    };
                    let m = MemoryOperand::with_base_index_scale_displ_size(b, i, scale, disp, dsz);
                    let code = rng.pick(&[Lea_r16_m, Lea_r32_m, Lea_r64_m]);
                    let dsz = match code {
                        Lea_r16_m => 2,
                        Lea_r32_m => 4,
                        _ => 8,
                    };
                    vec![Instruction::with2(code, sized(rng.pick(&REGS64), dsz), m).unwrap()]
                }
                4 => {
                    // push/pop through the stack, memory and 16-bit forms.
                    let r = rng.pick(&REGS64);
                    let r2 = rng.pick(&REGS64);
                    match rng.below(4) {
                        0 => vec![
                            Instruction::with1(Push_r64, r).unwrap(),
                            Instruction::with1(Pop_r64, r2).unwrap(),
                        ],
                        1 => vec![
                            Instruction::with1(Push_rm64, MemoryOperand::with_base(Register::R12))
                                .unwrap(),
                            Instruction::with1(Pop_r64, r2).unwrap(),
                        ],
                        2 => vec![
                            Instruction::with1(Pushq_imm32, rng.next() as i32).unwrap(),
                            Instruction::with1(Pop_rm64, MemoryOperand::with_base(Register::R12))
                                .unwrap(),
                        ],
                        _ => vec![
                            Instruction::with1(Push_r16, sized(r, 2)).unwrap(),
                            Instruction::with1(Pop_r16, sized(r2, 2)).unwrap(),
                        ],
                    }
                }
                5 => {
                    // pushfq/popfq round trip with random status flags.
                    let r = rng.pick(&REGS64);
                    vec![
                        Instruction::with(Pushfq),
                        Instruction::with1(Pop_r64, r).unwrap(),
                        Instruction::with2(Xor_rm64_imm32, r, (rng.next() & 0x8d5) as i32).unwrap(),
                        Instruction::with1(Push_r64, r).unwrap(),
                        Instruction::with(Popfq),
                    ]
                }
                _ => {
                    let r = sized(rng.pick(&REGS64), size);
                    let code = [Mov_rm8_r8, Mov_rm16_r16, Mov_rm32_r32, Mov_rm64_r64][szi];
                    let m = MemoryOperand::with_base_displ(Register::R12, rng.below(16) as i64 - 8);
                    if rng.below(2) == 0 {
                        vec![Instruction::with2(code, m, r).unwrap()]
                    } else {
                        let code = [Mov_r8_rm8, Mov_r16_rm16, Mov_r32_rm32, Mov_r64_rm64][szi];
                        vec![Instruction::with2(code, r, m).unwrap()]
                    }
                }
            };
            p.block(&mut rng, &body, &no_setup);
        }
        p.check(&format!("moves seed {seed}"));
    }
}

/// The memory operand forms the fast paths evaluate themselves: base, index, scale and
/// displacement; an absolute displacement; RIP-relative (read only: the code page);
/// and the same forms with 32-bit address registers, which take the general path.
fn addressing_operand(rng: &mut Rng) -> MemoryOperand {
    // RBX and R9 hold small indexes (see the block set-up), R12 the scratch address.
    let index = rng.pick(&[Register::RBX, Register::R9]);
    let scale = rng.pick(&[1u32, 2, 4, 8]);
    let disp = rng.below(64) as i64 - 32;
    match rng.below(4) {
        0 => MemoryOperand::with_base_index_scale_displ_size(Register::R12, index, scale, disp, 1),
        1 => MemoryOperand::with_base_displ(Register::R12, disp),
        2 => MemoryOperand::with_displ((SCRATCH as i64 + 64 + disp) as u64, 4),
        _ => MemoryOperand::with_base_index_scale_displ_size(
            Register::R12D,
            sized(index, 4),
            scale,
            disp,
            1,
        ),
    }
}

#[test]
fn random_addressing_forms() {
    if !available() {
        return;
    }
    use Code::*;
    for seed in 1..=3u64 {
        let mut rng = Rng(0x5151_a0a0_0f0f_7777 ^ (seed << 32));
        let mut p = Program::new();
        for _ in 0..250 {
            let szi = rng.below(4) as usize;
            let size = SIZES[szi];
            let m = addressing_operand(&mut rng);
            let r = sized(rng.pick(&REGS64), size);
            let kind = rng.below(8);
            let ins = match kind {
                0 => {
                    let code = [Mov_rm8_r8, Mov_rm16_r16, Mov_rm32_r32, Mov_rm64_r64][szi];
                    Instruction::with2(code, m, r).unwrap()
                }
                1 => {
                    let code = [Mov_r8_rm8, Mov_r16_rm16, Mov_r32_rm32, Mov_r64_rm64][szi];
                    Instruction::with2(code, r, m).unwrap()
                }
                2 => {
                    let code = [Mov_rm8_imm8, Mov_rm16_imm16, Mov_rm32_imm32, Mov_rm64_imm32][szi];
                    Instruction::with2(code, m, imm_for(&mut rng, size)).unwrap()
                }
                3 => {
                    // RIP-relative reads of the code around the instruction.
                    let code = [Mov_r8_rm8, Mov_r16_rm16, Mov_r32_rm32, Mov_r64_rm64][szi];
                    let rel = MemoryOperand::with_base_displ(Register::RIP, rng.below(64) as i64);
                    Instruction::with2(code, r, rel).unwrap()
                }
                4 => {
                    let codes = alu_codes(rng.pick(&[0, 1, 4, 5, 6, 7, 8]));
                    match rng.below(3) {
                        0 => Instruction::with2(codes[0][szi], m, r).unwrap(),
                        1 if codes[1][szi] != codes[0][szi] => {
                            Instruction::with2(codes[1][szi], r, m).unwrap()
                        }
                        _ => Instruction::with2(codes[2][szi], m, imm_for(&mut rng, size)).unwrap(),
                    }
                }
                5 => {
                    let (code, dsz) = rng.pick(&[
                        (Movzx_r32_rm8, 4),
                        (Movzx_r64_rm16, 8),
                        (Movsx_r64_rm8, 8),
                        (Movsx_r32_rm16, 4),
                        (Movsxd_r64_rm32, 8),
                    ]);
                    Instruction::with2(code, sized(rng.pick(&REGS64), dsz), m).unwrap()
                }
                6 => {
                    let s = 1 + rng.below(3) as usize;
                    let r = sized(rng.pick(&REGS64), SIZES[s]);
                    if rng.below(2) == 0 {
                        let code = [Imul_r16_rm16, Imul_r32_rm32, Imul_r64_rm64][s - 1];
                        Instruction::with2(code, r, m).unwrap()
                    } else {
                        let code = [
                            Imul_r16_rm16_imm16,
                            Imul_r32_rm32_imm32,
                            Imul_r64_rm64_imm32,
                        ][s - 1];
                        Instruction::with3(code, r, m, imm_for(&mut rng, SIZES[s])).unwrap()
                    }
                }
                _ => {
                    let code = rng.pick(&[Lea_r32_m, Lea_r64_m]);
                    let d = if code == Lea_r32_m { 4 } else { 8 };
                    Instruction::with2(code, sized(rng.pick(&REGS64), d), m).unwrap()
                }
            };
            let set_up = |rng: &mut Rng, v: &mut [u64; 10]| {
                v[1] = rng.below(16); // RBX
                v[7] = rng.below(16); // R9
            };
            p.block(&mut rng, &[ins], &set_up);
        }
        p.check(&format!("addressing seed {seed}"));
    }
}

// ---------------------------------------------------------------------------------
// Control flow, system instructions, exceptions and paging.

fn scenario(name: &str, build: impl FnOnce(&mut Image, &mut CodeAssembler)) {
    let mut img = image();
    let mut a = asm();
    build(&mut img, &mut a);
    img.load_code(&mut a);
    compare(name, &img);
}

#[test]
fn control_flow() {
    if !available() {
        return;
    }
    scenario("call/ret/jcc/loop", |_, a| {
        let mut func = a.create_label();
        let mut top = a.create_label();
        let mut skip = a.create_label();
        let mut done = a.create_label();
        a.mov(rcx, 10u64).unwrap();
        a.xor(eax, eax).unwrap();
        a.set_label(&mut top).unwrap();
        a.call(func).unwrap();
        a.cmp(eax, 30i32).unwrap();
        a.jg(skip).unwrap();
        a.add(eax, 1i32).unwrap();
        a.set_label(&mut skip).unwrap();
        a.loop_(top).unwrap();
        a.mov(rcx, 3u64).unwrap();
        let mut l2 = a.create_label();
        a.set_label(&mut l2).unwrap();
        a.dec(rcx).unwrap();
        a.jrcxz(done).unwrap();
        a.jmp(l2).unwrap();
        a.set_label(&mut done).unwrap();
        a.lea(rbx, ptr(func)).unwrap();
        a.call(rbx).unwrap();
        a.push(rbx).unwrap();
        a.call(qword_ptr(rsp)).unwrap();
        a.pop(rdx).unwrap();
        end(a);
        a.set_label(&mut func).unwrap();
        a.enter(32u32, 0u32).unwrap();
        a.mov(qword_ptr(rbp - 8), rax).unwrap();
        a.add(eax, 2i32).unwrap();
        a.leave().unwrap();
        a.ret_1(8u32).unwrap();
    });
    scenario("strings and direction flag", |img, a| {
        for i in 0..64u64 {
            img.ram[(DATA + i) as usize] = i as u8 ^ 0x5a;
        }
        a.mov(rsi, DATA).unwrap();
        a.mov(rdi, DATA + 0x100).unwrap();
        a.movsq().unwrap();
        a.movsb().unwrap();
        a.lodsd().unwrap();
        a.mov(eax, 0x99u32).unwrap();
        a.stosw().unwrap();
        a.std().unwrap();
        a.movsd().unwrap();
        a.scasb().unwrap();
        a.cmpsw().unwrap();
        a.cld().unwrap();
        a.mov(rcx, 20u64).unwrap();
        a.mov(rsi, DATA).unwrap();
        a.mov(rdi, DATA + 0x200).unwrap();
        a.rep().movsd().unwrap();
        a.mov(rcx, 20u64).unwrap();
        a.mov(rdi, DATA + 0x200).unwrap();
        a.mov(al, 0x5eu32).unwrap();
        a.repne().scasb().unwrap();
        a.mov(rbx, DATA).unwrap();
        a.mov(al, 5u32).unwrap();
        a.xlatb().unwrap();
        end(a);
    });
}

#[test]
fn system_instructions() {
    if !available() {
        return;
    }
    scenario("descriptor tables, segments, msrs, cpuid, ports", |_, a| {
        a.sgdt(ptr(DATA)).unwrap();
        a.sidt(ptr(DATA + 0x10)).unwrap();
        a.lgdt(ptr(DATA)).unwrap();
        a.lidt(ptr(DATA + 0x10)).unwrap();
        a.str(ax).unwrap();
        a.mov(word_ptr(DATA + 0x20), ax).unwrap();
        a.mov(eax, KERNEL_DS as u32).unwrap();
        a.mov(ds, eax).unwrap();
        a.mov(es, eax).unwrap();
        a.mov(ss, eax).unwrap();
        a.mov(fs, eax).unwrap();
        a.mov(ebx, ds).unwrap();
        a.xor(eax, eax).unwrap();
        a.mov(gs, eax).unwrap();
        // MSRs.
        a.mov(ecx, 0xc000_0100u32).unwrap();
        a.mov(eax, 0x1000u32).unwrap();
        a.mov(edx, 0xffff_8000u32).unwrap();
        a.wrmsr().unwrap();
        a.mov(ecx, 0xc000_0102u32).unwrap();
        a.mov(eax, 0x2000u32).unwrap();
        a.xor(edx, edx).unwrap();
        a.wrmsr().unwrap();
        a.swapgs().unwrap();
        a.mov(ecx, 0xc000_0101u32).unwrap();
        a.rdmsr().unwrap();
        a.mov(r8, rax).unwrap();
        a.mov(ecx, 0xc000_0080u32).unwrap();
        a.rdmsr().unwrap();
        a.mov(r9, rax).unwrap();
        a.mov(ecx, 0x277u32).unwrap();
        a.rdmsr().unwrap();
        a.mov(r10, rax).unwrap();
        a.mov(ecx, 0xc000_0084u32).unwrap();
        a.rdmsr().unwrap();
        a.mov(r11, rax).unwrap();
        // CPUID leaves, in range, out of range and sub-leaves.
        for (i, (leaf, sub)) in [
            (0u32, 0u32),
            (1, 0),
            (7, 0),
            (0xd, 1),
            (0x8000_0001, 0),
            (0x8000_0008, 0),
            (0x4000_0000, 0),
            (0x100, 0),
            (0x8000_00ff, 0),
        ]
        .iter()
        .enumerate()
        {
            a.mov(eax, *leaf).unwrap();
            a.mov(ecx, *sub).unwrap();
            a.cpuid().unwrap();
            if *leaf == 1 {
                // EBX[31:24] is the APIC ID of the host CPU the vCPU happens to run on.
                a.and(ebx, 0x00ff_ffffi32).unwrap();
            }
            let at = DATA + 0x100 + 16 * i as u64;
            a.mov(dword_ptr(at), eax).unwrap();
            a.mov(dword_ptr(at + 4), ebx).unwrap();
            a.mov(dword_ptr(at + 8), ecx).unwrap();
            a.mov(dword_ptr(at + 12), edx).unwrap();
        }
        // Ports, both forms, all sizes.
        a.in_(al, 0x71u32).unwrap();
        a.mov(r12, rax).unwrap();
        a.mov(dx, 0x3f8u32).unwrap();
        a.in_(ax, dx).unwrap();
        a.mov(r13, rax).unwrap();
        a.in_(eax, dx).unwrap();
        a.mov(r14, rax).unwrap();
        a.out(dx, al).unwrap();
        a.out(0x80u32, eax).unwrap();
        // Control registers.
        a.mov(rax, cr0).unwrap();
        a.mov(rbx, cr4).unwrap();
        a.or(rbx, 0x80i32).unwrap();
        a.mov(cr4, rbx).unwrap();
        a.mov(rcx, cr3).unwrap();
        a.mov(cr3, rcx).unwrap();
        a.mov(rdx, 0x1234u64).unwrap();
        a.mov(cr2, rdx).unwrap();
        a.mov(rsi, cr8).unwrap();
        a.invlpg(ptr(DATA)).unwrap();
        a.cli().unwrap();
        a.pushfq().unwrap();
        a.sti().unwrap();
        a.pushfq().unwrap();
        a.pop(rdi).unwrap();
        a.pop(r15).unwrap();
        a.wbinvd().unwrap();
        a.clflush(ptr(DATA)).unwrap();
        a.lfence().unwrap();
        a.mfence().unwrap();
        a.pause().unwrap();
        end(a);
    });
    scenario("MMIO loads and stores", |_, a| {
        let mmio = 0x2000_0000u64;
        a.mov(rbx, mmio).unwrap();
        a.mov(rax, qword_ptr(rbx)).unwrap();
        a.mov(ecx, dword_ptr(rbx + 0x10)).unwrap();
        a.add(rcx, qword_ptr(rbx + 0x18)).unwrap();
        a.movzx(edx, byte_ptr(rbx + 0x21)).unwrap();
        a.mov(qword_ptr(rbx + 0x40), rcx).unwrap();
        a.mov(word_ptr(rbx + 0x48), dx).unwrap();
        end(a);
    });
    scenario("far return and far jump reload CS", |_, a| {
        let mut after = a.create_label();
        let mut after2 = a.create_label();
        a.lea(rax, ptr(after)).unwrap();
        a.push(KERNEL_CS as i32).unwrap();
        a.push(rax).unwrap();
        a.db(&[0x48, 0xcb]).unwrap(); // retfq
        a.set_label(&mut after).unwrap();
        a.lea(rax, ptr(after2)).unwrap();
        a.mov(qword_ptr(DATA), rax).unwrap();
        a.mov(word_ptr(DATA + 8), KERNEL_CS as u32).unwrap();
        // jmp far qword [DATA] (REX.W FF /5, m16:64).
        let mut far = vec![0x48, 0xff, 0x2c, 0x25];
        far.extend_from_slice(&(DATA as u32).to_le_bytes());
        a.db(&far).unwrap();
        a.set_label(&mut after2).unwrap();
        a.mov(ebx, cs).unwrap();
        end(a);
    });
    scenario("iretq to CPL0 with a new stack", |_, a| {
        let mut target = a.create_label();
        a.mov(rax, rsp).unwrap();
        a.push(KERNEL_DS as i32).unwrap();
        a.push(0x3_0000i32).unwrap();
        a.push(0x202i32).unwrap();
        a.push(KERNEL_CS as i32).unwrap();
        a.lea(rbx, ptr(target)).unwrap();
        a.push(rbx).unwrap();
        a.iretq().unwrap();
        a.set_label(&mut target).unwrap();
        a.pushfq().unwrap();
        a.pop(rcx).unwrap();
        a.mov(rsp, rax).unwrap();
        end(a);
    });
}

/// Exceptions raised by kernel code, delivered through the IDT, stopping at the stub.
#[test]
fn exceptions() {
    if !available() {
        return;
    }
    scenario("#DE", |_, a| {
        a.xor(ecx, ecx).unwrap();
        a.mov(eax, 7u32).unwrap();
        a.div(ecx).unwrap();
        end(a);
    });
    scenario("#DE quotient overflow", |_, a| {
        a.mov(edx, 5u32).unwrap();
        a.mov(ecx, 2u32).unwrap();
        a.div(ecx).unwrap();
        end(a);
    });
    scenario("#UD", |_, a| {
        a.ud2().unwrap();
    });
    scenario("#GP unknown msr", |_, a| {
        a.mov(ecx, 0x1234_5678u32).unwrap();
        a.rdmsr().unwrap();
    });
    scenario("#GP non-canonical", |_, a| {
        a.mov(rax, 0x8000_0000_0000u64).unwrap();
        a.mov(rbx, qword_ptr(rax)).unwrap();
    });
    scenario("#GP bad selector", |_, a| {
        a.mov(eax, 0x80u32).unwrap();
        a.mov(ds, eax).unwrap();
    });
    scenario("#PF not present", |img, a| {
        let pte = Image::pte_addr(DATA + 0x5000);
        img.write_u64(pte, img.read_u64(pte) & !1);
        a.mov(rax, DATA + 0x5008).unwrap();
        a.mov(qword_ptr(rax), rax).unwrap();
    });
    scenario("#PF write to read-only with WP", |img, a| {
        let pte = Image::pte_addr(DATA + 0x5000);
        img.write_u64(pte, img.read_u64(pte) & !2);
        a.mov(rax, DATA + 0x5ffc).unwrap();
        a.mov(rbx, qword_ptr(rax)).unwrap();
        a.mov(qword_ptr(rax), rax).unwrap();
    });
    scenario(
        "#PF page-crossing write, second page read-only",
        |img, a| {
            let pte = Image::pte_addr(DATA + 0x6000);
            img.write_u64(pte, img.read_u64(pte) & !2);
            a.mov(rax, DATA + 0x5ffc).unwrap();
            a.mov(qword_ptr(rax), rax).unwrap();
        },
    );
    scenario("#PF NX fetch", |img, a| {
        let pte = Image::pte_addr(DATA + 0x7000);
        img.write_u64(pte, img.read_u64(pte) | (1 << 63));
        img.ram[(DATA + 0x7000) as usize] = 0x90;
        a.mov(rax, DATA + 0x7000).unwrap();
        a.jmp(rax).unwrap();
    });
    scenario("#PF reserved bit", |img, a| {
        let pte = Image::pte_addr(DATA + 0x8000);
        img.write_u64(pte, img.read_u64(pte) | (1 << 50));
        a.mov(rax, DATA + 0x8000).unwrap();
        a.mov(rbx, qword_ptr(rax)).unwrap();
    });
    scenario("#PF on the stack: push, #DF on an IST stack", |img, a| {
        let pte = Image::pte_addr(DATA + 0x9000);
        img.write_u64(pte, img.read_u64(pte) & !1);
        img.set_gate(8, STUBS + 8 * 16, false, 1);
        a.mov(rsp, DATA + 0xa000).unwrap();
        a.mov(rax, STACK_TOP).unwrap();
        a.push(rax).unwrap();
    });
    scenario("IST delivery", |img, a| {
        img.set_gate(6, STUBS + 6 * 16, false, 1);
        a.ud2().unwrap();
    });
    scenario(
        "#DF: #PF while delivering #UD (stack not present)",
        |img, a| {
            let pte = Image::pte_addr(DATA + 0x9000);
            img.write_u64(pte, img.read_u64(pte) & !1);
            img.set_gate(8, STUBS + 8 * 16, false, 1);
            a.mov(rsp, DATA + 0xa000).unwrap();
            a.ud2().unwrap();
        },
    );
    scenario("trap gate keeps IF", |img, a| {
        img.set_gate(6, STUBS + 6 * 16, true, 0);
        a.sti().unwrap();
        a.ud2().unwrap();
    });
}

#[test]
fn paging() {
    if !available() {
        return;
    }
    scenario("accessed and dirty bits, 4K and 2M pages", |_, a| {
        a.mov(rax, qword_ptr(DATA + 0x1000)).unwrap();
        a.mov(qword_ptr(DATA + 0x2000), rax).unwrap();
        a.mov(rax, qword_ptr(0x60_0000u64)).unwrap();
        a.mov(qword_ptr(0x80_0010u64), rax).unwrap();
        a.inc(qword_ptr(DATA + 0x3000)).unwrap();
        end(a);
    });
    scenario(
        "PTE change without invlpg is seen (no stale TLB on the recording host)",
        |img, a| {
            // Map DATA+0x4000 to the frame of DATA+0x5000 after first touching it.
            img.write_u64(DATA + 0x4000, 0x1111);
            img.write_u64(DATA + 0x5000, 0x2222);
            let pte = Image::pte_addr(DATA + 0x4000);
            a.mov(rax, qword_ptr(DATA + 0x4000)).unwrap();
            a.mov(rbx, (DATA + 0x5000) | 3).unwrap();
            a.mov(qword_ptr(pte), rbx).unwrap();
            a.mov(rcx, qword_ptr(DATA + 0x4000)).unwrap();
            a.invlpg(ptr(DATA + 0x4000)).unwrap();
            a.mov(rdx, qword_ptr(DATA + 0x4000)).unwrap();
            a.mov(rbx, cr3).unwrap();
            a.mov(cr3, rbx).unwrap();
            a.mov(rsi, qword_ptr(DATA + 0x4000)).unwrap();
            end(a);
        },
    );
    scenario("self-modifying code", |_, a| {
        let mut again = a.create_label();
        a.xor(ecx, ecx).unwrap();
        a.set_label(&mut again).unwrap();
        a.mov(eax, 1u32).unwrap();
        a.add(ecx, eax).unwrap();
        a.lea(rbx, ptr(again)).unwrap();
        a.mov(dword_ptr(rbx + 1), 40u32).unwrap();
        a.cmp(ecx, 2i32).unwrap();
        a.jb(again).unwrap();
        end(a);
    });
}

/// An external interrupt injected after a port write (as the recorder injects at a VM
/// exit), handled by a handler that returns with iretq; and `hlt`. The replay CPU's
/// inject_interrupt must build the same frame and both must count the same.
#[test]
fn injected_interrupt_and_hlt() {
    if !available() {
        return;
    }
    const INJECT_PORT: u16 = 0x55;
    const VECTOR: u8 = 0x30;
    let mut img = image();
    let mut h = asm();
    h.push(rax).unwrap();
    h.mov(rax, qword_ptr(rsp + 8)).unwrap();
    h.mov(qword_ptr(DATA + 0x800), rax).unwrap();
    h.mov(rax, qword_ptr(rsp + 24)).unwrap();
    h.mov(qword_ptr(DATA + 0x808), rax).unwrap();
    h.add(qword_ptr(DATA + 0x810), 1).unwrap();
    h.pop(rax).unwrap();
    h.iretq().unwrap();
    img.load_at(HANDLERS, &mut h);
    img.set_gate(VECTOR, HANDLERS, false, 0);
    let mut a = asm();
    a.sti().unwrap();
    a.mov(ecx, 5u32).unwrap();
    a.out(INJECT_PORT as u32, al).unwrap();
    a.add(ecx, 1).unwrap();
    a.pushfq().unwrap();
    a.pop(rdx).unwrap();
    a.hlt().unwrap();
    end(&mut a);
    img.load_code(&mut a);

    let mut km = KvmMachine::new(&img);
    km.inject_on_port = Some((INJECT_PORT, VECTOR));
    let k = km.run(100);
    assert_eq!(k.exit, KvmExit::Hlt, "KVM stops at hlt");

    let mut mem = img.memory();
    let mut cpu = krr_engine::cpu::Cpu::new(img.state.clone(), observed_cpuid());
    loop {
        match cpu.run(&mut mem, 1000) {
            Exit::PortOut {
                port: INJECT_PORT, ..
            } => {
                assert!(cpu.interrupts_enabled());
                cpu.inject_interrupt(&mut mem, VECTOR).unwrap();
            }
            Exit::Hlt => break,
            e => panic!("unexpected {e:?}"),
        }
    }
    let st = cpu.state();
    assert_eq!(st.gpr, k.state.gpr, "registers");
    assert_eq!(st.rip, k.state.rip, "rip after hlt");
    assert_eq!(st.rflags, k.state.rflags, "rflags");
    let word =
        |m: &[u8], a: u64| u64::from_le_bytes(m[a as usize..a as usize + 8].try_into().unwrap());
    let mut ours = vec![0u8; RAM_SIZE as usize];
    mem.read(0, &mut ours).unwrap();
    for at in [DATA + 0x800, DATA + 0x808, DATA + 0x810] {
        assert_eq!(
            word(&ours, at),
            word(&k.ram, at),
            "handler observation at {at:#x}"
        );
    }
    assert_eq!(word(&ours, DATA + 0x810), 1, "the handler ran once");
    assert_eq!(ours, k.ram, "memory");
    assert_eq!(
        cpu.icount(),
        k.insn_delta,
        "instruction count with an interrupt and hlt"
    );
}

/// Where the user-mode tests below place their code and stack (user pages).
const USER_CODE: u64 = 0x1e_0000;
const USER_STACK_TOP: u64 = 0x1f_0000;
/// Port user code may use (the TSS I/O bitmap allows ports below 0x100).
const USER_PORT: u16 = 0x70;

/// The standard image, with ring 3 reachable: the user code and stack pages (and the
/// tables above them) user-accessible, and a TSS I/O bitmap that lets ring 3 use ports
/// below 0x100. Ring 0 runs `iretq` to `user` with RFLAGS `rflags`: 11 instructions.
fn user_mode_image(user: &mut CodeAssembler, rflags: u64) -> Image {
    const RING0_INSTRUCTIONS: u64 = 11;
    let mut img = image();
    for table in [PML4, PDPT, PD] {
        img.write_u64(table, img.read_u64(table) | 4);
    }
    for page in [USER_CODE, USER_STACK_TOP - 0x1000] {
        let pte = Image::pte_addr(page);
        img.write_u64(pte, img.read_u64(pte) | 4);
    }
    // I/O bitmap right after the 0x68-byte TSS: 32 zero bytes (ports 0-0xff allowed),
    // then the terminating 0xff byte, all inside the TSS limit.
    let limit = 0x68 + 32;
    img.write(TSS + 0x66, &0x68u16.to_le_bytes());
    img.write(TSS + 0x68 + 32, &[0xff]);
    let tss_lo = (limit & 0xffff)
        | ((TSS & 0xff_ffff) << 16)
        | (0x89u64 << 40)
        | (((TSS >> 24) & 0xff) << 56);
    img.write_u64(GDT + 0x18, tss_lo);
    img.state.tr.limit = limit as u32;
    // `int3` and `int 0x80` are allowed from ring 3 (gate DPL 3), as a kernel sets them.
    for v in [3u64, 0x80] {
        let gate = IDT + 16 * v;
        img.write_u64(gate, img.read_u64(gate) | (3 << 45));
    }
    // LSTAR: a ring-0 stub like the exception stubs (an architectural `syscall` lands
    // there; on hosts that turn it into a page fault at LSTAR, vector 14's stub runs).
    let mut s = asm();
    s.mov(eax, 0x100u32).unwrap();
    s.out(EXC_PORT as u32, eax).unwrap();
    img.load_at(HANDLERS, &mut s);
    let bytes = user.assemble(USER_CODE).expect("assemble");
    img.write(USER_CODE, &bytes);
    let mut a = asm();
    for v in [
        (u64::from(USER_BASE_SEL) + 8) | 3, // SS
        USER_STACK_TOP,
        rflags,
        (u64::from(USER_BASE_SEL) + 16) | 3, // CS
        USER_CODE,
    ] {
        a.mov(rax, v).unwrap();
        a.push(rax).unwrap();
    }
    a.iretq().unwrap();
    assert_eq!(
        a.instructions().len() as u64,
        RING0_INSTRUCTIONS,
        "ring-0 instructions before user mode"
    );
    img.load_code(&mut a);
    img
}

/// What an entry from user mode adds to KVM's `insn_emulation` is what
/// [`krr_engine::icount::counter_extra_for_entry`] says: each kind of entry is made from
/// ring 3 and the counter's growth compared with the ring-0 instructions run (the 11
/// that enter user mode, the 2 of the stub that handles the entry) plus the model's
/// extra for the entry as the agent would record it, and 1 for each port instruction
/// ring 3 runs.
#[test]
fn user_mode_entries_count_only_ring0_instructions() {
    use krr_engine::event::{EntryKind, UserEntry, UserRegs};
    use krr_engine::icount::counter_extra_for_entry;
    if !available() {
        return;
    }
    const ENTER: u64 = 11;
    const STUB: u64 = 2;
    const INTERRUPT: u8 = 0x30;
    let exception = |vector: u8| {
        Some(EntryKind::Exception {
            vector,
            error_code: None,
            cr2: 0,
        })
    };
    type Build = fn(&mut CodeAssembler);
    // (name, set-up, the instruction that enters the kernel, the entry as recorded, port
    // instructions run at ring 3)
    let cases: Vec<(&str, Build, Build, Option<EntryKind>, u64)> = vec![
        (
            "syscall",
            |_| {},
            |u| u.syscall().unwrap(),
            exception(14),
            0,
        ),
        ("int3", |_| {}, |u| u.int3().unwrap(), exception(3), 0),
        (
            "int 0x80",
            |_| {},
            |u| u.int(0x80).unwrap(),
            exception(6),
            0,
        ),
        (
            "int 0x81 (gate DPL 0)",
            |_| {},
            |u| u.int(0x81).unwrap(),
            exception(6),
            0,
        ),
        ("ud2", |_| {}, |u| u.ud2().unwrap(), exception(6), 0),
        (
            "div by zero",
            |_| {},
            |u| u.div(rbx).unwrap(),
            exception(0),
            0,
        ),
        (
            "page fault",
            |_| {},
            |u| u.mov(qword_ptr(0xdead_0000u64), rax).unwrap(),
            exception(14),
            0,
        ),
        ("hlt", |_| {}, |u| u.hlt().unwrap(), exception(13), 0),
        ("cli", |_| {}, |u| u.cli().unwrap(), exception(13), 0),
        ("rdmsr", |_| {}, |u| u.rdmsr().unwrap(), exception(13), 0),
        (
            "mov from cr0",
            |_| {},
            |u| u.mov(rax, cr0).unwrap(),
            exception(13),
            0,
        ),
        (
            "in from a port the TSS refuses",
            |u| u.mov(edx, 0x300u32).unwrap(),
            |u| u.in_(al, dx).unwrap(),
            exception(13),
            0,
        ),
        (
            "non-canonical load",
            |u| u.mov(rbx, 0x8000_0000_0000_0000u64).unwrap(),
            |u| u.mov(rax, qword_ptr(rbx)).unwrap(),
            exception(13),
            0,
        ),
        (
            "out from ring 3 (a VM exit)",
            |_| {},
            |u| u.out(END_PORT as u32, al).unwrap(),
            None,
            1,
        ),
        (
            "interrupt in user mode",
            |u| u.out(USER_PORT as u32, al).unwrap(),
            |u| {
                let mut spin = u.create_label();
                u.set_label(&mut spin).unwrap();
                u.jmp(spin).unwrap();
            },
            Some(EntryKind::Interrupt { vector: INTERRUPT }),
            1,
        ),
    ];
    let mut wrong = Vec::new();
    for (name, setup, enter, kind, ring3_io) in cases {
        let mut user = asm();
        setup(&mut user);
        let mut instruction = asm();
        enter(&mut instruction);
        let instruction = instruction.assemble(0).unwrap();
        for &b in &instruction {
            user.db(&[b]).unwrap();
        }
        let img = user_mode_image(&mut user, 0x202);
        let mut km = KvmMachine::new(&img);
        if matches!(kind, Some(EntryKind::Interrupt { .. })) {
            km.inject_on_port = Some((USER_PORT, INTERRUPT));
        }
        let k = km.run(100);
        let (expected_port, expected_value) = match kind {
            Some(EntryKind::Exception { vector, .. }) => (EXC_PORT, u32::from(vector)),
            Some(EntryKind::Interrupt { vector }) => (EXC_PORT, u32::from(vector)),
            _ => (END_PORT, 0),
        };
        // The syscall stub at LSTAR reports 0x100 where `syscall` enters ring 0.
        assert!(
            k.exit
                == KvmExit::Out {
                    port: expected_port,
                    value: expected_value
                }
                || (name == "syscall"
                    && k.exit
                        == KvmExit::Out {
                            port: EXC_PORT,
                            value: 0x100
                        }),
            "{name}: {:?}",
            k.exit
        );
        let model = kind.map_or(0, |kind| {
            let entry = UserEntry {
                icount: 0,
                kind,
                regs: UserRegs {
                    gpr: [0; 16],
                    rip: USER_CODE,
                    rflags: 0x202,
                    cs: 0x33,
                    ss: 0x2b,
                    fs_base: 0,
                    gs_base: 0,
                },
            };
            counter_extra_for_entry(&entry, &instruction)
        });
        let ring0 = ENTER + if kind.is_some() { STUB } else { 0 };
        let expected = ring0 + model + ring3_io;
        println!(
            "{name}: insn_emulation {}, ring-0 instructions {ring0}, model's extra {model}",
            k.insn_delta
        );
        if k.insn_delta != expected {
            wrong.push(format!(
                "{name}: counted {} expected {expected}",
                k.insn_delta
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
