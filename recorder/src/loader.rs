//! Loading a guest kernel into the long-mode environment of [`krr_kvm::long_mode`],
//! through linux-loader:
//!
//! * a 64-bit ELF such as the demo kernel: its segments at their physical addresses,
//!   entered at `e_entry` with no boot parameters;
//! * a Linux vmlinux (an ELF with Linux's notes, [`detect_format`]): the same segments,
//!   entered at its physical entry (`startup_64`) through Linux's 64-bit boot protocol
//!   (Documentation/x86/boot.rst, "64-bit BOOT PROTOCOL"): RSI points to a zero page
//!   whose setup header the loader writes itself, as a vmlinux has none;
//! * a Linux bzImage (protocol 2.12 or later with a 64-bit entry): its protected-mode
//!   kernel at 16 MiB, entered 0x200 past it with its own setup header in the zero page.
//!
//! Both Linux forms get the e820 map, the command line and the initrd (placed as high
//! in RAM as the kernel allows, [`place_initrd`]).

use krr_kvm::{Vm, long_mode};
use linux_loader::configurator::{BootConfigurator, BootParams, linux::LinuxBootConfigurator};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::{KernelLoader, bzimage::BzImage, elf::Elf};
use std::io::Cursor;
use vm_memory::{Address, GuestAddress};

/// Guest-physical layout of what the loader writes below 1 MiB, above the long-mode
/// environment (which ends at [`long_mode::END`]) and its stack
/// ([`long_mode::STACK_TOP`]).
const ZERO_PAGE_GPA: u64 = 0x9_0000;
const CMDLINE_GPA: u64 = 0x9_8000;
/// Room for the command line: Linux's COMMAND_LINE_SIZE on x86 (2048, with the NUL).
const CMDLINE_MAX: usize = 0x800;
/// Where a bzImage's protected-mode kernel is loaded.
const BZIMAGE_LOAD_GPA: u64 = 0x100_0000;

/// The boot protocol version the loader writes in a vmlinux's setup header: 2.15, what
/// Linux 6.1's own header says (the kernel checks the version before reading fields
/// added later, such as `setup_data`).
pub const VMLINUX_BOOT_PROTOCOL: u16 = 0x020f;
/// The oldest boot protocol with a 64-bit entry point (2.12, with `xloadflags`).
pub const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// `xloadflags`: the kernel has the 64-bit entry 0x200 past its start.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Where an initrd may end at most when the kernel does not say (a vmlinux has no
/// setup header): boot.rst's default for `initrd_addr_max`.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// The boot loader type "undefined" (boot.rst: a loader without an assigned id).
const TYPE_OF_LOADER_UNDEFINED: u8 = 0xff;

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
    #[error("the kernel command line is {len} bytes, longer than the {max} the kernel takes")]
    CommandLineTooLong { len: usize, max: usize },
    #[error("the ELF has no loadable segment (PT_LOAD) with contents: nothing to boot")]
    NoLoadableSegment,
    #[error(
        "the ELF's entry point {entry:#x} is in none of its loadable segments' physical \
         ranges: a Linux vmlinux is entered at its physical entry (startup_64)"
    )]
    EntryOutsideSegments { entry: u64 },
    #[error(
        "the bzImage speaks boot protocol {}.{:02}: the recorder enters Linux through \
         its 64-bit entry, which needs protocol 2.12 or later (Linux 3.8 or later)",
        version >> 8,
        version & 0xff
    )]
    BootProtocolTooOld { version: u16 },
    #[error(
        "the bzImage has no 64-bit entry point (xloadflags {xloadflags:#x} lacks \
         XLF_KERNEL_64): is it a 32-bit kernel?"
    )]
    No64BitEntry { xloadflags: u16 },
    #[error(
        "an initrd is given but the kernel is not Linux (a vmlinux or bzImage): only \
         Linux is given boot parameters"
    )]
    InitrdNeedsLinux,
    #[error(
        "a kernel command line is given but the kernel is not Linux (a vmlinux or \
         bzImage): only Linux is given one"
    )]
    CommandLineNeedsLinux,
    #[error(
        "the initrd ({size} bytes) does not fit between the kernel's end ({kernel_end:#x}) \
         and {top:#x} (the end of RAM or the highest address the kernel reads an initrd \
         at): give --memory more"
    )]
    InitrdNoRoom {
        size: u64,
        kernel_end: u64,
        top: u64,
    },
    #[error("writing the initrd")]
    Initrd(#[source] krr_kvm::Error),
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
    /// A 64-bit ELF entered at `e_entry` without boot parameters (the demo kernel).
    Elf64,
    /// A Linux vmlinux: an ELF booted through the 64-bit boot protocol.
    LinuxElf,
    /// A Linux bzImage.
    BzImage,
}

impl KernelFormat {
    /// Linux, in either form: booted with boot parameters, a command line, an initrd.
    pub fn is_linux(self) -> bool {
        matches!(self, KernelFormat::LinuxElf | KernelFormat::BzImage)
    }
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
        return Ok(if has_linux_note(image) {
            KernelFormat::LinuxElf
        } else {
            KernelFormat::Elf64
        });
    }
    // The Linux boot protocol: "HdrS" at 0x202.
    if image.len() > 0x206 && &image[0x202..0x206] == b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(LoadError::NotAKernel)
}

/// Whether the ELF has a note of owner "Linux" in a PT_NOTE segment: every Linux
/// kernel since 4.19 has one (the build salt, `LINUX_ELFNOTE_BUILD_SALT` in
/// init/version.c; 5.12 and later also the LTO note), whatever its configuration.
/// Symbols (`startup_64`, `linux_banner`) go with `strip` and the Xen PVH note only
/// exists with CONFIG_PVH, but the notes are in a loaded segment (`.notes`) that
/// stripping keeps; and no other kernel names itself Linux.
fn has_linux_note(image: &[u8]) -> bool {
    use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
    let Ok(elf) = ElfFile64::<object::Endianness>::parse(image) else {
        return false;
    };
    let endian = elf.endian();
    let Ok(headers) = elf.elf_header().program_headers(endian, image) else {
        return false;
    };
    headers.iter().any(|p| {
        let Ok(Some(mut notes)) = p.notes(endian, image) else {
            return false;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"Linux" {
                return true;
            }
        }
        false
    })
}

/// The physical ranges of the ELF's loadable segments with contents, if its program
/// headers parse.
fn elf_load_ranges(image: &[u8]) -> Option<Vec<(u64, u64)>> {
    use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
    let elf = ElfFile64::<object::Endianness>::parse(image).ok()?;
    let endian = elf.endian();
    let headers = elf.elf_header().program_headers(endian, image).ok()?;
    Some(
        headers
            .iter()
            .filter(|p| p.p_type(endian) == object::elf::PT_LOAD && p.p_memsz(endian) > 0)
            .map(|p| {
                let start = p.p_paddr(endian);
                (start, start.saturating_add(p.p_memsz(endian)))
            })
            .collect(),
    )
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
    /// The end of the kernel's memory (for a bzImage, of the room it decompresses in).
    pub end: u64,
    /// Where the initrd was placed, and its size.
    pub initrd: Option<(u64, u64)>,
}

/// What a Linux kernel is given besides its image.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinuxBoot<'a> {
    pub cmdline: &'a str,
    pub initrd: Option<&'a [u8]>,
}

/// The fields of a bzImage's setup header the loader checks before loading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BzImageHeader {
    pub version: u16,
    pub xloadflags: u16,
    /// The highest address an initrd may end at (protocol 2.03 and later).
    pub initrd_addr_max: u64,
    /// The longest command line, without its NUL (2.06 and later).
    pub cmdline_size: u64,
    /// The memory the kernel needs from its load address, decompressing (2.10 and
    /// later).
    pub init_size: u64,
}

impl BzImageHeader {
    /// Reads the setup header of `image`, which [`detect_format`] found to be a bzImage,
    /// and checks that it can be entered in 64-bit mode.
    pub fn parse(image: &[u8]) -> Result<BzImageHeader, LoadError> {
        let u16_at = |at: usize| {
            image
                .get(at..at + 2)
                .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
        };
        let u32_at = |at: usize| {
            image
                .get(at..at + 4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let version = u16_at(0x206);
        if version < MIN_BOOT_PROTOCOL {
            return Err(LoadError::BootProtocolTooOld { version });
        }
        let xloadflags = u16_at(0x236);
        if xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LoadError::No64BitEntry { xloadflags });
        }
        Ok(BzImageHeader {
            version,
            xloadflags,
            initrd_addr_max: u64::from(u32_at(0x22c)),
            cmdline_size: u64::from(u32_at(0x238)),
            init_size: u64::from(u32_at(0x260)),
        })
    }
}

/// Where the initrd of `size` bytes goes: as high as it may end (the end of RAM, or
/// `addr_max` + 1 if lower, as the kernel reads it), page aligned, and above the
/// kernel's memory (`kernel_end`), where the kernel does not put its own early data.
pub fn place_initrd(size: u64, kernel_end: u64, ram: u64, addr_max: u64) -> Result<u64, LoadError> {
    const PAGE: u64 = 4096;
    let top = ram.min(addr_max.saturating_add(1));
    let no_room = || LoadError::InitrdNoRoom {
        size,
        kernel_end,
        top,
    };
    let start = top.checked_sub(size).ok_or_else(no_room)? & !(PAGE - 1);
    if start < kernel_end.next_multiple_of(PAGE) {
        return Err(no_room());
    }
    Ok(start)
}

/// The zero page of a Linux kernel: the setup header (`header`, the bzImage's own, or
/// one the loader writes for a vmlinux), the fields a loader fills (boot.rst: loader
/// type, command line, initrd) and the e820 map of `ram` bytes of RAM.
/// `cmdline_len` counts the NUL.
pub fn linux_boot_params(
    header: Option<setup_header>,
    ram: u64,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> boot_params {
    let mut params = boot_params::default();
    match header {
        Some(hdr) => params.hdr = hdr,
        None => {
            // What a bzImage's header would say, for a vmlinux: the signature, the
            // version, and the alignment Linux is built to (CONFIG_PHYSICAL_ALIGN's
            // default).
            params.hdr.boot_flag = 0xaa55;
            params.hdr.header = u32::from_le_bytes(*b"HdrS");
            params.hdr.version = VMLINUX_BOOT_PROTOCOL;
            params.hdr.kernel_alignment = 0x20_0000;
        }
    }
    params.hdr.type_of_loader = TYPE_OF_LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_GPA as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        // Both below 4 GiB: RAM ends below the agent ring.
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    add_e820(&mut params, ram);
    params
}

/// Loads `image` into the VM and sets the vCPU's entry state; a Linux kernel gets
/// `linux`'s command line and initrd.
pub fn load_kernel(
    vm: &mut Vm,
    image: &[u8],
    linux: LinuxBoot<'_>,
) -> Result<LoadedKernel, LoadError> {
    let format = detect_format(image)?;
    if !format.is_linux() && linux.initrd.is_some() {
        return Err(LoadError::InitrdNeedsLinux);
    }
    // Checked before anything is written.
    let bz_header = match format {
        KernelFormat::BzImage => Some(BzImageHeader::parse(image)?),
        _ => None,
    };
    long_mode::build(vm).map_err(LoadError::LongMode)?;
    let (mut loaded, setup_header) = match format {
        KernelFormat::Elf64 | KernelFormat::LinuxElf => (load_elf(vm, image, format)?, None),
        KernelFormat::BzImage => {
            let r = BzImage::load(
                vm.memory(),
                Some(GuestAddress(BZIMAGE_LOAD_GPA)),
                &mut Cursor::new(image),
                None,
            )
            .map_err(LoadError::BzImage)?;
            let init_end = BZIMAGE_LOAD_GPA + bz_header.map_or(0, |h| h.init_size);
            // The 64-bit entry point is 0x200 past the protected-mode kernel.
            let loaded = LoadedKernel {
                format,
                entry: r.kernel_load.raw_value() + 0x200,
                end: r.kernel_end.max(init_end),
                initrd: None,
            };
            (loaded, r.setup_header)
        }
    };
    let mut entry = long_mode::entry_state(loaded.entry);
    if format.is_linux() {
        loaded.initrd = write_linux_boot(vm, &loaded, setup_header, bz_header, linux)?;
        // The environment's GDT has the flat code segment at 0x08 and data at 0x10, not
        // boot.rst's __BOOT_CS/__BOOT_DS (0x10/0x18): startup_64 loads its own GDT and
        // segments before it uses any, as the bzImage's does.
        entry.gpr[krr_engine::state::gpr::RSI] = ZERO_PAGE_GPA;
    }
    vm.set_cpu_state(&entry).map_err(LoadError::EntryState)?;
    Ok(loaded)
}

/// Loads an ELF's segments at their physical addresses; entered at `e_entry`.
fn load_elf(vm: &Vm, image: &[u8], format: KernelFormat) -> Result<LoadedKernel, LoadError> {
    let ram = vm.ram_size();
    // Say plainly when the kernel does not fit (the loader's own error does not).
    if let Some(end) = elf_load_end(image)
        && end > ram
    {
        return Err(LoadError::SegmentsBeyondRam { end, ram });
    }
    let r = Elf::load(vm.memory(), None, &mut Cursor::new(image), None).map_err(LoadError::Elf)?;
    if r.kernel_end > ram {
        return Err(LoadError::EndsBeyondRam {
            end: r.kernel_end,
            ram,
        });
    }
    let entry = r.kernel_load.raw_value();
    if format == KernelFormat::LinuxElf {
        // A vmlinux's e_entry is startup_64's physical address (its linker script's
        // ENTRY(phys_startup_64)); one outside its segments would run zeros.
        let ranges = elf_load_ranges(image).unwrap_or_default();
        if ranges.is_empty() {
            return Err(LoadError::NoLoadableSegment);
        }
        if !ranges.iter().any(|&(s, e)| (s..e).contains(&entry)) {
            return Err(LoadError::EntryOutsideSegments { entry });
        }
    }
    Ok(LoadedKernel {
        format,
        entry,
        end: r.kernel_end,
        initrd: None,
    })
}

/// Writes the initrd, the command line and the zero page of a Linux kernel; returns
/// where the initrd went.
fn write_linux_boot(
    vm: &Vm,
    loaded: &LoadedKernel,
    setup_header: Option<setup_header>,
    bz_header: Option<BzImageHeader>,
    linux: LinuxBoot<'_>,
) -> Result<Option<(u64, u64)>, LoadError> {
    let cmdline_max = bz_header
        .map_or(CMDLINE_MAX - 1, |h| h.cmdline_size as usize)
        .min(CMDLINE_MAX - 1);
    if linux.cmdline.len() > cmdline_max {
        return Err(LoadError::CommandLineTooLong {
            len: linux.cmdline.len(),
            max: cmdline_max,
        });
    }
    let ram = vm.ram_size();
    let initrd = match linux.initrd {
        None => None,
        Some(bytes) => {
            let addr_max = bz_header.map_or(DEFAULT_INITRD_ADDR_MAX, |h| h.initrd_addr_max);
            let size = bytes.len() as u64;
            let at = place_initrd(size, loaded.end, ram, addr_max)?;
            vm.write(at, bytes).map_err(LoadError::Initrd)?;
            Some((at, size))
        }
    };
    let mut c = linux.cmdline.as_bytes().to_vec();
    c.push(0);
    vm.write(CMDLINE_GPA, &c).map_err(LoadError::CommandLine)?;
    let params = linux_boot_params(setup_header, ram, c.len(), initrd);
    LinuxBootConfigurator::write_bootparams::<vm_memory::GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_GPA)),
        vm.memory(),
    )
    .map_err(LoadError::BootParams)?;
    Ok(initrd)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vmlinux_zero_page_has_the_header_a_loader_writes() {
        let p = linux_boot_params(None, 64 << 20, 42, Some((0x3e1_b000, 1_986_048)));
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }.to_le_bytes(), *b"HdrS");
        assert_eq!({ hdr.version }, VMLINUX_BOOT_PROTOCOL);
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_GPA as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ hdr.ramdisk_image }, 0x3e1_b000);
        assert_eq!({ hdr.ramdisk_size }, 1_986_048);
        assert_eq!(({ p.ext_ramdisk_image }, { p.ext_ramdisk_size }), (0, 0));
        // e820: low memory below the EBDA, then 1 MiB to the end of RAM.
        assert_eq!(p.e820_entries, 2);
        let e = |i: usize| {
            let x = p.e820_table[i];
            ({ x.addr }, { x.size }, { x.r#type })
        };
        assert_eq!(e(0), (0, 0x9_f000, 1));
        assert_eq!(e(1), (0x10_0000, (64 << 20) - 0x10_0000, 1));
    }

    #[test]
    fn a_bzimage_keeps_its_own_header_with_the_loader_s_fields() {
        let mut own = setup_header {
            version: 0x020f,
            header: u32::from_le_bytes(*b"HdrS"),
            boot_flag: 0xaa55,
            init_size: 0x123_4000,
            xloadflags: 0x7f,
            type_of_loader: 0,
            ..Default::default()
        };
        own.cmdline_size = 2047;
        let p = linux_boot_params(Some(own), 128 << 20, 10, None);
        let hdr = p.hdr;
        assert_eq!({ hdr.init_size }, 0x123_4000, "the kernel's own field kept");
        assert_eq!({ hdr.xloadflags }, 0x7f);
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!({ hdr.cmdline_size }, 10);
        assert_eq!(({ hdr.ramdisk_image }, { hdr.ramdisk_size }), (0, 0));
        assert_eq!({ p.e820_table[1].size }, (128 << 20) - 0x10_0000);
    }

    #[test]
    fn the_initrd_goes_high_page_aligned_above_the_kernel() {
        const MIB: u64 = 1 << 20;
        // At the end of RAM, aligned down.
        assert_eq!(
            place_initrd(10_000, 0x1a1_8000, 64 * MIB, 0x7fff_ffff).unwrap(),
            64 * MIB - 0x3000
        );
        // Below the kernel's limit where RAM goes higher.
        assert_eq!(
            place_initrd(MIB, 0x1a1_8000, 2048 * MIB, DEFAULT_INITRD_ADDR_MAX).unwrap(),
            0x3800_0000 - MIB
        );
        // Right above the kernel, and not a page lower.
        assert_eq!(
            place_initrd(4096, 0x3ff_f001, 64 * MIB, u64::MAX)
                .unwrap_err()
                .to_string(),
            LoadError::InitrdNoRoom {
                size: 4096,
                kernel_end: 0x3ff_f001,
                top: 64 * MIB
            }
            .to_string()
        );
        assert_eq!(
            place_initrd(4096, 0x3ff_f000, 64 * MIB, u64::MAX).unwrap(),
            0x3ff_f000
        );
        // Larger than RAM.
        assert!(matches!(
            place_initrd(65 * MIB, 0, 64 * MIB, u64::MAX),
            Err(LoadError::InitrdNoRoom { .. })
        ));
    }

    #[test]
    fn bzimage_headers_are_checked_for_the_64_bit_entry() {
        let mut img = vec![0u8; 0x400];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020cu16.to_le_bytes());
        img[0x236] = 1;
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[0x260..0x264].copy_from_slice(&0x200_0000u32.to_le_bytes());
        let h = BzImageHeader::parse(&img).unwrap();
        assert_eq!(
            (h.version, h.initrd_addr_max, h.init_size),
            (0x020c, 0x7fff_ffff, 0x200_0000)
        );
        img[0x236] = 2;
        assert!(matches!(
            BzImageHeader::parse(&img),
            Err(LoadError::No64BitEntry { xloadflags: 2 })
        ));
        img[0x206] = 0x0b;
        assert!(matches!(
            BzImageHeader::parse(&img),
            Err(LoadError::BootProtocolTooOld { version: 0x020b })
        ));
        // A header cut short reads as version 0, refused.
        assert!(matches!(
            BzImageHeader::parse(&img[..0x206]),
            Err(LoadError::BootProtocolTooOld { version: 0 })
        ));
    }
}
