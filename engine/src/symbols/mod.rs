//! Guest symbols and source lines: maps a guest address to `function+offset` (the ELF
//! symbol table, or the recording's symbol list when no image is at hand) and to
//! `file:line` (the DWARF line tables, through addr2line).
//!
//! The image comes from the recording header (`kernel_image`, embedded for small kernels
//! such as the built-in demo) or from a file the user names (`--kernel`).

use crate::state::Symbol;
use crate::trace::Header;
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type Reader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

mod unwind;

pub use unwind::{Frame, MAX_FRAMES, Unwinder};

/// Errors reading a guest image.
#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
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

/// The guest's symbols and line tables.
pub struct Symbols {
    /// Sorted by address, sizes filled in.
    functions: Vec<Function>,
    lines: Option<addr2line::Context<Reader>>,
    unwinder: Option<Unwinder>,
}

impl std::fmt::Debug for Symbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbols")
            .field("functions", &self.functions.len())
            .field("lines", &self.lines.is_some())
            .finish()
    }
}

impl Symbols {
    /// No symbols at all (addresses are shown bare).
    pub fn empty() -> Symbols {
        Symbols {
            functions: Vec::new(),
            lines: None,
            unwinder: None,
        }
    }

    /// From an ELF image: its text symbols and, when present, its DWARF line tables.
    pub fn from_elf(image: &[u8]) -> Result<Symbols, SymbolsError> {
        let file = object::File::parse(image)?;
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
        let text_end = file
            .sections()
            .filter(|s| s.kind() == object::SectionKind::Text)
            .map(|s| s.address().saturating_add(s.size()))
            .max();
        finish_functions(&mut functions, text_end);
        let lines = if file.section_by_name(".debug_line").is_some() {
            Some(load_dwarf(&file)?)
        } else {
            None
        };
        let unwinder = Unwinder::from_object(&file);
        Ok(Symbols {
            functions,
            lines,
            unwinder,
        })
    }

    /// From a file on disk.
    pub fn from_path(path: &Path) -> Result<Symbols, SymbolsError> {
        let image = std::fs::read(path).map_err(|source| SymbolsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Symbols::from_elf(&image)
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
        finish_functions(&mut functions, None);
        Symbols {
            functions,
            lines: None,
            unwinder: None,
        }
    }

    /// The best the recording offers: its embedded image when it has one and it parses,
    /// otherwise its symbol list.
    pub fn from_header(header: &Header) -> Symbols {
        header
            .kernel_image
            .as_deref()
            .and_then(|image| Symbols::from_elf(image).ok())
            .unwrap_or_else(|| Symbols::from_list(&header.symbols))
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
        self.lines.is_some()
    }

    /// The function containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<Located<'_>> {
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

    /// The address of the symbol called `name`.
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.functions
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.addr)
    }

    /// The source line of the instruction at `addr`.
    pub fn line(&self, addr: u64) -> Option<SourceLine> {
        let loc = self.lines.as_ref()?.find_location(addr).ok()??;
        Some(SourceLine {
            file: PathBuf::from(loc.file?),
            line: loc.line?,
        })
    }
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

/// Sorts, removes duplicates and gives size-less symbols the distance to the next one.
fn finish_functions(functions: &mut Vec<Function>, text_end: Option<u64>) {
    functions.sort_by(|a, b| a.addr.cmp(&b.addr).then(b.size.cmp(&a.size)));
    functions.dedup_by_key(|f| f.addr);
    for i in 0..functions.len() {
        if functions[i].size == 0 {
            let next = functions
                .get(i + 1)
                .map(|n| n.addr)
                .or(text_end)
                .unwrap_or(functions[i].addr + 1);
            functions[i].size = next.saturating_sub(functions[i].addr).max(1);
        }
    }
}

fn load_dwarf(file: &object::File<'_>) -> Result<addr2line::Context<Reader>, SymbolsError> {
    let endian = if file.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let load = |id: gimli::SectionId| -> Result<Reader, SymbolsError> {
        let data: Cow<'_, [u8]> = match file.section_by_name(id.name()) {
            Some(section) => section.uncompressed_data()?,
            None => Cow::Borrowed(&[]),
        };
        Ok(gimli::EndianArcSlice::new(Arc::from(&*data), endian))
    };
    let dwarf = gimli::Dwarf::load(load)?;
    Ok(addr2line::Context::from_dwarf(dwarf)?)
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
