//! Differential tests of the instructions a Linux 6.1 boot executes beyond the demo
//! kernel's: the x87/SSE state instructions (`fninit`, `fnclex`, `fwait`, `fnstcw`,
//! `fnstsw`, `ldmxcsr`, `stmxcsr`, `fxsave`/`fxrstor` and their 64-bit forms),
//! `serialize`, `lar`, and the string port instructions `ins`/`outs` with `rep`.
//!
//! At ring 0 under KVM, comparing everything `compare` compares (registers, flags,
//! every byte of memory, the `fxsave` images among them, the port accesses and the
//! instruction count): the recording host's semantics. Where this host's KVM cannot
//! execute an instruction at ring 0 (its emulator stops with an internal error: here
//! `fnclex`, `fwait`, `ldmxcsr`, `stmxcsr`, `lar`, `fnstsw ax`), a recording made here
//! never holds it, and the x87/SSE ones run natively on the host CPU at ring 3 instead;
//! what they store is compared with what the replay CPU stores running the same code at
//! ring 0 (`lar` cannot be compared so: see its test).
//! Every test skips with a printed reason where /dev/kvm is absent.

mod cpu_common;

use cpu_common::compare::{compare, compare_where_kvm_emulates, end};
use cpu_common::kvm::{KvmExit, KvmMachine, available, observed_cpuid};
use cpu_common::lar::lar_program;
use cpu_common::*;
use iced_x86::code_asm::*;
use krr_engine::cpu::Exit;

/// Where the tests keep `fxsave` images: images to restore at IMAGES, saved ones at
/// SAVED, and what exception handlers save at AFTER_FAULT.
const IMAGES: u64 = DATA + 0x2000;
const SAVED: u64 = DATA + 0x4000;
const AFTER_FAULT: u64 = DATA + 0x6000;

/// A valid `fxsave` image: bytes from `seed` (FIP and FDP 64 bits wide), with the given
/// FCW, FSW and MXCSR.
fn fx_image(seed: u64, fcw: u16, fsw: u16, mxcsr: u32) -> [u8; 512] {
    let mut b = [0u8; 512];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for v in b.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *v = x as u8;
    }
    b[0..2].copy_from_slice(&fcw.to_le_bytes());
    b[2..4].copy_from_slice(&fsw.to_le_bytes());
    b[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    b
}

/// [`fx_image`] with FIP and FDP below 4 GiB: the images for which the host CPU's
/// native `fxsave64` (64-bit pointers) and the recording host's emulated one (32-bit
/// pointers) write the same bytes.
fn fx_image_low_pointers(seed: u64, fcw: u16, fsw: u16, mxcsr: u32) -> [u8; 512] {
    let mut b = fx_image(seed, fcw, fsw, mxcsr);
    b[12..16].fill(0);
    b[20..24].fill(0);
    b
}

/// Handlers for #NM, #GP, #PF and #MF that save the FPU state at AFTER_FAULT (after
/// `clts`, so that an #NM handler can) and report the vector like the default stubs:
/// what an instruction that faulted left of the state is compared too.
fn with_saving_handlers(img: &mut Image) {
    for (i, vector) in [7u8, 13, 14, 16].into_iter().enumerate() {
        let at = HANDLERS + 0x100 * i as u64;
        let mut h = asm();
        h.clts().unwrap();
        h.mov(rax, AFTER_FAULT).unwrap();
        h.fxsave64(ptr(rax)).unwrap();
        h.mov(eax, vector as u32).unwrap();
        h.out(EXC_PORT as u32, eax).unwrap();
        h.hlt().unwrap();
        img.load_at(at, &mut h);
        img.set_gate(vector, at, false, 0);
    }
}

fn fill(img: &mut Image, at: u64, len: usize, byte: u8) {
    img.ram[at as usize..at as usize + len].fill(byte);
}

/// `fxsave`/`fxsave64` of the reset state and of restored images (both restore forms,
/// `fninit` after them, MXCSR values at the edges), `fnstcw`/`fnstsw` to memory, an
/// operand that is not 16-byte aligned (this host's emulator does not fault), CR4.OSFXSR
/// clear: the saved bytes, and the rest of the machine, as under KVM.
#[test]
fn fxsave_images_match_kvm() {
    if !available() {
        return;
    }
    let mut img = image();
    fill(&mut img, SAVED, 0x1000, 0xcc);
    let mut a = asm();
    a.mov(rdi, SAVED).unwrap();
    a.fxsave64(ptr(rdi)).unwrap();
    a.fxsave(ptr(rdi + 0x200)).unwrap();
    a.fnstcw(word_ptr(rdi + 0x400)).unwrap();
    a.fnstsw(word_ptr(rdi + 0x402)).unwrap();
    end(&mut a);
    img.load_code(&mut a);
    compare("fxsave of the reset state", &img);

    let cases: [(u16, u16, u32); 6] = [
        (0x300b, 0x7a55, 0x1f80),
        (0x037f, 0xb8bf, 0xffff),
        (0x037b, 0x0004, 0x0000),
        (0xffff, 0xffff, 0x8040),
        (0x0000, 0x3800, 0x1f80),
        (0x1272, 0x4123, 0x7fff),
    ];
    for (i, &(fcw, fsw, mxcsr)) in cases.iter().enumerate() {
        let mut img = image();
        img.write(IMAGES, &fx_image(i as u64, fcw, fsw, mxcsr));
        img.write(IMAGES + 0x200, &fx_image(100 + i as u64, fsw, fcw, 0x1f80));
        fill(&mut img, SAVED, 0x1000, 0xcc);
        let mut a = asm();
        a.mov(rsi, IMAGES).unwrap();
        a.mov(rdi, SAVED).unwrap();
        a.fxrstor64(ptr(rsi)).unwrap();
        a.fxsave64(ptr(rdi)).unwrap();
        a.fxsave(ptr(rdi + 0x200)).unwrap();
        a.fnstsw(word_ptr(rdi + 0xff0)).unwrap();
        a.fnstcw(word_ptr(rdi + 0xff2)).unwrap();
        a.fxrstor(ptr(rsi + 0x200)).unwrap();
        a.fxsave64(ptr(rdi + 0x400)).unwrap();
        a.fninit().unwrap();
        a.fxsave64(ptr(rdi + 0x600)).unwrap();
        a.fnstsw(word_ptr(rdi + 0xff4)).unwrap();
        a.fnstcw(word_ptr(rdi + 0xff6)).unwrap();
        end(&mut a);
        img.load_code(&mut a);
        compare(
            &format!("fxrstor/fxsave, fcw {fcw:#x} fsw {fsw:#x} mxcsr {mxcsr:#x}"),
            &img,
        );
    }

    let mut img = image();
    img.write(IMAGES + 8, &fx_image(7, 0x037f, 0x0001, 0x1f80));
    fill(&mut img, SAVED, 0x1000, 0xcc);
    let mut a = asm();
    a.mov(rsi, IMAGES + 8).unwrap();
    a.mov(rdi, SAVED + 8).unwrap();
    a.fxrstor64(ptr(rsi)).unwrap();
    a.fxsave64(ptr(rdi)).unwrap();
    end(&mut a);
    img.load_code(&mut a);
    compare("fxrstor64/fxsave64 not 16-byte aligned", &img);

    let mut img = image();
    img.write(IMAGES, &fx_image(8, 0x037f, 0, 0x1f80));
    fill(&mut img, SAVED, 0x1000, 0xcc);
    let mut a = asm();
    a.mov(rsi, IMAGES).unwrap();
    a.fxrstor64(ptr(rsi)).unwrap();
    a.mov(rax, cr4).unwrap();
    a.and(eax, !0x200i32).unwrap();
    a.mov(cr4, rax).unwrap();
    a.mov(rdi, SAVED).unwrap();
    a.fxsave64(ptr(rdi)).unwrap();
    a.fxrstor(ptr(rsi)).unwrap();
    end(&mut a);
    img.load_code(&mut a);
    compare("fxsave64 and fxrstor with CR4.OSFXSR clear", &img);
}

/// The faults of the `fxsave` family and of the x87 state instructions: #GP for MXCSR
/// bits an image may not set (nothing loaded), #NM with CR0.TS or CR0.EM, #PF on a page
/// an image crosses into (a save writes the first page first; a restore loads
/// nothing), with what the state is afterwards.
#[test]
fn fxsave_faults_match_kvm() {
    if !available() {
        return;
    }
    for mxcsr in [0x1_0000u32, 0x8000_0000, 0xffff_ffff] {
        let mut img = image();
        with_saving_handlers(&mut img);
        img.write(IMAGES, &fx_image(1, 0x037a, 0x0001, mxcsr));
        let mut a = asm();
        a.mov(rsi, IMAGES).unwrap();
        a.fxrstor64(ptr(rsi)).unwrap();
        end(&mut a);
        img.load_code(&mut a);
        compare(&format!("fxrstor64 with MXCSR {mxcsr:#x}"), &img);
    }
    for (name, cr0_bit) in [("CR0.TS", 8u64), ("CR0.EM", 4)] {
        type Emit = fn(&mut CodeAssembler);
        let instructions: [(&str, Emit); 5] = [
            ("fxsave64", |a| a.fxsave64(ptr(rdi)).unwrap()),
            ("fxrstor64", |a| a.fxrstor64(ptr(rsi)).unwrap()),
            ("fxsave", |a| a.fxsave(ptr(rdi)).unwrap()),
            ("fninit", |a| a.fninit().unwrap()),
            ("fnstcw", |a| a.fnstcw(word_ptr(rdi)).unwrap()),
        ];
        for (what, emit) in instructions {
            let mut img = image();
            with_saving_handlers(&mut img);
            img.write(IMAGES, &fx_image(2, 0x037f, 0, 0x1f80));
            img.state.cr0 |= cr0_bit;
            let mut a = asm();
            a.mov(rsi, IMAGES).unwrap();
            a.mov(rdi, SAVED).unwrap();
            emit(&mut a);
            end(&mut a);
            img.load_code(&mut a);
            compare(&format!("{what} with {name}"), &img);
        }
    }
    // An image crossing into a page that is not present, or read-only.
    for (clear, what) in [(1u64, "not present"), (2, "read-only")] {
        for offset in [0xf00u64, 0xe60, 0xff0] {
            let mut img = image();
            with_saving_handlers(&mut img);
            let second = SAVED + 0x1000;
            let pte = Image::pte_addr(second);
            img.write_u64(pte, img.read_u64(pte) & !clear);
            img.write(IMAGES, &fx_image(3, 0x037f, 0, 0x1f80));
            fill(&mut img, SAVED, 0x1000, 0xcc);
            let mut a = asm();
            a.mov(rsi, IMAGES).unwrap();
            a.fxrstor64(ptr(rsi)).unwrap();
            a.mov(rdi, SAVED + offset).unwrap();
            a.fxsave64(ptr(rdi)).unwrap();
            end(&mut a);
            img.load_code(&mut a);
            compare(&format!("fxsave64 at {offset:#x} into a {what} page"), &img);
        }
    }
    let mut img = image();
    with_saving_handlers(&mut img);
    let second = IMAGES + 0x1000;
    let pte = Image::pte_addr(second);
    img.write_u64(pte, img.read_u64(pte) & !1);
    img.write(IMAGES + 0xe60, &fx_image(4, 0x037f, 0, 0x1f80)[..0x1a0]);
    let mut a = asm();
    a.mov(rsi, IMAGES + 0xe60).unwrap();
    a.fxrstor64(ptr(rsi)).unwrap();
    end(&mut a);
    img.load_code(&mut a);
    compare("fxrstor64 crossing into a page that is not present", &img);
}

/// `serialize` and `fninit` retire as one instruction each.
#[test]
fn serialize_and_fninit() {
    if !available() {
        return;
    }
    let mut img = image();
    let mut a = asm();
    a.serialize().unwrap();
    a.mov(eax, 5u32).unwrap();
    a.serialize().unwrap();
    a.fninit().unwrap();
    a.fninit().unwrap();
    end(&mut a);
    img.load_code(&mut a);
    let c = compare("serialize, fninit", &img);
    assert_eq!(c.ours_icount, 6);
}

/// `ins` and `outs`, with and without `rep`, all sizes, both directions, 32-bit
/// addressing, chunks limited by the page and by the 1024-byte read-ahead, a page
/// fault in the middle: the port accesses in order (an `ins` chunk is one access of
/// all its bytes), memory, registers and the instruction count as under KVM, and the
/// counts as `krr_engine::icount::string_input_chunk` documents them.
#[test]
fn string_port_io() {
    if !available() {
        return;
    }
    const IN_PORT: u32 = 0x60;
    const OUT_PORT: u32 = 0x80;
    type Setup = fn(&mut Image);
    fn no_setup(_: &mut Image) {}
    fn unmap_next_page(img: &mut Image) {
        let pte = Image::pte_addr(DATA + 0x2000);
        img.write_u64(pte, img.read_u64(pte) & !1);
    }
    // (size, rcx, RDI's offset in the page at DATA + 0x1000, DF, setup, chunks expected)
    let ins_cases: [(usize, u64, u64, bool, Setup, Option<u64>); 14] = [
        (1, 0, 0, false, no_setup, Some(0)),
        (1, 1, 0, false, no_setup, Some(1)),
        (1, 5, 0, false, no_setup, Some(1)),
        (1, 1024, 0, false, no_setup, Some(1)),
        (1, 1030, 0, false, no_setup, Some(2)),
        (1, 3000, 0, false, no_setup, Some(3)),
        (2, 600, 0, false, no_setup, Some(2)),
        (4, 300, 0, false, no_setup, Some(2)),
        (1, 100, 0xffa, false, no_setup, Some(2)),
        (4, 10, 0xffa, false, no_setup, Some(2)),
        (1, 2000, 0x800, true, no_setup, Some(2)),
        (1, 5, 0, true, no_setup, Some(2)),
        (2, 9, 0x7ff, true, no_setup, None),
        (1, 0x20, 0xff0, false, unmap_next_page, None),
    ];
    for (size, count, offset, down, setup, chunks) in ins_cases {
        let mut img = image();
        setup(&mut img);
        fill(&mut img, DATA, 0x2000, 0xcc);
        let mut a = asm();
        a.mov(rdi, DATA + 0x1000 + offset).unwrap();
        a.mov(rcx, count).unwrap();
        a.mov(edx, IN_PORT).unwrap();
        if down {
            a.std().unwrap();
        }
        match size {
            1 => a.rep().insb().unwrap(),
            2 => a.rep().insw().unwrap(),
            _ => a.rep().insd().unwrap(),
        }
        end(&mut a);
        img.load_code(&mut a);
        let name = format!("rep ins size {size} rcx {count} at {offset:#x} df {down}");
        let c = compare(&name, &img);
        if let Some(chunks) = chunks {
            let setup_count = 3 + down as u64;
            // The chunks, and the execution with RCX = 0 that completes it.
            assert_eq!(c.ours_icount, setup_count + chunks + 1 + 1, "{name}");
        }
    }
    // Single ins of each size, one crossing a page; 32-bit addressing with a fault.
    let mut img = image();
    let mut a = asm();
    a.mov(edx, IN_PORT).unwrap();
    a.mov(rdi, DATA + 0xffe).unwrap();
    a.insb().unwrap();
    a.insw().unwrap();
    a.insd().unwrap();
    a.std().unwrap();
    a.insd().unwrap();
    end(&mut a);
    img.load_code(&mut a);
    compare("ins without rep", &img);
    let mut img = image();
    let mut a = asm();
    a.mov(rdi, 0x1_ffff_fff0u64).unwrap();
    a.mov(rcx, 0x1_0000_0003u64).unwrap();
    a.mov(edx, IN_PORT).unwrap();
    a.db(&[0x67, 0xf3, 0x6c]).unwrap(); // rep insb [edi], dx
    a.mov(edi, DATA as u32).unwrap();
    a.db(&[0x67, 0xf3, 0x6c]).unwrap();
    end(&mut a);
    img.load_code(&mut a);
    compare("rep insb with 32-bit addresses", &img);

    for (size, count, down) in [
        (1usize, 0u64, false),
        (1, 1, false),
        (1, 3, false),
        (4, 3, false),
        (2, 4, true),
    ] {
        let mut img = image();
        for i in 0..64u64 {
            img.ram[(DATA + 0x100 + i) as usize] = (i * 29 + 3) as u8;
        }
        let mut a = asm();
        a.mov(rsi, DATA + 0x120).unwrap();
        a.mov(rcx, count).unwrap();
        a.mov(edx, OUT_PORT).unwrap();
        if down {
            a.std().unwrap();
        }
        match size {
            1 => a.rep().outsb().unwrap(),
            2 => a.rep().outsw().unwrap(),
            _ => a.rep().outsd().unwrap(),
        }
        end(&mut a);
        img.load_code(&mut a);
        let name = format!("rep outs size {size} rcx {count} df {down}");
        let c = compare(&name, &img);
        // One chunk per element, and the completion.
        assert_eq!(c.ours_icount, 3 + down as u64 + count + 1 + 1, "{name}");
    }
    let mut img = image();
    img.state.seg[4].base = 0x1000;
    img.write(DATA + 0x1010, &[0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde]);
    let mut a = asm();
    a.mov(rsi, DATA + 0x10).unwrap();
    a.mov(edx, OUT_PORT).unwrap();
    a.db(&[0x64, 0x6e]).unwrap(); // outsb dx, fs:[rsi]
    a.outsw().unwrap();
    a.outsd().unwrap();
    end(&mut a);
    img.load_code(&mut a);
    compare("outs without rep, an FS override", &img);
}

// ---- Natively at ring 3 ----

/// User-mode code at UCODE, its data at UDATA (compared), its stack below USTACK.
const UCODE: u64 = 0x30000;
const UDATA: u64 = 0x31000;
const USTACK: u64 = 0x34000;
const USER_CS: u64 = 0x33;
const USER_SS: u64 = 0x2b;

/// Runs `build`'s code (followed by `ud2`) natively at ring 3 under KVM and in the
/// replay CPU at ring 0, and asserts that both end at the same exception at the same
/// instruction with the same user data page. Returns that page.
fn compare_at_ring3(name: &str, build: impl FnOnce(&mut Image, &mut CodeAssembler)) -> Vec<u8> {
    let mut base = image();
    // Both user descriptors accessed already, as KVM's iretq would leave them.
    for sel in [0x28u64, 0x30] {
        let d = base.read_u64(GDT + sel);
        base.write_u64(GDT + sel, d | 1 << 40);
    }
    let mut u = asm();
    build(&mut base, &mut u);
    u.ud2().unwrap();
    base.load_at(UCODE, &mut u);

    let mut user = base.clone();
    for table in [PML4, PDPT, PD] {
        let e = user.read_u64(table);
        user.write_u64(table, e | 4);
    }
    for page in (UCODE..USTACK).step_by(4096) {
        let pte = Image::pte_addr(page);
        let e = user.read_u64(pte);
        user.write_u64(pte, e | 4);
    }
    let mut a = asm();
    for v in [USER_SS, USTACK, 2, USER_CS, UCODE] {
        a.push(v as i32).unwrap();
    }
    a.iretq().unwrap();
    user.load_code(&mut a);
    let k = KvmMachine::new(&user).run(100);

    let mut ring0 = base;
    ring0.state.rip = UCODE;
    ring0.state.gpr[4] = USTACK;
    let o = run_replay(&ring0, &observed_cpuid(), 1_000_000);

    let ours_exit = match &o.exit {
        Exit::PortOut { port, value, .. } => KvmExit::Out {
            port: *port,
            value: *value,
        },
        e => KvmExit::Other(format!("{e:?}")),
    };
    assert_eq!(ours_exit, k.exit, "{name}: how the code ended");
    // The faulting RIP in the exception frame: on RSP0's stack from ring 3, on the
    // user stack from ring 0.
    let mut frame = [0u8; 8];
    o.mem.read(USTACK - 40, &mut frame).unwrap();
    let at = (RSP0_TOP - 40) as usize;
    assert_eq!(
        u64::from_le_bytes(frame),
        u64::from_le_bytes(k.ram[at..at + 8].try_into().unwrap()),
        "{name}: the instruction that raised the exception"
    );
    let mut ours = vec![0u8; 0x1000];
    o.mem.read(UDATA, &mut ours).unwrap();
    let kvm = &k.ram[UDATA as usize..UDATA as usize + 0x1000];
    if ours != kvm {
        let diffs: Vec<String> = (0..0x1000)
            .step_by(8)
            .filter(|&i| ours[i..i + 8] != kvm[i..i + 8])
            .take(8)
            .map(|i| {
                format!(
                    "UDATA+{i:#x}: ours {:02x?} host {:02x?}",
                    &ours[i..i + 8],
                    &kvm[i..i + 8]
                )
            })
            .collect();
        panic!(
            "{name}: the replay CPU differs from the host CPU:\n  {}",
            diffs.join("\n  ")
        );
    }
    ours
}

/// `fnclex`, `fwait` (no error pending, and #MF with one), `ldmxcsr`/`stmxcsr`,
/// `fnstsw ax`: what they leave, natively on the host CPU and in the replay CPU. At ring 0
/// where KVM executes them.
#[test]
fn x87_and_mxcsr_control() {
    if !available() {
        return;
    }
    let cases: [(u16, u16); 4] = [
        (0x300b, 0x7a55),
        (0x037f, 0xb8bf),
        (0x037b, 0x0004),
        (0x1f40, 0xffff),
    ];
    for (i, &(fcw, fsw)) in cases.iter().enumerate() {
        let saved = compare_at_ring3(&format!("fnclex fcw {fcw:#x} fsw {fsw:#x}"), |img, a| {
            img.write(
                UDATA + 0x200,
                &fx_image_low_pointers(i as u64, fcw, fsw, 0x1f80),
            );
            a.mov(rsi, UDATA + 0x200).unwrap();
            a.fxrstor64(ptr(rsi)).unwrap();
            a.mov(eax, 0xffff_ffffu32).unwrap();
            a.fnstsw(ax).unwrap();
            a.mov(dword_ptr(UDATA), eax).unwrap();
            a.fnclex().unwrap();
            a.fnstsw(ax).unwrap();
            a.mov(dword_ptr(UDATA + 4), eax).unwrap();
            a.mov(rdi, UDATA + 0x400).unwrap();
            a.fxsave64(ptr(rdi)).unwrap();
            a.wait().unwrap();
            a.mov(dword_ptr(UDATA + 8), 1u32).unwrap();
        });
        let fsw_after = u16::from_le_bytes([saved[4], saved[5]]);
        assert_eq!(fsw_after & 0x80ff, 0, "fnclex clears the flags, ES and B");
        assert_eq!(saved[8], 1, "fwait without an error pending");
        // The same at ring 0, where KVM can execute them.
        let mut img = image();
        img.write(IMAGES, &fx_image(i as u64, fcw, fsw, 0x1f80));
        let mut a = asm();
        a.mov(rsi, IMAGES).unwrap();
        a.fxrstor64(ptr(rsi)).unwrap();
        a.fnclex().unwrap();
        a.mov(rdi, SAVED).unwrap();
        a.fxsave64(ptr(rdi)).unwrap();
        end(&mut a);
        img.load_code(&mut a);
        compare_where_kvm_emulates("fnclex at ring 0", &img);
    }
    // fwait with an unmasked exception pending: #MF at the fwait.
    let saved = compare_at_ring3("fwait with an error pending", |img, a| {
        img.write(
            UDATA + 0x200,
            &fx_image_low_pointers(9, 0x037b, 0x0004, 0x1f80),
        );
        a.mov(rsi, UDATA + 0x200).unwrap();
        a.fxrstor64(ptr(rsi)).unwrap();
        a.mov(dword_ptr(UDATA), 1u32).unwrap();
        a.wait().unwrap();
        a.mov(dword_ptr(UDATA + 4), 1u32).unwrap();
    });
    assert_eq!(saved[..8], [1, 0, 0, 0, 0, 0, 0, 0], "#MF at the fwait");
    for mxcsr in [0u32, 0x1f80, 0xffff, 0x8040, 0x0001] {
        compare_at_ring3(&format!("ldmxcsr {mxcsr:#x}"), |img, a| {
            img.write(UDATA + 0x100, &mxcsr.to_le_bytes());
            a.mov(dword_ptr(UDATA), 0xdead_beefu32).unwrap();
            a.stmxcsr(dword_ptr(UDATA)).unwrap();
            a.ldmxcsr(dword_ptr(UDATA + 0x100)).unwrap();
            a.stmxcsr(dword_ptr(UDATA + 4)).unwrap();
            a.mov(rdi, UDATA + 0x200).unwrap();
            a.fxsave64(ptr(rdi)).unwrap();
        });
        let mut img = image();
        img.write(IMAGES, &mxcsr.to_le_bytes());
        let mut a = asm();
        a.ldmxcsr(dword_ptr(IMAGES)).unwrap();
        a.stmxcsr(dword_ptr(IMAGES + 4)).unwrap();
        end(&mut a);
        img.load_code(&mut a);
        compare_where_kvm_emulates("ldmxcsr/stmxcsr at ring 0", &img);
    }
}

/// `lar` of every kind of descriptor a selector can name (code and data of each DPL,
/// conforming code, the system types valid in long mode and invalid ones, a segment
/// not present, null selectors, beyond the GDT limit, in the LDT, with RPL 0 and 3),
/// into 16-, 32- and 64-bit registers and from memory: ZF and the destination, at ring
/// 0 where KVM executes `lar` there. This host's KVM cannot; natively at ring 3 `lar`
/// reads the hypervisor's own GDT rather than the guest's (a selector the guest's GDT
/// does not have reads the host's descriptor), so it cannot be compared there either:
/// engine/tests/cpu_linux.rs checks the same cases against the SDM's rules.
#[test]
fn lar() {
    if !available() {
        return;
    }
    let mut img = image();
    let mut a = asm();
    lar_program(&mut img, &mut a, DATA);
    end(&mut a);
    img.load_code(&mut a);
    compare_where_kvm_emulates("lar", &img);
}
