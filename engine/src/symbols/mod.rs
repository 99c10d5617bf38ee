//! Guest symbols and source lines: maps a guest address to `function+offset` (the ELF
//! symbol table, or the recording's symbol list when no image is at hand) and to
//! `file:line` (the DWARF line tables).
//!
//! The image comes from the recording header (`kernel_image`, embedded for small kernels
//! such as the built-in demo) or from a file the user names (`--kernel`). A file is
//! mapped, not read ([`krr_mapped::Bytes`]), and the DWARF sections are ranges of that
//! mapping: a distribution's vmlinux with its debug information (hundreds of
//! megabytes) opens without copying it, and what is read of it later is paged in from
//! the page cache.
//!
//! A kernel linked at virtual addresses but loaded at physical ones (Linux: its PT_LOAD
//! segments have p_vaddr 0xffffffff81000000, p_paddr 0x1000000) runs its first
//! instructions at the physical addresses; an address no symbol covers that falls in
//! such a segment's physical range is looked up at its virtual address. (A bzImage's
//! decompressor also runs in that range: its addresses get the vmlinux's names.)

use crate::state::Symbol;
use crate::trace::Header;
use krr_mapped::Bytes;
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// DWARF sections as gimli reads them: ranges of the image's shared bytes.
type Reader = gimli::EndianReader<gimli::RunTimeEndian, Bytes>;

mod blocks;
mod debuginfo;
mod expr;
mod lines;
mod units;
mod unwind;
mod values;

pub use blocks::{Block, BlockKind, Blocks, Scope};
pub use debuginfo::{
    AggregateKind, BaseEncoding, DebugInfo, DieRef, Field, FrameContext, Member, Place, Pointee,
    ScopeFrame, Type, Variable,
};
pub use expr::{ExprContext, evaluate as evaluate_expression};
pub use lines::{LineRange, LineTable};
use units::Units;
pub use unwind::{
    CfaBase, DWARF_PC, DwarfRegisters, Frame, FrameRule, MAX_FRAMES, SavedRbp, Unwinder,
};
pub use values::{MemoryFault, Radix, ReadMemory, Value, ValuePrinter, gdb_symbol, memory_error};

/// Errors reading a guest image.
#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    #[error(transparent)]
    Map(#[from] krr_mapped::MapError),
    #[error("not an ELF image the symbol reader understands: {0}")]
    Object(#[from] object::Error),
    #[error("bad DWARF debug information: {0}")]
    Dwarf(#[from] gimli::Error),
}

/// A function (or other text symbol) of the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    pub addr: u64,
    /// Size in bytes; symbols without a size extend to the next symbol.
    pub size: u64,
}

/// A data object of the guest (a variable in the ELF symbol table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSymbol {
    pub name: String,
    pub addr: u64,
    /// Size in bytes as the symbol table gives it (0 for labels such as `__bss_end`).
    pub size: u64,
}

/// Where an address falls in a data object: the object and the offset into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocatedData<'a> {
    pub data: &'a DataSymbol,
    pub offset: u64,
}

impl std::fmt::Display for LocatedData<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.offset == 0 {
            write!(f, "{}", self.data.name)
        } else {
            write!(f, "{}+{:#x}", self.data.name, self.offset)
        }
    }
}

/// Where an address falls: its function and the offset into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located<'a> {
    pub function: &'a Function,
    pub offset: u64,
}

impl std::fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.offset == 0 {
            write!(f, "{}", self.function.name)
        } else {
            write!(f, "{}+{:#x}", self.function.name, self.offset)
        }
    }
}

/// A source position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLine {
    /// The path as the DWARF information records it (directory joined with the name).
    pub file: PathBuf,
    pub line: u32,
}

/// A loadable segment of the image whose physical address differs from its virtual
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LoadSegment {
    paddr: u64,
    vaddr: u64,
    size: u64,
}

/// The guest's symbols and line tables.
pub struct Symbols {
    /// Sorted by address, sizes filled in.
    functions: Vec<Function>,
    /// Data objects, sorted by address.
    data: Vec<DataSymbol>,
    /// Where code runs before paging maps it at its link address.
    load_segments: Vec<LoadSegment>,
    /// Whether the image has DWARF line tables.
    lines: bool,
    /// The line tables as gdb reads them (source-line steps and the current line),
    /// built when first asked for.
    line_table: std::sync::OnceLock<Option<LineTable>>,
    /// Functions and inlined calls, built when first asked for.
    blocks: std::sync::OnceLock<Option<Blocks>>,
    dwarf: Option<Arc<gimli::Dwarf<Reader>>>,
    /// The DWARF units' headers and ranges, read when first asked for (shared by the
    /// line tables and the variable reader).
    units: std::sync::OnceLock<Option<Arc<Units>>>,
    /// Variables and types, read when first asked for.
    debug_info: std::sync::OnceLock<Option<DebugInfo>>,
    unwinder: Option<Unwinder>,
}

impl std::fmt::Debug for Symbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbols")
            .field("functions", &self.functions.len())
            .field("lines", &self.lines)
            .finish()
    }
}

impl Symbols {
    /// No symbols at all (addresses are shown bare).
    pub fn empty() -> Symbols {
        Symbols {
            functions: Vec::new(),
            data: Vec::new(),
            load_segments: Vec::new(),
            lines: false,
            line_table: std::sync::OnceLock::new(),
            blocks: std::sync::OnceLock::new(),
            dwarf: None,
            units: std::sync::OnceLock::new(),
            debug_info: std::sync::OnceLock::new(),
            unwinder: None,
        }
    }

    /// From an ELF image in memory (copied: see [`Symbols::from_bytes`]).
    pub fn from_elf(image: &[u8]) -> Result<Symbols, SymbolsError> {
        Symbols::from_bytes(Bytes::from(image))
    }

    /// From an ELF image: its text symbols and, when present, its DWARF line tables.
    /// The DWARF sections are kept as ranges of `image` (no copy).
    pub fn from_bytes(image: Bytes) -> Result<Symbols, SymbolsError> {
        let file = object::File::parse(&*image)?;
        let mut functions: Vec<Function> = file
            .symbols()
            .filter(|s| s.address() != 0 && is_code(&file, s))
            .filter_map(|s| {
                let name = s.name().ok()?;
                (!name.is_empty()).then(|| Function {
                    name: name.to_string(),
                    addr: s.address(),
                    size: s.size(),
                })
            })
            .collect();
        let text_sections: Vec<(u64, u64)> = file
            .sections()
            .filter(|s| s.kind() == object::SectionKind::Text)
            .map(|s| (s.address(), s.address().saturating_add(s.size())))
            .collect();
        finish_functions(&mut functions, &text_sections);
        let mut data: Vec<DataSymbol> = file
            .symbols()
            .filter(|s| s.address() != 0 && is_data(&file, s))
            .filter_map(|s| {
                let name = s.name().ok()?;
                (!name.is_empty()).then(|| DataSymbol {
                    name: name.to_string(),
                    addr: s.address(),
                    size: s.size(),
                })
            })
            .collect();
        data.sort_by(|a, b| a.addr.cmp(&b.addr).then(b.size.cmp(&a.size)));
        let lines = file.section_by_name(".debug_line").is_some();
        let dwarf = if lines {
            Some(Arc::new(load_dwarf(&file, &image)?))
        } else {
            None
        };
        let unwinder = Unwinder::from_object(&file, &image);
        Ok(Symbols {
            functions,
            data,
            load_segments: physical_load_segments(&file),
            lines,
            line_table: std::sync::OnceLock::new(),
            blocks: std::sync::OnceLock::new(),
            dwarf,
            units: std::sync::OnceLock::new(),
            debug_info: std::sync::OnceLock::new(),
            unwinder,
        })
    }

    /// From a file on disk, mapped (see [`krr_mapped`] for the caveat of a file
    /// changed while mapped).
    pub fn from_path(path: &Path) -> Result<Symbols, SymbolsError> {
        Symbols::from_bytes(Bytes::map_path(path)?)
    }

    /// From the symbol list the recorder stored (no line information).
    pub fn from_list(symbols: &[Symbol]) -> Symbols {
        let mut functions: Vec<Function> = symbols
            .iter()
            .filter(|s| s.addr != 0)
            .map(|s| Function {
                name: s.name.clone(),
                addr: s.addr,
                size: s.size,
            })
            .collect();
        finish_functions(&mut functions, &[]);
        Symbols {
            functions,
            data: Vec::new(),
            load_segments: Vec::new(),
            lines: false,
            line_table: std::sync::OnceLock::new(),
            blocks: std::sync::OnceLock::new(),
            dwarf: None,
            units: std::sync::OnceLock::new(),
            debug_info: std::sync::OnceLock::new(),
            unwinder: None,
        }
    }

    /// The best the recording offers: its embedded image when it has one and it parses;
    /// else the kernel file it was recorded from, when that file is still where it was
    /// and is the same (size and SHA-256; a Linux vmlinux is too large to embed, and
    /// its DWARF gives source lines); otherwise its symbol list.
    pub fn from_header(header: &Header) -> Symbols {
        header
            .kernel_image
            .as_deref()
            .and_then(|image| Symbols::from_elf(image).ok())
            .or_else(|| Symbols::from_recorded_kernel_file(header))
            .unwrap_or_else(|| Symbols::from_list(&header.symbols))
    }

    /// The kernel ELF named in the header, if that file exists and is the one recorded.
    fn from_recorded_kernel_file(header: &Header) -> Option<Symbols> {
        let path = Path::new(&header.kernel.name);
        if !path.is_absolute() {
            return None;
        }
        let mut file = std::fs::File::open(path).ok()?;
        if !header.kernel.matches_file(&mut file) {
            return None;
        }
        // The file mapped is the file hashed (one descriptor); its length is checked
        // again in case it was written to in between.
        let image = Bytes::map_file(&file, path).ok()?;
        if image.len() as u64 != header.kernel.size {
            return None;
        }
        Symbols::from_bytes(image).ok()
    }

    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// Whether `file:line` lookups are possible.
    /// The image's call-frame tables (DWARF CFI), if it has any.
    pub fn unwinder(&self) -> Option<&Unwinder> {
        self.unwinder.as_ref()
    }

    pub fn has_lines(&self) -> bool {
        self.lines
    }

    /// The function containing `addr` (or, for code running at its physical address,
    /// its virtual address).
    pub fn lookup(&self, addr: u64) -> Option<Located<'_>> {
        self.lookup_linked(addr)
            .or_else(|| self.lookup_linked(self.linked_address(addr)?))
    }

    /// The address the image links the code at physical address `addr` at, if `addr`
    /// is in a segment loaded elsewhere than its link address.
    pub fn linked_address(&self, addr: u64) -> Option<u64> {
        self.load_segments
            .iter()
            .find(|s| addr.wrapping_sub(s.paddr) < s.size)
            .map(|s| s.vaddr.wrapping_add(addr - s.paddr))
    }

    fn lookup_linked(&self, addr: u64) -> Option<Located<'_>> {
        let i = self.functions.partition_point(|f| f.addr <= addr);
        let f = self.functions.get(i.checked_sub(1)?)?;
        let offset = addr - f.addr;
        (offset < f.size.max(1)).then_some(Located {
            function: f,
            offset,
        })
    }

    /// `name+0x12`, or the bare address when no symbol covers it.
    pub fn describe(&self, addr: u64) -> String {
        match self.lookup(addr) {
            Some(l) => l.to_string(),
            None => format!("{addr:#x}"),
        }
    }

    /// The address of the symbol called `name` (a function's, else a data object's).
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.functions
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.addr)
            .or_else(|| self.data_symbol(name).map(|d| d.addr))
    }

    /// The data object called `name`.
    pub fn data_symbol(&self, name: &str) -> Option<&DataSymbol> {
        self.data.iter().find(|d| d.name == name)
    }

    pub fn data_symbols(&self) -> &[DataSymbol] {
        &self.data
    }

    /// The data object containing `addr` (a size-less label only at its own address).
    pub fn lookup_data(&self, addr: u64) -> Option<LocatedData<'_>> {
        let i = self.data.partition_point(|d| d.addr <= addr);
        // The nearest few objects at or below `addr`, the last first: a sized one that
        // covers `addr` wins over the labels just below it.
        self.data[..i]
            .iter()
            .rev()
            .take(8)
            .find(|d| addr - d.addr < d.size.max(1))
            .map(|d| LocatedData {
                data: d,
                offset: addr - d.addr,
            })
    }

    /// `name+0x8` for an address in a function or a data object (functions first);
    /// None where neither covers it.
    pub fn describe_symbol(&self, addr: u64) -> Option<String> {
        self.lookup(addr)
            .map(|l| l.to_string())
            .or_else(|| self.lookup_data(addr).map(|d| d.to_string()))
            .or_else(|| {
                // Early Linux code addresses its data at physical addresses too.
                let linked = self.linked_address(addr)?;
                self.lookup_data(linked).map(|d| d.to_string())
            })
    }

    /// The source line of the instruction at `addr` (or at its virtual address, as
    /// [`Symbols::lookup`]), as gdb gives it (of the rows at one address, a statement's
    /// line: see [`LineTable`]).
    pub fn line(&self, addr: u64) -> Option<SourceLine> {
        let l = self.line_range(addr)?;
        Some(SourceLine {
            file: l.file.to_path_buf(),
            line: l.line,
        })
    }

    /// The line at `addr` and the addresses it covers there (gdb's `find_pc_line`); for
    /// code running at its physical address, the line of its virtual address (whose
    /// range is then in virtual addresses).
    pub fn line_range(&self, addr: u64) -> Option<LineRange> {
        let table = self.line_table()?;
        table
            .find(addr)
            .or_else(|| table.find(self.linked_address(addr)?))
    }

    /// Where a breakpoint at `file:line` goes, as gdb places it: the line's statement
    /// addresses (or the next line's with code, see [`LineTable::line_statements`]),
    /// keeping the first of those in one scope (function, inlined call or lexical
    /// block: a loop's condition is one location, not one per copy the compiler made). Returns the line used and
    /// the addresses, sorted; None where no source file or line matches.
    pub fn line_addresses(&self, file: &str, line: u32) -> Option<(u32, Vec<u64>)> {
        let (line, candidates) = self.line_table()?.line_statements(file, line)?;
        let blocks = self.blocks();
        let innermost = |a: u64| blocks.and_then(|b| b.scope(a));
        // gdb's filter: for each location in a scope, the next one in the same scope
        // is dropped.
        let mut keep = vec![true; candidates.len()];
        for i in 0..candidates.len() {
            let Some(b) = innermost(candidates[i]) else {
                continue;
            };
            if let Some(j) =
                (i + 1..candidates.len()).find(|&j| innermost(candidates[j]) == Some(b))
            {
                keep[j] = false;
            }
        }
        let mut out: Vec<u64> = candidates
            .into_iter()
            .zip(keep)
            .filter_map(|(a, k)| k.then_some(a))
            .collect();
        out.sort_unstable();
        out.dedup();
        Some((line, out))
    }

    /// Where a breakpoint on the function `name` goes: its symbol's address, and the
    /// entry of every call of it the compiler inlined and of every part it split off
    /// (`name.part.0`), as gdb's `break NAME`. Empty where none exists.
    pub fn function_addresses(&self, name: &str) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .functions
            .iter()
            .filter(|f| f.name == name)
            .map(|f| f.addr)
            .collect();
        if let Some(blocks) = self.blocks() {
            out.extend(
                blocks
                    .iter()
                    .filter(|b| b.name.as_deref() == Some(name))
                    .map(|b| b.entry()),
            );
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The member `member` of the structure type `structure` in the DWARF information.
    pub fn member(&self, structure: &str, member: &str) -> Option<Member> {
        self.debug_info()?.member(structure, member)
    }

    /// The image's variables and types from its DWARF information (None without it).
    pub fn debug_info(&self) -> Option<&DebugInfo> {
        self.debug_info
            .get_or_init(|| Some(DebugInfo::new(self.units()?.clone())))
            .as_ref()
    }

    /// The image's functions and inlined calls from its DWARF information.
    pub fn blocks(&self) -> Option<&Blocks> {
        self.blocks
            .get_or_init(|| Some(Blocks::new(self.units()?.clone())))
            .as_ref()
    }

    /// The image's line tables as gdb reads them (None without DWARF lines, or where
    /// they do not parse).
    pub fn line_table(&self) -> Option<&LineTable> {
        self.line_table
            .get_or_init(|| Some(LineTable::new(self.units()?.clone())))
            .as_ref()
    }

    /// The DWARF units (None without DWARF, or where a unit does not parse).
    fn units(&self) -> Option<&Arc<Units>> {
        self.units
            .get_or_init(|| Some(Arc::new(Units::new(self.dwarf.clone()?).ok()?)))
            .as_ref()
    }
}

/// The PT_LOAD segments of an ELF64 image loaded at other physical addresses than their
/// virtual ones.
fn physical_load_segments(file: &object::File<'_>) -> Vec<LoadSegment> {
    use object::read::elf::ProgramHeader;
    let object::File::Elf64(elf) = file else {
        return Vec::new();
    };
    let endian = elf.endian();
    elf.elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(endian) == object::elf::PT_LOAD)
        .map(|ph| LoadSegment {
            paddr: ph.p_paddr(endian),
            vaddr: ph.p_vaddr(endian),
            size: ph.p_memsz(endian),
        })
        .filter(|s| s.paddr != s.vaddr && s.size > 0)
        .collect()
}

/// Functions, and the untyped labels of assembly code in executable sections.
fn is_code(file: &object::File<'_>, s: &object::Symbol<'_, '_>) -> bool {
    match s.kind() {
        SymbolKind::Text => true,
        SymbolKind::Label | SymbolKind::Unknown => s
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
            .is_some_and(|sec| sec.kind() == object::SectionKind::Text),
        _ => false,
    }
}

/// Variables: symbols of data sections (objects, and labels there such as `__bss_end`).
fn is_data(file: &object::File<'_>, s: &object::Symbol<'_, '_>) -> bool {
    match s.kind() {
        SymbolKind::Data | SymbolKind::Tls => true,
        SymbolKind::Label | SymbolKind::Unknown => s
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
            .is_some_and(|sec| {
                matches!(
                    sec.kind(),
                    object::SectionKind::Data
                        | object::SectionKind::ReadOnlyData
                        | object::SectionKind::UninitializedData
                )
            }),
        _ => false,
    }
}

/// Sorts, removes duplicates and gives size-less symbols the distance to the next one,
/// but never past the end of the text section they are in (`text_sections`, start and
/// end; empty where unknown): a label at a section's end, such as Linux's `_etext`,
/// must not claim the data that follows it.
fn finish_functions(functions: &mut Vec<Function>, text_sections: &[(u64, u64)]) {
    functions.sort_by(|a, b| a.addr.cmp(&b.addr).then(b.size.cmp(&a.size)));
    functions.dedup_by_key(|f| f.addr);
    for i in 0..functions.len() {
        if functions[i].size == 0 {
            let addr = functions[i].addr;
            let section_end = text_sections
                .iter()
                .filter(|&&(start, end)| start <= addr && addr <= end)
                .map(|&(_, end)| end)
                .min();
            let next = functions.get(i + 1).map(|n| n.addr);
            let end = match (next, section_end) {
                (Some(n), Some(e)) => n.min(e),
                (n, e) => n.or(e).unwrap_or(addr + 1),
            };
            functions[i].size = end.saturating_sub(addr).max(1);
        }
    }
}

/// A unit's address ranges (empty ones left out).
fn unit_address_ranges(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
) -> Result<Vec<(u64, u64)>, gimli::Error> {
    let mut ranges = Vec::new();
    let mut iter = dwarf.unit_ranges(unit)?;
    while let Some(r) = iter.next()? {
        if r.begin < r.end {
            ranges.push((r.begin, r.end));
        }
    }
    Ok(ranges)
}

/// The byte order of the image, as gimli names it.
fn endian_of(file: &object::File<'_>) -> gimli::RunTimeEndian {
    if file.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    }
}

/// A section's contents as a reader over `image`: a range of it (no copy), or the
/// section's decompressed bytes (`SHF_COMPRESSED`). Relocation sections for it
/// (`.rela.debug_info` of a kernel linked with `--emit-relocs`) are not applied: an
/// executable's sections hold their final values already.
fn section_reader(
    section: &object::Section<'_, '_>,
    image: &Bytes,
    endian: gimli::RunTimeEndian,
) -> Result<Reader, object::Error> {
    let bytes = match section.uncompressed_data()? {
        Cow::Borrowed(data) => image.share(data),
        Cow::Owned(data) => Bytes::from(data),
    };
    Ok(gimli::EndianReader::new(bytes, endian))
}

fn load_dwarf(
    file: &object::File<'_>,
    image: &Bytes,
) -> Result<gimli::Dwarf<Reader>, SymbolsError> {
    let endian = endian_of(file);
    let load = |id: gimli::SectionId| -> Result<Reader, SymbolsError> {
        Ok(match file.section_by_name(id.name()) {
            Some(section) => section_reader(&section, image, endian)?,
            None => gimli::EndianReader::new(Bytes::from(Vec::new()), endian),
        })
    };
    gimli::Dwarf::load(load)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::Replay;

    fn fixture_header() -> Header {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/demo.krr");
        Replay::open(path).expect("fixture").header().clone()
    }

    #[test]
    fn a_sizeless_label_stops_at_its_text_section_end() {
        let f = |name: &str, addr, size| Function {
            name: name.to_string(),
            addr,
            size,
        };
        // .text 0x1000..0x2100 ends in `_etext`; .init.text starts at 0x9000.
        let mut functions = vec![
            f("init_fn", 0x9000, 0x10),
            f("_etext", 0x2100, 0),
            f("last_text_label", 0x2000, 0),
            f("first", 0x1000, 0x20),
        ];
        finish_functions(&mut functions, &[(0x1000, 0x2100), (0x9000, 0x9010)]);
        let sizes: Vec<(&str, u64)> = functions
            .iter()
            .map(|f| (f.name.as_str(), f.size))
            .collect();
        assert_eq!(
            sizes,
            [
                ("first", 0x20),
                ("last_text_label", 0x100),
                ("_etext", 1),
                ("init_fn", 0x10)
            ]
        );
    }

    #[test]
    fn the_embedded_demo_kernel_maps_addresses_to_functions_and_lines() {
        let header = fixture_header();
        let image = header.kernel_image.as_deref().expect("embedded image");
        let symbols = Symbols::from_elf(image).expect("parses");
        assert!(symbols.has_lines());
        // Every symbol the recorder listed is found at its address, by name and by
        // address, and an address inside it resolves to it with the right offset.
        let mut checked = 0;
        for s in &header.symbols {
            let Some(f) = symbols.functions().iter().find(|f| f.name == s.name) else {
                continue;
            };
            assert_eq!(f.addr, s.addr, "{}", s.name);
            assert_eq!(symbols.address_of(&s.name), Some(s.addr));
            let l = symbols.lookup(s.addr + f.size / 2).expect("inside");
            assert_eq!(l.function.name, s.name);
            assert_eq!(l.offset, f.size / 2);
            checked += 1;
        }
        assert!(checked > 0, "no recorder symbol is a text symbol");
        // A C function's entry has a line in a .c file of the demo kernel.
        let main = symbols
            .functions()
            .iter()
            .find(|f| f.name == "kmain")
            .expect("kmain");
        let line = symbols.line(main.addr).expect("line");
        assert!(line.file.extension().is_some_and(|e| e == "c"), "{line:?}");
        assert!(line.line > 0);
        assert_eq!(
            symbols.describe(main.addr + 3),
            format!("{}+0x3", main.name)
        );
        assert_eq!(symbols.describe(1), "0x1");
        assert!(symbols.lookup(0).is_none());
    }

    /// A minimal ELF64 executable: one PT_LOAD segment of 0x100 bytes linked at `vaddr`
    /// and loaded at `paddr`, its .text section, and two function symbols in it:
    /// `startup_64` (0x40 bytes at its start) and `start_kernel` (0x20 bytes at 0x80).
    fn elf_with_segment(vaddr: u64, paddr: u64) -> Vec<u8> {
        const TEXT: usize = 0x100;
        const SYMTAB: usize = 0x200;
        const STRTAB: usize = 0x260;
        const SHSTRTAB: usize = 0x280;
        const SHDRS: usize = 0x300;
        let mut b = vec![0u8; SHDRS + 5 * 64];
        let put = |b: &mut Vec<u8>, at: usize, bytes: &[u8]| {
            b[at..at + bytes.len()].copy_from_slice(bytes)
        };
        // ELF header.
        put(&mut b, 0, &[0x7f, b'E', b'L', b'F', 2, 1, 1]);
        put(&mut b, 16, &2u16.to_le_bytes()); // ET_EXEC
        put(&mut b, 18, &62u16.to_le_bytes()); // x86-64
        put(&mut b, 20, &1u32.to_le_bytes());
        put(&mut b, 24, &vaddr.to_le_bytes());
        put(&mut b, 32, &64u64.to_le_bytes()); // e_phoff
        put(&mut b, 40, &(SHDRS as u64).to_le_bytes());
        put(&mut b, 52, &64u16.to_le_bytes());
        put(&mut b, 54, &56u16.to_le_bytes());
        put(&mut b, 56, &1u16.to_le_bytes());
        put(&mut b, 58, &64u16.to_le_bytes());
        put(&mut b, 60, &5u16.to_le_bytes());
        put(&mut b, 62, &4u16.to_le_bytes()); // .shstrtab
        // PT_LOAD, R+X.
        put(&mut b, 64, &1u32.to_le_bytes());
        put(&mut b, 68, &5u32.to_le_bytes());
        for (i, v) in [TEXT as u64, vaddr, paddr, 0x100, 0x100, 0x100]
            .iter()
            .enumerate()
        {
            put(&mut b, 72 + 8 * i, &v.to_le_bytes());
        }
        // Symbols: null, startup_64, start_kernel (global functions in section 1).
        for (i, (name, off, size)) in [(1u32, 0u64, 0x40u64), (12, 0x80, 0x20)].iter().enumerate() {
            let at = SYMTAB + 24 * (i + 1);
            put(&mut b, at, &name.to_le_bytes());
            b[at + 4] = 0x12;
            put(&mut b, at + 6, &1u16.to_le_bytes());
            put(&mut b, at + 8, &(vaddr + off).to_le_bytes());
            put(&mut b, at + 16, &size.to_le_bytes());
        }
        put(&mut b, STRTAB, b"\0startup_64\0start_kernel\0");
        put(&mut b, SHSTRTAB, b"\0.text\0.symtab\0.strtab\0.shstrtab\0");
        // Section headers after the null one: .text, .symtab, .strtab, .shstrtab.
        struct Section {
            name: u32,
            ty: u32,
            flags: u64,
            addr: u64,
            offset: usize,
            size: u64,
            link: u32,
            info: u32,
            entsize: u64,
        }
        let section = |name, ty, offset, size| Section {
            name,
            ty,
            flags: 0,
            addr: 0,
            offset,
            size,
            link: 0,
            info: 0,
            entsize: 0,
        };
        let sections = [
            Section {
                flags: 6,
                addr: vaddr,
                ..section(1, 1, TEXT, 0x100)
            },
            Section {
                link: 3,
                info: 1,
                entsize: 24,
                ..section(7, 2, SYMTAB, 72)
            },
            section(15, 3, STRTAB, 26),
            section(23, 3, SHSTRTAB, 33),
        ];
        for (i, sec) in sections.iter().enumerate() {
            let at = SHDRS + 64 * (i + 1);
            put(&mut b, at, &sec.name.to_le_bytes());
            put(&mut b, at + 4, &sec.ty.to_le_bytes());
            put(&mut b, at + 8, &sec.flags.to_le_bytes());
            put(&mut b, at + 16, &sec.addr.to_le_bytes());
            put(&mut b, at + 24, &(sec.offset as u64).to_le_bytes());
            put(&mut b, at + 32, &sec.size.to_le_bytes());
            put(&mut b, at + 40, &sec.link.to_le_bytes());
            put(&mut b, at + 44, &sec.info.to_le_bytes());
            put(&mut b, at + 48, &1u64.to_le_bytes());
            put(&mut b, at + 56, &sec.entsize.to_le_bytes());
        }
        b
    }

    #[test]
    fn code_at_its_physical_address_has_its_linked_symbols() {
        let linux_like = Symbols::from_elf(&elf_with_segment(0xffff_ffff_8100_0000, 0x100_0000))
            .expect("parses");
        // At the link address, and at the load address before paging maps it there.
        assert_eq!(
            linux_like.describe(0xffff_ffff_8100_0010),
            "startup_64+0x10"
        );
        assert_eq!(linux_like.describe(0x100_0010), "startup_64+0x10");
        assert_eq!(linux_like.describe(0x100_0080), "start_kernel");
        assert_eq!(
            linux_like.linked_address(0x100_00ff),
            Some(0xffff_ffff_8100_00ff)
        );
        // Outside the segment, and in it where no symbol is.
        assert_eq!(linux_like.linked_address(0x100_0100), None);
        assert_eq!(linux_like.describe(0x100_0100), "0x1000100");
        assert_eq!(linux_like.describe(0x100_0060), "0x1000060");
        assert_eq!(linux_like.describe(0xfff_fff0), "0xffffff0");
        // An image loaded where it is linked has nothing to map.
        let identity = Symbols::from_elf(&elf_with_segment(0x10_0000, 0x10_0000)).expect("parses");
        assert_eq!(identity.describe(0x10_0010), "startup_64+0x10");
        assert_eq!(identity.linked_address(0x10_0010), None);
    }

    #[test]
    fn garbage_is_an_error_and_a_symbol_list_still_works() {
        assert!(Symbols::from_elf(b"not an elf at all").is_err());
        let list = Symbols::from_list(&[
            Symbol {
                name: "b".into(),
                addr: 0x2000,
                size: 0,
            },
            Symbol {
                name: "a".into(),
                addr: 0x1000,
                size: 0x10,
            },
        ]);
        assert_eq!(list.describe(0x1008), "a+0x8");
        assert_eq!(list.describe(0x1010), "0x1010");
        assert_eq!(list.describe(0x2000), "b");
        assert!(!list.has_lines());
        assert!(list.line(0x1000).is_none());
    }
}
