//! Loading a guest kernel: a 64-bit ELF (direct entry in long mode, the demo kernel) or a
//! Linux bzImage (the 64-bit boot protocol), both through linux-loader, entered in the
//! long-mode environment of [`krr_kvm::long_mode`].

use krr_kvm::{Vm, long_mode};
use linux_loader::configurator::{BootConfigurator, BootParams, linux::LinuxBootConfigurator};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{KernelLoader, bzimage::BzImage, elf::Elf};
use std::io::Cursor;
use vm_memory::{Address, GuestAddress};

/// Guest-physical layout of what the loader writes below 1 MiB, above the long-mode
/// environment (which ends at [`long_mode::END`]) and its stack
/// ([`long_mode::STACK_TOP`]).
const ZERO_PAGE_GPA: u64 = 0x9_0000;
const CMDLINE_GPA: u64 = 0x9_8000;
const CMDLINE_MAX: usize = 0x800;
/// Where a bzImage's protected-mode kernel is loaded.
const BZIMAGE_LOAD_GPA: u64 = 0x100_0000;

/// Why a kernel image cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("32-bit ELF: the kernel must be a 64-bit ELF")]
    Elf32,
    #[error(
        "a position-independent ELF (ET_DYN: a user program or shared library?): the \
         kernel must be an ELF executable (ET_EXEC) linked at its addresses"
    )]
    ElfDyn,
    #[error(
        "ELF type {}: the kernel must be an ELF executable (ET_EXEC)",
        .0.map_or("missing".to_string(), |t| t.to_string())
    )]
    ElfType(Option<u16>),
    #[error("not an x86-64 ELF: the kernel must be built for x86-64")]
    NotX86_64,
    #[error("not a kernel image: expected a 64-bit ELF or a Linux bzImage")]
    NotAKernel,
    #[error(
        "the kernel's segments end at {end:#x}, beyond the guest's RAM ({ram:#x}): give \
         --memory at least {} MiB",
        end.div_ceil(1 << 20)
    )]
    SegmentsBeyondRam { end: u64, ram: u64 },
    #[error("the kernel ends at {end:#x}, beyond RAM ({ram:#x})")]
    EndsBeyondRam { end: u64, ram: u64 },
    #[error("loading the ELF")]
    Elf(#[source] linux_loader::loader::Error),
    #[error("loading the bzImage")]
    BzImage(#[source] linux_loader::loader::Error),
    #[error("the kernel command line is {len} bytes, longer than {} bytes", CMDLINE_MAX - 1)]
    CommandLineTooLong { len: usize },
    #[error("writing the kernel command line")]
    CommandLine(#[source] krr_kvm::Error),
    #[error("writing the boot parameters")]
    BootParams(#[source] linux_loader::configurator::Error),
    #[error("building the long-mode environment")]
    LongMode(#[source] krr_kvm::Error),
    #[error("setting the vCPU's entry state")]
    EntryState(#[source] krr_kvm::Error),
}

/// The format of a kernel image, recognised from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf64,
    BzImage,
}

pub fn detect_format(image: &[u8]) -> Result<KernelFormat, LoadError> {
    if image.len() >= 5 && &image[..4] == b"\x7fELF" {
        if image[4] != 2 {
            return Err(LoadError::Elf32);
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
            Some(ET_DYN) => return Err(LoadError::ElfDyn),
            other => return Err(LoadError::ElfType(other)),
        }
        if half(18) != Some(EM_X86_64) {
            return Err(LoadError::NotX86_64);
        }
        return Ok(KernelFormat::Elf64);
    }
    // The Linux boot protocol: "HdrS" at 0x202.
    if image.len() > 0x206 && &image[0x202..0x206] == b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(LoadError::NotAKernel)
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
pub fn load_kernel(vm: &mut Vm, image: &[u8], cmdline: &str) -> Result<LoadedKernel, LoadError> {
    let format = detect_format(image)?;
    long_mode::build(vm).map_err(LoadError::LongMode)?;
    let ram = vm.ram_size();
    let loaded = match format {
        KernelFormat::Elf64 => {
            // Say plainly when the kernel does not fit (the loader's own error does not).
            if let Some(end) = elf_load_end(image)
                && end > ram
            {
                return Err(LoadError::SegmentsBeyondRam { end, ram });
            }
            let r = Elf::load(vm.memory(), None, &mut Cursor::new(image), None)
                .map_err(LoadError::Elf)?;
            if r.kernel_end > ram {
                return Err(LoadError::EndsBeyondRam {
                    end: r.kernel_end,
                    ram,
                });
            }
            LoadedKernel {
                format,
                entry: r.kernel_load.raw_value(),
                end: r.kernel_end,
            }
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(
                vm.memory(),
                Some(GuestAddress(BZIMAGE_LOAD_GPA)),
                &mut Cursor::new(image),
                None,
            )
            .map_err(LoadError::BzImage)?;
            let mut params = boot_params::default();
            if let Some(hdr) = r.setup_header {
                params.hdr = hdr;
            }
            if cmdline.len() >= CMDLINE_MAX {
                return Err(LoadError::CommandLineTooLong { len: cmdline.len() });
            }
            let mut c = cmdline.as_bytes().to_vec();
            c.push(0);
            vm.write(CMDLINE_GPA, &c).map_err(LoadError::CommandLine)?;
            params.hdr.type_of_loader = 0xff;
            params.hdr.cmd_line_ptr = CMDLINE_GPA as u32;
            params.hdr.cmdline_size = c.len() as u32;
            add_e820(&mut params, ram);
            LinuxBootConfigurator::write_bootparams::<vm_memory::GuestMemoryMmap>(
                &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_GPA)),
                vm.memory(),
            )
            .map_err(LoadError::BootParams)?;
            // The 64-bit entry point is 0x200 past the protected-mode kernel.
            LoadedKernel {
                format,
                entry: r.kernel_load.raw_value() + 0x200,
                end: r.kernel_end,
            }
        }
    };
    let mut entry = long_mode::entry_state(loaded.entry);
    if format == KernelFormat::BzImage {
        entry.gpr[krr_engine::state::gpr::RSI] = ZERO_PAGE_GPA;
    }
    vm.set_cpu_state(&entry).map_err(LoadError::EntryState)?;
    Ok(loaded)
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
