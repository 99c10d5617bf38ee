//! The DWARF blocks of the guest's code as gdb forms them: functions (with the parts a
//! compiler split off, such as `.cold` sections) and the inlined calls within them.
//!
//! Source-line steps need both: a frame is named by its function's entry, and gdb
//! treats an inlined call as a frame of its own, entered where its block starts.

use super::Reader;
use super::units::Units;
use gimli::Reader as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// What a block is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockKind {
    /// A function compiled out of line.
    Function,
    /// A call inlined here: the file and line of the call.
    Inlined {
        call_file: Option<Arc<Path>>,
        call_line: u32,
    },
}

/// A function or an inlined call.
#[derive(Debug, Clone)]
pub struct Block {
    pub kind: BlockKind,
    pub name: Option<String>,
    /// Address ranges, in the order the DWARF information lists them.
    pub ranges: Vec<(u64, u64)>,
    /// The enclosing block (None for a function).
    pub parent: Option<usize>,
    /// Inlined calls between this block and its function (0 for a function).
    pub depth: u32,
    /// Scopes (functions, inlined calls, lexical blocks) around this block.
    pub nesting: u32,
}

/// A lexical block (`{ ... }` with its own variables): only its extent, which decides
/// whether two addresses are in one scope.
#[derive(Debug, Clone)]
struct LexicalBlock {
    ranges: Vec<(u64, u64)>,
    /// Scopes around it, counted as [`Block::nesting`].
    nesting: u32,
}

impl Block {
    /// Where gdb takes the block to begin: its start, or for a block in several
    /// pieces the first piece's.
    pub fn entry(&self) -> u64 {
        if self.ranges.len() > 1 {
            self.ranges[0].0
        } else {
            self.start()
        }
    }

    /// The lowest address of the block.
    pub fn start(&self) -> u64 {
        self.ranges.iter().map(|r| r.0).min().unwrap_or(0)
    }

    /// The end of the block's highest range.
    pub fn end(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).max().unwrap_or(0)
    }

    pub fn contains(&self, pc: u64) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= pc && pc < b)
    }

    pub fn is_inlined(&self) -> bool {
        matches!(self.kind, BlockKind::Inlined { .. })
    }
}

/// All functions and inlined calls of an image, with a map from address to the
/// innermost block there, read unit by unit as addresses in a unit are asked about (a
/// distribution's vmlinux has thousands of units: the first screen reads one).
///
/// A block is named by an index that holds its unit (bits 32 and up) and its place in
/// the unit's blocks.
pub struct Blocks {
    units: Arc<Units>,
    per_unit: Vec<OnceLock<UnitBlocks>>,
}

/// One unit's blocks.
#[derive(Debug, Default)]
struct UnitBlocks {
    blocks: Vec<Block>,
    /// Sorted, non-overlapping: from each start address, the innermost block (None:
    /// none).
    map: Vec<(u64, Option<usize>)>,
    /// Whether any of its blocks is in several pieces (gdb keeps an exact address map
    /// only for such units).
    pieces: bool,
    lexical: Vec<LexicalBlock>,
}

impl std::fmt::Debug for Blocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let read = self.per_unit.iter().filter(|u| u.get().is_some()).count();
        write!(f, "Blocks({read} of {} units read)", self.per_unit.len())
    }
}

/// The innermost scope at an address: a function, an inlined call or a lexical block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Block(usize),
    Lexical(usize),
}

const UNIT_SHIFT: u32 = 32;

fn block_id(unit: usize, local: usize) -> usize {
    unit << UNIT_SHIFT | local
}

fn split_id(id: usize) -> (usize, usize) {
    (id >> UNIT_SHIFT, id & ((1 << UNIT_SHIFT) - 1))
}

impl Blocks {
    /// Blocks over `units`, none read yet.
    pub fn new(units: Arc<Units>) -> Blocks {
        let per_unit = (0..units.len()).map(|_| OnceLock::new()).collect();
        Blocks { units, per_unit }
    }

    /// Unit `u`'s blocks, read on first use (none where the unit does not parse).
    fn unit(&self, u: usize) -> &UnitBlocks {
        static NONE: UnitBlocks = UnitBlocks {
            blocks: Vec::new(),
            map: Vec::new(),
            pieces: false,
            lexical: Vec::new(),
        };
        let Some(cell) = self.per_unit.get(u) else {
            return &NONE;
        };
        cell.get_or_init(|| {
            self.units
                .with(u, |unit| {
                    let mut out = UnitBlocks::default();
                    let read = read_unit(
                        self.units.dwarf(),
                        unit,
                        block_id(u, 0),
                        &mut out.blocks,
                        &mut out.lexical,
                    );
                    if read.is_err() {
                        return UnitBlocks::default();
                    }
                    out.pieces = out.blocks.iter().any(|b| b.ranges.len() > 1);
                    out.map = innermost_map(&out.blocks);
                    out
                })
                .unwrap_or_default()
        })
    }

    /// The units whose address ranges hold `pc`, in the order of `.debug_info`.
    fn units_at(&self, pc: u64) -> impl Iterator<Item = usize> + use<> {
        self.units.all_containing(pc).into_iter()
    }

    /// Every block, functions and inlined calls (reads every unit).
    pub fn iter(&self) -> impl Iterator<Item = &Block> {
        (0..self.per_unit.len()).flat_map(|u| self.unit(u).blocks.iter())
    }

    /// The innermost scope containing `pc`, lexical blocks included (gdb's
    /// `block_for_pc`). Lexical blocks are numbered as blocks are.
    pub fn scope(&self, pc: u64) -> Option<Scope> {
        let block = self.innermost(pc);
        let deepest_lexical = self
            .units_at(pc)
            .flat_map(|u| {
                self.unit(u)
                    .lexical
                    .iter()
                    .enumerate()
                    .map(move |(i, l)| (block_id(u, i), l))
            })
            .filter(|(_, l)| l.ranges.iter().any(|&(a, e)| a <= pc && pc < e))
            .max_by_key(|(_, l)| l.nesting);
        match (block, deepest_lexical) {
            (Some(b), Some((i, l))) if l.nesting > self.get(b).nesting => Some(Scope::Lexical(i)),
            (Some(b), _) => Some(Scope::Block(b)),
            (None, Some((i, _))) => Some(Scope::Lexical(i)),
            (None, None) => None,
        }
    }

    pub fn get(&self, i: usize) -> &Block {
        let (u, local) = split_id(i);
        &self.unit(u).blocks[local]
    }

    /// The innermost function or inlined call containing `pc`: in the first unit whose
    /// ranges hold `pc` and that has a block there.
    pub fn innermost(&self, pc: u64) -> Option<usize> {
        self.units_at(pc).find_map(|u| {
            let map = &self.unit(u).map;
            let i = map.partition_point(|&(a, _)| a <= pc).checked_sub(1)?;
            map[i].1.map(|local| block_id(u, local))
        })
    }

    /// The function (not inlined) containing `pc`.
    pub fn function(&self, pc: u64) -> Option<usize> {
        let mut b = self.innermost(pc)?;
        while self.get(b).is_inlined() {
            b = self.get(b).parent?;
        }
        Some(b)
    }

    /// The inlined calls containing `pc`, innermost first.
    pub fn inlined_at(&self, pc: u64) -> Vec<usize> {
        let mut out = Vec::new();
        let mut b = self.innermost(pc);
        while let Some(i) = b {
            if !self.get(i).is_inlined() {
                break;
            }
            out.push(i);
            b = self.get(i).parent;
        }
        out
    }

    /// Whether execution at `pc` enters inlined block `b` there (gdb's test for an
    /// inlined call it "skips" at a stop, so that the stop shows the call site): `pc` is
    /// the block's entry, or, where gdb keeps an exact address map, the address before
    /// `pc` is outside the block.
    pub fn enters(&self, b: usize, pc: u64) -> bool {
        let block = self.get(b);
        if block.entry() == pc {
            return true;
        }
        let exact = self
            .units_at(pc)
            .next()
            .is_some_and(|u| self.unit(u).pieces);
        if !exact {
            return false;
        }
        let Some(before) = pc.checked_sub(1).and_then(|p| self.innermost(p)) else {
            return true;
        };
        !self.contained_in(before, b)
    }

    /// Whether block `a` is `b` or nested in it without crossing a function compiled out
    /// of line.
    fn contained_in(&self, mut a: usize, b: usize) -> bool {
        loop {
            if a == b {
                return true;
            }
            if !self.get(a).is_inlined() {
                return false;
            }
            match self.get(a).parent {
                Some(p) => a = p,
                None => return false,
            }
        }
    }
}

/// For every stretch of addresses, the deepest block that contains it.
fn innermost_map(blocks: &[Block]) -> Vec<(u64, Option<usize>)> {
    let mut points: Vec<u64> = blocks
        .iter()
        .flat_map(|b| b.ranges.iter().flat_map(|&(a, e)| [a, e]))
        .collect();
    points.sort_unstable();
    points.dedup();
    // Each range, deepest last, painted over the points it covers.
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by_key(|&i| blocks[i].depth);
    let mut owner: Vec<Option<usize>> = vec![None; points.len()];
    for &i in &order {
        for &(a, e) in &blocks[i].ranges {
            let from = points.partition_point(|&p| p < a);
            let to = points.partition_point(|&p| p < e);
            for o in &mut owner[from..to] {
                *o = Some(i);
            }
        }
    }
    let mut map: Vec<(u64, Option<usize>)> = Vec::new();
    for (p, o) in points.into_iter().zip(owner) {
        if map.last().is_none_or(|l| l.1 != o) {
            map.push((p, o));
        }
    }
    map
}

/// Reads a unit's blocks; their parents are named as [`Blocks`] names blocks, the unit's
/// first block being `first_id`.
fn read_unit(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    first_id: usize,
    blocks: &mut Vec<Block>,
    lexical: &mut Vec<LexicalBlock>,
) -> Result<(), gimli::Error> {
    let files = call_files(dwarf, unit);
    let mut tree = unit.entries_tree(None)?;
    let root = tree.root()?;
    let mut out = Found {
        first_id,
        blocks,
        lexical,
    };
    walk(dwarf, unit, &files, root, None, (0, 0), &mut out)
}

/// What the walk over a unit's DIEs collects.
struct Found<'a> {
    first_id: usize,
    blocks: &'a mut Vec<Block>,
    lexical: &'a mut Vec<LexicalBlock>,
}

fn die_ranges(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    entry: &gimli::DebuggingInformationEntry<'_, '_, Reader>,
) -> Result<Vec<(u64, u64)>, gimli::Error> {
    let mut ranges = Vec::new();
    let mut iter = dwarf.die_ranges(unit, entry)?;
    while let Some(r) = iter.next()? {
        if r.begin < r.end {
            ranges.push((r.begin, r.end));
        }
    }
    Ok(ranges)
}

/// Visits a DIE's children: functions and inlined calls become blocks, lexical blocks
/// are noted; all are looked into. `(depth, nesting)` as [`Block`] counts them.
fn walk(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    files: &[Option<Arc<Path>>],
    node: gimli::EntriesTreeNode<'_, '_, '_, Reader>,
    parent: Option<usize>,
    (depth, nesting): (u32, u32),
    out: &mut Found<'_>,
) -> Result<(), gimli::Error> {
    let mut children = node.children();
    while let Some(child) = children.next()? {
        let entry = child.entry();
        let tag = entry.tag();
        let kind = match tag {
            gimli::DW_TAG_subprogram => Some(BlockKind::Function),
            gimli::DW_TAG_inlined_subroutine => {
                let call_file = match entry.attr_value(gimli::DW_AT_call_file)? {
                    Some(gimli::AttributeValue::FileIndex(i)) => {
                        files.get(i as usize).cloned().flatten()
                    }
                    Some(v) => v
                        .udata_value()
                        .and_then(|i| files.get(i as usize).cloned().flatten()),
                    None => None,
                };
                let call_line = entry
                    .attr_value(gimli::DW_AT_call_line)?
                    .and_then(|v| v.udata_value())
                    .map_or(0, |l| u32::try_from(l).unwrap_or(0));
                Some(BlockKind::Inlined {
                    call_file,
                    call_line,
                })
            }
            _ => None,
        };
        let mut next_parent = parent;
        let mut next_depth = depth;
        let mut next_nesting = nesting;
        if let Some(kind) = kind {
            let ranges = die_ranges(dwarf, unit, entry)?;
            if !ranges.is_empty() {
                let inlined = matches!(kind, BlockKind::Inlined { .. });
                let block_depth = if inlined { depth + 1 } else { 0 };
                let block_nesting = if inlined { nesting + 1 } else { 0 };
                out.blocks.push(Block {
                    kind,
                    name: die_name(dwarf, unit, entry),
                    ranges,
                    parent: if inlined { parent } else { None },
                    depth: block_depth,
                    nesting: block_nesting,
                });
                next_parent = Some(out.first_id + out.blocks.len() - 1);
                next_depth = block_depth;
                next_nesting = block_nesting;
            }
        } else if tag == gimli::DW_TAG_lexical_block {
            let ranges = die_ranges(dwarf, unit, entry)?;
            if !ranges.is_empty() {
                next_nesting = nesting + 1;
                out.lexical.push(LexicalBlock {
                    ranges,
                    nesting: next_nesting,
                });
            }
        }
        // What cannot hold code is not looked into: gimli then skips the subtree by its
        // DW_AT_sibling, where the compiler gave one (structure types are most of a
        // kernel's DWARF, repeated in every unit that includes their header).
        if holds_code(tag) {
            walk(
                dwarf,
                unit,
                files,
                child,
                next_parent,
                (next_depth, next_nesting),
                out,
            )?;
        }
    }
    Ok(())
}

/// Whether a DIE with this tag can have functions, inlined calls or lexical blocks
/// among its descendants: not data types (C's structures, unions, enumerations, arrays,
/// function types), variables, parameters, members, call sites.
fn holds_code(tag: gimli::DwTag) -> bool {
    !matches!(
        tag,
        gimli::DW_TAG_structure_type
            | gimli::DW_TAG_union_type
            | gimli::DW_TAG_enumeration_type
            | gimli::DW_TAG_array_type
            | gimli::DW_TAG_subroutine_type
            | gimli::DW_TAG_member
            | gimli::DW_TAG_variable
            | gimli::DW_TAG_formal_parameter
            | gimli::DW_TAG_call_site
            | gimli::DW_TAG_GNU_call_site
    )
}

/// The name of a DIE, following `DW_AT_abstract_origin` and `DW_AT_specification`.
fn die_name(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    entry: &gimli::DebuggingInformationEntry<'_, '_, Reader>,
) -> Option<String> {
    if let Some(v) = entry.attr_value(gimli::DW_AT_name).ok()? {
        let s = dwarf.attr_string(unit, v).ok()?;
        return s.to_string_lossy().ok().map(|s| s.into_owned());
    }
    for attr in [gimli::DW_AT_abstract_origin, gimli::DW_AT_specification] {
        if let Some(gimli::AttributeValue::UnitRef(offset)) = entry.attr_value(attr).ok()? {
            let origin = unit.entry(offset).ok()?;
            return die_name(dwarf, unit, &origin);
        }
    }
    None
}

/// The unit's file table as paths (indexed as `DW_AT_call_file` counts).
fn call_files(dwarf: &gimli::Dwarf<Reader>, unit: &gimli::Unit<Reader>) -> Vec<Option<Arc<Path>>> {
    let Some(program) = &unit.line_program else {
        return Vec::new();
    };
    let header = program.header();
    let comp_dir = unit.comp_dir.as_ref().and_then(|d| {
        d.to_string_lossy()
            .ok()
            .map(|s| PathBuf::from(s.into_owned()))
    });
    let text = |v: gimli::AttributeValue<Reader>| -> Option<String> {
        let r = dwarf.attr_string(unit, v).ok()?;
        r.to_string_lossy().ok().map(|s| s.into_owned())
    };
    // DWARF 5 counts files from 0; earlier versions from 1 (index 0 unused).
    let base = if header.version() >= 5 { 0 } else { 1 };
    let mut out = vec![None; base];
    for file in header.file_names() {
        let mut path = comp_dir.clone().unwrap_or_default();
        if let Some(dir) = file.directory(header).and_then(text) {
            path.push(dir);
        }
        out.push(text(file.path_name()).map(|n| {
            path.push(n);
            Arc::from(path.as_path())
        }));
    }
    out
}
