//! Kernel loading: a synthetic Linux bzImage and a hand-made Linux vmlinux go through
//! the 64-bit boot protocol, and images of the wrong kind are refused with a clear
//! error.

use krr_recorder::loader::{KernelFormat, LinuxBoot, LoadError, detect_format, load_kernel};

fn no_linux() -> LinuxBoot<'static> {
    LinuxBoot::default()
}

fn cmdline(c: &str) -> LinuxBoot<'_> {
    LinuxBoot {
        cmdline: c,
        initrd: None,
    }
}

/// A minimal x86-64 ELF executable: one PT_LOAD of `code` at physical `paddr` (virtual
/// 0xffffffff80000000 + paddr, as Linux links itself), entered at `entry`, and, with
/// `linux_note`, a PT_NOTE holding a note of owner "Linux" (as every vmlinux has).
fn tiny_elf(code: &[u8], paddr: u64, entry: u64, linux_note: bool) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let phnum = if linux_note { 2 } else { 1 };
    let note_off = EHDR + PHDR * phnum;
    // namesz 6 ("Linux\0"), descsz 4, type 0x100 (build salt), name padded to 8.
    let mut note = Vec::new();
    note.extend_from_slice(&6u32.to_le_bytes());
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&0x100u32.to_le_bytes());
    note.extend_from_slice(b"Linux\0\0\0");
    note.extend_from_slice(&[0; 4]);
    let code_off = 0x1000usize;
    let mut f = vec![0u8; code_off];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little-endian
    f[6] = 1; // version
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&entry.to_le_bytes());
    f[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
    f[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    f[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    let mut phdr =
        |i: usize, p_type: u32, flags: u32, off: u64, paddr: u64, size: u64, align: u64| {
            let at = EHDR + PHDR * i;
            let h = &mut f[at..at + PHDR];
            h[0..4].copy_from_slice(&p_type.to_le_bytes());
            h[4..8].copy_from_slice(&flags.to_le_bytes());
            h[8..16].copy_from_slice(&off.to_le_bytes());
            h[16..24].copy_from_slice(&(0xffff_ffff_8000_0000 + paddr).to_le_bytes());
            h[24..32].copy_from_slice(&paddr.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            h[40..48].copy_from_slice(&size.to_le_bytes());
            h[48..56].copy_from_slice(&align.to_le_bytes());
        };
    phdr(0, 1, 5, code_off as u64, paddr, code.len() as u64, 0x1000);
    if linux_note {
        phdr(1, 4, 4, note_off as u64, 0, note.len() as u64, 4);
        f[note_off..note_off + note.len()].copy_from_slice(&note);
    }
    f.extend_from_slice(code);
    f
}

/// The vmlinux path's test kernel: reads the zero page's "HdrS" (RSI + 0x202) into EAX
/// and the initrd's first byte (at ramdisk_image, RSI + 0x218) into EBX, then writes
/// port 0x80.
const ZERO_PAGE_READER: &[u8] = &[
    0x8b, 0x86, 0x02, 0x02, 0x00, 0x00, // mov eax, [rsi + 0x202]
    0x8b, 0x9e, 0x18, 0x02, 0x00, 0x00, // mov ebx, [rsi + 0x218]
    0x0f, 0xb6, 0x1b, // movzx ebx, byte [rbx]
    0xe6, 0x80, // out 0x80, al
];

/// A minimal bzImage: one setup sector after the boot sector, a boot protocol 2.15
/// header, and `payload` as the protected-mode kernel.
fn synthetic_bzimage(payload: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; 1024];
    img[0x1f1] = 1; // setup_sects
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 0x01; // loadflags: LOADED_HIGH
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    img[0x260..0x264].copy_from_slice(&0x20_0000u32.to_le_bytes()); // init_size
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
    let loaded = load_kernel(
        &mut vm,
        &synthetic_bzimage(&payload),
        cmdline("console=ttyS0"),
    )
    .unwrap();
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
        let r = load_kernel(&mut vm, &krr_guest::DEMO_KERNEL[..len], no_linux());
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
    let err = krr_recorder::loader::load_kernel(&mut vm, krr_guest::DEMO_KERNEL, no_linux())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("beyond the guest's RAM") && err.contains("--memory"),
        "{err}"
    );
}

#[test]
fn a_vmlinux_is_told_from_the_demo_kernel_by_its_linux_note() {
    let code = [0xf4];
    assert_eq!(
        detect_format(&tiny_elf(&code, 0x100_0000, 0x100_0000, true)).unwrap(),
        KernelFormat::LinuxElf
    );
    assert_eq!(
        detect_format(&tiny_elf(&code, 0x100_0000, 0x100_0000, false)).unwrap(),
        KernelFormat::Elf64
    );
    assert!(KernelFormat::LinuxElf.is_linux() && KernelFormat::BzImage.is_linux());
    assert!(!KernelFormat::Elf64.is_linux());
    // A real vmlinux, where one is built.
    let built = std::path::Path::new("/work/linux-build/out/vmlinux");
    if built.exists() {
        let image = std::fs::read(built).unwrap();
        assert_eq!(detect_format(&image).unwrap(), KernelFormat::LinuxElf);
    } else {
        println!(
            "{} not built: only the hand-made ELFs checked",
            built.display()
        );
    }
}

#[test]
fn a_vmlinux_boots_through_the_64_bit_protocol_with_its_initrd() {
    if let Err(why) = krr_recorder::kvm_available() {
        println!("skipped: {why}");
        return;
    }
    let image = tiny_elf(ZERO_PAGE_READER, 0x100_0000, 0x100_0000, true);
    let initrd: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 0x5a) as u8).collect();
    let mut vm = krr_recorder::vm::create(32 << 20, None).unwrap();
    let loaded = load_kernel(
        &mut vm,
        &image,
        LinuxBoot {
            cmdline: "console=ttyS0 krr.boot_only",
            initrd: Some(&initrd),
        },
    )
    .unwrap();
    assert_eq!(loaded.format, KernelFormat::LinuxElf);
    assert_eq!(loaded.entry, 0x100_0000);
    // As high as RAM allows, page aligned.
    let (at, size) = loaded.initrd.unwrap();
    assert_eq!((at, size), ((32 << 20) - 0x3000, 10_000));
    let mut back = vec![0u8; initrd.len()];
    vm.read(at, &mut back).unwrap();
    assert_eq!(back, initrd);
    vm.run_to_port(0x80, "the vmlinux test kernel").unwrap();
    let regs = vm.vcpu().get_regs().unwrap();
    assert_eq!(regs.rax as u32, u32::from_le_bytes(*b"HdrS"));
    assert_eq!(regs.rbx, u64::from(initrd[0]), "the initrd's first byte");
    let mut page = vec![0u8; 4096];
    vm.read(regs.rsi, &mut page).unwrap();
    assert_eq!(&page[0x1fe..0x200], &[0x55, 0xaa], "boot_flag");
    assert_eq!(u16::from_le_bytes([page[0x206], page[0x207]]), 0x020f);
    assert_eq!(page[0x210], 0xff, "type_of_loader");
    let cmd_ptr = u32::from_le_bytes(page[0x228..0x22c].try_into().unwrap()) as u64;
    let mut cmd = vec![0u8; 28];
    vm.read(cmd_ptr, &mut cmd).unwrap();
    assert_eq!(&cmd, b"console=ttyS0 krr.boot_only\0");
}

#[test]
fn kernels_the_recorder_cannot_boot_are_refused_before_the_guest_starts() {
    if let Err(why) = krr_recorder::kvm_available() {
        println!("skipped: {why}");
        return;
    }
    let vm = || krr_recorder::vm::create(32 << 20, None).unwrap();
    let initrd = vec![1u8; 4096];
    let with_initrd = LinuxBoot {
        cmdline: "",
        initrd: Some(&initrd),
    };
    // An initrd for the demo kernel, which takes no boot parameters.
    let err = load_kernel(&mut vm(), krr_guest::DEMO_KERNEL, with_initrd).unwrap_err();
    assert!(matches!(err, LoadError::InitrdNeedsLinux), "{err}");
    // A bzImage too old for the 64-bit entry, and one without it.
    let mut old = synthetic_bzimage(&[0x90; 16]);
    old[0x206..0x208].copy_from_slice(&0x020bu16.to_le_bytes());
    let err = load_kernel(&mut vm(), &old, no_linux()).unwrap_err();
    assert!(
        matches!(err, LoadError::BootProtocolTooOld { version: 0x020b }),
        "{err}"
    );
    assert!(err.to_string().contains("2.11"), "{err}");
    let mut no64 = synthetic_bzimage(&[0x90; 16]);
    no64[0x236] = 0;
    let err = load_kernel(&mut vm(), &no64, no_linux()).unwrap_err();
    assert!(matches!(err, LoadError::No64BitEntry { .. }), "{err}");
    // A vmlinux entered outside its segments.
    let stray = tiny_elf(ZERO_PAGE_READER, 0x100_0000, 0x80_0000, true);
    let err = load_kernel(&mut vm(), &stray, no_linux()).unwrap_err();
    assert!(
        matches!(err, LoadError::EntryOutsideSegments { entry: 0x80_0000 }),
        "{err}"
    );
    // An initrd with no room above the kernel (which ends near the top of 32 MiB).
    let high = tiny_elf(
        ZERO_PAGE_READER,
        (32 << 20) - 0x1000,
        (32 << 20) - 0x1000,
        true,
    );
    let err = load_kernel(&mut vm(), &high, with_initrd).unwrap_err();
    assert!(matches!(err, LoadError::InitrdNoRoom { .. }), "{err}");
    // A command line longer than the kernel takes.
    let long = "x".repeat(2048);
    let image = tiny_elf(ZERO_PAGE_READER, 0x100_0000, 0x100_0000, true);
    let err = load_kernel(&mut vm(), &image, cmdline(&long)).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::CommandLineTooLong {
                len: 2048,
                max: 2047
            }
        ),
        "{err}"
    );
    let mut short = synthetic_bzimage(&[0x90; 16]);
    short[0x238..0x23c].copy_from_slice(&255u32.to_le_bytes());
    let err = load_kernel(&mut vm(), &short, cmdline(&long[..256])).unwrap_err();
    assert!(
        matches!(err, LoadError::CommandLineTooLong { len: 256, max: 255 }),
        "{err}"
    );
}

/// The whole recorder on a Linux vmlinux: the vCPU is given the CPUID table without the
/// features a Linux guest must not use, the kernel is given the derived command line
/// with the user's words last and its initrd, the header holds that command line and
/// the (small) ELF, and the guest (which reads the zero page, then powers off) runs to
/// power-off.
#[test]
fn a_vmlinux_records_to_power_off_with_the_derived_command_line() {
    use krr_recorder::{EndReason, RecordConfig, Recorder};
    if let Err(why) = krr_recorder::kvm_available() {
        println!("skipped: {why}");
        return;
    }
    let mut code = ZERO_PAGE_READER.to_vec();
    code.extend_from_slice(&[0x31, 0xc0, 0xe6, 0xf4]); // xor eax, eax; out 0xf4, al
    let image = tiny_elf(&code, 0x100_0000, 0x100_0000, true);
    let mut config = RecordConfig::new(image.clone(), "tiny-vmlinux");
    config.cmdline = "krr.boot_only console=tty0".into();
    config.initrd = Some(vec![0xa5; 5000]);
    let mut rec = Recorder::new(config).expect("machine set up");
    let start = rec.start().expect("snapshot");
    let line = &start.kernel_command_line;
    assert!(
        line.starts_with("console=ttyS0 mitigations=off")
            && line.ends_with(" krr.boot_only console=tty0"),
        "{line}"
    );
    assert_eq!(
        start.kernel_image.as_deref(),
        Some(&image[..]),
        "a small ELF is embedded"
    );
    // What the guest observes is recorded, and it shows none of the features the
    // command line does not turn off.
    for f in krr_recorder::linux::UNREPLAYABLE_FEATURES {
        if f.present_in(&start.cpuid) {
            assert!(
                line.contains(f.name),
                "{} observed but not cleared: {line}",
                f.name
            );
        }
    }
    let mut events = Vec::new();
    let outcome = rec
        .run(&mut events, &std::sync::atomic::AtomicBool::new(false))
        .expect("recording runs");
    assert_eq!(outcome.end, EndReason::PowerOff);
    // The zero page it read: the kernel's command line, in guest memory.
    let ptr_at = start
        .snapshot
        .pages
        .iter()
        .find(|p| p.gpa == 0x9_0000)
        .map(|p| u32::from_le_bytes(p.data[0x228..0x22c].try_into().unwrap()) as u64)
        .expect("the zero page in the snapshot");
    let page = start
        .snapshot
        .pages
        .iter()
        .find(|p| p.gpa == ptr_at & !0xfff)
        .expect("the command line's page");
    let at = (ptr_at & 0xfff) as usize;
    assert_eq!(&page.data[at..at + line.len()], line.as_bytes());
    assert_eq!(page.data[at + line.len()], 0);
}
