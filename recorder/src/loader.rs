//! Loading a guest kernel: a 64-bit ELF (direct entry in long mode, the demo kernel) or a
//! Linux bzImage (the 64-bit boot protocol), both through linux-loader, and the initial
//! long-mode state the recorder starts them in.

use crate::RecorderError;
use crate::vm::{Vm, segment_to_kvm};
use krr_engine::arch::{cr0, cr4, efer, pte, rflags, seg_attr};
use krr_engine::state::Segment;
use kvm_bindings::{kvm_regs, kvm_sregs};
use linux_loader::configurator::{BootConfigurator, BootParams, linux::LinuxBootConfigurator};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{KernelLoader, bzimage::BzImage, elf::Elf};
use std::io::Cursor;
use vm_memory::{Address, GuestAddress};

/// Guest-physical layout of what the recorder builds below 1 MiB.
const GDT_GPA: u64 = 0x500;
const PML4_GPA: u64 = 0x1000;
const PDPT_LOW_GPA: u64 = 0x2000;
const PD_GPA: u64 = 0x3000; // four pages: 0..4 GiB in 2 MiB pages
const PDPT_HIGH_GPA: u64 = 0x7000;
const BOOT_STACK_TOP: u64 = 0x8_f000;
const ZERO_PAGE_GPA: u64 = 0x9_0000;
const CMDLINE_GPA: u64 = 0x9_8000;
const CMDLINE_MAX: usize = 0x800;
/// Where a bzImage's protected-mode kernel is loaded.
const BZIMAGE_LOAD_GPA: u64 = 0x100_0000;

/// The format of a kernel image, recognised from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf64,
    BzImage,
}

pub fn detect_format(image: &[u8]) -> Result<KernelFormat, RecorderError> {
    if image.len() >= 5 && &image[..4] == b"\x7fELF" {
        if image[4] != 2 {
            return Err(RecorderError::Kernel(
                "32-bit ELF: the kernel must be a 64-bit ELF".into(),
            ));
        }
        // e_type and e_machine (little-endian, at 16 and 18 in the ELF header).
        let half = |at: usize| {
            image
                .get(at..at + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        const ET_EXEC: u16 = 2;
        const ET_DYN: u16 = 3;
        const EM_X86_64: u16 = 62;
        match half(16) {
            Some(ET_EXEC) => {}
            Some(ET_DYN) => {
                return Err(RecorderError::Kernel(
                    "a position-independent ELF (ET_DYN: a user program or shared library?): \
                     the kernel must be an ELF executable (ET_EXEC) linked at its addresses"
                        .into(),
                ));
            }
            other => {
                return Err(RecorderError::Kernel(format!(
                    "ELF type {}: the kernel must be an ELF executable (ET_EXEC)",
                    other.map_or("missing".to_string(), |t| t.to_string())
                )));
            }
        }
        if half(18) != Some(EM_X86_64) {
            return Err(RecorderError::Kernel(
                "not an x86-64 ELF: the kernel must be built for x86-64".into(),
            ));
        }
        return Ok(KernelFormat::Elf64);
    }
    // The Linux boot protocol: "HdrS" at 0x202.
    if image.len() > 0x206 && &image[0x202..0x206] == b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(RecorderError::Kernel(
        "not a kernel image: expected a 64-bit ELF or a Linux bzImage".into(),
    ))
}

/// The highest physical address the ELF's loadable segments occupy, if its program
/// headers parse.
fn elf_load_end(image: &[u8]) -> Option<u64> {
    use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
    let elf = ElfFile64::<object::Endianness>::parse(image).ok()?;
    let endian = elf.endian();
    let headers = elf.elf_header().program_headers(endian, image).ok()?;
    headers
        .iter()
        .filter(|p| p.p_type(endian) == object::elf::PT_LOAD)
        .map(|p| p.p_paddr(endian).saturating_add(p.p_memsz(endian)))
        .max()
}

/// Where and how the guest starts.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    pub entry: u64,
    pub end: u64,
}

/// Loads `image` into the VM and sets the vCPU's entry state.
pub fn load_kernel(
    vm: &mut Vm,
    image: &[u8],
    cmdline: &str,
) -> Result<LoadedKernel, RecorderError> {
    let format = detect_format(image)?;
    build_page_tables(vm)?;
    build_gdt(vm)?;
    let loaded = match format {
        KernelFormat::Elf64 => {
            // Say plainly when the kernel does not fit (the loader's own error does not).
            if let Some(end) = elf_load_end(image)
                && end > vm.ram_size
            {
                return Err(RecorderError::Kernel(format!(
                    "the kernel's segments end at {end:#x}, beyond the guest's RAM \
                     ({:#x}): give --memory at least {} MiB",
                    vm.ram_size,
                    end.div_ceil(1 << 20)
                )));
            }
            let r = Elf::load(&vm.mem, None, &mut Cursor::new(image), None)
                .map_err(|e| RecorderError::Kernel(format!("ELF: {e}")))?;
            if r.kernel_end > vm.ram_size {
                return Err(RecorderError::Kernel(format!(
                    "the kernel ends at {:#x}, beyond RAM ({:#x})",
                    r.kernel_end, vm.ram_size
                )));
            }
            LoadedKernel {
                format,
                entry: r.kernel_load.raw_value(),
                end: r.kernel_end,
            }
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(
                &vm.mem,
                Some(GuestAddress(BZIMAGE_LOAD_GPA)),
                &mut Cursor::new(image),
                None,
            )
            .map_err(|e| RecorderError::Kernel(format!("bzImage: {e}")))?;
            let mut params = boot_params::default();
            if let Some(hdr) = r.setup_header {
                params.hdr = hdr;
            }
            if cmdline.len() >= CMDLINE_MAX {
                return Err(RecorderError::Config("kernel command line too long".into()));
            }
            let mut c = cmdline.as_bytes().to_vec();
            c.push(0);
            vm.write(CMDLINE_GPA, &c)?;
            params.hdr.type_of_loader = 0xff;
            params.hdr.cmd_line_ptr = CMDLINE_GPA as u32;
            params.hdr.cmdline_size = c.len() as u32;
            add_e820(&mut params, vm.ram_size);
            LinuxBootConfigurator::write_bootparams::<vm_memory::GuestMemoryMmap>(
                &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_GPA)),
                &vm.mem,
            )
            .map_err(|e| RecorderError::Kernel(format!("boot parameters: {e}")))?;
            // The 64-bit entry point is 0x200 past the protected-mode kernel.
            LoadedKernel {
                format,
                entry: r.kernel_load.raw_value() + 0x200,
                end: r.kernel_end,
            }
        }
    };
    let (regs, sregs) = long_mode_entry_state(loaded.entry, format)?;
    vm.set_entry_state(&regs, &sregs)?;
    Ok(loaded)
}

/// Where [`load_flat_code`] places its code.
pub const FLAT_CODE_GPA: u64 = 0x10_0000;

/// Places raw 64-bit code at [`FLAT_CODE_GPA`] and starts the vCPU there in long mode
/// (used for calibration and tests).
pub fn load_flat_code(vm: &mut Vm, code: &[u8]) -> Result<(), RecorderError> {
    build_page_tables(vm)?;
    build_gdt(vm)?;
    vm.write(FLAT_CODE_GPA, code)?;
    let (regs, sregs) = long_mode_entry_state(FLAT_CODE_GPA, KernelFormat::Elf64)?;
    vm.set_entry_state(&regs, &sregs)
}

fn add_e820(params: &mut boot_params, ram_size: u64) {
    const E820_RAM: u32 = 1;
    let entries = [
        (0u64, 0x9_f000u64),
        (0x10_0000, ram_size.saturating_sub(0x10_0000)),
    ];
    for (i, (addr, size)) in entries.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].r#type = E820_RAM;
    }
    params.e820_entries = entries.len() as u8;
}

/// Identity-maps 0..4 GiB and maps the top 2 GiB (the -mcmodel=kernel range) to
/// physical 0..2 GiB, with 2 MiB pages.
fn build_page_tables(vm: &Vm) -> Result<(), RecorderError> {
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
    Ok(())
}

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

fn build_gdt(vm: &Vm) -> Result<(), RecorderError> {
    let gdt: [u64; 4] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0];
    for (i, d) in gdt.iter().enumerate() {
        vm.write(GDT_GPA + 8 * i as u64, &d.to_le_bytes())?;
    }
    Ok(())
}

fn long_mode_entry_state(
    entry: u64,
    format: KernelFormat,
) -> Result<(kvm_regs, kvm_sregs), RecorderError> {
    let data = segment_to_kvm(&DATA);
    let mut sregs = kvm_sregs {
        cs: segment_to_kvm(&CODE64),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        ..Default::default()
    };
    let mut tr = segment_to_kvm(&Segment {
        selector: 0,
        base: 0,
        limit: 0xffff,
        attr: seg_attr::TYPE_TSS64_BUSY | seg_attr::P,
    });
    tr.s = 0;
    sregs.tr = tr;
    sregs.ldt = segment_to_kvm(&Segment {
        selector: 0,
        base: 0,
        limit: 0xffff,
        attr: seg_attr::TYPE_LDT | seg_attr::P,
    });
    sregs.gdt.base = GDT_GPA;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::PG;
    sregs.cr3 = PML4_GPA;
    sregs.cr4 = cr4::PAE;
    sregs.efer = efer::SCE | efer::LME | efer::LMA | efer::NXE;
    let mut regs = kvm_regs {
        rip: entry,
        rflags: rflags::FIXED1,
        rsp: BOOT_STACK_TOP,
        ..Default::default()
    };
    if format == KernelFormat::BzImage {
        regs.rsi = ZERO_PAGE_GPA;
    }
    Ok((regs, sregs))
}
