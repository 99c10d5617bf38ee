//! The guest's variables from its DWARF information, as gdb reads them: the scopes at
//! an address (the function, its inlined calls and lexical blocks, each inlined call a
//! frame of its own), their parameters and locals, the global variables, the types, and
//! where a variable lives at an instruction (DWARF location expressions and lists,
//! evaluated against one frame's registers and the guest's memory, with
//! `DW_OP_entry_value` taken from the caller's call site as gdb does).

use super::Reader;
use super::units::Units;
use super::unwind::{DWARF_PC, DwarfRegisters, Unwinder};
use gimli::Reader as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A debugging information entry: its unit (index into [`DebugInfo`]'s units) and its
/// offset there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DieRef {
    unit: usize,
    offset: gimli::UnitOffset,
}

/// What a base type's bytes mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseEncoding {
    Signed,
    Unsigned,
    SignedChar,
    UnsignedChar,
    Bool,
    Float,
}

/// `struct`, `union` or `class`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateKind {
    Struct,
    Union,
    Class,
}

impl AggregateKind {
    fn keyword(self) -> &'static str {
        match self {
            AggregateKind::Struct => "struct",
            AggregateKind::Union => "union",
            AggregateKind::Class => "class",
        }
    }
}

/// A member of a structure or union.
#[derive(Debug, Clone)]
pub struct Field {
    /// None for an anonymous structure or union inside another.
    pub name: Option<String>,
    pub offset: u64,
    /// For a bit field: its first bit (from the least significant bit of the byte at
    /// `offset`) and its width.
    pub bits: Option<(u64, u64)>,
    pub ty: Arc<Type>,
}

/// What a pointer points to.
#[derive(Debug, Clone)]
pub enum Pointee {
    /// A type of the DWARF information, read when first followed (types point to
    /// themselves through pointers); None for `void`.
    Die(Option<DieRef>),
    /// A type an expression made (`&x`).
    Type(Arc<Type>),
}

/// A type of the guest's program.
#[derive(Debug, Clone)]
pub enum Type {
    Void,
    Base {
        name: String,
        size: u64,
        encoding: BaseEncoding,
    },
    Pointer(Pointee),
    Aggregate {
        kind: AggregateKind,
        name: Option<String>,
        size: u64,
        fields: Vec<Field>,
    },
    Array {
        element: Arc<Type>,
        /// None where the DWARF gives no bound (`extern char x[]`).
        count: Option<u64>,
    },
    Enum {
        name: Option<String>,
        size: u64,
        signed: bool,
        values: Vec<(String, i64)>,
    },
    Typedef {
        name: String,
        target: Arc<Type>,
    },
    Qualified {
        qualifier: &'static str,
        target: Arc<Type>,
    },
    Function {
        ret: Arc<Type>,
        params: Vec<Arc<Type>>,
        prototyped: bool,
        varargs: bool,
    },
}

impl Type {
    /// The type with typedefs and qualifiers removed.
    pub fn strip(&self) -> &Type {
        let mut t = self;
        for _ in 0..MAX_TYPE_DEPTH {
            match t {
                Type::Typedef { target, .. } | Type::Qualified { target, .. } => t = target,
                _ => return t,
            }
        }
        t
    }

    /// Bytes of a value of this type (0 for void and functions).
    pub fn size(&self) -> u64 {
        match self.strip() {
            Type::Void | Type::Function { .. } => 0,
            Type::Base { size, .. } | Type::Aggregate { size, .. } | Type::Enum { size, .. } => {
                *size
            }
            Type::Pointer(_) => 8,
            Type::Array { element, count } => element.size().saturating_mul(count.unwrap_or(0)),
            Type::Typedef { .. } | Type::Qualified { .. } => 0,
        }
    }

    /// Whether gdb prints it in a backtrace's argument list (`print frame-arguments
    /// scalars`): not a structure, union or array.
    pub fn is_scalar(&self) -> bool {
        !matches!(self.strip(), Type::Aggregate { .. } | Type::Array { .. })
    }

    /// The name of a type that is a name (base types, typedefs, structures, unions,
    /// enums, void); None for those C spells around a declarator (pointers, arrays,
    /// functions, qualifiers: see [`DebugInfo::type_name`]).
    fn leaf_name(&self) -> Option<String> {
        Some(match self {
            Type::Void => "void".into(),
            Type::Base { name, .. } | Type::Typedef { name, .. } => name.clone(),
            Type::Aggregate { kind, name, .. } => {
                format!("{} {}", kind.keyword(), name.as_deref().unwrap_or("{...}"))
            }
            Type::Enum { name, .. } => format!("enum {}", name.as_deref().unwrap_or("{...}")),
            _ => return None,
        })
    }
}

/// A member of a structure, where it is and how big (see [`DebugInfo::member`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Bytes from the start of the structure.
    pub offset: u64,
    /// Bytes of its type.
    pub size: u64,
}

/// A variable or parameter of a scope.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub die: DieRef,
    pub is_parameter: bool,
}

/// A frame as gdb counts them: a function's activation, or a call inlined into it
/// (which shares the registers of the function's frame).
#[derive(Debug, Clone)]
pub struct ScopeFrame {
    /// The function's or inlined call's name.
    pub name: Option<String>,
    /// The subprogram or inlined-subroutine entry.
    pub die: DieRef,
    pub inlined: bool,
    /// For an inlined call: where it was called from (the unit's file index and line).
    pub call_site: Option<(Option<std::path::PathBuf>, u32)>,
    /// The lexical blocks inside it that contain the address, innermost first.
    pub blocks: Vec<DieRef>,
}

/// Where a value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// In guest memory at this virtual address.
    Memory(u64),
    /// Its bytes, known (a register, a computed value, a constant).
    Bytes(Vec<u8>),
    /// The compiler left no way to find it here.
    OptimizedOut,
}

/// The registers and memory of one frame, as a location expression sees them.
pub struct FrameContext<'a> {
    /// This frame's registers (DWARF numbering).
    pub regs: DwarfRegisters,
    /// The innermost frame (its pc is the current instruction, not a return address).
    pub first: bool,
    /// The caller's registers, where unwinding found them (for `DW_OP_entry_value`).
    pub caller: Option<DwarfRegisters>,
    pub unwinder: Option<&'a Unwinder>,
    pub read_memory: &'a dyn Fn(u64, &mut [u8]) -> bool,
}

impl FrameContext<'_> {
    /// The address gdb looks things up at: the pc, or for an outer frame the call
    /// instruction before its return address.
    pub fn lookup_pc(&self) -> Option<u64> {
        let pc = self.regs[DWARF_PC]?;
        Some(if self.first { pc } else { pc.wrapping_sub(1) })
    }
}

/// Most type links followed (typedef chains, nested members) before giving up: a
/// corrupt image cannot loop the reader.
const MAX_TYPE_DEPTH: usize = 64;
/// Largest piece of a value assembled from pieces (a piece's size is the DWARF's say).
const MAX_PIECE_BYTES: usize = 1 << 16;
/// Most steps of one location expression (each memory or register request counts).
const MAX_EVAL_STEPS: usize = 10_000;

/// Named types found so far: by name (`struct proc`), the first definition, else the
/// first declaration (with whether the entry has `DW_AT_declaration`: one that has not
/// is a definition no later unit replaces), and how many units were read for them.
#[derive(Default)]
struct TypeIndex {
    scanned: usize,
    by_name: HashMap<String, (DieRef, bool)>,
}

/// Global variables and functions found so far: by name, the definitions in unit order
/// and then the declarations (with how many definitions lead the list), and how many
/// units were read for them.
#[derive(Default)]
struct GlobalIndex {
    scanned: usize,
    by_name: HashMap<String, (Vec<DieRef>, usize)>,
}

/// The units of an image's DWARF information and what the variable reader caches.
pub struct DebugInfo {
    dwarf: Arc<gimli::Dwarf<Reader>>,
    units: Arc<Units>,
    types: Mutex<HashMap<DieRef, Arc<Type>>>,
    /// Global variables and functions, indexed unit by unit as far as a lookup needs
    /// (a distribution's vmlinux has hundreds of megabytes of entries).
    globals: Mutex<GlobalIndex>,
    /// Named types (`struct proc`, `u64`, `long unsigned int`), indexed as far as a
    /// lookup needs: `struct task_struct` is defined in one of the first units.
    named_types: Mutex<TypeIndex>,
}

impl std::fmt::Debug for DebugInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DebugInfo({} units)", self.units.len())
    }
}

impl DebugInfo {
    pub fn new(units: Arc<Units>) -> DebugInfo {
        DebugInfo {
            dwarf: units.dwarf_arc(),
            units,
            types: Mutex::new(HashMap::new()),
            globals: Mutex::new(GlobalIndex::default()),
            named_types: Mutex::new(TypeIndex::default()),
        }
    }

    fn entry(
        &self,
        die: DieRef,
    ) -> Result<gimli::DebuggingInformationEntry<'_, '_, Reader>, gimli::Error> {
        self.unit(die.unit)
            .ok_or(gimli::Error::MissingUnitDie)?
            .entry(die.offset)
    }

    /// Unit `i` (parsed when first asked for).
    fn unit(&self, i: usize) -> Option<&gimli::Unit<Reader>> {
        self.units.get(i)
    }

    /// The entry an attribute refers to (within its unit or across units).
    fn reference(&self, unit: usize, value: gimli::AttributeValue<Reader>) -> Option<DieRef> {
        match value {
            gimli::AttributeValue::UnitRef(offset) => Some(DieRef { unit, offset }),
            gimli::AttributeValue::DebugInfoRef(o) => {
                let i = (0..self.units.len()).rev().find(|&i| {
                    self.units
                        .debug_info_offset(i)
                        .is_some_and(|start| start.0 <= o.0)
                })?;
                let offset = gimli::DebugInfoOffset(o.0).to_unit_offset(self.units.header(i)?)?;
                Some(DieRef { unit: i, offset })
            }
            _ => None,
        }
    }

    fn attr(&self, die: DieRef, name: gimli::DwAt) -> Option<gimli::AttributeValue<Reader>> {
        self.entry(die).ok()?.attr_value(name).ok()?
    }

    /// An attribute of the entry or of the one it is an instance or completion of
    /// (`DW_AT_abstract_origin`, `DW_AT_specification`).
    fn attr_inherited(
        &self,
        mut die: DieRef,
        name: gimli::DwAt,
    ) -> Option<(DieRef, gimli::AttributeValue<Reader>)> {
        for _ in 0..8 {
            let e = self.entry(die).ok()?;
            if let Some(v) = e.attr_value(name).ok()? {
                return Some((die, v));
            }
            let origin = [gimli::DW_AT_abstract_origin, gimli::DW_AT_specification]
                .iter()
                .find_map(|a| e.attr_value(*a).ok().flatten())?;
            die = self.reference(die.unit, origin)?;
        }
        None
    }

    fn string(&self, unit: usize, v: gimli::AttributeValue<Reader>) -> Option<String> {
        string_of(&self.dwarf, self.unit(unit)?, v)
    }

    /// An entry's name (inherited from its abstract origin).
    pub fn name(&self, die: DieRef) -> Option<String> {
        let (at, v) = self.attr_inherited(die, gimli::DW_AT_name)?;
        self.string(at.unit, v)
    }

    fn udata(&self, die: DieRef, name: gimli::DwAt) -> Option<u64> {
        self.attr(die, name)?.udata_value()
    }

    fn ranges(&self, die: DieRef) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let Ok(e) = self.entry(die) else {
            return out;
        };
        let Some(unit) = self.unit(die.unit) else {
            return out;
        };
        if let Ok(mut iter) = self.dwarf.die_ranges(unit, &e) {
            while let Ok(Some(r)) = iter.next() {
                if r.begin < r.end {
                    out.push((r.begin, r.end));
                }
            }
        }
        out
    }

    fn children(&self, die: DieRef) -> Vec<(DieRef, gimli::DwTag)> {
        let mut out = Vec::new();
        let Some(unit) = self.unit(die.unit) else {
            return out;
        };
        let Ok(mut tree) = unit.entries_tree(Some(die.offset)) else {
            return out;
        };
        let Ok(root) = tree.root() else {
            return out;
        };
        let mut children = root.children();
        while let Ok(Some(child)) = children.next() {
            let e = child.entry();
            out.push((
                DieRef {
                    unit: die.unit,
                    offset: e.offset(),
                },
                e.tag(),
            ));
        }
        out
    }

    fn tag(&self, die: DieRef) -> Option<gimli::DwTag> {
        self.entry(die).ok().map(|e| e.tag())
    }

    /// The frames at `pc` as gdb counts them, innermost first: each inlined call, then
    /// the function they are inlined into. Empty where no function's DWARF covers `pc`.
    pub fn frames_at(&self, pc: u64) -> Vec<ScopeFrame> {
        let Some(unit) = self.units.containing(pc) else {
            return Vec::new();
        };
        let Some(root) = self.unit_root(unit) else {
            return Vec::new();
        };
        // The chain of scopes containing pc, outermost first.
        let mut chain: Vec<(DieRef, gimli::DwTag)> = Vec::new();
        let mut node = root;
        'descend: for _ in 0..256 {
            for (die, tag) in self.scope_children(node) {
                if matches!(
                    tag,
                    gimli::DW_TAG_subprogram
                        | gimli::DW_TAG_inlined_subroutine
                        | gimli::DW_TAG_lexical_block
                ) && self.ranges(die).iter().any(|&(a, b)| a <= pc && pc < b)
                {
                    chain.push((die, tag));
                    node = die;
                    continue 'descend;
                }
            }
            break;
        }
        let mut frames = Vec::new();
        let mut blocks = Vec::new();
        for &(die, tag) in chain.iter().rev() {
            if tag == gimli::DW_TAG_lexical_block {
                blocks.push(die);
                continue;
            }
            let inlined = tag == gimli::DW_TAG_inlined_subroutine;
            let call_site = inlined.then(|| {
                let line = self
                    .udata(die, gimli::DW_AT_call_line)
                    .and_then(|l| u32::try_from(l).ok())
                    .unwrap_or(0);
                let file = self
                    .attr(die, gimli::DW_AT_call_file)
                    .and_then(|v| self.file_name(unit, v));
                (file, line)
            });
            frames.push(ScopeFrame {
                name: self.name(die),
                die,
                inlined,
                call_site,
                blocks: std::mem::take(&mut blocks),
            });
        }
        frames
    }

    /// A file of the unit's line table, as a `DW_AT_call_file` or `DW_AT_decl_file`
    /// value names it.
    fn file_name(
        &self,
        unit: usize,
        v: gimli::AttributeValue<Reader>,
    ) -> Option<std::path::PathBuf> {
        let index = match v {
            gimli::AttributeValue::FileIndex(i) => i,
            v => v.udata_value()?,
        };
        let u = self.unit(unit)?;
        let header = u.line_program.as_ref()?.header();
        let file = header.file(index)?;
        let mut path = std::path::PathBuf::new();
        if let Some(dir) = u.comp_dir.as_ref().and_then(|d| d.to_string_lossy().ok()) {
            path.push(dir.into_owned());
        }
        if let Some(dir) = file.directory(header).and_then(|d| self.string(unit, d)) {
            path.push(dir);
        }
        path.push(self.string(unit, file.path_name())?);
        Some(path)
    }

    /// An entry's children, with those of lexical blocks that have no address range
    /// taken as its own (gdb reads such a block's contents into the enclosing one).
    fn scope_children(&self, die: DieRef) -> Vec<(DieRef, gimli::DwTag)> {
        let mut out = Vec::new();
        self.scope_children_into(die, &mut out, 0);
        out
    }

    fn scope_children_into(
        &self,
        die: DieRef,
        out: &mut Vec<(DieRef, gimli::DwTag)>,
        depth: usize,
    ) {
        for (child, tag) in self.children(die) {
            if tag == gimli::DW_TAG_lexical_block
                && depth < MAX_TYPE_DEPTH
                && self.ranges(child).is_empty()
            {
                self.scope_children_into(child, out, depth + 1);
            } else {
                out.push((child, tag));
            }
        }
    }

    /// A frame's parameters, in order.
    pub fn parameters(&self, frame: &ScopeFrame) -> Vec<Variable> {
        self.scope_entries(frame.die, gimli::DW_TAG_formal_parameter)
            .into_iter()
            .filter_map(|die| {
                Some(Variable {
                    name: self.name(die)?,
                    die,
                    is_parameter: true,
                })
            })
            .collect()
    }

    /// A frame's local variables, innermost block first (each block's in the order the
    /// DWARF lists them), then the function's or inlined call's own.
    pub fn locals(&self, frame: &ScopeFrame) -> Vec<Variable> {
        frame
            .blocks
            .iter()
            .chain(std::iter::once(&frame.die))
            .flat_map(|&scope| self.scope_entries(scope, gimli::DW_TAG_variable))
            .filter_map(|die| {
                Some(Variable {
                    name: self.name(die)?,
                    die,
                    is_parameter: false,
                })
            })
            .collect()
    }

    /// The entries tagged `tag` a scope holds, as gdb reads them: its own (range-less
    /// lexical blocks included), then those of its abstract origin that none of its
    /// children is an instance of (gdb's "inherited abstract DIEs": an inlined call
    /// whose concrete block lost the link to the abstract one lists both).
    fn scope_entries(&self, scope: DieRef, tag: gimli::DwTag) -> Vec<DieRef> {
        let mut out: Vec<DieRef> = self
            .scope_children(scope)
            .into_iter()
            .filter(|&(_, t)| t == tag)
            .map(|(d, _)| d)
            .collect();
        let Some(origin) = self
            .attr(scope, gimli::DW_AT_abstract_origin)
            .and_then(|v| self.reference(scope.unit, v))
        else {
            return out;
        };
        let referenced: Vec<DieRef> = self
            .children(scope)
            .into_iter()
            .filter_map(|(c, _)| {
                self.attr(c, gimli::DW_AT_abstract_origin)
                    .and_then(|v| self.reference(c.unit, v))
            })
            .collect();
        for (c, t) in self.children(origin) {
            if referenced.contains(&c) {
                continue;
            }
            if t == gimli::DW_TAG_lexical_block && self.ranges(c).is_empty() {
                out.extend(
                    self.scope_children(c)
                        .into_iter()
                        .filter(|&(_, ct)| ct == tag)
                        .map(|(d, _)| d),
                );
            } else if t == tag {
                out.push(c);
            }
        }
        out
    }

    /// The global (or file-static) variable or function named `name`: its definition,
    /// preferring one in `unit_of` (the unit of the frame asking); else a declaration
    /// of it (see [`DebugInfo::is_declaration`]).
    pub fn global(&self, name: &str, unit_of: Option<DieRef>) -> Option<DieRef> {
        // The asking unit is read directly: the index may not have got there yet.
        if let Some(u) = unit_of {
            let mut here = None;
            self.scan_globals(u.unit, |n, die, defines| {
                if here.is_none() && defines && n == name {
                    here = Some(die);
                }
            });
            if here.is_some() {
                return here;
            }
        }
        let mut index = self.globals.lock().ok()?;
        loop {
            // The first definition in unit order is final once found.
            if let Some((list, definitions)) = index.by_name.get(name)
                && *definitions > 0
            {
                return list.first().copied();
            }
            if index.scanned >= self.units.len() {
                return index.by_name.get(name)?.0.first().copied();
            }
            let unit = index.scanned;
            let by_name = &mut index.by_name;
            self.scan_globals(unit, |n, die, defines| {
                let (list, definitions) = by_name.entry(n).or_default();
                // A variable only declared (`extern`, such as Linux's `jiffies`, which
                // the linker script defines) is kept after the definitions: its type is
                // the declaration's, its address the symbol table's.
                if defines {
                    list.insert(*definitions, die);
                    *definitions += 1;
                } else {
                    list.push(die);
                }
            });
            index.scanned += 1;
        }
    }

    /// A variable the DWARF information declares without saying where it is (its
    /// address is the symbol table's).
    pub fn is_declaration(&self, die: DieRef) -> bool {
        self.tag(die) == Some(gimli::DW_TAG_variable)
            && self.attr(die, gimli::DW_AT_location).is_none()
            && self.attr(die, gimli::DW_AT_const_value).is_none()
    }

    /// The variables and functions at the top of unit `unit`, in order, that define
    /// something (a variable with a location or value, a function with code) or
    /// declare a variable: `found(name, entry, defines)`. The unit is not kept parsed
    /// for this (a lookup may read them all).
    fn scan_globals(&self, unit: usize, mut found: impl FnMut(String, DieRef, bool)) {
        self.units.with(unit, |u| {
            let Ok(mut tree) = u.entries_tree(None) else {
                return;
            };
            let Ok(root) = tree.root() else {
                return;
            };
            let mut children = root.children();
            while let Ok(Some(child)) = children.next() {
                let e = child.entry();
                let has = |a| matches!(e.attr_value(a), Ok(Some(_)));
                let tag = e.tag();
                let defines = match tag {
                    gimli::DW_TAG_variable => {
                        has(gimli::DW_AT_location) || has(gimli::DW_AT_const_value)
                    }
                    gimli::DW_TAG_subprogram => {
                        has(gimli::DW_AT_low_pc) || has(gimli::DW_AT_ranges)
                    }
                    _ => false,
                };
                let declared = tag == gimli::DW_TAG_variable && !defines;
                if !defines && !declared {
                    continue;
                }
                let die = DieRef {
                    unit,
                    offset: e.offset(),
                };
                // Its own name, else (rare at the top) its origin's, as `name` reads it.
                let name = match e.attr_value(gimli::DW_AT_name) {
                    Ok(Some(v)) => string_of(&self.dwarf, u, v),
                    Ok(None) => self.name(die),
                    Err(_) => None,
                };
                if let Some(name) = name {
                    found(name, die, defines);
                }
            }
        });
    }

    /// The type named `name` (`struct proc`, `union u`, `enum e`, a typedef or base type
    /// name); a defined structure is preferred to a declaration.
    pub fn named_type(&self, name: &str) -> Option<Arc<Type>> {
        let die = self.named_type_die(name)?;
        Some(self.type_of_die(die, 0))
    }

    /// The first definition of the type `name` in unit order, else its first
    /// declaration: units are indexed until a definition is found (all of them only
    /// for a type never defined).
    fn named_type_die(&self, name: &str) -> Option<DieRef> {
        let mut index = self.named_types.lock().ok()?;
        loop {
            if let Some(&(die, false)) = index.by_name.get(name) {
                return Some(die);
            }
            if index.scanned >= self.units.len() {
                return index.by_name.get(name).map(|&(die, _)| die);
            }
            let unit = index.scanned;
            self.index_types(unit, &mut index.by_name);
            index.scanned += 1;
        }
    }

    /// Adds unit `unit`'s named types to `out`: a definition replaces a declaration, the
    /// first of each wins.
    fn index_types(&self, unit: usize, out: &mut HashMap<String, (DieRef, bool)>) {
        self.units.with(unit, |u| {
            let mut entries = u.entries();
            while let Ok(Some((_, e))) = entries.next_dfs() {
                let prefix = match e.tag() {
                    gimli::DW_TAG_structure_type => "struct ",
                    gimli::DW_TAG_union_type => "union ",
                    gimli::DW_TAG_enumeration_type => "enum ",
                    gimli::DW_TAG_class_type => "class ",
                    gimli::DW_TAG_typedef | gimli::DW_TAG_base_type => "",
                    _ => continue,
                };
                let die = DieRef {
                    unit,
                    offset: e.offset(),
                };
                let has_declaration = matches!(e.attr_value(gimli::DW_AT_declaration), Ok(Some(_)));
                let declaration = matches!(
                    e.attr_value(gimli::DW_AT_declaration),
                    Ok(Some(gimli::AttributeValue::Flag(true)))
                );
                let Some(name) = e
                    .attr_value(gimli::DW_AT_name)
                    .ok()
                    .flatten()
                    .and_then(|v| string_of(&self.dwarf, u, v))
                else {
                    continue;
                };
                let key = format!("{prefix}{name}");
                if declaration {
                    out.entry(key).or_insert((die, has_declaration));
                } else {
                    let replace = out.get(&key).is_none_or(|&(_, declared)| declared);
                    if replace {
                        out.insert(key, (die, has_declaration));
                    }
                }
            }
        });
    }

    /// The member `member` of `struct structure` (looked for in anonymous structures and
    /// unions inside it too, as C names them).
    pub fn member(&self, structure: &str, member: &str) -> Option<Member> {
        let ty = self.named_type(&format!("struct {structure}"))?;
        let Type::Aggregate { fields, .. } = ty.strip() else {
            return None;
        };
        let (offset, field) = find_field(fields, member, 0)?;
        Some(Member {
            offset,
            size: field.ty.size(),
        })
    }

    /// The type of a variable, parameter, member or function entry.
    pub fn type_of(&self, die: DieRef) -> Arc<Type> {
        if self.tag(die) == Some(gimli::DW_TAG_subprogram) {
            return self.type_of_die(die, 0);
        }
        match self.attr_inherited(die, gimli::DW_AT_type) {
            Some((at, v)) => match self.reference(at.unit, v) {
                Some(t) => self.type_of_die(t, 0),
                None => Arc::new(Type::Void),
            },
            None => Arc::new(Type::Void),
        }
    }

    /// The type a pointer points to.
    pub fn pointee(&self, p: &Pointee) -> Arc<Type> {
        match p {
            Pointee::Die(Some(d)) => self.type_of_die(*d, 0),
            Pointee::Die(None) => Arc::new(Type::Void),
            Pointee::Type(t) => t.clone(),
        }
    }

    /// A type's name as gdb writes it (following pointers to name what they point to).
    pub fn type_name(&self, ty: &Type) -> String {
        self.declare(ty, String::new(), 0)
    }

    fn declare(&self, ty: &Type, inner: String, depth: usize) -> String {
        if depth > MAX_TYPE_DEPTH {
            return "?".into();
        }
        match ty {
            Type::Pointer(p) => {
                let target = self.pointee(p);
                let inner = match target.as_ref() {
                    Type::Array { .. } | Type::Function { .. } => format!("(*{inner})"),
                    _ => format!("*{inner}"),
                };
                self.declare(&target, inner, depth + 1)
            }
            Type::Qualified { qualifier, target }
                if matches!(target.as_ref(), Type::Pointer(_)) =>
            {
                let inner = if inner.is_empty() {
                    qualifier.to_string()
                } else {
                    format!("{qualifier} {inner}")
                };
                self.declare(target, inner, depth + 1)
            }
            Type::Qualified { qualifier, target } => {
                format!("{qualifier} {}", self.declare(target, inner, depth + 1))
            }
            Type::Array { element, count } => {
                let dim = count.map(|c| c.to_string()).unwrap_or_default();
                self.declare(element, format!("{inner}[{dim}]"), depth + 1)
            }
            Type::Function {
                ret,
                params,
                prototyped,
                varargs,
            } => {
                let mut list: Vec<String> = params.iter().map(|p| self.type_name(p)).collect();
                if *varargs {
                    list.push("...".into());
                }
                if list.is_empty() && *prototyped {
                    list.push("void".into());
                }
                self.declare(ret, format!("{inner}({})", list.join(", ")), depth + 1)
            }
            leaf => {
                let name = leaf.leaf_name().unwrap_or_else(|| "?".into());
                if inner.is_empty() {
                    name
                } else {
                    format!("{name} {inner}")
                }
            }
        }
    }

    fn type_of_die(&self, die: DieRef, depth: usize) -> Arc<Type> {
        if let Some(t) = self.types.lock().ok().and_then(|m| m.get(&die).cloned()) {
            return t;
        }
        let t = Arc::new(self.read_type(die, depth));
        if let Ok(mut m) = self.types.lock() {
            m.insert(die, t.clone());
        }
        t
    }

    fn target_type(&self, die: DieRef, depth: usize) -> Arc<Type> {
        match self
            .attr(die, gimli::DW_AT_type)
            .and_then(|v| self.reference(die.unit, v))
        {
            Some(t) if depth < MAX_TYPE_DEPTH => self.type_of_die(t, depth + 1),
            _ => Arc::new(Type::Void),
        }
    }

    fn read_type(&self, die: DieRef, depth: usize) -> Type {
        if depth >= MAX_TYPE_DEPTH {
            return Type::Void;
        }
        let Some(tag) = self.tag(die) else {
            return Type::Void;
        };
        let name = self
            .attr(die, gimli::DW_AT_name)
            .and_then(|v| self.string(die.unit, v));
        let size = self.udata(die, gimli::DW_AT_byte_size).unwrap_or(0);
        match tag {
            gimli::DW_TAG_base_type => {
                let encoding = match self.attr(die, gimli::DW_AT_encoding) {
                    Some(gimli::AttributeValue::Encoding(e)) => match e {
                        gimli::DW_ATE_signed => BaseEncoding::Signed,
                        gimli::DW_ATE_signed_char => BaseEncoding::SignedChar,
                        gimli::DW_ATE_unsigned_char => BaseEncoding::UnsignedChar,
                        gimli::DW_ATE_boolean => BaseEncoding::Bool,
                        gimli::DW_ATE_float => BaseEncoding::Float,
                        _ => BaseEncoding::Unsigned,
                    },
                    _ => BaseEncoding::Unsigned,
                };
                Type::Base {
                    name: name.unwrap_or_else(|| "?".into()),
                    size,
                    encoding,
                }
            }
            gimli::DW_TAG_pointer_type | gimli::DW_TAG_reference_type => {
                Type::Pointer(Pointee::Die(
                    self.attr(die, gimli::DW_AT_type)
                        .and_then(|v| self.reference(die.unit, v)),
                ))
            }
            gimli::DW_TAG_typedef => Type::Typedef {
                name: name.unwrap_or_else(|| "?".into()),
                target: self.target_type(die, depth),
            },
            gimli::DW_TAG_const_type
            | gimli::DW_TAG_volatile_type
            | gimli::DW_TAG_restrict_type => {
                let target = self.target_type(die, depth);
                match tag {
                    gimli::DW_TAG_const_type => Type::Qualified {
                        qualifier: "const",
                        target,
                    },
                    gimli::DW_TAG_volatile_type => Type::Qualified {
                        qualifier: "volatile",
                        target,
                    },
                    _ => Type::Qualified {
                        qualifier: "restrict",
                        target,
                    },
                }
            }
            gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type | gimli::DW_TAG_class_type => {
                let kind = match tag {
                    gimli::DW_TAG_union_type => AggregateKind::Union,
                    gimli::DW_TAG_class_type => AggregateKind::Class,
                    _ => AggregateKind::Struct,
                };
                let fields = self
                    .children(die)
                    .into_iter()
                    .filter(|&(_, t)| t == gimli::DW_TAG_member)
                    .map(|(m, _)| self.read_field(m, depth))
                    .collect();
                Type::Aggregate {
                    kind,
                    name,
                    size,
                    fields,
                }
            }
            gimli::DW_TAG_array_type => {
                let mut dims: Vec<Option<u64>> = self
                    .children(die)
                    .into_iter()
                    .filter(|&(_, t)| t == gimli::DW_TAG_subrange_type)
                    .map(|(s, _)| {
                        if let Some(c) = self.udata(s, gimli::DW_AT_count) {
                            return Some(c);
                        }
                        let upper = self.attr(s, gimli::DW_AT_upper_bound)?;
                        let upper = match upper {
                            gimli::AttributeValue::Sdata(v) => u64::try_from(v).ok()?,
                            v => v.udata_value()?,
                        };
                        let lower = self.udata(s, gimli::DW_AT_lower_bound).unwrap_or(0);
                        upper.checked_sub(lower)?.checked_add(1)
                    })
                    .collect();
                if dims.is_empty() {
                    dims.push(None);
                }
                let mut t = self.target_type(die, depth);
                for count in dims.into_iter().rev() {
                    t = Arc::new(Type::Array { element: t, count });
                }
                Arc::try_unwrap(t).unwrap_or_else(|t| (*t).clone())
            }
            gimli::DW_TAG_enumeration_type => {
                let base = self.target_type(die, depth);
                let signed = matches!(
                    base.strip(),
                    Type::Base {
                        encoding: BaseEncoding::Signed | BaseEncoding::SignedChar,
                        ..
                    }
                );
                let values = self
                    .children(die)
                    .into_iter()
                    .filter(|&(_, t)| t == gimli::DW_TAG_enumerator)
                    .filter_map(|(e, _)| {
                        let n = self
                            .attr(e, gimli::DW_AT_name)
                            .and_then(|v| self.string(e.unit, v))?;
                        let v = match self.attr(e, gimli::DW_AT_const_value)? {
                            gimli::AttributeValue::Sdata(v) => v,
                            v => v.udata_value()? as i64,
                        };
                        Some((n, v))
                    })
                    .collect();
                Type::Enum {
                    name,
                    size,
                    signed,
                    values,
                }
            }
            gimli::DW_TAG_subroutine_type | gimli::DW_TAG_subprogram => {
                let mut params = Vec::new();
                let mut varargs = false;
                for (c, t) in self.children(die) {
                    match t {
                        gimli::DW_TAG_formal_parameter => params.push(self.type_of(c)),
                        gimli::DW_TAG_unspecified_parameters => varargs = true,
                        _ => {}
                    }
                }
                let prototyped = matches!(
                    self.attr_inherited(die, gimli::DW_AT_prototyped),
                    Some((_, gimli::AttributeValue::Flag(true)))
                );
                let ret = match self.attr_inherited(die, gimli::DW_AT_type) {
                    Some((at, v)) => match self.reference(at.unit, v) {
                        Some(t) if depth < MAX_TYPE_DEPTH => self.type_of_die(t, depth + 1),
                        _ => Arc::new(Type::Void),
                    },
                    None => Arc::new(Type::Void),
                };
                Type::Function {
                    ret,
                    params,
                    prototyped,
                    varargs,
                }
            }
            _ => Type::Void,
        }
    }

    fn read_field(&self, m: DieRef, depth: usize) -> Field {
        let name = self
            .attr(m, gimli::DW_AT_name)
            .and_then(|v| self.string(m.unit, v));
        let ty = self.target_type(m, depth);
        let bit_size = self.udata(m, gimli::DW_AT_bit_size);
        let (offset, bits) = match (self.udata(m, gimli::DW_AT_data_bit_offset), bit_size) {
            (Some(bit), Some(width)) => (bit / 8, Some((bit % 8, width))),
            _ => {
                let offset = self
                    .udata(m, gimli::DW_AT_data_member_location)
                    .unwrap_or(0);
                (offset, bit_size.map(|w| (0, w)))
            }
        };
        Field {
            name,
            offset,
            bits,
            ty,
        }
    }

    /// Where the variable (or parameter) `die` is in `frame`'s context.
    pub fn locate(&self, die: DieRef, frame: &FrameContext<'_>) -> Place {
        if let Some(v) = self.attr(die, gimli::DW_AT_const_value) {
            let size = self.type_of(die).size() as usize;
            return match v {
                gimli::AttributeValue::Block(b) => {
                    Place::Bytes(b.to_slice().map(|c| c.to_vec()).unwrap_or_default())
                }
                gimli::AttributeValue::Sdata(v) => {
                    Place::Bytes(v.to_le_bytes()[..size.min(8)].to_vec())
                }
                v => match v.udata_value() {
                    Some(u) => Place::Bytes(u.to_le_bytes()[..size.min(8)].to_vec()),
                    None => Place::OptimizedOut,
                },
            };
        }
        let Some(value) = self.attr(die, gimli::DW_AT_location) else {
            return Place::OptimizedOut;
        };
        let Some(unit) = self.unit(die.unit) else {
            return Place::OptimizedOut;
        };
        let expression = match value {
            gimli::AttributeValue::Exprloc(e) => Some(e),
            v => {
                let Some(pc) = frame.lookup_pc() else {
                    return Place::OptimizedOut;
                };
                let mut found = None;
                if let Ok(Some(mut list)) = self.dwarf.attr_locations(unit, v) {
                    while let Ok(Some(entry)) = list.next() {
                        if entry.range.begin <= pc && pc < entry.range.end {
                            found = Some(entry.data);
                            break;
                        }
                    }
                }
                found
            }
        };
        let Some(expression) = expression else {
            return Place::OptimizedOut;
        };
        let size = self.type_of(die).size();
        self.evaluate(die, expression, frame, size)
            .unwrap_or(Place::OptimizedOut)
    }

    /// Runs a location expression; None where it needs what cannot be known here.
    fn evaluate(
        &self,
        die: DieRef,
        expression: gimli::Expression<Reader>,
        frame: &FrameContext<'_>,
        size: u64,
    ) -> Option<Place> {
        let unit = self.unit(die.unit)?;
        let mut eval = expression.evaluation(unit.encoding());
        let mut result = eval.evaluate().ok()?;
        for _ in 0..MAX_EVAL_STEPS {
            use gimli::EvaluationResult as R;
            result = match result {
                R::Complete => break,
                R::RequiresRegister { register, .. } => {
                    let v = (*frame.regs.get(register.0 as usize)?)?;
                    eval.resume_with_register(gimli::Value::Generic(v)).ok()?
                }
                R::RequiresMemory { address, size, .. } => {
                    let mut b = [0u8; 8];
                    let n = usize::from(size).min(8);
                    if !(frame.read_memory)(address, &mut b[..n]) {
                        return None;
                    }
                    eval.resume_with_memory(gimli::Value::Generic(u64::from_le_bytes(b)))
                        .ok()?
                }
                R::RequiresFrameBase => {
                    let base = self.frame_base(die, frame)?;
                    eval.resume_with_frame_base(base).ok()?
                }
                R::RequiresCallFrameCfa => {
                    let cfa = frame.unwinder?.cfa_of(&frame.regs, frame.first)?;
                    eval.resume_with_call_frame_cfa(cfa).ok()?
                }
                R::RequiresEntryValue(e) => {
                    let v = self.entry_value(die, e, frame)?;
                    eval.resume_with_entry_value(gimli::Value::Generic(v))
                        .ok()?
                }
                R::RequiresRelocatedAddress(a) => eval.resume_with_relocated_address(a).ok()?,
                R::RequiresIndexedAddress { index, .. } => {
                    let a = self.dwarf.address(unit, index).ok()?;
                    eval.resume_with_indexed_address(a).ok()?
                }
                R::RequiresBaseType(offset) => {
                    let t = unit.entry(offset).ok()?;
                    let vt = gimli::ValueType::from_entry(&t).ok()??;
                    eval.resume_with_base_type(vt).ok()?
                }
                _ => return None,
            };
        }
        let pieces = eval.result();
        if pieces.len() == 1 && pieces[0].size_in_bits.is_none() {
            return self.piece_place(&pieces[0].location, frame, size);
        }
        // Several pieces: assemble the bytes (a piece that is gone makes the whole gone).
        let mut bytes = Vec::new();
        for p in &pieces {
            let bits = p.size_in_bits?;
            let n = bits.div_ceil(8);
            let place = self.piece_place(&p.location, frame, n)?;
            match place {
                Place::Memory(a) => {
                    let mut b = vec![0u8; usize::try_from(n).ok()?.min(MAX_PIECE_BYTES)];
                    if !(frame.read_memory)(a, &mut b) {
                        return None;
                    }
                    bytes.extend(b);
                }
                Place::Bytes(mut b) => {
                    b.resize(usize::try_from(n).ok()?.min(MAX_PIECE_BYTES), 0);
                    bytes.extend(b);
                }
                Place::OptimizedOut => return Some(Place::OptimizedOut),
            }
        }
        Some(Place::Bytes(bytes))
    }

    fn piece_place(
        &self,
        location: &gimli::Location<Reader>,
        frame: &FrameContext<'_>,
        size: u64,
    ) -> Option<Place> {
        let width = usize::try_from(size.clamp(1, 8)).ok()?;
        Some(match location {
            gimli::Location::Empty => Place::OptimizedOut,
            gimli::Location::Register { register } => {
                let v = (*frame.regs.get(register.0 as usize)?)?;
                Place::Bytes(v.to_le_bytes()[..width].to_vec())
            }
            gimli::Location::Address { address } => Place::Memory(*address),
            gimli::Location::Value { value } => {
                let v = value.to_u64(u64::MAX).ok()?;
                Place::Bytes(v.to_le_bytes()[..width].to_vec())
            }
            gimli::Location::Bytes { value } => Place::Bytes(value.to_slice().ok()?.to_vec()),
            _ => Place::OptimizedOut,
        })
    }

    /// The frame base of the function around `die` (`DW_AT_frame_base`).
    fn frame_base(&self, die: DieRef, frame: &FrameContext<'_>) -> Option<u64> {
        let pc = frame.lookup_pc()?;
        let function = self.frames_at(pc).into_iter().find(|f| !f.inlined)?.die;
        let gimli::AttributeValue::Exprloc(e) = self.attr(function, gimli::DW_AT_frame_base)?
        else {
            return None;
        };
        let _ = die;
        match self.evaluate(function, e, frame, 8)? {
            Place::Memory(a) => Some(a),
            Place::Bytes(b) => {
                let mut v = [0u8; 8];
                v[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
                Some(u64::from_le_bytes(v))
            }
            Place::OptimizedOut => None,
        }
    }

    /// `DW_OP_entry_value(DW_OP_regN)`: the value register N had when the function was
    /// called, from the caller's call site (`DW_TAG_call_site` at the return address,
    /// its parameter for register N, `DW_AT_call_value` evaluated in the caller's frame).
    fn entry_value(
        &self,
        die: DieRef,
        expression: gimli::Expression<Reader>,
        frame: &FrameContext<'_>,
    ) -> Option<u64> {
        let unit = self.unit(die.unit)?;
        let mut ops = gimli::Operation::parse(&mut expression.0.clone(), unit.encoding()).ok();
        let register = match ops.take()? {
            gimli::Operation::Register { register } => register,
            _ => return None,
        };
        let caller = frame.caller?;
        let return_address = caller[DWARF_PC]?;
        let caller_pc = return_address.wrapping_sub(1);
        // The function whose entry the value is of: the one out of line at the pc.
        let callee = self
            .frames_at(frame.lookup_pc()?)
            .into_iter()
            .find(|f| !f.inlined)?;
        let callee_entry = self.low_pc(callee.die)?;
        // The caller's call site at this return address.
        for scope in self.frames_at(caller_pc) {
            if scope.inlined {
                continue;
            }
            let site = self.call_site(scope.die, return_address)?;
            // As gdb: the call must be known to go to this function (not through a tail
            // call or an unknown pointer), else the entry value is unknown.
            let origin = self
                .attr(site, gimli::DW_AT_call_origin)
                .or_else(|| self.attr(site, gimli::DW_AT_abstract_origin))
                .and_then(|v| self.reference(site.unit, v))?;
            // As gdb: a declaration names the target (found by name); a definition
            // gives its own address, and an abstract instance of an inlined function,
            // which has none, leaves the target unknown.
            let declaration = matches!(
                self.attr(origin, gimli::DW_AT_declaration),
                Some(gimli::AttributeValue::Flag(true))
            );
            let target = if declaration {
                let name = self.name(origin)?;
                self.low_pc(self.global(&name, Some(origin))?)?
            } else {
                self.low_pc(origin)?
            };
            if target != callee_entry {
                return None;
            }
            for (p, tag) in self.children(site) {
                if tag != gimli::DW_TAG_call_site_parameter
                    && tag != gimli::DW_TAG_GNU_call_site_parameter
                {
                    continue;
                }
                let Some(gimli::AttributeValue::Exprloc(loc)) = self.attr(p, gimli::DW_AT_location)
                else {
                    continue;
                };
                let mut r = loc.0.clone();
                let Ok(gimli::Operation::Register { register: r }) =
                    gimli::Operation::parse(&mut r, self.unit(p.unit)?.encoding())
                else {
                    continue;
                };
                if r != register {
                    continue;
                }
                let value = self
                    .attr(p, gimli::DW_AT_call_value)
                    .or_else(|| self.attr(p, gimli::DW_AT_GNU_call_site_value))?;
                let gimli::AttributeValue::Exprloc(value) = value else {
                    return None;
                };
                let caller_frame = FrameContext {
                    regs: caller,
                    first: false,
                    caller: None,
                    unwinder: frame.unwinder,
                    read_memory: frame.read_memory,
                };
                return match self.evaluate(p, value, &caller_frame, 8)? {
                    Place::Bytes(b) => {
                        let mut v = [0u8; 8];
                        v[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
                        Some(u64::from_le_bytes(v))
                    }
                    Place::Memory(a) => Some(a),
                    Place::OptimizedOut => None,
                };
            }
            return None;
        }
        None
    }

    /// The call site in function `function` (anywhere in its tree) whose return address
    /// is `return_address`.
    fn call_site(&self, function: DieRef, return_address: u64) -> Option<DieRef> {
        let unit = self.unit(function.unit)?;
        let mut cursor = unit.entries_at_offset(function.offset).ok()?;
        cursor.next_dfs().ok()??;
        let mut depth = 0isize;
        loop {
            let (delta, e) = cursor.next_dfs().ok()??;
            depth += delta;
            if depth <= 0 {
                return None;
            }
            if !matches!(
                e.tag(),
                gimli::DW_TAG_call_site | gimli::DW_TAG_GNU_call_site
            ) {
                continue;
            }
            let at = e
                .attr_value(gimli::DW_AT_call_return_pc)
                .ok()
                .flatten()
                .or_else(|| e.attr_value(gimli::DW_AT_low_pc).ok().flatten());
            let at = match at {
                Some(gimli::AttributeValue::Addr(a)) => Some(a),
                Some(gimli::AttributeValue::DebugAddrIndex(i)) => self.dwarf.address(unit, i).ok(),
                _ => None,
            };
            if at == Some(return_address) {
                return Some(DieRef {
                    unit: function.unit,
                    offset: e.offset(),
                });
            }
        }
    }

    /// A function's entry address (`DW_AT_low_pc`, or its first range's start).
    fn low_pc(&self, die: DieRef) -> Option<u64> {
        match self.attr(die, gimli::DW_AT_low_pc) {
            Some(gimli::AttributeValue::Addr(a)) => Some(a),
            Some(gimli::AttributeValue::DebugAddrIndex(i)) => {
                self.dwarf.address(self.unit(die.unit)?, i).ok()
            }
            _ => self.ranges(die).first().map(|r| r.0),
        }
    }

    /// A unit's root entry.
    fn unit_root(&self, unit: usize) -> Option<DieRef> {
        let mut entries = self.unit(unit)?.entries();
        let (_, first) = entries.next_dfs().ok()??;
        Some(DieRef {
            unit,
            offset: first.offset(),
        })
    }
}

/// A string attribute's text.
fn string_of(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    v: gimli::AttributeValue<Reader>,
) -> Option<String> {
    let s = dwarf.attr_string(unit, v).ok()?;
    s.to_string_lossy().ok().map(|s| s.into_owned())
}

/// A member by name, looking into anonymous structures and unions; its offset from the
/// outer structure.
pub(super) fn find_field<'f>(
    fields: &'f [Field],
    name: &str,
    depth: usize,
) -> Option<(u64, &'f Field)> {
    if depth > MAX_TYPE_DEPTH {
        return None;
    }
    for f in fields {
        match &f.name {
            Some(n) if n == name => return Some((f.offset, f)),
            None => {
                if let Type::Aggregate { fields: inner, .. } = f.ty.strip()
                    && let Some((o, found)) = find_field(inner, name, depth + 1)
                {
                    return Some((f.offset + o, found));
                }
            }
            _ => {}
        }
    }
    None
}
