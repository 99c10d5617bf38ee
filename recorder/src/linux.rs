//! What a Linux guest needs from this recorder beyond the boot protocol: the CPU
//! features it must not use, taken out of the CPUID table its vCPU is given, and the
//! kernel command line that turns off the ones it still sees.
//!
//! Each feature of [`UNREPLAYABLE_FEATURES`] has instructions that either this kind of
//! host cannot run at ring 0 (KVM emulates the guest kernel's code and lacks them: a
//! KVM internal error ends the recording) or the replay CPU does not implement. The
//! recorder clears their bits in the table it gives the vCPU (KVM_SET_CPUID2), observes
//! what a guest then sees ([`krr_kvm::probe::observed_cpuid_given`]), and names in
//! `clearcpuid=` only the features the guest still observes as present: the list is
//! measured on the recording host, not written for one.

use krr_engine::state::CpuidEntry;

/// One of a `cpuid` leaf's four result registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuidReg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// A CPU feature a Linux guest must not use under this recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestFeature {
    /// Linux's name for it (`clearcpuid=` takes these).
    pub name: &'static str,
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: CpuidReg,
    pub bit: u8,
    /// What fails when the guest uses it.
    pub why: &'static str,
}

const fn feature(
    name: &'static str,
    leaf: u32,
    subleaf: u32,
    reg: CpuidReg,
    bit: u8,
    why: &'static str,
) -> GuestFeature {
    GuestFeature {
        name,
        leaf,
        subleaf,
        reg,
        bit,
        why,
    }
}

use CpuidReg::{Ebx, Ecx, Edx};

/// The features a Linux guest must not use here: the one place they are listed.
pub const UNREPLAYABLE_FEATURES: &[GuestFeature] = &[
    // `clearcpuid=xsave` rather than `noxsave`, which does the same (both clear the
    // bit in cpu_parse_early_param) but is no registered parameter in 6.1: the kernel
    // would pass it on to /init as an argument.
    feature(
        "xsave",
        1,
        0,
        Ecx,
        26,
        "xsave/xrstor (every context switch): a KVM internal error at ring 0 here, \
         and the replay CPU has no xsave family",
    ),
    feature(
        "smap",
        7,
        0,
        Ebx,
        20,
        "stac/clac around every user access: not emulated at ring 0 here",
    ),
    feature(
        "smep",
        7,
        0,
        Ebx,
        7,
        "CR4.SMEP: the replay CPU does not model supervisor-mode execution prevention",
    ),
    feature(
        "popcnt",
        1,
        0,
        Ecx,
        23,
        "popcnt (bitmap weights): not in the replay CPU",
    ),
    feature(
        "rdrand",
        1,
        0,
        Ecx,
        30,
        "rdrand: a random value neither KVM exits on nor the replay CPU can know",
    ),
    feature(
        "rdseed",
        7,
        0,
        Ebx,
        18,
        "rdseed: a random value neither KVM exits on nor the replay CPU can know",
    ),
    feature(
        "fsgsbase",
        7,
        0,
        Ebx,
        0,
        "rdfsbase/wrgsbase on context switches: not in the replay CPU",
    ),
    feature(
        "invpcid",
        7,
        0,
        Ebx,
        10,
        "invpcid (TLB flushes): not emulated at ring 0 here",
    ),
    feature(
        "pcid",
        1,
        0,
        Ecx,
        17,
        "CR4.PCIDE and tagged CR3 writes: not modelled by the replay CPU",
    ),
    feature(
        "rdpid",
        7,
        0,
        Ecx,
        22,
        "rdpid (the CPU number): not in the replay CPU",
    ),
    feature(
        "movbe",
        1,
        0,
        Ecx,
        22,
        "movbe (byte-swapping loads in crc and network code): not in the replay CPU",
    ),
    feature(
        "clflushopt",
        7,
        0,
        Ebx,
        23,
        "clflushopt: not emulated at ring 0 here",
    ),
    feature("clwb", 7, 0, Ebx, 24, "clwb: not emulated at ring 0 here"),
    feature(
        "umip",
        7,
        0,
        Ecx,
        2,
        "CR4.UMIP: the replay CPU does not model user-mode instruction prevention",
    ),
    feature(
        "bmi1",
        7,
        0,
        Ebx,
        3,
        "andn/blsr/tzcnt forms the alternatives patch in: not in the replay CPU",
    ),
    feature(
        "bmi2",
        7,
        0,
        Ebx,
        8,
        "shrx/shlx/bzhi/pdep: not in the replay CPU",
    ),
    feature(
        "avx",
        1,
        0,
        Ecx,
        28,
        "VEX-encoded code (crypto, raid, memcpy variants): not in the replay CPU",
    ),
    feature(
        "avx2",
        7,
        0,
        Ebx,
        5,
        "VEX-encoded code: not in the replay CPU",
    ),
    feature(
        "avx512f",
        7,
        0,
        Ebx,
        16,
        "EVEX-encoded code: not in the replay CPU",
    ),
    feature(
        "erms",
        7,
        0,
        Ebx,
        9,
        "`rep movsb` as memcpy/memset/copy_user: KVM's ring-0 emulation here stops at \
         every iteration (each byte an exit)",
    ),
    feature(
        "fsrm",
        7,
        0,
        Edx,
        4,
        "`rep movsb` for short copies: as erms",
    ),
    feature(
        "rdtscp",
        0x8000_0001,
        0,
        Edx,
        27,
        "rdtscp in rdtsc_ordered(): a time stamp the agent does not record",
    ),
    feature(
        "waitpkg",
        7,
        0,
        Ecx,
        5,
        "tpause/umwait in delay loops: not in the replay CPU and not recorded",
    ),
];

fn register(entry: &CpuidEntry, reg: CpuidReg) -> u32 {
    match reg {
        CpuidReg::Eax => entry.eax,
        CpuidReg::Ebx => entry.ebx,
        CpuidReg::Ecx => entry.ecx,
        CpuidReg::Edx => entry.edx,
    }
}

fn register_mut(entry: &mut CpuidEntry, reg: CpuidReg) -> &mut u32 {
    match reg {
        CpuidReg::Eax => &mut entry.eax,
        CpuidReg::Ebx => &mut entry.ebx,
        CpuidReg::Ecx => &mut entry.ecx,
        CpuidReg::Edx => &mut entry.edx,
    }
}

impl GuestFeature {
    fn is_entry(&self, e: &CpuidEntry) -> bool {
        e.function == self.leaf && e.index == self.subleaf
    }

    /// Whether `table` reports the feature (a leaf it does not have reports none).
    pub fn present_in(&self, table: &[CpuidEntry]) -> bool {
        table
            .iter()
            .find(|e| self.is_entry(e))
            .is_some_and(|e| register(e, self.reg) & (1 << self.bit) != 0)
    }
}

/// `table` with every feature of [`UNREPLAYABLE_FEATURES`] cleared: the table a Linux
/// guest's vCPU is given.
pub fn without_unreplayable_features(table: &[CpuidEntry]) -> Vec<CpuidEntry> {
    let mut out = table.to_vec();
    for f in UNREPLAYABLE_FEATURES {
        for e in out.iter_mut().filter(|e| f.is_entry(e)) {
            *register_mut(e, f.reg) &= !(1u32 << f.bit);
        }
    }
    out
}

/// Most characters of `clearcpuid=`'s value that Linux 6.1 reads (a 128-byte buffer in
/// `cpu_parse_early_param`): the rest would be cut off silently.
pub const CLEARCPUID_MAX: usize = 127;

/// Why the recorder cannot make the command line a Linux guest needs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandLineError {
    #[error(
        "the guest still observes {count} features this recorder must turn off \
         (clearcpuid={value}): {} characters even as numbers, more than the \
         {CLEARCPUID_MAX} Linux reads",
        value.len()
    )]
    ClearCpuidTooLong { count: usize, value: String },
}

/// The parameters every Linux guest gets here, whatever the CPU: the console on the
/// recorder's 16550 (COM1), and no speculation mitigations (they add `verw` on every
/// return to user mode and speculation-control MSR writes, neither of which the replay
/// CPU has).
const BASE_PARAMETERS: &[&str] = &["console=ttyS0", "mitigations=off"];

/// Linux's number for a feature bit (`clearcpuid=` takes numbers too): 32 times the
/// word its register has in Linux's capability array (`cpufeatures.h`; these words
/// have been stable since the array was introduced) plus the bit.
fn linux_feature_number(f: &GuestFeature) -> Option<u32> {
    let word = match (f.leaf, f.subleaf, f.reg) {
        (1, 0, CpuidReg::Edx) => 0,
        (0x8000_0001, 0, CpuidReg::Edx) => 1,
        (1, 0, CpuidReg::Ecx) => 4,
        (7, 0, CpuidReg::Ebx) => 9,
        (7, 0, CpuidReg::Ecx) => 16,
        (7, 0, CpuidReg::Edx) => 18,
        _ => return None,
    };
    Some(word * 32 + u32::from(f.bit))
}

/// The command line this host needs for a Linux guest whose CPU, as `observed`, still
/// shows features of [`UNREPLAYABLE_FEATURES`].
pub fn host_command_line(observed: &[CpuidEntry]) -> Result<String, CommandLineError> {
    host_command_line_for(UNREPLAYABLE_FEATURES, observed)
}

/// [`BASE_PARAMETERS`], then `clearcpuid=` with the features of `features` that
/// `observed` shows: by name where the names fit in what Linux reads, else by number.
fn host_command_line_for(
    features: &[GuestFeature],
    observed: &[CpuidEntry],
) -> Result<String, CommandLineError> {
    let cleared: Vec<&GuestFeature> = features.iter().filter(|f| f.present_in(observed)).collect();
    let mut words: Vec<String> = BASE_PARAMETERS.iter().map(|s| s.to_string()).collect();
    if !cleared.is_empty() {
        let names = cleared.iter().map(|f| f.name).collect::<Vec<_>>().join(",");
        let value = if names.len() <= CLEARCPUID_MAX {
            names
        } else {
            let numbers = cleared
                .iter()
                .map(|f| linux_feature_number(f).map_or(f.name.to_string(), |n| n.to_string()))
                .collect::<Vec<_>>()
                .join(",");
            if numbers.len() > CLEARCPUID_MAX {
                return Err(CommandLineError::ClearCpuidTooLong {
                    count: cleared.len(),
                    value: numbers,
                });
            }
            numbers
        };
        words.push(format!("clearcpuid={value}"));
    }
    Ok(words.join(" "))
}

/// The kernel's command line: what the host needs, then the user's words (last, so
/// that where both give a parameter the user's wins).
pub fn kernel_command_line(host: &str, user: &str) -> String {
    match (host.trim(), user.trim()) {
        (h, "") => h.to_string(),
        ("", u) => u.to_string(),
        (h, u) => format!("{h} {u}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            flags: 0,
            eax: 0,
            ebx,
            ecx,
            edx,
        }
    }

    /// A CPU with every feature of the table (and others) present.
    fn full_table() -> Vec<CpuidEntry> {
        vec![
            entry(0, 0, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            entry(1, 0, 0x0800, u32::MAX, u32::MAX),
            entry(7, 0, u32::MAX, u32::MAX, u32::MAX),
            entry(7, 1, u32::MAX, u32::MAX, u32::MAX),
            entry(0x8000_0001, 0, 0, u32::MAX, u32::MAX),
        ]
    }

    #[test]
    fn names_are_unique_and_bits_distinct() {
        for (i, a) in UNREPLAYABLE_FEATURES.iter().enumerate() {
            for b in &UNREPLAYABLE_FEATURES[i + 1..] {
                assert_ne!(a.name, b.name);
                assert!(
                    (a.leaf, a.subleaf, a.reg, a.bit) != (b.leaf, b.subleaf, b.reg, b.bit),
                    "{} and {} are one bit",
                    a.name,
                    b.name
                );
            }
            assert!(a.bit < 32 && !a.why.is_empty());
        }
    }

    #[test]
    fn clearing_takes_out_exactly_the_listed_bits() {
        let full = full_table();
        let cleared = without_unreplayable_features(&full);
        for f in UNREPLAYABLE_FEATURES {
            assert!(f.present_in(&full), "{}", f.name);
            assert!(!f.present_in(&cleared), "{}", f.name);
        }
        // Leaf 1 ECX: exactly pcid, movbe, popcnt, xsave, avx, rdrand cleared.
        let leaf1 = cleared.iter().find(|e| e.function == 1).unwrap();
        let taken = [17, 22, 23, 26, 28, 30]
            .iter()
            .fold(0u32, |m, b| m | 1 << b);
        assert_eq!(leaf1.ecx, !taken);
        assert_eq!(leaf1.edx, u32::MAX, "leaf 1 EDX untouched");
        // Subleaf 1 of leaf 7 and the vendor leaf are left alone.
        assert_eq!(cleared[3], full[3]);
        assert_eq!(cleared[0], full[0]);
        // 0x80000001: only rdtscp.
        assert_eq!(cleared[4].edx, !(1 << 27));
    }

    #[test]
    fn a_cpu_that_honours_the_table_needs_only_the_base_parameters() {
        let observed = without_unreplayable_features(&full_table());
        assert_eq!(
            host_command_line(&observed).unwrap(),
            "console=ttyS0 mitigations=off"
        );
    }

    #[test]
    fn features_still_observed_are_turned_off_on_the_command_line() {
        // As on a host whose KVM emulates ring 0: leaf 1 ECX shows the host's popcnt,
        // xsave and avx, and leaf 7 its erms, whatever the table said.
        let mut observed = without_unreplayable_features(&full_table());
        observed[1].ecx |= 1 << 23 | 1 << 26 | 1 << 28;
        observed[2].ebx |= 1 << 9;
        assert_eq!(
            host_command_line(&observed).unwrap(),
            "console=ttyS0 mitigations=off clearcpuid=xsave,popcnt,avx,erms"
        );
    }

    #[test]
    fn a_cpu_that_ignores_the_table_gets_every_feature_by_number_within_linux_s_limit() {
        // Nothing honoured: the names would pass Linux's limit, the numbers fit.
        let line = host_command_line(&full_table()).unwrap();
        let value = line.split("clearcpuid=").nth(1).unwrap();
        assert!(value.len() <= CLEARCPUID_MAX, "{} characters", value.len());
        let numbers: Vec<u32> = value.split(',').map(|n| n.parse().unwrap()).collect();
        assert_eq!(numbers.len(), UNREPLAYABLE_FEATURES.len(), "{value}");
        // Linux's numbers (cpufeatures.h): X86_FEATURE_SMAP is 9*32+20,
        // X86_FEATURE_POPCNT 4*32+23, X86_FEATURE_RDTSCP 1*32+27, X86_FEATURE_FSRM
        // 18*32+4, X86_FEATURE_XSAVE 4*32+26.
        for n in [308, 151, 59, 580, 154] {
            assert!(numbers.contains(&n), "{n} in {value}");
        }
    }

    #[test]
    fn an_observed_list_longer_than_linux_reads_is_an_error() {
        // 40 features of a leaf Linux has no number for, with 5-character names.
        let names: Vec<&'static str> = (0..40)
            .map(|i| &*Box::leak(format!("ft{i:03}").into_boxed_str()))
            .collect();
        let features: Vec<GuestFeature> = names
            .iter()
            .enumerate()
            .map(|(i, n)| feature(n, 0x4000_0000 + i as u32, 0, Ebx, 0, "test"))
            .collect();
        let observed: Vec<CpuidEntry> = (0..40)
            .map(|i| entry(0x4000_0000 + i, 0, 1, 0, 0))
            .collect();
        let err = host_command_line_for(&features, &observed).unwrap_err();
        assert!(
            matches!(&err, CommandLineError::ClearCpuidTooLong { count: 40, value } if value.len() > CLEARCPUID_MAX),
            "{err}"
        );
        // Ten of them fit by name.
        let line = host_command_line_for(&features[..10], &observed).unwrap();
        assert!(
            line.ends_with(
                "clearcpuid=ft000,ft001,ft002,ft003,ft004,ft005,ft006,ft007,ft008,ft009"
            ),
            "{line}"
        );
    }

    #[test]
    fn the_user_s_words_come_last() {
        assert_eq!(
            kernel_command_line(
                "console=ttyS0 mitigations=off",
                "krr.boot_only console=tty0"
            ),
            "console=ttyS0 mitigations=off krr.boot_only console=tty0"
        );
        assert_eq!(kernel_command_line("a", "  "), "a");
        assert_eq!(kernel_command_line("", "b"), "b");
    }
}
