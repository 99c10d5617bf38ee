//! Differential tests: the same ring-0 code under KVM and in the replay CPU must leave
//! the same registers, flags, memory, and instruction count.

mod cpu_common;

use cpu_common::kvm::{KvmExit, KvmMachine, available};
use cpu_common::*;
use iced_x86::code_asm::*;
use krr_engine::cpu::Exit;

struct Compared {
    ours_icount: u64,
    kvm_count: u64,
}

/// Runs `img` in both and asserts identical results. `undefined` masks RFLAGS bits the
/// architecture leaves undefined for the code under test.
fn compare(name: &str, img: &Image, undefined: u64) -> Compared {
    compare_opts(name, img, undefined, true)
}

fn compare_opts(name: &str, img: &Image, undefined: u64, check_count: bool) -> Compared {
    compare_full(name, img, undefined, check_count, &|_| String::new())
}

fn compare_annotated(name: &str, img: &Image, undefined: u64, annotate: &dyn Fn(u64) -> String) -> Compared {
    compare_full(name, img, undefined, true, annotate)
}

fn compare_full(
    name: &str,
    img: &Image,
    undefined: u64,
    check_count: bool,
    annotate: &dyn Fn(u64) -> String,
) -> Compared {
    let mut km = KvmMachine::new(img);
    let cpuid = km.cpuid.clone();
    let k = km.run(1000);
    let o = run_replay(img, &cpuid, 5_000_000);
    let ours_exit = match &o.exit {
        Exit::PortOut { port, value, .. } => KvmExit::Out { port: *port, value: *value },
        Exit::Hlt => KvmExit::Hlt,
        e => KvmExit::Other(format!("{e:?}")),
    };
    let st = o.cpu.state();
    let mut diffs = Vec::new();
    if ours_exit != k.exit {
        diffs.push(format!("exit: ours {ours_exit:?} kvm {:?}", k.exit));
    }
    for i in 0..16 {
        if st.gpr[i] != k.state.gpr[i] {
            diffs.push(format!(
                "{}: ours {:#x} kvm {:#x}",
                krr_engine::state::gpr::NAMES[i],
                st.gpr[i],
                k.state.gpr[i]
            ));
        }
    }
    if st.rip != k.state.rip {
        diffs.push(format!("rip: ours {:#x} kvm {:#x}", st.rip, k.state.rip));
    }
    if (st.rflags ^ k.state.rflags) & !undefined != 0 {
        diffs.push(format!("rflags: ours {:#x} kvm {:#x}", st.rflags, k.state.rflags));
    }
    if st.cr2 != k.state.cr2 {
        diffs.push(format!("cr2: ours {:#x} kvm {:#x}", st.cr2, k.state.cr2));
    }
    for (a, b, n) in [(st.cr0, k.state.cr0, "cr0"), (st.cr3, k.state.cr3, "cr3"), (st.cr4, k.state.cr4, "cr4")] {
        if a != b {
            diffs.push(format!("{n}: ours {a:#x} kvm {b:#x}"));
        }
    }
    for i in 0..6 {
        let (a, b) = (st.seg[i], k.state.seg[i]);
        if a.selector != b.selector || a.base != b.base {
            diffs.push(format!("seg{i}: ours {a:x?} kvm {b:x?}"));
        }
    }
    let mut page = vec![0u8; 4096];
    let mut mem_diffs = 0;
    for gpa in (0..RAM_SIZE).step_by(4096) {
        o.mem.read(gpa, &mut page).unwrap();
        let kp = &k.ram[gpa as usize..gpa as usize + 4096];
        if page[..] != kp[..] {
            for off in (0..4096).step_by(8) {
                if page[off..off + 8] != kp[off..off + 8] {
                    mem_diffs += 1;
                    if mem_diffs <= 6 {
                        let a = gpa as usize + off;
                        let ours = u64::from_le_bytes(page[off..off + 8].try_into().unwrap());
                        let kv = u64::from_le_bytes(k.ram[a..a + 8].try_into().unwrap());
                        diffs.push(format!("memory at {a:#x}: ours {ours:#x} kvm {kv:#x} {}", annotate(a as u64)));
                    }
                }
            }
        }
    }
    if check_count && o.cpu.icount() != k.insn_delta {
        diffs.push(format!("icount: ours {} kvm insn_emulation {}", o.cpu.icount(), k.insn_delta));
    }
    assert!(diffs.is_empty(), "{name}: replay CPU differs from KVM:\n  {}", diffs.join("\n  "));
    Compared {
        ours_icount: o.cpu.icount(),
        kvm_count: k.insn_delta,
    }
}

fn end(a: &mut CodeAssembler) {
    a.out(END_PORT as u32, al).unwrap();
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
    let c = compare("basic", &img, 0);
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
            let c = compare(&format!("rep kind {kind} n {n}"), &img, 0);
            report.push(format!("kind {kind} rcx {n}: kvm {} ours {}", c.kvm_count, c.ours_icount));
            if kind < 2 {
                // 4 setup instructions, the rep, the end marker.
                assert_eq!(c.ours_icount, 5 + 1 + n.div_ceil(1024), "rep rule for rcx {n}");
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
    let c = compare("faulting load", &img, 0);
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
    let c = compare("faulting fetch", &img, 0);
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
            1 => self.pick(&[0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0x1_0000_0000, 0x7fff_ffff_ffff_ffff, 0x8000_0000_0000_0000]),
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
        let mut p = Program { ins: Vec::new(), blocks: Vec::new() };
        p.ins.push(Instruction::with2(Code::Mov_r64_imm64, Register::R14, OUT).unwrap());
        p.ins.push(Instruction::with2(Code::Mov_r64_imm64, Register::R12, SCRATCH).unwrap());
        p
    }

    /// Appends one block: random registers, scratch memory and flags, the instructions
    /// under test, then every register and the flags (masked with `!undefined`) stored.
    fn block(&mut self, rng: &mut Rng, body: &[Instruction], undefined: u64, setup: &dyn Fn(&mut Rng, &mut [u64; 10])) {
        let mut vals = [0u64; 10];
        for v in vals.iter_mut() {
            *v = rng.value();
        }
        setup(rng, &mut vals);
        for (r, v) in REGS64.iter().zip(vals) {
            self.ins.push(Instruction::with2(Code::Mov_r64_imm64, *r, v).unwrap());
        }
        let m = rng.value();
        self.ins.push(Instruction::with2(Code::Mov_r64_imm64, Register::R15, m).unwrap());
        self.ins.push(Instruction::with2(Code::Mov_rm64_r64, MemoryOperand::with_base(Register::R12), Register::R15).unwrap());
        let fl = (rng.next() & 0x8d5) as i32 | 2;
        self.ins.push(Instruction::with1(Code::Pushq_imm32, fl).unwrap());
        self.ins.push(Instruction::with(Code::Popfq));
        self.ins.extend_from_slice(body);
        self.ins.push(Instruction::with(Code::Pushfq));
        self.ins.push(Instruction::with1(Code::Pop_r64, Register::R15).unwrap());
        self.ins.push(Instruction::with2(Code::And_rm64_imm32, Register::R15, !(undefined as i64) as i32).unwrap());
        for (i, r) in REGS64.iter().enumerate() {
            self.ins.push(Instruction::with2(Code::Mov_rm64_r64, MemoryOperand::with_base_displ(Register::R14, 8 * i as i64), *r).unwrap());
        }
        self.ins.push(Instruction::with2(Code::Mov_rm64_r64, MemoryOperand::with_base_displ(Register::R14, 80), Register::R15).unwrap());
        self.ins.push(Instruction::with2(Code::Mov_r64_rm64, Register::R15, MemoryOperand::with_base(Register::R12)).unwrap());
        self.ins.push(Instruction::with2(Code::Mov_rm64_r64, MemoryOperand::with_base_displ(Register::R14, 88), Register::R15).unwrap());
        self.ins.push(Instruction::with2(Code::Add_rm64_imm8, Register::R14, BLOCK_OUT as i32).unwrap());
        let mut f = IntelFormatter::new();
        let mut text = String::new();
        for i in body {
            let mut s = String::new();
            f.format(i, &mut s);
            text += &s;
            text += "; ";
        }
        self.blocks.push(format!("{text} (inputs {vals:x?}, mem {m:#x}, flags {fl:#x})"));
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
        compare_annotated(name, &img, 0, &|addr| {
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
        0 => [[Add_rm8_r8, Add_rm16_r16, Add_rm32_r32, Add_rm64_r64], [Add_r8_rm8, Add_r16_rm16, Add_r32_rm32, Add_r64_rm64], [Add_rm8_imm8, Add_rm16_imm16, Add_rm32_imm32, Add_rm64_imm32]],
        1 => [[Or_rm8_r8, Or_rm16_r16, Or_rm32_r32, Or_rm64_r64], [Or_r8_rm8, Or_r16_rm16, Or_r32_rm32, Or_r64_rm64], [Or_rm8_imm8, Or_rm16_imm16, Or_rm32_imm32, Or_rm64_imm32]],
        2 => [[Adc_rm8_r8, Adc_rm16_r16, Adc_rm32_r32, Adc_rm64_r64], [Adc_r8_rm8, Adc_r16_rm16, Adc_r32_rm32, Adc_r64_rm64], [Adc_rm8_imm8, Adc_rm16_imm16, Adc_rm32_imm32, Adc_rm64_imm32]],
        3 => [[Sbb_rm8_r8, Sbb_rm16_r16, Sbb_rm32_r32, Sbb_rm64_r64], [Sbb_r8_rm8, Sbb_r16_rm16, Sbb_r32_rm32, Sbb_r64_rm64], [Sbb_rm8_imm8, Sbb_rm16_imm16, Sbb_rm32_imm32, Sbb_rm64_imm32]],
        4 => [[And_rm8_r8, And_rm16_r16, And_rm32_r32, And_rm64_r64], [And_r8_rm8, And_r16_rm16, And_r32_rm32, And_r64_rm64], [And_rm8_imm8, And_rm16_imm16, And_rm32_imm32, And_rm64_imm32]],
        5 => [[Sub_rm8_r8, Sub_rm16_r16, Sub_rm32_r32, Sub_rm64_r64], [Sub_r8_rm8, Sub_r16_rm16, Sub_r32_rm32, Sub_r64_rm64], [Sub_rm8_imm8, Sub_rm16_imm16, Sub_rm32_imm32, Sub_rm64_imm32]],
        6 => [[Xor_rm8_r8, Xor_rm16_r16, Xor_rm32_r32, Xor_rm64_r64], [Xor_r8_rm8, Xor_r16_rm16, Xor_r32_rm32, Xor_r64_rm64], [Xor_rm8_imm8, Xor_rm16_imm16, Xor_rm32_imm32, Xor_rm64_imm32]],
        7 => [[Cmp_rm8_r8, Cmp_rm16_r16, Cmp_rm32_r32, Cmp_rm64_r64], [Cmp_r8_rm8, Cmp_r16_rm16, Cmp_r32_rm32, Cmp_r64_rm64], [Cmp_rm8_imm8, Cmp_rm16_imm16, Cmp_rm32_imm32, Cmp_rm64_imm32]],
        _ => [[Test_rm8_r8, Test_rm16_r16, Test_rm32_r32, Test_rm64_r64], [Test_rm8_r8, Test_rm16_r16, Test_rm32_r32, Test_rm64_r64], [Test_rm8_imm8, Test_rm16_imm16, Test_rm32_imm32, Test_rm64_imm32]],
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

fn with_rm(code: Code, rm: Result<Register, MemoryOperand>, other: Option<Register>, imm: Option<i32>, rm_first: bool) -> Instruction {
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

const AF: u64 = 0x10;
const OF: u64 = 0x800;

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
            // AF is undefined after the logical operations.
            let undefined = if matches!(op, 1 | 4 | 6 | 8) { AF } else { 0 };
            p.block(&mut rng, &[ins], undefined, &no_setup);
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
            if let Ok(r) = rm {
                if r.full_register() == Register::RCX {
                    rm = Ok(sized(Register::RDX, size));
                }
            }
            let (ins, undefined) = match kind {
                0 => (with_rm(rng.pick(&unary)[szi], rm, None, None, true), 0),
                1 => (with_rm(rng.pick(&shifts_cl)[szi], rm, Some(Register::CL), None, true), OF | AF),
                2 => (with_rm(rng.pick(&shifts_1)[szi], rm, None, Some(1), true), AF),
                _ => {
                    let c = rng.pick(&[0i32, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 200]);
                    let u = if c == 1 { AF } else { OF | AF };
                    (with_rm(rng.pick(&shifts_imm)[szi], rm, None, Some(c), true), u)
                }
            };
            let setup = |rng: &mut Rng, v: &mut [u64; 10]| {
                // RCX: shift counts around the interesting boundaries.
                v[2] = rng.pick(&[0u64, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 0xff]);
            };
            p.block(&mut rng, &[ins], undefined, &setup);
        }
        p.check(&format!("unary/shift seed {seed}"));
    }
}
