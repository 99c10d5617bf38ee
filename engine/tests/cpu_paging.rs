//! Paging in the replay CPU: A/D bits, page-fault error codes and CR2, NX, U/S with
//! SMEP/SMAP, WP, 2 MiB pages, and the TLB rules (no KVM needed).

mod cpu_common;

use cpu_common::*;
use iced_x86::code_asm::*;
use krr_engine::arch::pte::{A, D};
use krr_engine::cpu::{Access, Exit, PageFault};

fn build(img: &mut Image, f: impl FnOnce(&mut CodeAssembler)) {
    let mut a = asm();
    f(&mut a);
    a.out(END_PORT as u32, al).unwrap();
    img.load_code(&mut a);
}

/// Runs and expects a page fault at the default stub: returns (error code, CR2).
fn page_fault(img: &Image) -> (u64, u64) {
    let o = run_replay(img, &default_cpuid(), 10_000);
    assert_eq!(
        o.exit,
        Exit::PortOut {
            port: EXC_PORT,
            size: 4,
            value: 14
        },
        "expected #PF"
    );
    let mut ec = [0u8; 8];
    o.cpu
        .read_virtual(&o.mem, o.cpu.state().gpr[4], &mut ec)
        .unwrap();
    (u64::from_le_bytes(ec), o.cpu.state().cr2)
}

#[test]
fn accessed_and_dirty_bits() {
    let mut img = image();
    build(&mut img, |a| {
        a.mov(rax, qword_ptr(DATA + 0x1000)).unwrap();
        a.mov(qword_ptr(DATA + 0x2000), rax).unwrap();
        a.mov(qword_ptr(0x60_0010u64), rax).unwrap();
    });
    let o = run_replay(&img, &default_cpuid(), 1000);
    assert!(matches!(o.exit, Exit::PortOut { port: END_PORT, .. }));
    let pte = |va: u64| o.mem.read_u64(Image::pte_addr(va)).unwrap();
    assert_eq!(pte(DATA + 0x1000) & (A | D), A, "read: accessed only");
    assert_eq!(
        pte(DATA + 0x2000) & (A | D),
        A | D,
        "write: accessed and dirty"
    );
    assert_eq!(pte(DATA + 0x3000) & (A | D), 0, "untouched");
    assert_eq!(pte(CODE) & (A | D), A, "fetch: accessed");
    let pde_2m = o.mem.read_u64(PD + 3 * 8).unwrap();
    assert_eq!(pde_2m & (A | D), A | D, "2 MiB page: A and D on the PDE");
    for upper in [PML4, PDPT, PD] {
        assert_ne!(
            o.mem.read_u64(upper).unwrap() & A,
            0,
            "upper level {upper:#x} accessed"
        );
        assert_eq!(
            o.mem.read_u64(upper).unwrap() & D,
            0,
            "upper levels never dirty"
        );
    }
}

#[test]
fn error_codes_and_cr2() {
    let cases: [(&str, u64, u64, bool, u64); 4] = [
        ("read, not present", 1, 0, false, 0),
        ("write, not present", 1, 0, true, 2),
        ("write, read-only", 2, 0, true, 3),
        ("read, reserved bit", 0, 1 << 51, false, 9),
    ];
    for (name, clear, set, write, want) in cases {
        let mut img = image();
        let va = DATA + 0x4008;
        let pte = Image::pte_addr(va);
        img.write_u64(pte, (img.read_u64(pte) & !clear) | set);
        build(&mut img, |a| {
            a.mov(rbx, va).unwrap();
            if write {
                a.mov(qword_ptr(rbx), rbx).unwrap();
            } else {
                a.mov(rax, qword_ptr(rbx)).unwrap();
            }
        });
        assert_eq!(page_fault(&img), (want, va), "{name}");
    }
}

#[test]
fn nx_smep_smap_and_wp() {
    // NX fetch: P | I/D.
    let mut img = image();
    let va = DATA + 0x5000;
    let pte = Image::pte_addr(va);
    img.write_u64(pte, img.read_u64(pte) | 1 << 63);
    img.ram[va as usize] = 0x90;
    build(&mut img, |a| {
        a.mov(rax, va).unwrap();
        a.jmp(rax).unwrap();
    });
    assert_eq!(page_fault(&img), (0x11, va));

    // NX without EFER.NXE is a reserved bit (and I/D is reported only with NXE or SMEP).
    img.state.efer &= !(1 << 11);
    assert_eq!(page_fault(&img), (9, va));

    // User page: supervisor access is fine without SMAP/SMEP...
    let mut img = image();
    for e in [PML4, PDPT, PD, pte] {
        img.write_u64(e, img.read_u64(e) | 4);
    }
    img.ram[va as usize] = 0xc3; // ret
    build(&mut img, |a| {
        a.mov(rax, qword_ptr(va)).unwrap();
        a.mov(rbx, va).unwrap();
        a.call(rbx).unwrap();
    });
    let o = run_replay(&img, &default_cpuid(), 1000);
    assert!(matches!(o.exit, Exit::PortOut { port: END_PORT, .. }));
    // ... SMAP faults the data access (P, and the access is a supervisor one) unless AC...
    let mut smap = img.clone();
    smap.state.cr4 |= 1 << 21;
    assert_eq!(page_fault(&smap), (1, va));
    let mut smap_ac = smap.clone();
    smap_ac.state.rflags |= 1 << 18;
    let o = run_replay(&smap_ac, &default_cpuid(), 1000);
    assert!(
        matches!(o.exit, Exit::PortOut { port: END_PORT, .. }),
        "{:?}",
        o.exit
    );
    // ... and SMEP faults the fetch.
    let mut smep = img.clone();
    smep.state.cr4 |= 1 << 20;
    assert_eq!(page_fault(&smep), (0x11, va));

    // WP clear: supervisor writes to read-only pages succeed.
    let mut img = image();
    img.write_u64(pte, img.read_u64(pte) & !2);
    build(&mut img, |a| {
        a.mov(qword_ptr(va), 7i32).unwrap();
    });
    assert_eq!(page_fault(&img), (3, va));
    img.state.cr0 &= !(1 << 16);
    let o = run_replay(&img, &default_cpuid(), 1000);
    assert!(matches!(o.exit, Exit::PortOut { port: END_PORT, .. }));
    assert_eq!(o.mem.read_u64(va).unwrap(), 7);
}

/// The TLB is coherent with the page tables (as on the recording host, whose emulator
/// walks the tables on every access): a PTE change is seen without `invlpg`; `invlpg`
/// and CR3 writes are accepted and change nothing visible.
#[test]
fn tlb_follows_page_table_writes() {
    let mut img = image();
    let va = DATA + 0x6000;
    img.write_u64(va, 0x1111);
    img.write_u64(DATA + 0x7000, 0x2222);
    build(&mut img, |a| {
        a.mov(rdi, qword_ptr(va)).unwrap();
        a.mov(rbx, (DATA + 0x7000) | 3).unwrap();
        a.mov(qword_ptr(Image::pte_addr(va)), rbx).unwrap();
        a.mov(rcx, qword_ptr(va)).unwrap();
        a.invlpg(ptr(va)).unwrap();
        a.mov(rdx, qword_ptr(va)).unwrap();
        // Unmapping is seen as well: this load faults.
        a.mov(qword_ptr(Image::pte_addr(va)), 0i32).unwrap();
        a.mov(rsi, qword_ptr(va)).unwrap();
    });
    let o = run_replay(&img, &default_cpuid(), 1000);
    let st = o.cpu.state();
    assert_eq!((st.gpr[7], st.gpr[1], st.gpr[2]), (0x1111, 0x2222, 0x2222));
    assert_eq!(
        o.exit,
        Exit::PortOut {
            port: EXC_PORT,
            size: 4,
            value: 14
        }
    );
    assert_eq!(st.cr2, va);
}

#[test]
fn translate_and_read_virtual_have_no_side_effects() {
    let mut img = image();
    build(&mut img, |_| {});
    let mem = img.memory();
    let cpu = krr_engine::cpu::Cpu::new(img.state.clone(), default_cpuid());
    let before = mem.hash();
    assert_eq!(
        cpu.translate(&mem, DATA + 0x123, Access::Read),
        Ok(DATA + 0x123)
    );
    assert_eq!(cpu.translate(&mem, 0x60_0123, Access::Write), Ok(0x60_0123));
    let mut b = [0u8; 16];
    cpu.read_virtual(&mem, DATA + 0xff8, &mut b).unwrap();
    assert_eq!(mem.hash(), before, "no A/D bits written");
    assert_eq!(
        cpu.translate(&mem, 0x8000_0000_0000, Access::Read),
        Err(PageFault::NonCanonical {
            linear: 0x8000_0000_0000
        })
    );
    assert!(matches!(
        cpu.translate(&mem, 0x80_0000_0000, Access::Read),
        Err(PageFault::Fault { error_code: 0, .. })
    ));
}
