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
    /// Every unit's address ranges `(start, end, unit)`, sorted by start, with the
    /// largest end up to each: the units at an address by a binary search.
    by_address: Vec<(u64, u64, usize)>,
    max_end: Vec<u64>,
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
        let mut by_address: Vec<(u64, u64, usize)> = entries
            .iter()
            .enumerate()
            .flat_map(|(u, e)| e.ranges.iter().map(move |&(a, b)| (a, b, u)))
            .collect();
        by_address.sort_unstable();
        let max_end = by_address
            .iter()
            .scan(0, |m, &(_, e, _)| {
                *m = e.max(*m);
                Some(*m)
            })
            .collect();
        Ok(Units {
            dwarf,
            entries,
            by_address,
            max_end,
        })
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
        self.all_containing(pc).first().copied()
    }

    /// The units whose ranges contain `pc`, in the order of `.debug_info`.
    pub fn all_containing(&self, pc: u64) -> Vec<usize> {
        let mut found = Vec::new();
        let mut i = self.by_address.partition_point(|r| r.0 <= pc);
        // Back from the last range starting at or before `pc`, while any range before
        // may still reach past it.
        while i > 0 && self.max_end[i - 1] > pc {
            i -= 1;
            let (a, e, u) = self.by_address[i];
            if a <= pc && pc < e {
                found.push(u);
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }
}
