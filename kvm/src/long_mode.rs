//! The flat ring-0 long-mode environment guests start in: page tables identity-mapping
//! 0..4 GiB and mapping the top 2 GiB (the -mcmodel=kernel range) to physical 0..2 GiB
//! with 2 MiB pages, a GDT with a 64-bit code segment (0x08) and a data segment (0x10),
//! paging, PAE, long mode, NX and `syscall` on, no IDT. It occupies guest-physical
//! [`GDT_GPA`]..[`END`]; the entry stack is below [`STACK_TOP`].

use crate::{Result, Vm};
use krr_engine::arch::{cr0, cr4, efer, pte, seg_attr};
use krr_engine::state::{CpuState, DescriptorTable, Segment};

pub const GDT_GPA: u64 = 0x500;
const GDT_ENTRIES: u64 = 4;
const PML4_GPA: u64 = 0x1000;
const PDPT_LOW_GPA: u64 = 0x2000;
/// Four pages: 0..4 GiB in 2 MiB pages.
const PD_GPA: u64 = 0x3000;
const PDPT_HIGH_GPA: u64 = 0x7000;
/// The end of what [`build`] writes.
pub const END: u64 = PDPT_HIGH_GPA + 0x1000;
/// RSP at entry.
pub const STACK_TOP: u64 = 0x8_f000;

const CODE64: Segment = Segment {
    selector: 0x08,
    base: 0,
    limit: 0xffff_ffff,
    attr: seg_attr::KERNEL_CODE64,
};
const DATA: Segment = Segment {
    selector: 0x10,
    base: 0,
    limit: 0xffff_ffff,
    attr: seg_attr::KERNEL_DATA,
};

/// Writes the page tables and the GDT into `vm`'s memory.
pub fn build(vm: &Vm) -> Result<()> {
    const PRESENT_RW: u64 = pte::P | pte::W;
    const HUGE: u64 = pte::PS;
    vm.write(PML4_GPA, &(PDPT_LOW_GPA | PRESENT_RW).to_le_bytes())?;
    vm.write(
        PML4_GPA + 511 * 8,
        &(PDPT_HIGH_GPA | PRESENT_RW).to_le_bytes(),
    )?;
    for i in 0..4u64 {
        let pd = PD_GPA + i * 0x1000;
        vm.write(PDPT_LOW_GPA + i * 8, &(pd | PRESENT_RW).to_le_bytes())?;
        let mut table = vec![0u8; 4096];
        for j in 0..512u64 {
            let pa = (i * 512 + j) << 21;
            table[j as usize * 8..j as usize * 8 + 8]
                .copy_from_slice(&(pa | PRESENT_RW | HUGE).to_le_bytes());
        }
        vm.write(pd, &table)?;
    }
    // 0xffff_ffff_8000_0000 is PDPT entry 510 of PML4 entry 511.
    vm.write(
        PDPT_HIGH_GPA + 510 * 8,
        &(PD_GPA | PRESENT_RW).to_le_bytes(),
    )?;
    vm.write(
        PDPT_HIGH_GPA + 511 * 8,
        &((PD_GPA + 0x1000) | PRESENT_RW).to_le_bytes(),
    )?;
    let gdt: [u64; GDT_ENTRIES as usize] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0];
    for (i, d) in gdt.iter().enumerate() {
        vm.write(GDT_GPA + 8 * i as u64, &d.to_le_bytes())?;
    }
    Ok(())
}

/// The state at entry to `rip`: ring 0 in long mode with the environment's segments and
/// page tables, RSP at [`STACK_TOP`], RFLAGS 2, the other registers 0.
pub fn entry_state(rip: u64) -> CpuState {
    let mut st = CpuState {
        rip,
        rflags: 0x2,
        seg: [DATA, CODE64, DATA, DATA, DATA, DATA],
        // A busy 64-bit TSS and an LDT, both present.
        tr: Segment {
            selector: 0,
            base: 0,
            limit: 0xffff,
            attr: seg_attr::TYPE_TSS64_BUSY | seg_attr::P,
        },
        ldtr: Segment {
            selector: 0,
            base: 0,
            limit: 0xffff,
            attr: seg_attr::TYPE_LDT | seg_attr::P,
        },
        gdtr: DescriptorTable {
            base: GDT_GPA,
            limit: (GDT_ENTRIES * 8 - 1) as u16,
        },
        idtr: DescriptorTable { base: 0, limit: 0 },
        cr0: cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::PG,
        cr3: PML4_GPA,
        cr4: cr4::PAE,
        efer: efer::SCE | efer::LME | efer::LMA | efer::NXE,
        ..Default::default()
    };
    st.gpr[krr_engine::state::gpr::RSP] = STACK_TOP;
    st
}

/// Where [`load_flat_code`] places its code.
pub const FLAT_CODE_GPA: u64 = 0x10_0000;

/// Builds the environment, places raw 64-bit code at [`FLAT_CODE_GPA`] and points the
/// vCPU at it (scratch VMs and tests).
pub fn load_flat_code(vm: &mut Vm, code: &[u8]) -> Result<()> {
    build(vm)?;
    vm.write(FLAT_CODE_GPA, code)?;
    vm.set_cpu_state(&entry_state(FLAT_CODE_GPA))
}
