//! Source lines as gdb sees them: the DWARF line programs read into one table per source
//! file (gdb's "subfile"), with gdb's rules for which rows it keeps, and the lookup of
//! the line at an address with the address range it covers (gdb's `find_pc_line`).
//!
//! Source-line steps stop where gdb's do only if both agree on what a line is: where it
//! starts, where it ends, and whether a row is a statement (`is_stmt`). So the rules
//! here follow gdb's reader (`lnp_state_machine::record_line`, `buildsym`) rather than a
//! plain row lookup:
//! * a row with line 0 is dropped; a row that changes file at the address of a
//!   statement row and is not a statement itself is dropped;
//! * a change of file ends the previous file's range there (an end marker, which drops
//!   that file's rows at the same address);
//! * a row repeating the previous row's line in the same file is dropped only when the
//!   line has had a non-zero discriminator; one repeating line and address merges its
//!   `is_stmt` into the previous row;
//! * the line at an address is the last row at or before it over all files of its unit
//!   (a non-statement row gives way to a statement row at the same address); its range
//!   ends at the next row, skipping non-statement rows of the same line.

use super::Reader;
use super::units::Units;
use gimli::Reader as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// One row of a file's line table. Line 0 marks the end of a range of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    addr: u64,
    line: u32,
    is_stmt: bool,
}

/// The rows of one source file within one compilation unit, sorted by address (rows at
/// the same address keep their order, end markers first).
#[derive(Debug)]
struct FileTable {
    path: Arc<Path>,
    rows: Vec<Row>,
}

/// One compilation unit's lines: its address ranges and its files' tables.
#[derive(Debug)]
struct Unit {
    ranges: Vec<(u64, u64)>,
    /// The primary source file first, then the others newest first (gdb's order); read
    /// when first needed (None where the line program does not parse).
    files: OnceLock<Option<Vec<FileTable>>>,
}

/// A source line at an address: the range of addresses it covers there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRange {
    pub file: Arc<Path>,
    pub line: u32,
    /// Where the row starts.
    pub start: u64,
    /// Where the next row starts (exclusive); `start` when unknown.
    pub end: u64,
    /// The row is a statement (a place a source-line step stops at).
    pub is_stmt: bool,
}

/// The line tables of an image. A unit's line program is read when a lookup first
/// needs it (the line at an address reads one unit's), so the first source line of a
/// large image does not wait for all of its line programs.
#[derive(Debug)]
pub struct LineTable {
    source: Arc<Units>,
    /// Per unit with a line program: its index in `source` and its lines.
    units: Vec<(usize, Unit)>,
}

impl LineTable {
    /// The line tables of `units` (only the line programs of units without address
    /// ranges are read now: their rows' extent stands for their ranges).
    pub fn new(source: Arc<Units>) -> LineTable {
        let mut units = Vec::new();
        for i in 0..source.len() {
            if !source.has_line_program(i) {
                continue;
            }
            let mut ranges = source.ranges(i).to_vec();
            let files = OnceLock::new();
            if ranges.is_empty() {
                // No unit ranges: the rows' own extent.
                let read = source
                    .with(i, |unit| read_unit(source.dwarf(), unit))
                    .flatten();
                for f in read.iter().flatten() {
                    if let (Some(a), Some(b)) = (f.rows.first(), f.rows.last()) {
                        ranges.push((a.addr, b.addr.saturating_add(1)));
                    }
                }
                let _ = files.set(read);
            }
            units.push((i, Unit { ranges, files }));
        }
        LineTable { source, units }
    }

    /// The file tables of the `k`th unit with lines, read on first use.
    fn files(&self, k: usize) -> &[FileTable] {
        let (i, unit) = &self.units[k];
        unit.files
            .get_or_init(|| {
                self.source
                    .with(*i, |u| read_unit(self.source.dwarf(), u))
                    .flatten()
            })
            .as_deref()
            .unwrap_or(&[])
    }

    /// Every unit's file tables, in unit order (reading them all).
    fn all_files(&self) -> impl Iterator<Item = &FileTable> {
        (0..self.units.len()).flat_map(|k| self.files(k))
    }

    /// The line at `pc` and the range it covers, as gdb's `find_pc_line` finds it.
    pub fn find(&self, pc: u64) -> Option<LineRange> {
        let k = self
            .units
            .iter()
            .position(|(_, u)| u.ranges.iter().any(|&(a, b)| a <= pc && pc < b))?;
        let files = self.files(k);
        // The best row: the closest at or before pc over all files.
        let mut best: Option<(usize, usize)> = None;
        let mut best_end: u64 = 0;
        let mut alt: Option<u64> = None;
        for (fi, file) in files.iter().enumerate() {
            let rows = &file.rows;
            let Some(first) = rows.first() else {
                continue;
            };
            if first.addr > pc && alt.is_none_or(|a| first.addr < a) {
                alt = Some(first.addr);
            }
            let item = rows.partition_point(|r| r.addr <= pc);
            let Some(prev) = item.checked_sub(1) else {
                continue;
            };
            // Closer rows win; at one address a line wins over an end marker.
            let key = |r: &Row| (r.addr, r.line != 0);
            let best_key = best.map(|(f, r)| key(&files[f].rows[r]));
            if best_key.is_none_or(|b| key(&rows[prev]) > b) {
                let mut chosen = prev;
                // A non-statement row gives way to a statement row at the same address.
                if !rows[chosen].is_stmt {
                    let mut t = chosen;
                    while t > 0
                        && rows[t - 1].addr == rows[t].addr
                        && rows[t - 1].line != 0
                        && !rows[t].is_stmt
                    {
                        t -= 1;
                    }
                    if rows[t].is_stmt {
                        chosen = t;
                    }
                }
                best = Some((fi, chosen));
                if best_end <= rows[chosen].addr {
                    best_end = 0;
                }
            }
            if let Some((bf, br)) = best {
                let b = files[bf].rows[br].addr;
                if item < rows.len()
                    && rows[item].addr > b
                    && (best_end == 0 || best_end > rows[item].addr)
                {
                    best_end = rows[item].addr;
                }
            }
        }
        let (bf, br) = best?;
        let file = &files[bf];
        let row = file.rows[br];
        if row.line == 0 {
            return None;
        }
        let end = if best_end != 0 && alt.is_none_or(|a| best_end < a) {
            best_end
        } else if let Some(a) = alt {
            a
        } else {
            row.addr
        };
        Some(LineRange {
            file: file.path.clone(),
            line: row.line,
            start: row.addr,
            end,
            is_stmt: row.is_stmt,
        })
    }

    /// The statement addresses of `line` in the source files whose path ends with
    /// `file` (whole path components), as gdb's linespec collects them: each file
    /// table's statement rows of that line in address order; where no file has the line,
    /// the nearest line after it that one has. Returns that line and the addresses (in
    /// table order), or None where no file matches or has a line at or after `line`.
    pub fn line_statements(&self, file: &str, line: u32) -> Option<(u32, Vec<u64>)> {
        let tables: Vec<&FileTable> = self
            .all_files()
            .filter(|f| f.path.ends_with(file))
            .collect();
        let statements = |l: u32| -> Vec<u64> {
            tables
                .iter()
                .flat_map(|t| t.rows.iter().filter(move |r| r.is_stmt && r.line == l))
                .map(|r| r.addr)
                .collect()
        };
        let exact = statements(line);
        if !exact.is_empty() {
            return Some((line, exact));
        }
        let best = tables
            .iter()
            .flat_map(|t| &t.rows)
            .filter(|r| r.is_stmt && r.line > line)
            .map(|r| r.line)
            .min()?;
        Some((best, statements(best)))
    }

    /// The statement rows: every address where a line starts, with its line.
    pub fn statements(&self) -> Vec<(u64, Arc<Path>, u32)> {
        let mut out = Vec::new();
        for f in self.all_files() {
            for r in &f.rows {
                if r.is_stmt && r.line != 0 {
                    out.push((r.addr, f.path.clone(), r.line));
                }
            }
        }
        out.sort_by_key(|s| s.0);
        out
    }
}

/// A unit's file tables (None where its line program does not parse).
fn read_unit(dwarf: &gimli::Dwarf<Reader>, unit: &gimli::Unit<Reader>) -> Option<Vec<FileTable>> {
    let program = unit.line_program.clone()?;
    read_program(dwarf, unit, program).ok()
}

/// gdb's line-program reader for one unit: rows per file, with its filtering.
fn read_program(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    program: gimli::IncompleteLineProgram<Reader>,
) -> Result<Vec<FileTable>, gimli::Error> {
    let mut files: Vec<FileTable> = Vec::new();
    // The file tables in order of creation; the primary (the unit's name) goes first.
    let primary = unit
        .name
        .as_ref()
        .and_then(|n| n.to_string_lossy().ok().map(|s| s.into_owned()));
    let comp_dir = unit.comp_dir.as_ref().and_then(|d| {
        d.to_string_lossy()
            .ok()
            .map(|s| PathBuf::from(s.into_owned()))
    });
    let index_of = |path: PathBuf, files: &mut Vec<FileTable>| -> usize {
        if let Some(i) = files.iter().position(|f| *f.path == *path) {
            return i;
        }
        files.push(FileTable {
            path: Arc::from(path.as_path()),
            rows: Vec::new(),
        });
        files.len() - 1
    };
    let mut rows = program.rows();
    // The state of the previous recorded row (gdb's m_last_*).
    let mut last_file: Option<usize> = None;
    let mut last_line: u32 = 0;
    let mut last_address: Option<u64> = None;
    // Whether a statement row was seen at `last_address`.
    let mut stmt_at_address = false;
    let mut prev_row_line: Option<u64> = None;
    let mut line_has_non_zero_discriminator = false;
    while let Some((header, row)) = rows.next_row()? {
        let line = row.line().map_or(0, |l| l.get());
        // Tracks whether the current line has had a non-zero discriminator (reset when
        // the line changes).
        if prev_row_line != Some(line) {
            line_has_non_zero_discriminator = row.discriminator() != 0;
        } else {
            line_has_non_zero_discriminator |= row.discriminator() != 0;
        }
        prev_row_line = Some(line);
        let address = row.address();
        let end_sequence = row.end_sequence();
        let path = file_path(dwarf, unit, header, row.file_index(), comp_dir.as_deref());
        let file = index_of(path, &mut files);
        let line = u32::try_from(line).unwrap_or(u32::MAX);
        let file_changed = last_file != Some(file);
        let ignore = (file_changed
            && !end_sequence
            && last_address == Some(address)
            && !row.is_stmt()
            && stmt_at_address)
            || (!end_sequence && line == 0);
        if ((file_changed && !ignore) || end_sequence)
            && let Some(lf) = last_file
        {
            finish_range(&mut files[lf].rows, address);
        }
        if !end_sequence && !ignore {
            let record = file_changed || line != last_line || !line_has_non_zero_discriminator;
            if record {
                record_line(
                    &mut files[file].rows,
                    Row {
                        addr: address,
                        line,
                        is_stmt: row.is_stmt(),
                    },
                );
            }
            last_file = Some(file);
            last_line = line;
        }
        if last_address != Some(address) {
            stmt_at_address = false;
            last_address = Some(address);
        }
        stmt_at_address |= row.is_stmt();
        if end_sequence {
            last_file = None;
            last_line = 0;
            last_address = None;
            prev_row_line = None;
        }
    }
    for f in &mut files {
        // Stable: rows at one address keep their order, end markers first.
        f.rows
            .sort_by(|a, b| a.addr.cmp(&b.addr).then((b.line == 0).cmp(&(a.line == 0))));
    }
    if let Some(p) = primary {
        let p = match &comp_dir {
            Some(d) => d.join(&p),
            None => PathBuf::from(&p),
        };
        if let Some(i) = files.iter().position(|f| *f.path == *p) {
            let primary = files.remove(i);
            files.reverse();
            files.insert(0, primary);
            return Ok(files);
        }
    }
    files.reverse();
    Ok(files)
}

/// gdb's `record_line`: a row repeating the last one's line and address only merges its
/// `is_stmt`.
fn record_line(rows: &mut Vec<Row>, row: Row) {
    if let Some(last) = rows.last_mut()
        && last.line == row.line
        && last.addr == row.addr
    {
        last.is_stmt |= row.is_stmt;
        return;
    }
    rows.push(row);
}

/// An end marker at `addr`: the file's rows at that address are dropped (the range they
/// began is empty), and a line-0 row ends the previous one.
fn finish_range(rows: &mut Vec<Row>, addr: u64) {
    let mut last_line = None;
    while let Some(last) = rows.last() {
        last_line = Some(last.line);
        if last.addr != addr {
            break;
        }
        rows.pop();
    }
    // An end marker that ends nothing is not kept.
    if last_line.is_none_or(|l| l == 0) {
        return;
    }
    rows.push(Row {
        addr,
        line: 0,
        is_stmt: true,
    });
}

fn file_path(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    header: &gimli::LineProgramHeader<Reader>,
    index: u64,
    comp_dir: Option<&Path>,
) -> PathBuf {
    let Some(file) = header.file(index) else {
        return PathBuf::from("??");
    };
    let text = |v: gimli::AttributeValue<Reader>| -> Option<String> {
        let r = dwarf.attr_string(unit, v).ok()?;
        r.to_string_lossy().ok().map(|s| s.into_owned())
    };
    let mut path = comp_dir.map(Path::to_path_buf).unwrap_or_default();
    if let Some(dir) = file.directory(header).and_then(text) {
        path.push(dir);
    }
    if let Some(name) = text(file.path_name()) {
        path.push(name);
    }
    path
}
