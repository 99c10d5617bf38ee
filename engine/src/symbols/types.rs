//! The guest's data types from its DWARF information, as far as the debugger reads
//! structures: a structure's member by name, with its offset and size.

use super::Reader;
use gimli::Reader as _;

/// A member of a structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Bytes from the start of the structure.
    pub offset: u64,
    /// Bytes of its type (0 where the DWARF does not say).
    pub size: u64,
}

/// Most type links followed to a size (typedef, const, volatile ...).
const MAX_TYPE_LINKS: usize = 16;

/// The member `member` of the structure `structure` (the first defined one of that
/// name).
pub(super) fn member(
    dwarf: &gimli::Dwarf<Reader>,
    structure: &str,
    member: &str,
) -> Result<Option<Member>, gimli::Error> {
    let mut headers = dwarf.units();
    while let Some(header) = headers.next()? {
        let unit = dwarf.unit(header)?;
        let mut tree = unit.entries_tree(None)?;
        if let Some(m) = find_in(dwarf, &unit, tree.root()?, structure, member)? {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

fn name_of(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    entry: &gimli::DebuggingInformationEntry<'_, '_, Reader>,
) -> Option<String> {
    let v = entry.attr_value(gimli::DW_AT_name).ok()??;
    let s = dwarf.attr_string(unit, v).ok()?;
    s.to_string_lossy().ok().map(|s| s.into_owned())
}

fn find_in(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    node: gimli::EntriesTreeNode<'_, '_, '_, Reader>,
    structure: &str,
    member: &str,
) -> Result<Option<Member>, gimli::Error> {
    let mut children = node.children();
    while let Some(child) = children.next()? {
        let entry = child.entry();
        if entry.tag() == gimli::DW_TAG_structure_type
            && name_of(dwarf, unit, entry).as_deref() == Some(structure)
        {
            let mut members = child.children();
            while let Some(m) = members.next()? {
                let e = m.entry();
                if e.tag() != gimli::DW_TAG_member
                    || name_of(dwarf, unit, e).as_deref() != Some(member)
                {
                    continue;
                }
                let Some(offset) = e
                    .attr_value(gimli::DW_AT_data_member_location)?
                    .and_then(|v| v.udata_value())
                else {
                    continue;
                };
                let size = match e.attr_value(gimli::DW_AT_type)? {
                    Some(gimli::AttributeValue::UnitRef(t)) => type_size(unit, t)?,
                    _ => 0,
                };
                return Ok(Some(Member { offset, size }));
            }
            continue;
        }
        if let Some(m) = find_in(dwarf, unit, child, structure, member)? {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// The byte size of the type at `offset`, through typedefs and qualifiers (pointers are
/// 8 bytes).
fn type_size(
    unit: &gimli::Unit<Reader>,
    mut offset: gimli::UnitOffset,
) -> Result<u64, gimli::Error> {
    for _ in 0..MAX_TYPE_LINKS {
        let e = unit.entry(offset)?;
        if let Some(size) = e
            .attr_value(gimli::DW_AT_byte_size)?
            .and_then(|v| v.udata_value())
        {
            return Ok(size);
        }
        if e.tag() == gimli::DW_TAG_pointer_type {
            return Ok(8);
        }
        match e.attr_value(gimli::DW_AT_type)? {
            Some(gimli::AttributeValue::UnitRef(t)) => offset = t,
            _ => return Ok(0),
        }
    }
    Ok(0)
}
