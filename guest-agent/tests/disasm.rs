//! Every executable section of every kernel image decodes to instructions that KVM's
//! ring-0 emulator on the development hosts can run, with no rep string instructions
//! other than port input and output (`rep ins`, `rep outs`, whose chunks are counted as
//! measured under KVM: `krr_engine::icount::string_input_chunk`). The user programs live in a data
//! section (`.user_image`) and are exempt: they run natively at ring 3.

use std::collections::HashMap;

use iced_x86::{Code, CpuidFeature, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic};
use object::{Object, ObjectSection, ObjectSymbol, SectionFlags};

/// Why the ring-0 emulator cannot run `instr`, if it cannot.
fn forbidden(instr: &Instruction) -> Option<String> {
    if instr.code() == Code::INVALID {
        return Some("undecodable bytes".into());
    }
    let port_string = matches!(
        instr.mnemonic(),
        Mnemonic::Insb
            | Mnemonic::Insw
            | Mnemonic::Insd
            | Mnemonic::Outsb
            | Mnemonic::Outsw
            | Mnemonic::Outsd
    );
    if instr.is_string_instruction()
        && !port_string
        && (instr.has_rep_prefix() || instr.has_repne_prefix())
    {
        return Some("rep string instruction".into());
    }
    match instr.mnemonic() {
        Mnemonic::Int3 | Mnemonic::Int | Mnemonic::Int1 | Mnemonic::Into => {
            return Some("software interrupt".into());
        }
        Mnemonic::Popcnt
        | Mnemonic::Cmpxchg16b
        | Mnemonic::Xgetbv
        | Mnemonic::Rdtscp
        | Mnemonic::Monitor
        | Mnemonic::Monitorx
        | Mnemonic::Mwait
        | Mnemonic::Vmcall => return Some(format!("{:?}", instr.mnemonic())),
        _ => {}
    }
    for i in 0..instr.op_count() {
        let reg = instr.op_register(i);
        if reg.is_xmm() || reg.is_ymm() || reg.is_zmm() || reg.is_mm() || reg.is_st() {
            return Some(format!("vector/x87 register {reg:?}"));
        }
    }
    for feature in instr.cpuid_features() {
        let name = format!("{feature:?}");
        let bad = matches!(
            feature,
            CpuidFeature::FPU
                | CpuidFeature::FPU287
                | CpuidFeature::FPU387
                | CpuidFeature::MMX
                | CpuidFeature::POPCNT
                | CpuidFeature::RDTSCP
                | CpuidFeature::MONITOR
                | CpuidFeature::CMPXCHG16B
        ) || ["SSE", "AVX", "XSAVE", "FMA", "F16C", "AMX", "VMX"]
            .iter()
            .any(|p| name.starts_with(p));
        if bad {
            return Some(format!("needs {name}"));
        }
    }
    None
}

/// Every forbidden instruction in `code` (decoded at `ip` with the given bitness).
fn scan(code: &[u8], ip: u64, bitness: u32) -> Vec<String> {
    let mut decoder = Decoder::with_ip(bitness, code, ip, DecoderOptions::NONE);
    let mut problems = Vec::new();
    let mut instr = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if let Some(why) = forbidden(&instr) {
            problems.push(format!("{:#x}: {:?}: {why}", instr.ip(), instr.code()));
        }
    }
    problems
}

#[test]
fn checker_catches_what_the_emulator_cannot_run() {
    let cases: &[(&[u8], &str)] = &[
        (&[0xcc], "int3"),
        (&[0xcd, 0x80], "int 0x80"),
        (&[0xf3, 0x48, 0x0f, 0xb8, 0xc0], "popcnt"),
        (&[0x48, 0x0f, 0xc7, 0x0f], "cmpxchg16b"),
        (&[0xd9, 0xe8], "fld1"),
        (&[0x66, 0x0f, 0xef, 0xc0], "pxor xmm"),
        (&[0xc5, 0xfc, 0x57, 0xc0], "vxorps ymm"),
        (&[0x0f, 0x01, 0xd0], "xgetbv"),
        (&[0x0f, 0xae, 0x27], "xsave"),
        (&[0x0f, 0x01, 0xf9], "rdtscp"),
        (&[0x0f, 0x01, 0xc8], "monitor"),
        (&[0x0f, 0x01, 0xc1], "vmcall"),
        (&[0xf3, 0xa4], "rep movsb"),
        (&[0xf3, 0x48, 0xab], "rep stosq"),
    ];
    for (bytes, what) in cases {
        assert_eq!(scan(bytes, 0, 64).len(), 1, "{what} not caught");
    }
    let fine: &[u8] = &[
        0x48, 0x89, 0xc3, // mov rbx, rax
        0x0f, 0x31, // rdtsc
        0xe6, 0xf4, // out 0xf4, al
        0x48, 0xcf, // iretq
        0xf4, // hlt
        0x0f, 0x0b, // ud2
        0x48, 0xa5, // movsq without rep
        0xf3, 0x6c, // rep insb
        0x66, 0xf3, 0x6d, // rep insw
        0x0f, 0x01, 0xf8, // swapgs
    ];
    assert_eq!(scan(fine, 0, 64), Vec::<String>::new());
}

#[test]
fn ring0_code_uses_only_emulatable_instructions() {
    let mut images = vec![
        ("demo", krr_guest::DEMO_KERNEL),
        ("agent-selftest", krr_guest::AGENT_SELFTEST_KERNEL),
        ("bench-loop", krr_guest::BENCH_LOOP_KERNEL),
        ("bench-loop-boot", krr_guest::BENCH_LOOP_BOOT_KERNEL),
    ];
    images.extend_from_slice(krr_guest::HOSTILE_GUESTS);
    for (name, data) in images {
        let file = object::File::parse(data).unwrap();
        let mut scanned = 0;
        for section in file.sections() {
            let SectionFlags::Elf { sh_flags } = section.flags() else {
                panic!("not ELF");
            };
            if sh_flags & u64::from(object::elf::SHF_EXECINSTR) == 0 {
                continue;
            }
            let section_name = section.name().unwrap();
            // The PVH stub runs in 32-bit protected mode (QEMU only; the recorder enters at e_entry).
            let bitness = if section_name == ".boot32" { 32 } else { 64 };
            let bytes = section.data().unwrap();
            let problems = scan(bytes, section.address(), bitness);
            assert!(
                problems.is_empty(),
                "{name} {section_name}:\n{}",
                problems.join("\n")
            );
            scanned += bytes.len();
        }
        assert!(
            scanned > 4000,
            "{name}: only {scanned} bytes of code scanned"
        );
    }
}

/// Instruction counts of every path from `ip` to the loop's back edge (a conditional branch
/// to `head`, counted) or, inside a call, to the `ret` (counted). Calls add their callee's.
fn path_lengths(
    code: &HashMap<u64, Instruction>,
    ip: u64,
    head: u64,
    in_call: bool,
    depth: u32,
) -> Vec<u64> {
    assert!(
        depth < 200,
        "no back edge to {head:#x} within 200 instructions"
    );
    let instr = code
        .get(&ip)
        .unwrap_or_else(|| panic!("no instruction at {ip:#x}"));
    let next = |ip| path_lengths(code, ip, head, in_call, depth + 1);
    let plus_one = |v: Vec<u64>| v.into_iter().map(|n| n + 1).collect::<Vec<_>>();
    match instr.flow_control() {
        FlowControl::Next => plus_one(next(instr.next_ip())),
        FlowControl::Return if in_call => vec![1],
        FlowControl::ConditionalBranch if !in_call && instr.near_branch_target() == head => vec![1],
        FlowControl::ConditionalBranch => {
            let mut v = plus_one(next(instr.near_branch_target()));
            v.extend(plus_one(next(instr.next_ip())));
            v
        }
        FlowControl::UnconditionalBranch => plus_one(next(instr.near_branch_target())),
        FlowControl::Call => {
            let callee = path_lengths(code, instr.near_branch_target(), head, true, depth + 1);
            let rest = next(instr.next_ip());
            callee
                .iter()
                .flat_map(|c| rest.iter().map(move |r| 1 + c + r))
                .collect()
        }
        other => panic!("{ip:#x}: unexpected {other:?} in the loop"),
    }
}

/// The benchmark's instruction rate rests on the loop's hand-counted length: every path
/// through one iteration (both sides of its branch, the callee included) must have it.
#[test]
fn bench_loop_iteration_has_its_declared_length() {
    let file = object::File::parse(krr_guest::BENCH_LOOP_KERNEL).unwrap();
    let text = file.section_by_name(".text").unwrap();
    let mut code = HashMap::new();
    let mut decoder = Decoder::with_ip(
        64,
        text.data().unwrap(),
        text.address(),
        DecoderOptions::NONE,
    );
    for instr in &mut decoder {
        code.insert(instr.ip(), instr);
    }
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok("bench_loop"))
        .expect("bench_loop symbol");
    let (start, end) = (symbol.address(), symbol.address() + symbol.size());
    assert!(symbol.size() > 0);
    // The loop head: the target of the function's one backward conditional branch.
    let back_edges: Vec<u64> = code
        .values()
        .filter(|i| (start..end).contains(&i.ip()))
        .filter(|i| {
            i.flow_control() == FlowControl::ConditionalBranch && i.near_branch_target() < i.ip()
        })
        .map(|i| i.near_branch_target())
        .collect();
    assert_eq!(back_edges.len(), 1, "back edges {back_edges:x?}");
    let lengths = path_lengths(&code, back_edges[0], back_edges[0], false, 0);
    assert_eq!(lengths.len(), 2, "paths {lengths:?}");
    for n in lengths {
        assert_eq!(n, krr_guest::BENCH_LOOP_INSTRUCTIONS_PER_ITERATION);
    }
}
