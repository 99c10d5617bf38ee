//! The kernel images parse, carry the PVH note, export the agent hooks and keep DWARF.

use object::read::elf::{FileHeader, ProgramHeader};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

type Header = object::elf::FileHeader64<object::Endianness>;

const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn images() -> Vec<(&'static str, &'static [u8])> {
    let mut all = vec![
        ("demo", krr_guest::DEMO_KERNEL),
        ("agent-selftest", krr_guest::AGENT_SELFTEST_KERNEL),
        ("bench-loop", krr_guest::BENCH_LOOP_KERNEL),
        ("bench-loop-boot", krr_guest::BENCH_LOOP_BOOT_KERNEL),
    ];
    all.extend_from_slice(krr_guest::HOSTILE_GUESTS);
    all
}

fn symbol_address(file: &object::File<'_>, name: &str) -> Option<u64> {
    file.symbols()
        .find(|s| s.name() == Ok(name))
        .map(|s| s.address())
}

/// The PVH entry of the Xen PHYS32_ENTRY note, found through the PT_NOTE segments as
/// QEMU does (QEMU aligns the name to the segment's p_align: it must be 4).
fn pvh_entry(data: &[u8]) -> Option<u64> {
    let header = Header::parse(data).expect("ELF64 header");
    let endian = header.endian().expect("endianness");
    for ph in header
        .program_headers(endian, data)
        .expect("program headers")
    {
        let Some(mut notes) = ph.notes(endian, data).expect("notes") else {
            continue;
        };
        while let Some(note) = notes.next().expect("note") {
            if note.name() == b"Xen" && note.n_type(endian) == XEN_ELFNOTE_PHYS32_ENTRY {
                assert_eq!(ph.p_align(endian), 4, "PT_NOTE alignment");
                let desc: [u8; 8] = note.desc().try_into().expect("8-byte PVH entry");
                return Some(u64::from_le_bytes(desc));
            }
        }
    }
    None
}

#[test]
fn images_are_elf64_x86_64_kernels_in_the_top_2_gib() {
    for (name, data) in images() {
        let file = object::File::parse(data).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(file.is_64(), "{name}");
        assert_eq!(file.architecture(), object::Architecture::X86_64, "{name}");
        assert_eq!(
            Some(file.entry()),
            symbol_address(&file, "_start64"),
            "{name}: e_entry"
        );
        assert!(
            file.entry() >= krr_guest::KERNEL_VMA,
            "{name}: entry {:#x}",
            file.entry()
        );

        let header = Header::parse(data).unwrap();
        let endian = header.endian().unwrap();
        let mut loads = 0;
        for ph in header.program_headers(endian, data).unwrap() {
            if ph.p_type(endian) != object::elf::PT_LOAD {
                continue;
            }
            loads += 1;
            let paddr = ph.p_paddr(endian);
            let vaddr = ph.p_vaddr(endian);
            assert_eq!(vaddr - krr_guest::KERNEL_VMA, paddr, "{name}: vaddr/paddr");
            assert!(paddr >= krr_guest::LOAD_PADDR, "{name}: paddr {paddr:#x}");
            // Everything below the page-table frame pool at 8 MiB.
            assert!(
                paddr + ph.p_memsz(endian) <= 8 << 20,
                "{name}: image too large"
            );
        }
        assert!(loads >= 2, "{name}: {loads} PT_LOAD segments");
    }
}

#[test]
fn images_have_the_pvh_note_pointing_at_the_32_bit_entry() {
    for (name, data) in images() {
        let file = object::File::parse(data).unwrap();
        let entry = pvh_entry(data).unwrap_or_else(|| panic!("{name}: no PVH note"));
        let stub = symbol_address(&file, "pvh_start32").expect("pvh_start32 symbol");
        assert_eq!(
            entry,
            stub - krr_guest::KERNEL_VMA,
            "{name}: PVH entry is physical"
        );
        let boot32 = file.section_by_name(".boot32").expect(".boot32");
        assert!((boot32.address()..boot32.address() + boot32.size()).contains(&stub));
    }
}

#[test]
fn hooks_are_global_functions() {
    for (name, data) in images() {
        let file = object::File::parse(data).unwrap();
        let text = file.section_by_name(".text").expect(".text");
        let text_range = text.address()..text.address() + text.size();
        for hook in [
            krr_guest::hooks::USER_ENTRY,
            krr_guest::hooks::USER_READ,
            krr_guest::hooks::RDTSC,
            krr_guest::hooks::SYSCALL_ENTRY,
        ] {
            let sym = file
                .symbols()
                .find(|s| s.name() == Ok(hook))
                .unwrap_or_else(|| panic!("{name}: no symbol {hook}"));
            assert!(sym.is_global(), "{name}: {hook} not global");
            assert!(
                text_range.contains(&sym.address()),
                "{name}: {hook} outside .text"
            );
            if hook != krr_guest::hooks::SYSCALL_ENTRY {
                assert_eq!(sym.kind(), SymbolKind::Text, "{name}: {hook}");
                assert!(sym.size() > 0, "{name}: {hook} has no size");
            }
        }
    }
}

#[test]
fn demo_has_dwarf_line_info_for_its_sources() {
    let file = object::File::parse(krr_guest::DEMO_KERNEL).unwrap();
    let line = file.section_by_name(".debug_line").expect(".debug_line");
    assert!(line.size() > 1000, ".debug_line is {} bytes", line.size());
    assert!(file.section_by_name(".debug_info").is_some());
    let mut names = Vec::new();
    for section in [".debug_line_str", ".debug_str", ".debug_line"] {
        if let Some(s) = file.section_by_name(section) {
            names.extend_from_slice(s.data().unwrap());
        }
    }
    for source in ["agent.c", "trap.c", "sched.c", "mm.c", "entry.S", "boot.S"] {
        assert!(
            names.windows(source.len()).any(|w| w == source.as_bytes()),
            "no DWARF file name {source}"
        );
    }
}

#[test]
fn user_image_is_data_not_ring0_code() {
    let file = object::File::parse(krr_guest::DEMO_KERNEL).unwrap();
    let user = file.section_by_name(".user_image").expect(".user_image");
    assert!(user.size() > 1000);
    match user.flags() {
        object::SectionFlags::Elf { sh_flags } => {
            assert_eq!(sh_flags & u64::from(object::elf::SHF_EXECINSTR), 0)
        }
        other => panic!("unexpected flags {other:?}"),
    }
}
