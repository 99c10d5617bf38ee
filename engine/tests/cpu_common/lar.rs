//! The `lar` cases of the tests: descriptors added to the standard GDT and an LDT entry,
//! the selectors tried, and what the SDM says `lar` gives for each at CPL 0.

use iced_x86::code_asm::*;

use super::{GDT, Image};

/// The value RAX holds before each `lar` (left as it is when ZF is cleared).
pub const BEFORE: u64 = 0x1111_2222_3333_4444;

/// Descriptors after the image's GDT (which ends at 0x37), by selector.
pub const EXTRA: [(u64, u64); 12] = [
    (0x38, 0x00cf_f200_0000_ffff), // data, DPL 3
    (0x40, 0x00af_9e00_0000_ffff), // conforming code, DPL 0
    (0x48, 0x00af_9a00_0000_ffff), // code, DPL 0
    (0x50, 0x0000_e200_0000_0fff), // LDT, DPL 3 (16 bytes)
    (0x60, 0x0000_e900_0000_0067), // available 64-bit TSS, DPL 3 (16 bytes)
    (0x70, 0x0000_eb00_0000_0067), // busy 64-bit TSS, DPL 3 (16 bytes)
    (0x80, 0x1234_ec00_0008_5678), // 64-bit call gate, DPL 3 (16 bytes)
    (0x90, 0x1234_ee00_0008_5678), // 64-bit interrupt gate, DPL 3 (16 bytes)
    (0xa0, 0x0000_e000_0000_0000), // reserved type 0, DPL 3
    (0xa8, 0x00cf_7200_0000_ffff), // data, DPL 3, not present
    (0xb0, 0x00cf_d200_0000_ffff), // data, DPL 2
    (0xb8, 0x00cf_fa00_0000_ffff), // code, DPL 3
];

/// Each selector and what `lar eax, selector` gives at CPL 0: the access rights (the
/// descriptor's second doubleword masked by 00FFFF00H) with ZF set, or `None` (ZF
/// clear, RAX unchanged).
pub const CASES: [(u32, Option<u32>); 29] = [
    (0x08, Some(0x00af_9a00)), // kernel code
    (0x0b, None),              // RPL 3 > DPL 0
    (0x10, Some(0x00cf_9200)), // kernel data
    (0x18, Some(0x0000_8900)), // the TSS (available in the GDT)
    (0x20, None),              // its upper half: type 0
    (0x28, Some(0x00cf_f200)), // user data
    (0x2b, Some(0x00cf_f200)),
    (0x33, Some(0x00af_fa00)), // user code
    (0x00, None),              // null
    (0x03, None),              // null, RPL 3
    (0xc0, None),              // beyond the GDT limit (0xbf)
    (0x3b, Some(0x00cf_f200)),
    (0x43, Some(0x00af_9e00)), // conforming: no privilege check
    (0x4b, None),              // RPL 3 > DPL 0
    (0x48, Some(0x00af_9a00)),
    (0x53, None),              // an LDT descriptor is not valid in long mode
    (0x63, Some(0x0000_e900)), // available 64-bit TSS
    (0x73, Some(0x0000_eb00)), // busy 64-bit TSS
    (0x83, Some(0x0034_ec00)), // 64-bit call gate
    (0x93, None),              // interrupt gate
    (0xa3, None),              // reserved type
    (0xab, Some(0x00cf_7200)), // not present: still read
    (0xb3, None),              // RPL 3 > DPL 2
    (0xb0, Some(0x00cf_d200)), // DPL 2 >= CPL 0, RPL 0
    (0xbb, Some(0x00cf_fa00)),
    (0x1f, Some(0x00cf_f300)), // LDT entry 3
    (0x27, None),              // LDT entry 4: type 0
    (0x04, None),              // LDT entry 0: type 0
    (0x30, Some(0x00af_fa00)), // user code, RPL 0
];

/// Installs the descriptors (and LDT entry 3: the image's LDT is at linear 0) and
/// appends code that runs `lar eax, ecx` for every selector of [`CASES`], storing RAX at
/// `results + 16 * i` and ZF at `results + 16 * i + 8`; then `lar ax, cx` and
/// `lar rax, rcx` of 0x33 at `results + 0x400` and `+ 0x408`, and `lar r9d, word
/// [mem]` of 0x63 at `+ 0x410` (ZF at `+ 0x418`).
pub fn lar_program(img: &mut Image, a: &mut CodeAssembler, results: u64) {
    for &(sel, d) in &EXTRA {
        img.write_u64(GDT + sel + 8, 0);
        img.write_u64(GDT + sel, d);
    }
    img.state.gdtr.limit = 0xbf;
    img.write_u64(0x18, 0x00cf_f300_0000_ffff);
    for (i, &(sel, _)) in CASES.iter().enumerate() {
        let slot = results + 16 * i as u64;
        a.mov(rax, BEFORE).unwrap();
        a.mov(ecx, sel).unwrap();
        a.lar(eax, ecx).unwrap();
        a.setz(byte_ptr(slot + 8)).unwrap();
        a.mov(qword_ptr(slot), rax).unwrap();
    }
    let slot = results + 0x400;
    a.mov(rax, BEFORE).unwrap();
    a.mov(ecx, 0x33u32).unwrap();
    a.lar(ax, cx).unwrap();
    a.mov(qword_ptr(slot), rax).unwrap();
    a.mov(rax, BEFORE).unwrap();
    a.lar(rax, rcx).unwrap();
    a.mov(qword_ptr(slot + 8), rax).unwrap();
    a.mov(word_ptr(results + 0x800), 0x63u32).unwrap();
    a.mov(r9, BEFORE).unwrap();
    a.lar(r9d, word_ptr(results + 0x800)).unwrap();
    a.setz(byte_ptr(slot + 24)).unwrap();
    a.mov(qword_ptr(slot + 16), r9).unwrap();
}
