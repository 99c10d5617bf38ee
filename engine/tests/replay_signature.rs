//! Interrupts placed by signature (recordings made without an instruction counter):
//! replay takes one at the first instance of its recorded state, and gives up with a
//! divergence once the vCPU cannot have run that long, instead of spinning forever.

mod cpu_common;

use cpu_common::{CODE, HANDLERS, Image, asm, default_cpuid, image};
use iced_x86::code_asm::{al, eax, ecx, rax};
use krr_engine::event::{Event, InjectionPoint, KernelInterrupt};
use krr_engine::icount::signature_search_limit;
use krr_engine::replay::{Replay, Stop, Target};
use krr_engine::state::{KernelIdentity, stack_digest, stack_digest_len};
use krr_engine::trace::{FinishInfo, Header, RecordingWriter};

const VECTOR: u8 = 0x20;
/// The wall time the recorder measured from the exit to the interrupt.
const SINCE_NS: u64 = 1_000;

/// A kernel that makes one deterministic exit (`out`), enables interrupts and spins
/// without any further exit. Returns the image and the address of the spin loop.
fn spinning_kernel() -> (Image, u64) {
    let mut img = image();
    let mut a = asm();
    let mut spin = a.create_label();
    a.out(0x80u32, al).unwrap();
    a.sti().unwrap();
    a.set_label(&mut spin).unwrap();
    a.inc(rax).unwrap();
    a.jmp(spin).unwrap();
    img.load_code(&mut a);
    // The handler: make it visible that the interrupt arrived.
    let mut h = asm();
    h.mov(eax, 0x77u32).unwrap();
    h.hlt().unwrap();
    img.load_at(HANDLERS, &mut h);
    img.set_gate(VECTOR, HANDLERS, false, 0);
    // out imm8, al (2 bytes) + sti (1 byte).
    (img, CODE + 3)
}

fn recording(
    img: &Image,
    spin: u64,
    regs_digest: u64,
    stack_digest: Option<u64>,
) -> tempfile::NamedTempFile {
    let mut header = Header::new(
        Image::config(),
        KernelIdentity {
            name: "spin".into(),
            size: 0,
            sha256: [0; 32],
        },
    );
    header.cpuid = default_cpuid();
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut w = RecordingWriter::create(file.path()).unwrap();
    w.write_header(&header).unwrap();
    w.write_snapshot(&img.snapshot()).unwrap();
    w.push(Event::KernelInterrupt(KernelInterrupt {
        icount: 1, // after the first deterministic exit
        vector: VECTOR,
        rip: spin,
        point: InjectionPoint::Signature {
            regs_digest,
            stack_digest,
            since_position_ns: SINCE_NS,
        },
    }))
    .unwrap();
    w.finish(FinishInfo {
        kernel_instructions: 1,
        duration_s: 0.0,
        end_reason: "test".into(),
    })
    .unwrap();
    file
}

#[test]
fn a_signature_interrupt_is_taken_at_its_instance() {
    let (img, spin) = spinning_kernel();
    // The state at the fifth time round the loop, from a replay that never injects.
    let probe = recording(&img, spin, 0, None);
    let mut r = Replay::open(probe.path()).unwrap();
    r.set_user_breakpoints(vec![spin]);
    for _ in 0..5 {
        assert_eq!(r.run(Target::End), Stop::Breakpoint(spin));
    }
    let wanted = r.regs().regs_digest();
    let wanted_rax = r.regs().gpr[0];
    let rsp = r.regs().gpr[4];
    let mut top = vec![0u8; stack_digest_len(rsp)];
    r.read_memory(rsp, &mut top).unwrap();
    let wanted_stack = stack_digest(&top);

    for stack in [None, Some(wanted_stack)] {
        let file = recording(&img, spin, wanted, stack);
        let mut r = Replay::open(file.path()).unwrap();
        assert_eq!(r.run(Target::Event(0)), Stop::Reached(Target::Event(0)));
        assert_eq!(r.regs().rip, HANDLERS, "delivered to the handler");
        assert_eq!(r.regs().gpr[0], wanted_rax, "at the recorded instance");
    }
    // The registers match but the stack does not: no instance.
    let file = recording(&img, spin, wanted, Some(wanted_stack ^ 1));
    let mut r = Replay::open(file.path()).unwrap();
    let Stop::Diverged(d) = r.run(Target::End) else {
        panic!("a stack digest that never matches must be reported");
    };
    assert!(d.actual.contains("no instance of its signature"), "{d}");
}

#[test]
fn a_signature_that_never_matches_is_a_divergence_within_the_recorded_time() {
    let (img, spin) = spinning_kernel();
    let file = recording(&img, spin, 0x0bad_d1ce_57ed_0bad, None);
    let mut r = Replay::open(file.path()).unwrap();
    let Stop::Diverged(d) = r.run(Target::End) else {
        panic!("a signature that never matches must be reported");
    };
    assert!(d.actual.contains("no instance of its signature"), "{d}");
    // Searched exactly as far as the bound allows, counted from the exit (the `out`,
    // instruction 1).
    assert_eq!(r.icount(), 1 + signature_search_limit(SINCE_NS), "{d}");
}

/// The bound counts from the exit the interrupt follows: a longer exit-free stretch
/// before that exit is not searched against it.
#[test]
fn the_bound_counts_from_the_exit_the_interrupt_follows() {
    let limit = signature_search_limit(SINCE_NS);
    let n = u32::try_from(limit).unwrap(); // 1 + 2n instructions: twice the bound
    let mut img = image();
    let mut a = asm();
    let mut long = a.create_label();
    let mut spin = a.create_label();
    a.mov(ecx, n).unwrap();
    a.set_label(&mut long).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(long).unwrap();
    a.out(0x80u32, al).unwrap();
    a.sti().unwrap();
    a.set_label(&mut spin).unwrap();
    a.inc(rax).unwrap();
    a.jmp(spin).unwrap();
    let code = a.assemble(CODE).unwrap();
    img.load_code(&mut a);
    // `inc rax` (3 bytes) and `jmp short` (2) end the code.
    let spin_at = CODE + code.len() as u64 - 5;
    let file = recording(&img, spin_at, 0x0bad_d1ce_57ed_0bad, None);
    let mut r = Replay::open(file.path()).unwrap();
    let Stop::Diverged(d) = r.run(Target::End) else {
        panic!("a signature that never matches must be reported");
    };
    assert!(d.actual.contains("no instance of its signature"), "{d}");
    let before_exit = 1 + 2 * u64::from(n) + 1;
    assert_eq!(r.icount(), before_exit + limit, "{d}");
}
