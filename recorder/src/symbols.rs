//! The guest kernel's symbols, stored in the recording so that replay finds the agent's
//! hook functions and the UI names addresses.

use krr_engine::state::Symbol;
use object::{Object, ObjectSymbol, SymbolKind};

/// Why the ELF named for symbols cannot give them.
#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    #[error("the file named for the kernel's symbols (--vmlinux) is not an ELF")]
    NotElf(#[source] object::read::Error),
    #[error("the file named for the kernel's symbols (--vmlinux) is a {0:?} file, not an ELF")]
    NotElfFormat(object::BinaryFormat),
}

/// Function and data symbols of an ELF kernel image; empty for other formats or an
/// image without a symbol table.
pub fn kernel_symbols(image: &[u8]) -> Vec<Symbol> {
    match object::File::parse(image) {
        Ok(file) => elf_symbols(&file),
        Err(_) => Vec::new(),
    }
}

/// The symbols of `elf`, a kernel's vmlinux named for them: it must be an ELF.
pub fn vmlinux_symbols(elf: &[u8]) -> Result<Vec<Symbol>, SymbolsError> {
    let file = object::File::parse(elf).map_err(SymbolsError::NotElf)?;
    if file.format() != object::BinaryFormat::Elf {
        return Err(SymbolsError::NotElfFormat(file.format()));
    }
    Ok(elf_symbols(&file))
}

fn elf_symbols(file: &object::File<'_>) -> Vec<Symbol> {
    let mut out: Vec<Symbol> = file
        .symbols()
        .filter(|s| matches!(s.kind(), SymbolKind::Text | SymbolKind::Data) && s.address() != 0)
        .filter_map(|s| {
            Some(Symbol {
                name: s.name().ok()?.to_string(),
                addr: s.address(),
                size: s.size(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.addr.cmp(&b.addr).then_with(|| a.name.cmp(&b.name)));
    out.dedup_by(|a, b| a.addr == b.addr && a.name == b.name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vmlinux_named_for_symbols_must_be_an_elf() {
        let err = vmlinux_symbols(b"MZ\x90\x00 not an ELF at all").unwrap_err();
        assert!(err.to_string().contains("--vmlinux"), "{err}");
        // The recorder's own test program is an ELF with symbols.
        let own = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let symbols = vmlinux_symbols(&own).unwrap();
        assert!(
            symbols
                .iter()
                .any(|s| s.name.contains("a_vmlinux_named_for_symbols")),
            "{} symbols",
            symbols.len()
        );
        // A bzImage given as the kernel has none, and is no error.
        assert!(kernel_symbols(b"MZ\x90\x00 not an ELF at all").is_empty());
    }
}
