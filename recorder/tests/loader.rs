//! Kernel loading: a synthetic Linux bzImage goes through the 64-bit boot protocol, and
//! images of the wrong kind are refused with a clear error.

use krr_recorder::loader::{KernelFormat, detect_format, load_kernel};

/// A minimal bzImage: one setup sector after the boot sector, a boot protocol 2.15
/// header, and `payload` as the protected-mode kernel.
fn synthetic_bzimage(payload: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; 1024];
    img[0x1f1] = 1; // setup_sects
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 0x01; // loadflags: LOADED_HIGH
    img.extend_from_slice(payload);
    img
}

#[test]
fn formats_are_recognised_and_junk_is_refused() {
    assert_eq!(
        detect_format(krr_guest::DEMO_KERNEL).unwrap(),
        KernelFormat::Elf64
    );
    assert_eq!(
        detect_format(&synthetic_bzimage(&[0x90; 16])).unwrap(),
        KernelFormat::BzImage
    );
    let mut elf32 = krr_guest::DEMO_KERNEL[..64].to_vec();
    elf32[4] = 1;
    assert!(
        detect_format(&elf32)
            .unwrap_err()
            .to_string()
            .contains("32-bit")
    );
    // A user program (position independent) and an ELF for another machine.
    let mut pie = krr_guest::DEMO_KERNEL[..64].to_vec();
    pie[16] = 3; // ET_DYN
    let err = detect_format(&pie).unwrap_err().to_string();
    assert!(err.contains("ET_DYN"), "{err}");
    let mut arm = krr_guest::DEMO_KERNEL[..64].to_vec();
    arm[18] = 183; // EM_AARCH64
    let err = detect_format(&arm).unwrap_err().to_string();
    assert!(err.contains("x86-64"), "{err}");
    let own = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let err = detect_format(&own).unwrap_err().to_string();
    assert!(
        err.contains("ET_DYN"),
        "this test program is no kernel: {err}"
    );
    let err = detect_format(b"MZ\x90\x00 a PE file")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a kernel image"), "{err}");
}

#[test]
fn bzimage_loads_at_16_mib_with_boot_parameters() {
    if let Err(why) = krr_recorder::kvm_available() {
        println!("skipped: {why}");
        return;
    }
    let payload: Vec<u8> = (0..4096u32).map(|i| (i * 13) as u8).collect();
    let mut vm = krr_recorder::vm::create(64 << 20, None).unwrap();
    let loaded = load_kernel(&mut vm, &synthetic_bzimage(&payload), "console=ttyS0").unwrap();
    assert_eq!(loaded.format, KernelFormat::BzImage);
    assert_eq!(loaded.entry, 0x100_0000 + 0x200, "the 64-bit entry point");
    let mut back = vec![0u8; payload.len()];
    vm.read(0x100_0000, &mut back).unwrap();
    assert_eq!(back, payload);
    let regs = vm.vcpu().get_regs().unwrap();
    assert_eq!(regs.rip, loaded.entry);
    // The zero page: header copied, loader type set, command line pointed to.
    let zp = regs.rsi;
    let mut page = vec![0u8; 4096];
    vm.read(zp, &mut page).unwrap();
    assert_eq!(&page[0x202..0x206], b"HdrS");
    assert_eq!(page[0x210], 0xff, "type_of_loader");
    let cmdline_ptr = u32::from_le_bytes(page[0x228..0x22c].try_into().unwrap()) as u64;
    let mut cmd = vec![0u8; 14];
    vm.read(cmdline_ptr, &mut cmd).unwrap();
    assert_eq!(&cmd[..13], b"console=ttyS0");
    assert_eq!(cmd[13], 0);
    assert_eq!(page[0x1e8], 2, "two e820 entries");
}

#[test]
fn a_truncated_elf_is_an_error_not_a_panic() {
    if let Err(why) = krr_recorder::kvm_available() {
        println!("skipped: {why}");
        return;
    }
    for len in [5, 64, 200, 1000] {
        let mut vm = krr_recorder::vm::create(64 << 20, None).unwrap();
        let r = load_kernel(&mut vm, &krr_guest::DEMO_KERNEL[..len], "");
        assert!(r.is_err(), "a {len}-byte ELF prefix was accepted");
    }
}

#[test]
fn a_kernel_larger_than_the_memory_is_a_clear_error() {
    if let Err(why) = krr_recorder::kvm_available() {
        println!("skipped: {why}");
        return;
    }
    let mut vm = krr_recorder::vm::create(1 << 20, None).unwrap();
    let err = krr_recorder::loader::load_kernel(&mut vm, krr_guest::DEMO_KERNEL, "")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("beyond the guest's RAM") && err.contains("--memory"),
        "{err}"
    );
}
