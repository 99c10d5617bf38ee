//! Results the architecture leaves undefined, as the recording host computes them
//! (DESIGN.md section 5).
//!
//! Where the Intel and AMD manuals leave a flag (or, in two places, a result) undefined,
//! hosts differ between CPU generations and vendors, and KVM passes the host's answer to
//! the guest: its instruction emulator runs the guest's arithmetic on the host CPU, and
//! on VT-x the guest runs natively. Replay must give the answers of the host that made
//! the recording, whatever host it runs on. So:
//!
//! * every such behaviour the replay CPU implements is a [`Family`] (an instruction, or
//!   one case of it) with, per operand size, one [`FlagRule`] for each flag it leaves
//!   undefined; plus the two undefined results ([`ZeroSourceDestination`] of
//!   `bsf`/`bsr`, [`WideDoubleShift`] of 16-bit `shld`/`shrd`);
//! * the recorder runs [`probe::ProbeProgram`] under KVM and fits the rules to what the
//!   host did ([`probe::ProbeProgram::fit`]); the result, an [`UndefinedBehaviour`], is
//!   stored in the recording's header;
//! * the replay CPU executes with [`UndefinedRules`] compiled from it, and the flag
//!   functions in [`super::flags`] apply them.
//!
//! The rules were found by random differential testing against KVM (the families whose
//! answers differ between hosts were not all documented); the differential tests in
//! `engine/tests/cpu_vs_kvm.rs` take their expectations from the same probe.

pub mod probe;

use serde::{Deserialize, Serialize};

use super::flags::{AF, CF, OF, PF, SF, ZF};

/// The six status flags in the order of the per-flag tables.
pub const FLAGS: [(u64, &str); 6] = [
    (CF, "CF"),
    (PF, "PF"),
    (AF, "AF"),
    (ZF, "ZF"),
    (SF, "SF"),
    (OF, "OF"),
];

/// An instruction, or one case of it, whose flags the architecture leaves partly
/// undefined. The doc comment of each says which flags, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    /// `shl`/`sal` by a non-zero count: AF; OF for counts above 1; CF for counts of the
    /// operand width and above (8- and 16-bit operands).
    Shl,
    /// `shr` by a non-zero count: as `shl`.
    Shr,
    /// `sar` by a non-zero count: AF; OF for counts above 1.
    Sar,
    /// `rol` by a (masked) count above 1: OF.
    Rol,
    /// `ror` by a count above 1: OF.
    Ror,
    /// `rcl` by a count above 1: OF.
    Rcl,
    /// `rcr` by a count above 1: OF.
    Rcr,
    /// 8- and 16-bit `rcl` by a non-zero multiple of 9 or 17 (a full turn through CF):
    /// OF.
    RclFullTurn,
    /// 8- and 16-bit `rcr` by a non-zero multiple of 9 or 17: OF.
    RcrFullTurn,
    /// `shld` by a non-zero count: AF; OF for counts above 1. 16-bit counts above 16
    /// also leave the result undefined ([`WideDoubleShift`]).
    Shld,
    /// `shrd`: as `shld`.
    Shrd,
    /// One-operand `mul`: SF, ZF, AF, PF.
    Mul,
    /// One-operand `imul`: SF, ZF, AF, PF.
    Imul,
    /// Two- and three-operand `imul`: SF, ZF, AF, PF.
    ImulMultiOperand,
    /// `div`: all six.
    Div,
    /// `idiv`: all six.
    Idiv,
    /// `bsf`: CF, OF, SF, AF, PF. A zero source also leaves the destination undefined
    /// ([`ZeroSourceDestination`]).
    Bsf,
    /// `bsr`: as `bsf`.
    Bsr,
    /// `tzcnt` where it counts (not executed as `bsf`): OF, SF, AF, PF.
    Tzcnt,
    /// `lzcnt` where it counts: OF, SF, AF, PF.
    Lzcnt,
    /// `bt`: OF, SF, AF, PF.
    Bt,
    /// `bts`: OF, SF, AF, PF.
    Bts,
    /// `btr`: OF, SF, AF, PF.
    Btr,
    /// `btc`: OF, SF, AF, PF.
    Btc,
    /// `and`: AF.
    And,
    /// `or`: AF.
    Or,
    /// `xor`: AF.
    Xor,
    /// `test`: AF.
    Test,
}

impl Family {
    pub const COUNT: usize = 28;

    /// Every family, in table order (the discriminant is the index).
    pub const ALL: [Family; Family::COUNT] = [
        Family::Shl,
        Family::Shr,
        Family::Sar,
        Family::Rol,
        Family::Ror,
        Family::Rcl,
        Family::Rcr,
        Family::RclFullTurn,
        Family::RcrFullTurn,
        Family::Shld,
        Family::Shrd,
        Family::Mul,
        Family::Imul,
        Family::ImulMultiOperand,
        Family::Div,
        Family::Idiv,
        Family::Bsf,
        Family::Bsr,
        Family::Tzcnt,
        Family::Lzcnt,
        Family::Bt,
        Family::Bts,
        Family::Btr,
        Family::Btc,
        Family::And,
        Family::Or,
        Family::Xor,
        Family::Test,
    ];

    /// The index into per-family tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The family of a decoded instruction and its operand size in bytes, if it leaves
    /// anything undefined (rotates through CF by a full turn count as `rcl`/`rcr`; where
    /// that matters the divergence report says both).
    pub fn of(ins: &iced_x86::Instruction) -> Option<(Family, usize)> {
        use iced_x86::Mnemonic as M;
        let family = match ins.mnemonic() {
            M::Shl | M::Sal => Family::Shl,
            M::Shr => Family::Shr,
            M::Sar => Family::Sar,
            M::Rol => Family::Rol,
            M::Ror => Family::Ror,
            M::Rcl => Family::Rcl,
            M::Rcr => Family::Rcr,
            M::Shld => Family::Shld,
            M::Shrd => Family::Shrd,
            M::Mul => Family::Mul,
            M::Imul if ins.op_count() == 1 => Family::Imul,
            M::Imul => Family::ImulMultiOperand,
            M::Div => Family::Div,
            M::Idiv => Family::Idiv,
            M::Bsf => Family::Bsf,
            M::Bsr => Family::Bsr,
            M::Tzcnt => Family::Tzcnt,
            M::Lzcnt => Family::Lzcnt,
            M::Bt => Family::Bt,
            M::Bts => Family::Bts,
            M::Btr => Family::Btr,
            M::Btc => Family::Btc,
            M::And => Family::And,
            M::Or => Family::Or,
            M::Xor => Family::Xor,
            M::Test => Family::Test,
            _ => return None,
        };
        let size = match ins.op0_kind() {
            iced_x86::OpKind::Register => ins.op0_register().size(),
            _ => ins.memory_size().size(),
        };
        matches!(size, 1 | 2 | 4 | 8).then_some((family, size))
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Shl => "shl",
            Family::Shr => "shr",
            Family::Sar => "sar",
            Family::Rol => "rol",
            Family::Ror => "ror",
            Family::Rcl => "rcl",
            Family::Rcr => "rcr",
            Family::RclFullTurn => "rcl full turn",
            Family::RcrFullTurn => "rcr full turn",
            Family::Shld => "shld",
            Family::Shrd => "shrd",
            Family::Mul => "mul",
            Family::Imul => "imul",
            Family::ImulMultiOperand => "imul r,r/m",
            Family::Div => "div",
            Family::Idiv => "idiv",
            Family::Bsf => "bsf",
            Family::Bsr => "bsr",
            Family::Tzcnt => "tzcnt",
            Family::Lzcnt => "lzcnt",
            Family::Bt => "bt",
            Family::Bts => "bts",
            Family::Btr => "btr",
            Family::Btc => "btc",
            Family::And => "and",
            Family::Or => "or",
            Family::Xor => "xor",
            Family::Test => "test",
        }
    }

    /// The operand sizes (bytes) the family has.
    pub fn sizes(self) -> &'static [usize] {
        use Family::*;
        match self {
            RclFullTurn | RcrFullTurn => &[1, 2],
            Shld | Shrd | ImulMultiOperand | Bsf | Bsr | Tzcnt | Lzcnt | Bt | Bts | Btr | Btc => {
                &[2, 4, 8]
            }
            _ => &[1, 2, 4, 8],
        }
    }

    /// The flags the family leaves undefined in at least one of its cases.
    pub fn undefined_flags(self) -> u64 {
        use Family::*;
        match self {
            Shl | Shr => AF | OF | CF,
            Sar | Shld | Shrd => AF | OF,
            Rol | Ror | Rcl | Rcr | RclFullTurn | RcrFullTurn => OF,
            Mul | Imul | ImulMultiOperand => SF | ZF | AF | PF,
            Div | Idiv => CF | PF | AF | ZF | SF | OF,
            Bsf | Bsr => CF | OF | SF | AF | PF,
            Tzcnt | Lzcnt | Bt | Bts | Btr | Btc => OF | SF | AF | PF,
            And | Or | Xor | Test => AF,
        }
    }

    /// The undefined flags whose natural value (what the replay CPU computes before the
    /// rules choose) is always 0 for this family: a rule that clears them gives the
    /// natural value too.
    pub fn natural_zero(self) -> u64 {
        use Family::*;
        match self {
            Shl | Shr | Sar | And | Or | Xor | Test => AF,
            _ => 0,
        }
    }

    /// The rules an undefined `flag` of this family may follow, in the order the fit
    /// prefers them when the probe cannot tell them apart (empty for a defined flag).
    pub fn candidates(self, flag: u64) -> &'static [FlagRule] {
        use Family::*;
        use FlagRule::*;
        if self.undefined_flags() & flag == 0 {
            return &[];
        }
        const PLAIN: &[FlagRule] = &[Clear, Set, Keep];
        const FROM_RESULT: &[FlagRule] = &[Result, Clear, Set, Keep];
        const STEPS: &[FlagRule] = &[FirstStep, LastStep, SignChange, Clear, Set, Keep];
        const FULL_TURN: &[FlagRule] = &[Keep, LastStep, FirstStep, SignChange, Clear, Set];
        match (self, flag) {
            (RclFullTurn | RcrFullTurn, _) => FULL_TURN,
            (_, OF) if matches!(self, Shl | Shr | Sar | Rol | Ror | Rcl | Rcr | Shld | Shrd) => {
                STEPS
            }
            (Shl | Shr, CF) => FROM_RESULT,
            (_, SF | ZF | PF) if matches!(self, Mul | Imul | ImulMultiOperand) => FROM_RESULT,
            (_, SF | ZF | PF) if matches!(self, Div | Idiv | Bsf | Bsr | Tzcnt | Lzcnt) => {
                FROM_RESULT
            }
            _ => PLAIN,
        }
    }
}

/// How an undefined flag comes out. What "result" and the steps mean is the family's:
/// see [`super::flags`], where each is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FlagRule {
    /// The flag keeps its value from before the instruction.
    Keep,
    /// Always 0.
    Clear,
    /// Always 1.
    Set,
    /// As if defined by the family's result: SF, ZF and PF of the low half of a product,
    /// of a quotient, of a bit index or count; CF of a shift by the width or more as the
    /// last bit shifted out (0 beyond the width).
    Result,
    /// OF of a multi-bit shift or rotate as the first one-bit step would set it.
    FirstStep,
    /// OF as the last one-bit step would set it (the defined formula applied to the
    /// final result and CF).
    LastStep,
    /// OF set where the sign of the result differs from the destination's before.
    SignChange,
}

impl FlagRule {
    /// Short text for tables: `0`, `1`, `kept`, `result`, `first`, `last`, `sign`.
    pub fn short(self) -> &'static str {
        match self {
            FlagRule::Keep => "kept",
            FlagRule::Clear => "0",
            FlagRule::Set => "1",
            FlagRule::Result => "result",
            FlagRule::FirstStep => "first",
            FlagRule::LastStep => "last",
            FlagRule::SignChange => "sign",
        }
    }
}

/// The destination of `bsf`/`bsr` when the source is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ZeroSourceDestination {
    /// The whole register is left as it was (also the upper half for a 32-bit operand).
    Unchanged,
    /// A 32-bit destination is written with its own value, clearing bits 32-63, as any
    /// 32-bit register write does (16- and 64-bit destinations are unchanged).
    UpperCleared,
}

/// The result (and CF) of 16-bit `shld`/`shrd` by a count above 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WideDoubleShift {
    /// The 48-bit value dst:src:src is shifted (`shrd`: src:src:dst).
    DstSrcSrc,
    /// The 48-bit value dst:src:dst is shifted, a 32-bit rotate of dst:src
    /// (`shrd`: dst:src:dst, a rotate of src:dst).
    DstSrcDst,
}

/// A behaviour the probe saw that no rule reproduces: replay may diverge where a
/// recording depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmodelled {
    pub family: Family,
    /// Operand size in bytes.
    pub size: u8,
    /// The flags (RFLAGS bits) no rule fitted, or 0 where a result did not.
    pub flags: u64,
    /// What did not fit, for people.
    pub detail: String,
}

/// The index of an operand size (1, 2, 4, 8 bytes) in the per-size tables.
#[inline]
pub fn size_index(size: usize) -> usize {
    (size.trailing_zeros() as usize).min(3)
}

/// How the recording host computes everything the replay CPU implements that the
/// architecture leaves undefined. Stored in the recording's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndefinedBehaviour {
    /// `[family][size index][flag index]` (flags in [`FLAGS`] order); entries for defined
    /// flags and absent sizes are not used.
    pub flags: [[[FlagRule; 6]; 4]; Family::COUNT],
    /// `bsf` and `bsr` with a zero source, per size index.
    pub zero_source: [[ZeroSourceDestination; 4]; 2],
    /// 16-bit `shld` and `shrd` by counts above 16.
    pub wide_double_shift: [WideDoubleShift; 2],
    /// What the probe could not fit (empty for a host the replay CPU models fully).
    #[serde(deserialize_with = "crate::trace::limits::unmodelled")]
    pub unmodelled: Vec<Unmodelled>,
}

impl Default for UndefinedBehaviour {
    /// [`UndefinedBehaviour::legacy`].
    fn default() -> Self {
        Self::legacy()
    }
}

impl UndefinedBehaviour {
    /// The answers replay gave before the recorder measured them (format 2 recordings,
    /// which replay with these): those of the host the first recordings were made on.
    pub fn legacy() -> Self {
        use FlagRule::*;
        let mut b = UndefinedBehaviour::uniform(Keep);
        for f in Family::ALL {
            let (af, of, cf, szp) = match f {
                Family::Shl => (Set, LastStep, Result, Keep),
                Family::Shr => (Set, FirstStep, Result, Keep),
                Family::Sar => (Set, Clear, Keep, Keep),
                Family::Rol
                | Family::Ror
                | Family::Rcl
                | Family::Rcr
                | Family::RclFullTurn
                | Family::RcrFullTurn => (Keep, LastStep, Keep, Keep),
                Family::Shld | Family::Shrd => (Clear, SignChange, Keep, Keep),
                Family::Mul | Family::Imul | Family::ImulMultiOperand => {
                    (Clear, Keep, Keep, Result)
                }
                Family::And | Family::Or | Family::Xor | Family::Test => (Clear, Keep, Keep, Keep),
                _ => (Keep, Keep, Keep, Keep),
            };
            for s in 0..4 {
                b.set_rule(f, 1 << s, AF, af);
                b.set_rule(f, 1 << s, OF, of);
                b.set_rule(f, 1 << s, CF, cf);
                for flag in [SF, ZF, PF] {
                    b.set_rule(f, 1 << s, flag, szp);
                }
            }
        }
        b.zero_source = [[ZeroSourceDestination::Unchanged; 4]; 2];
        b.wide_double_shift = [WideDoubleShift::DstSrcSrc; 2];
        b
    }

    /// Every flag of every family following `rule` (where the fit evaluates a
    /// candidate for all flags at once).
    pub fn uniform(rule: FlagRule) -> Self {
        UndefinedBehaviour {
            flags: [[[rule; 6]; 4]; Family::COUNT],
            zero_source: [[ZeroSourceDestination::Unchanged; 4]; 2],
            wide_double_shift: [WideDoubleShift::DstSrcSrc; 2],
            unmodelled: Vec::new(),
        }
    }

    fn flag_index(flag: u64) -> usize {
        FLAGS.iter().position(|&(f, _)| f == flag).unwrap_or(0)
    }

    /// The rule of one flag of a family at an operand size.
    pub fn rule(&self, family: Family, size: usize, flag: u64) -> FlagRule {
        self.flags[family.index()][size_index(size)][Self::flag_index(flag)]
    }

    pub fn set_rule(&mut self, family: Family, size: usize, flag: u64, rule: FlagRule) {
        self.flags[family.index()][size_index(size)][Self::flag_index(flag)] = rule;
    }

    /// The undefined flags of one family at one size as `AF=0 OF=first`, in [`FLAGS`]
    /// order.
    pub fn describe(&self, family: Family, size: usize) -> String {
        let mut parts = Vec::new();
        for (flag, name) in FLAGS {
            if family.undefined_flags() & flag != 0 {
                parts.push(format!("{name}={}", self.rule(family, size, flag).short()));
            }
        }
        match family {
            Family::Bsf | Family::Bsr => {
                let z = self.zero_source[(family == Family::Bsr) as usize][size_index(size)];
                parts.push(
                    match z {
                        ZeroSourceDestination::Unchanged => "zero-source dst=unchanged",
                        ZeroSourceDestination::UpperCleared => "zero-source dst=upper-cleared",
                    }
                    .to_string(),
                );
            }
            Family::Shld | Family::Shrd if size == 2 => {
                let w = self.wide_double_shift[(family == Family::Shrd) as usize];
                parts.push(
                    match w {
                        WideDoubleShift::DstSrcSrc => "count>16 dst:src:src",
                        WideDoubleShift::DstSrcDst => "count>16 dst:src:dst",
                    }
                    .to_string(),
                );
            }
            _ => {}
        }
        parts.join(" ")
    }

    /// One line per family: its rules, once where every operand size agrees, else per
    /// size (`16: ... | 32: ...`). For `krr-tui host`, `info` and CI logs.
    pub fn table(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for f in Family::ALL {
            let per_size: Vec<(usize, String)> = f
                .sizes()
                .iter()
                .map(|&s| (s, self.describe(f, s)))
                .collect();
            let text = if per_size.iter().all(|(_, d)| *d == per_size[0].1)
                && !matches!(f, Family::Shld | Family::Shrd)
            {
                per_size[0].1.clone()
            } else {
                per_size
                    .iter()
                    .map(|(s, d)| format!("{}: {d}", s * 8))
                    .collect::<Vec<_>>()
                    .join(" | ")
            };
            lines.push(format!("{:<14}{text}", f.name()));
        }
        for u in &self.unmodelled {
            lines.push(format!(
                "NOT MODELLED  {} {}-bit: {}",
                u.family.name(),
                u.size as usize * 8,
                u.detail
            ));
        }
        lines
    }
}

/// One family's rules at one operand size, as bit masks over RFLAGS: each undefined
/// flag is in at most one mask; one in none is cleared. [`FlagRule::FirstStep`] is in
/// `result`: the flag functions compute OF as the first one-bit step would (which is
/// its defined value for a count of 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlagMasks {
    pub keep: u64,
    pub set: u64,
    pub result: u64,
    pub last_step: u64,
    pub sign_change: u64,
}

impl FlagMasks {
    /// Whether [`Self::resolve`] gives every flag in `undefined` its natural value,
    /// knowing that the natural value of those in `zero` is 0 (so that clearing them
    /// gives it too).
    pub fn is_natural(&self, undefined: u64, zero: u64) -> bool {
        (self.result | zero) & undefined == undefined
            && (self.keep | self.set | self.last_step | self.sign_change) & undefined == 0
    }

    /// The status flags of an instruction: `natural` where the architecture defines
    /// them; for the flags in `undefined`, the rules' choice between the old flags, 1,
    /// `natural`, and the OF candidates `last` and `sign` (RFLAGS words whose OF bit is
    /// the candidate, 0 where the family has none).
    #[inline(always)]
    pub fn resolve(&self, undefined: u64, old: u64, natural: u64, last: u64, sign: u64) -> u64 {
        let chosen = (old & self.keep)
            | self.set
            | (natural & self.result)
            | (last & self.last_step)
            | (sign & self.sign_change);
        (natural & !undefined) | (chosen & undefined)
    }
}

/// [`UndefinedBehaviour`] compiled for the replay CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndefinedRules {
    masks: [[FlagMasks; 4]; Family::COUNT],
    pub zero_source: [[ZeroSourceDestination; 4]; 2],
    pub wide_double_shift: [WideDoubleShift; 2],
}

impl Default for UndefinedRules {
    fn default() -> Self {
        UndefinedRules::new(&UndefinedBehaviour::default())
    }
}

impl UndefinedRules {
    pub fn new(b: &UndefinedBehaviour) -> Self {
        let mut masks = [[FlagMasks::default(); 4]; Family::COUNT];
        for f in Family::ALL {
            for (si, m) in masks[f.index()].iter_mut().enumerate() {
                for (fi, &(flag, _)) in FLAGS.iter().enumerate() {
                    if f.undefined_flags() & flag == 0 {
                        continue;
                    }
                    let target = match b.flags[f.index()][si][fi] {
                        FlagRule::Keep => &mut m.keep,
                        FlagRule::Clear => continue,
                        FlagRule::Set => &mut m.set,
                        FlagRule::Result | FlagRule::FirstStep => &mut m.result,
                        FlagRule::LastStep => &mut m.last_step,
                        FlagRule::SignChange => &mut m.sign_change,
                    };
                    *target |= flag;
                }
            }
        }
        UndefinedRules {
            masks,
            zero_source: b.zero_source,
            wide_double_shift: b.wide_double_shift,
        }
    }

    /// The masks of `family` at operand size `size` (bytes).
    #[inline(always)]
    pub fn masks(&self, family: Family, size: usize) -> &FlagMasks {
        &self.masks[family as usize][size_index(size)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_listed_in_index_order() {
        for (i, f) in Family::ALL.iter().enumerate() {
            assert_eq!(f.index(), i, "{f:?}");
        }
    }

    #[test]
    fn every_undefined_flag_has_candidates_and_defined_ones_none() {
        for f in Family::ALL {
            for (flag, name) in FLAGS {
                let c = f.candidates(flag);
                assert_eq!(
                    c.is_empty(),
                    f.undefined_flags() & flag == 0,
                    "{} {name}",
                    f.name()
                );
            }
        }
    }

    #[test]
    fn resolve_takes_each_rule_from_its_source() {
        let m = FlagMasks {
            keep: AF,
            set: PF,
            result: SF,
            last_step: OF,
            sign_change: 0,
        };
        let undefined = AF | PF | SF | OF | ZF;
        // old has AF, natural has SF and CF (defined) and ZF (undefined: cleared),
        // last has OF.
        let f = m.resolve(undefined, AF, SF | CF | ZF, OF, OF);
        assert_eq!(f, AF | PF | SF | CF | OF);
    }

    #[test]
    fn compiled_masks_follow_the_table() {
        let mut b = UndefinedBehaviour::uniform(FlagRule::Clear);
        b.set_rule(Family::Shr, 4, AF, FlagRule::Set);
        b.set_rule(Family::Shr, 4, OF, FlagRule::FirstStep);
        // A rule for a flag the family defines is ignored.
        b.set_rule(Family::Shr, 4, ZF, FlagRule::Set);
        let r = UndefinedRules::new(&b);
        let m = r.masks(Family::Shr, 4);
        assert_eq!((m.set, m.result, m.keep), (AF, OF, 0));
        assert_eq!(*r.masks(Family::Shr, 8), FlagMasks::default());
    }

    #[test]
    fn the_table_names_every_family_once() {
        let lines = UndefinedBehaviour::legacy().table();
        assert_eq!(lines.len(), Family::COUNT);
        assert!(lines[0].starts_with("shl") && lines[0].contains("AF=1"));
        assert!(lines.iter().any(|l| l.contains("count>16 dst:src:src")));
    }
}
