//! Call-frame unwinding from the guest image's DWARF call-frame information
//! (`.debug_frame`, or `.eh_frame`): the backtrace of a kernel built without frame
//! pointers.

use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, RegisterRule, UnwindContext, UnwindSection, X86_64,
};
use std::borrow::Cow;
use std::sync::Arc;

use super::Reader;
use object::{Object, ObjectSection};

/// The registers unwinding needs at one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
}

enum Section {
    Debug(DebugFrame<Reader>),
    Eh(EhFrame<Reader>),
}

/// The call-frame tables of one image.
pub struct Unwinder {
    section: Section,
    bases: BaseAddresses,
}

impl std::fmt::Debug for Unwinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unwinder")
    }
}

/// Deepest backtrace produced (a corrupt stack cannot loop it forever).
pub const MAX_FRAMES: usize = 64;

impl Unwinder {
    /// The image's call-frame tables, if it has any.
    pub fn from_object(file: &object::File<'_>) -> Option<Unwinder> {
        let endian = if file.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let data = |name: &str| -> Option<(Reader, u64)> {
            let section = file.section_by_name(name)?;
            let bytes: Cow<'_, [u8]> = section.uncompressed_data().ok()?;
            (!bytes.is_empty()).then(|| {
                (
                    gimli::EndianArcSlice::new(Arc::from(&*bytes), endian),
                    section.address(),
                )
            })
        };
        if let Some((r, _)) = data(".debug_frame") {
            let mut s = DebugFrame::from(r);
            s.set_address_size(8);
            return Some(Unwinder {
                section: Section::Debug(s),
                bases: BaseAddresses::default(),
            });
        }
        let (r, addr) = data(".eh_frame")?;
        let mut bases = BaseAddresses::default().set_eh_frame(addr);
        if let Some(text) = file.section_by_name(".text") {
            bases = bases.set_text(text.address());
        }
        Some(Unwinder {
            section: Section::Eh(EhFrame::from(r)),
            bases,
        })
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
        let mut ctx = Box::new(UnwindContext::new());
        let row = match &self.section {
            Section::Debug(s) => s
                .unwind_info_for_address(&self.bases, &mut ctx, pc, DebugFrame::cie_from_offset)
                .ok()?
                .clone(),
            Section::Eh(s) => s
                .unwind_info_for_address(&self.bases, &mut ctx, pc, EhFrame::cie_from_offset)
                .ok()?
                .clone(),
        };
        let cfa = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => {
                let base = match *register {
                    X86_64::RSP => frame.rsp,
                    X86_64::RBP => frame.rbp,
                    _ => return None,
                };
                base.wrapping_add(*offset as u64)
            }
            CfaRule::Expression(_) => return None,
        };
        let restore = |reg, current: u64| -> Option<u64> {
            match row.register(reg) {
                RegisterRule::Undefined | RegisterRule::SameValue => Some(current),
                RegisterRule::Offset(o) => read_u64(cfa.wrapping_add(o as u64)),
                RegisterRule::ValOffset(o) => Some(cfa.wrapping_add(o as u64)),
                _ => None,
            }
        };
        let rip = match row.register(X86_64::RA) {
            RegisterRule::Offset(o) => read_u64(cfa.wrapping_add(o as u64))?,
            _ => return None,
        };
        Some(Frame {
            rip,
            rsp: cfa,
            rbp: restore(X86_64::RBP, frame.rbp)?,
        })
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
