//! The guest kernel's symbols, stored in the recording so that replay finds the agent's
//! hook functions and the UI names addresses.

use krr_engine::state::Symbol;
use object::{Object, ObjectSymbol, SymbolKind};

/// Function and data symbols of an ELF kernel image; empty for other formats or an
/// image without a symbol table.
pub fn kernel_symbols(image: &[u8]) -> Vec<Symbol> {
    let Ok(file) = object::File::parse(image) else {
        return Vec::new();
    };
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
