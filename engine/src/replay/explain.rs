//! Why a digest diverged: for every register and flag that differs, the last
//! instruction that wrote it, and whether the architecture leaves it undefined there
//! (then the recording host's rule for it is named).
//!
//! The replay runs again from its start to the last digest before the divergence (which
//! matched, so everything that differs was written after it), then one instruction at a
//! time up to the divergence.

use iced_x86::{
    Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register, RflagsBits,
};

use super::divergence::{Cause, Divergence};
use super::{Replay, Stop, Target};
use crate::cpu::flags::{AF, CF, OF, PF, SF, STATUS, ZF};
use crate::cpu::undefined::{FLAGS, Family, WideDoubleShift, ZeroSourceDestination, size_index};
use crate::event::Event;
use crate::state::gpr;

/// Steps explained at most: a divergence further than this from the last digest that
/// matched is reported without causes.
const MAX_STEPS: u64 = 20_000_000;

/// One thing that differs, as [`super::divergence::Difference::what`] names it.
#[derive(Clone, Copy)]
enum Item {
    Gpr(usize),
    Flag(u64, u32),
    OtherFlags,
    Rip,
}

fn item(what: &str) -> Option<Item> {
    if what == "rip" {
        return Some(Item::Rip);
    }
    if what == "rflags" {
        return Some(Item::OtherFlags);
    }
    if let Some(i) = gpr::NAMES.iter().position(|&n| n == what) {
        return Some(Item::Gpr(i));
    }
    let iced = |flag: u64| match flag {
        CF => RflagsBits::CF,
        PF => RflagsBits::PF,
        AF => RflagsBits::AF,
        ZF => RflagsBits::ZF,
        SF => RflagsBits::SF,
        OF => RflagsBits::OF,
        _ => RflagsBits::NONE,
    };
    FLAGS
        .iter()
        .find(|(_, n)| *n == what)
        .map(|&(f, _)| Item::Flag(f, iced(f)))
}

const GPRS: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

impl Replay {
    /// The causes of the differences of `div` (a divergence of this replay's recording
    /// at a digest that stored the registers). Empty where there is nothing to explain
    /// or the replay cannot get back there.
    pub fn explain(&self, div: &Divergence) -> Vec<Cause> {
        let items: Vec<(String, Item)> = div
            .differences
            .iter()
            .filter_map(|d| item(&d.what).map(|i| (d.what.clone(), i)))
            .collect();
        if items.is_empty() {
            return Vec::new();
        }
        let mut r = self.restart();
        if let Some(p) = self
            .events
            .rfind(div.event, |e| matches!(e, Event::Digest(_)))
        {
            let t = Target::Event(p);
            if r.run(t) != Stop::Reached(t) {
                return Vec::new();
            }
        }
        if div.icount.saturating_sub(r.cpu.icount()) > MAX_STEPS {
            return Vec::new();
        }
        let undefined = &self.header.machine.quirks.undefined;
        let mut info = InstructionInfoFactory::new();
        let mut causes: Vec<Option<Cause>> = vec![None; items.len()];
        // Per difference, the first instruction of each family (and size) that left
        // it undefined: the cause's family names the one that depended on its rule.
        type First = Vec<((Family, usize), (u64, u64, String))>;
        let mut first_undefined: Vec<First> = vec![Vec::new(); items.len()];
        let mut cause_family: Vec<Option<(Family, usize)>> = vec![None; items.len()];
        while r.cpu.icount() < div.icount {
            let before = r.cpu.state();
            let (gpr0, flags0, rip0) = (before.gpr, before.rflags, before.rip);
            let at = r.cpu.icount();
            let ins = r.current_instruction();
            let t = Target::Icount(at + 1);
            if r.run(t) != Stop::Reached(t) {
                // The divergence itself (its digest is taken after this instruction).
                break;
            }
            let after = r.cpu.state();
            let Some(ins) = ins else { continue };
            let used = info.info(&ins);
            let writes_gpr = |i: usize| {
                used.used_registers().iter().any(|u| {
                    u.register().full_register() == GPRS[i]
                        && matches!(
                            u.access(),
                            OpAccess::Write
                                | OpAccess::ReadWrite
                                | OpAccess::CondWrite
                                | OpAccess::ReadCondWrite
                        )
                })
            };
            for (k, (what, it)) in items.iter().enumerate() {
                let (written, changed, undefined_here) = match *it {
                    Item::Gpr(i) => (
                        writes_gpr(i),
                        gpr0[i] != after.gpr[i],
                        destination_undefined(&ins, &gpr0, after.rflags, i),
                    ),
                    Item::Flag(f, bit) => (
                        ins.rflags_modified() & bit != 0,
                        (flags0 ^ after.rflags) & f != 0,
                        ins.rflags_undefined() & bit != 0,
                    ),
                    Item::OtherFlags => (
                        ins.rflags_modified() & (RflagsBits::DF | RflagsBits::IF | RflagsBits::AC)
                            != 0
                            || matches!(ins.mnemonic(), Mnemonic::Popfq | Mnemonic::Iretq),
                        (flags0 ^ after.rflags) & !STATUS != 0,
                        false,
                    ),
                    Item::Rip => (true, false, false),
                };
                if !(written || changed) {
                    continue;
                }
                let text = super::format_instruction(&ins);
                let mut instruction = text.clone();
                if changed && !written {
                    instruction += ", then an interrupt or an entry from user mode";
                }
                let family = Family::of(&ins);
                let rule = if undefined_here && written {
                    if let Some(fs) = family
                        && !first_undefined[k].iter().any(|(g, _)| *g == fs)
                    {
                        first_undefined[k].push((fs, (at, rip0, text.clone())));
                    }
                    rule_text(undefined, &ins, *it)
                } else {
                    None
                };
                cause_family[k] = family;
                causes[k] = Some(Cause {
                    what: what.clone(),
                    icount: at,
                    rip: rip0,
                    instruction,
                    undefined: undefined_here && written,
                    rule,
                    first_undefined: None,
                });
            }
        }
        causes
            .into_iter()
            .zip(first_undefined)
            .zip(cause_family)
            .filter_map(|((c, firsts), family)| {
                let mut c = c?;
                if c.undefined {
                    c.first_undefined = firsts
                        .into_iter()
                        .find(|(g, _)| Some(*g) == family)
                        .map(|(_, f)| f)
                        .filter(|f| f.0 != c.icount);
                }
                Some(c)
            })
            .collect()
    }
}

/// Whether GPR `i`, written by `ins`, is an undefined result: the destination of a
/// bit scan of zero, or of a 16-bit double shift by more than 16.
fn destination_undefined(ins: &Instruction, gpr0: &[u64; 16], rflags: u64, i: usize) -> bool {
    if ins.op0_kind() != OpKind::Register || ins.op0_register().full_register() != GPRS[i] {
        return false;
    }
    match ins.mnemonic() {
        Mnemonic::Bsf | Mnemonic::Bsr => rflags & ZF != 0,
        Mnemonic::Shld | Mnemonic::Shrd if ins.op0_register().size() == 2 => {
            let count = if ins.op2_kind() == OpKind::Register {
                gpr0[1]
            } else {
                ins.immediate8() as u64
            };
            count & 0x1f > 16
        }
        _ => false,
    }
}

/// The recording's rule for what `ins` left undefined, as `shr 64-bit: AF=0`.
fn rule_text(
    undefined: &crate::cpu::undefined::UndefinedBehaviour,
    ins: &Instruction,
    it: Item,
) -> Option<String> {
    let (family, size) = Family::of(ins)?;
    let head = format!("{} {}-bit", family.name(), size * 8);
    match it {
        Item::Flag(f, _) if family.undefined_flags() & f != 0 => {
            let name = FLAGS.iter().find(|(g, _)| *g == f)?.1;
            Some(format!(
                "{head}: {name}={}",
                undefined.rule(family, size, f).short()
            ))
        }
        Item::Gpr(_) if matches!(family, Family::Bsf | Family::Bsr) => {
            let z = undefined.zero_source[(family == Family::Bsr) as usize][size_index(size)];
            Some(format!(
                "{head} of zero: destination {}",
                match z {
                    ZeroSourceDestination::Unchanged => "unchanged",
                    ZeroSourceDestination::UpperCleared => "upper half cleared",
                }
            ))
        }
        Item::Gpr(_) if matches!(family, Family::Shld | Family::Shrd) => {
            let w = undefined.wide_double_shift[(family == Family::Shrd) as usize];
            Some(format!(
                "{head} by more than 16: {}",
                match w {
                    WideDoubleShift::DstSrcSrc => "dst:src:src",
                    WideDoubleShift::DstSrcDst => "dst:src:dst",
                }
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    #[test]
    fn difference_names_map_to_items() {
        assert!(matches!(item("rax"), Some(Item::Gpr(0))));
        assert!(matches!(item("r15"), Some(Item::Gpr(15))));
        assert!(matches!(item("AF"), Some(Item::Flag(AF, RflagsBits::AF))));
        assert!(matches!(item("OF"), Some(Item::Flag(OF, RflagsBits::OF))));
        assert!(matches!(item("rflags"), Some(Item::OtherFlags)));
        assert!(item("xmm0").is_none());
    }

    #[test]
    fn the_rule_named_is_the_recordings() {
        use crate::cpu::undefined::{FlagRule, UndefinedBehaviour};
        let mut u = UndefinedBehaviour::legacy();
        u.set_rule(Family::Shr, 8, AF, FlagRule::Clear);
        // shr rax, 0x20
        let ins = Decoder::with_ip(64, &[0x48, 0xc1, 0xe8, 0x20], 0, DecoderOptions::NONE).decode();
        let t = rule_text(&u, &ins, Item::Flag(AF, RflagsBits::AF));
        assert_eq!(t.as_deref(), Some("shr 64-bit: AF=0"));
        assert!(ins.rflags_undefined() & RflagsBits::AF != 0);
    }
}
