//! Call-frame unwinding from the guest image's DWARF call-frame information
//! (`.debug_frame`, or `.eh_frame`): the backtrace of a kernel built without frame
//! pointers, and the frames source-line steps compare.
//!
//! The tables are read once into rows (an address range and its rules), so that looking
//! up the rule at an instruction is a binary search: source-line steps ask at every
//! instruction they step.

use super::Reader;
use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, RegisterRule, UnwindContext, UnwindSection, X86_64,
};
use krr_mapped::Bytes;
use object::{Object, ObjectSection};

/// The registers unwinding needs at one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
}

/// The register a canonical frame address is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CfaBase {
    Rsp,
    Rbp,
}

/// Where the caller's RBP is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavedRbp {
    /// Unchanged in this frame.
    Same,
    /// Saved at this offset from the canonical frame address.
    At(i64),
}

/// How to find a frame's caller at one instruction: the canonical frame address (CFA,
/// the stack pointer before the call) is `base + cfa_offset`, the return address is
/// saved at `CFA + ra_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRule {
    pub base: CfaBase,
    pub cfa_offset: i64,
    pub ra_offset: i64,
    pub rbp: SavedRbp,
}

impl FrameRule {
    /// The canonical frame address of `frame` under this rule.
    pub fn cfa(&self, frame: Frame) -> u64 {
        let base = match self.base {
            CfaBase::Rsp => frame.rsp,
            CfaBase::Rbp => frame.rbp,
        };
        base.wrapping_add(self.cfa_offset as u64)
    }

    /// The caller's frame (its return address, stack pointer and RBP), reading the
    /// saved values from the stack.
    pub fn caller(&self, frame: Frame, read_u64: &dyn Fn(u64) -> Option<u64>) -> Option<Frame> {
        let cfa = self.cfa(frame);
        let rip = read_u64(cfa.wrapping_add(self.ra_offset as u64))?;
        let rbp = match self.rbp {
            SavedRbp::Same => frame.rbp,
            SavedRbp::At(o) => read_u64(cfa.wrapping_add(o as u64))?,
        };
        Some(Frame { rip, rsp: cfa, rbp })
    }
}

/// A row of the tables: the rule for `[start, end)` (None where it uses rules this
/// unwinder does not follow, such as DWARF expressions).
#[derive(Debug, Clone, Copy)]
struct Row {
    start: u64,
    end: u64,
    rule: Option<FrameRule>,
}

/// The section the tables were read from, kept for the rules of every register
/// ([`Unwinder::caller_registers`]), which the rows leave out.
enum CfiSection {
    Debug(DebugFrame<Reader>),
    Eh(EhFrame<Reader>),
}

/// A frame's general registers by DWARF number (0 rax, 1 rdx, 2 rcx, 3 rbx, 4 rsi,
/// 5 rdi, 6 rbp, 7 rsp, 8-15 r8-r15) and its pc (16); None where not known.
pub type DwarfRegisters = [Option<u64>; 17];

/// DWARF's number of the pc (the return address column on x86-64).
pub const DWARF_PC: usize = 16;

/// The call-frame tables of one image.
pub struct Unwinder {
    /// Sorted by start address.
    rows: Vec<Row>,
    section: CfiSection,
    bases: BaseAddresses,
}

impl std::fmt::Debug for Unwinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Unwinder({} rows)", self.rows.len())
    }
}

/// Deepest backtrace produced (a corrupt stack cannot loop it forever).
pub const MAX_FRAMES: usize = 64;

impl Unwinder {
    /// The image's call-frame tables, if it has any.
    /// `image` holds `file`'s bytes: the tables are read as ranges of it.
    pub fn from_object(file: &object::File<'_>, image: &Bytes) -> Option<Unwinder> {
        let endian = super::endian_of(file);
        let data = |name: &str| -> Option<(Reader, u64)> {
            let section = file.section_by_name(name)?;
            let reader = super::section_reader(&section, image, endian).ok()?;
            (!reader.is_empty()).then(|| (reader, section.address()))
        };
        let (mut rows, section, bases) = if let Some((r, _)) = data(".debug_frame") {
            let mut s = DebugFrame::from(r);
            s.set_address_size(8);
            let bases = BaseAddresses::default();
            (read_rows(&s, &bases), CfiSection::Debug(s), bases)
        } else {
            let (r, addr) = data(".eh_frame")?;
            let mut bases = BaseAddresses::default().set_eh_frame(addr);
            if let Some(text) = file.section_by_name(".text") {
                bases = bases.set_text(text.address());
            }
            let s = EhFrame::from(r);
            (read_rows(&s, &bases), CfiSection::Eh(s), bases)
        };
        rows.sort_by_key(|r| r.start);
        Some(Unwinder {
            rows,
            section,
            bases,
        })
    }

    /// The canonical frame address of the frame whose registers are `regs` (the pc
    /// looked up as [`Unwinder::caller`] does).
    pub fn cfa_of(&self, regs: &DwarfRegisters, first: bool) -> Option<u64> {
        let pc = lookup_pc(regs[DWARF_PC]?, first);
        self.at_row(pc, |row| cfa_of_row(row, regs))
    }

    /// `f` of the full table row at `pc` (every register's rule), read from the
    /// section when asked for.
    fn at_row<T>(
        &self,
        pc: u64,
        f: impl FnOnce(&gimli::UnwindTableRow<usize>) -> Option<T>,
    ) -> Option<T> {
        let mut ctx = Box::new(UnwindContext::new());
        let row = match &self.section {
            CfiSection::Debug(s) => {
                s.unwind_info_for_address(&self.bases, &mut ctx, pc, DebugFrame::cie_from_offset)
            }
            CfiSection::Eh(s) => {
                s.unwind_info_for_address(&self.bases, &mut ctx, pc, EhFrame::cie_from_offset)
            }
        }
        .ok()?;
        f(row)
    }

    /// The caller's registers as gdb unwinds them: the stack pointer is the canonical
    /// frame address, the pc the saved return address, a register the rules save is
    /// read from the stack, one they do not mention keeps its value (gdb's "same
    /// value" for unspecified registers), one they mark undefined is unknown. None where
    /// the tables do not describe the pc.
    pub fn caller_registers(
        &self,
        regs: &DwarfRegisters,
        first: bool,
        read_u64: &dyn Fn(u64) -> Option<u64>,
    ) -> Option<DwarfRegisters> {
        let pc = lookup_pc(regs[DWARF_PC]?, first);
        self.at_row(pc, |row| caller_of_row(row, regs, read_u64))
    }

    /// Whether the tables describe the instruction at `pc` (whatever their rule).
    pub fn covers(&self, pc: u64) -> bool {
        self.row(pc).is_some()
    }

    /// The rule at `pc`, if the tables describe it with rules this unwinder follows.
    pub fn rule(&self, pc: u64) -> Option<FrameRule> {
        self.row(pc)?.rule
    }

    fn row(&self, pc: u64) -> Option<&Row> {
        let i = self
            .rows
            .partition_point(|r| r.start <= pc)
            .checked_sub(1)?;
        let row = &self.rows[i];
        (pc < row.end).then_some(row)
    }

    /// The caller's frame of `frame`, or None where the tables say nothing (outside any
    /// described function, or an entry stub) or memory cannot be read. `first` is true
    /// for the innermost frame, whose rip is the current instruction rather than a
    /// return address.
    pub fn caller(
        &self,
        frame: Frame,
        first: bool,
        read_u64: &dyn Fn(u64) -> Option<u64>,
    ) -> Option<Frame> {
        // A return address points after the call; look up the call itself.
        let pc = if first {
            frame.rip
        } else {
            frame.rip.wrapping_sub(1)
        };
        self.rule(pc)?.caller(frame, read_u64)
    }

    /// Return addresses from `frame` outwards (the current rip first).
    pub fn backtrace(&self, frame: Frame, read_u64: &dyn Fn(u64) -> Option<u64>) -> Vec<u64> {
        let mut out = vec![frame.rip];
        let mut f = frame;
        let mut first = true;
        while out.len() < MAX_FRAMES {
            let Some(caller) = self.caller(f, first, read_u64) else {
                break;
            };
            // The stack grows down: a caller's frame is above its callee's.
            if caller.rip == 0 || caller.rsp <= f.rsp {
                break;
            }
            out.push(caller.rip);
            f = caller;
            first = false;
        }
        out
    }
}

/// The caller's registers under one table row (see [`Unwinder::caller_registers`]).
fn caller_of_row(
    row: &gimli::UnwindTableRow<usize>,
    regs: &DwarfRegisters,
    read_u64: &dyn Fn(u64) -> Option<u64>,
) -> Option<DwarfRegisters> {
    let cfa = cfa_of_row(row, regs)?;
    let mut out = *regs;
    out[DWARF_PC] = None;
    for (register, rule) in row.registers() {
        let n = register.0 as usize;
        if n >= out.len() {
            continue;
        }
        out[n] = match rule {
            RegisterRule::Undefined => None,
            RegisterRule::SameValue => regs[n],
            RegisterRule::Offset(o) => read_u64(cfa.wrapping_add(*o as u64)),
            RegisterRule::ValOffset(o) => Some(cfa.wrapping_add(*o as u64)),
            RegisterRule::Register(r) => regs.get(r.0 as usize).copied().flatten(),
            RegisterRule::Constant(v) => Some(*v),
            _ => None,
        };
    }
    out[X86_64::RSP.0 as usize] = Some(cfa);
    out[DWARF_PC]?;
    Some(out)
}

/// A return address points after the call; the call itself is looked up (gdb's "address
/// in block").
fn lookup_pc(pc: u64, first: bool) -> u64 {
    if first { pc } else { pc.wrapping_sub(1) }
}

fn cfa_of_row(row: &gimli::UnwindTableRow<usize>, regs: &DwarfRegisters) -> Option<u64> {
    match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => regs
            .get(register.0 as usize)
            .copied()
            .flatten()
            .map(|b| b.wrapping_add(*offset as u64)),
        CfaRule::Expression(_) => None,
    }
}

/// Every row of every FDE in the section.
fn read_rows<S: UnwindSection<Reader>>(section: &S, bases: &BaseAddresses) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    while let Ok(Some(entry)) = entries.next() {
        let gimli::CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(S::cie_from_offset) else {
            continue;
        };
        let Ok(mut table) = fde.rows(section, bases, &mut ctx) else {
            continue;
        };
        while let Ok(Some(row)) = table.next_row() {
            rows.push(Row {
                start: row.start_address(),
                end: row.end_address(),
                rule: rule_of(row),
            });
        }
    }
    rows
}

fn rule_of(row: &gimli::UnwindTableRow<usize>) -> Option<FrameRule> {
    let (base, cfa_offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => match *register {
            X86_64::RSP => (CfaBase::Rsp, *offset),
            X86_64::RBP => (CfaBase::Rbp, *offset),
            _ => return None,
        },
        CfaRule::Expression(_) => return None,
    };
    let ra_offset = match row.register(X86_64::RA) {
        RegisterRule::Offset(o) => o,
        _ => return None,
    };
    let rbp = match row.register(X86_64::RBP) {
        RegisterRule::Undefined | RegisterRule::SameValue => SavedRbp::Same,
        RegisterRule::Offset(o) => SavedRbp::At(o),
        _ => return None,
    };
    Some(FrameRule {
        base,
        cfa_offset,
        ra_offset,
        rbp,
    })
}
