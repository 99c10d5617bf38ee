//! The compilation units of an image's DWARF information, shared by the line tables and
//! the variable reader: every unit's header and address ranges are read once, while a
//! unit itself (its abbreviations and line-program header, tens of kilobytes each: a
//! distribution's vmlinux has thousands of units) is parsed only when something in it is
//! asked for, and kept then.

use super::Reader;
use std::sync::{Arc, OnceLock};

/// One compilation unit.
struct UnitEntry {
    header: gimli::UnitHeader<Reader>,
    /// Its address ranges (empty ones left out).
    ranges: Vec<(u64, u64)>,
    has_line_program: bool,
    /// The unit, parsed when first needed (None where it does not parse).
    parsed: OnceLock<Option<gimli::Unit<Reader>>>,
}

/// The units of an image, in the order of `.debug_info`.
pub struct Units {
    dwarf: Arc<gimli::Dwarf<Reader>>,
    entries: Vec<UnitEntry>,
}

impl std::fmt::Debug for Units {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Units({})", self.entries.len())
    }
}

impl Units {
    /// Reads every unit's header and address ranges (each unit is parsed for them and
    /// dropped again).
    pub fn new(dwarf: Arc<gimli::Dwarf<Reader>>) -> Result<Units, gimli::Error> {
        let mut entries = Vec::new();
        let mut headers = dwarf.units();
        while let Some(header) = headers.next()? {
            let unit = dwarf.unit(header.clone())?;
            let ranges = super::unit_address_ranges(&dwarf, &unit)?;
            entries.push(UnitEntry {
                header,
                ranges,
                has_line_program: unit.line_program.is_some(),
                parsed: OnceLock::new(),
            });
        }
        Ok(Units { dwarf, entries })
    }

    pub fn dwarf(&self) -> &gimli::Dwarf<Reader> {
        &self.dwarf
    }

    pub fn dwarf_arc(&self) -> Arc<gimli::Dwarf<Reader>> {
        self.dwarf.clone()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Unit `i`, parsed on first use and kept.
    pub fn get(&self, i: usize) -> Option<&gimli::Unit<Reader>> {
        let e = self.entries.get(i)?;
        e.parsed
            .get_or_init(|| self.dwarf.unit(e.header.clone()).ok())
            .as_ref()
    }

    /// Runs `f` on unit `i`: the kept one where it was parsed already, else one parsed
    /// for this call alone (a scan over many units does not keep them all).
    pub fn with<T>(&self, i: usize, f: impl FnOnce(&gimli::Unit<Reader>) -> T) -> Option<T> {
        let e = self.entries.get(i)?;
        match e.parsed.get() {
            Some(parsed) => parsed.as_ref().map(f),
            None => {
                let unit = self.dwarf.unit(e.header.clone()).ok()?;
                Some(f(&unit))
            }
        }
    }

    /// Whether unit `i` has a line program.
    pub fn has_line_program(&self, i: usize) -> bool {
        self.entries.get(i).is_some_and(|e| e.has_line_program)
    }

    /// Unit `i`'s address ranges.
    pub fn ranges(&self, i: usize) -> &[(u64, u64)] {
        self.entries.get(i).map_or(&[], |e| &e.ranges)
    }

    /// Where unit `i` starts in `.debug_info` (None for a type unit).
    pub fn debug_info_offset(&self, i: usize) -> Option<gimli::DebugInfoOffset> {
        self.entries.get(i)?.header.offset().as_debug_info_offset()
    }

    /// Unit `i`'s header.
    pub fn header(&self, i: usize) -> Option<&gimli::UnitHeader<Reader>> {
        self.entries.get(i).map(|e| &e.header)
    }

    /// The first unit whose ranges contain `pc`.
    pub fn containing(&self, pc: u64) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.ranges.iter().any(|&(a, b)| a <= pc && pc < b))
    }
}
