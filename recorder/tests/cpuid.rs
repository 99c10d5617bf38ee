//! The CPUID table the recorder stores is what a guest executing `cpuid` observes.

use krr_kvm::long_mode::load_flat_code;
use krr_recorder::cpuid::{observe, pin_current_thread};

#[test]
fn recorded_cpuid_is_what_the_guest_observes() {
    if let Err(why) = krr_recorder::kvm_available() {
        println!("skipped: {why}");
        return;
    }
    pin_current_thread().unwrap();
    let mut vm = krr_recorder::vm::create(4 << 20, None).unwrap();
    let observed = observe(vm.cpuid()).unwrap();
    assert_eq!(observed.len(), vm.cpuid().len());
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        // Where KVM emulates ring 0 the guest does not see the table it was given, which
        // is why the recorder stores what it observes.
        let leaf1 = |t: &[krr_engine::state::CpuidEntry]| {
            *t.iter().find(|e| e.function == 1).expect("leaf 1")
        };
        assert_ne!(leaf1(&observed), leaf1(vm.cpuid()));
    }
    // A guest of our own reads leaves 0, 1 and 0x80000001 (EAX..EDX stored at
    // 0x300000 + 16 i, clear of the page tables).
    let leaves = [0u32, 1, 0x8000_0001];
    let mut code = vec![0xbf, 0x00, 0x00, 0x30, 0x00]; // mov edi, 0x300000
    for leaf in leaves {
        code.push(0xb8);
        code.extend_from_slice(&leaf.to_le_bytes()); // mov eax, leaf
        code.extend_from_slice(&[0x31, 0xc9, 0x0f, 0xa2]); // xor ecx, ecx; cpuid
        code.extend_from_slice(&[0x89, 0x07, 0x89, 0x5f, 0x04, 0x89, 0x4f, 0x08]);
        code.extend_from_slice(&[0x89, 0x57, 0x0c, 0x48, 0x83, 0xc7, 0x10]);
    }
    code.extend_from_slice(&[0xe6, 0x80]); // out 0x80, al
    load_flat_code(&mut vm, &code).unwrap();
    vm.run_to_port(0x80, "cpuid test guest").unwrap();
    let mut out = vec![0u8; 16 * leaves.len()];
    vm.read(0x30_0000, &mut out).unwrap();
    for (i, leaf) in leaves.iter().enumerate() {
        let w = |k: usize| {
            u32::from_le_bytes(out[16 * i + 4 * k..16 * i + 4 * k + 4].try_into().unwrap())
        };
        let e = observed
            .iter()
            .find(|e| e.function == *leaf && e.index == 0)
            .expect("leaf in the table");
        assert_eq!(
            (e.eax, e.ebx, e.ecx, e.edx),
            (w(0), w(1), w(2), w(3)),
            "leaf {leaf:#x}"
        );
    }
}

/// The host's undefined results and bit-scan behaviour, measured for the header: every
/// one is modelled on this host; where KVM emulates ring 0 (PVM) `tzcnt`/`lzcnt` run as
/// `bsf`/`bsr`; a host that runs ring 0 natively follows its CPU (tzcnt with BMI1, bsf
/// without), and replay counts exactly where the host did.
#[test]
fn quirks_probe_measures_this_host() {
    if let Err(why) = krr_recorder::kvm_available() {
        println!("skipped: {why}");
        return;
    }
    krr_recorder::cpuid::pin_current_thread().unwrap();
    let vm = krr_recorder::vm::create(2 << 20, None).unwrap();
    let cpuid = krr_recorder::cpuid::observe(vm.cpuid()).unwrap();
    let quirks = krr_recorder::quirks::measure(&cpuid).unwrap();
    for line in quirks.undefined.table() {
        println!("{line}");
    }
    assert!(
        quirks.undefined.unmodelled.is_empty(),
        "{:#?}",
        quirks.undefined.unmodelled
    );
    let emulated = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let bmi1 = std::arch::x86_64::__cpuid_count(7, 0).ebx & (1 << 3) != 0;
    let guest_bmi1 = cpuid
        .iter()
        .any(|e| e.function == 7 && e.index == 0 && e.ebx & (1 << 3) != 0);
    println!("ring 0 emulated: {emulated}, host BMI1: {bmi1}, guest BMI1: {guest_bmi1}");
    let host_counts = !emulated && bmi1;
    let replay_counts = guest_bmi1 && !quirks.bit_scan_ignores_rep;
    assert_eq!(replay_counts, host_counts);
}

/// A Linux guest's vCPU is given the supported table without the features it must not
/// use; the command line names exactly those of them it still observes (which ones
/// depends on the host: where KVM emulates ring 0, leaf 1 ECX and leaf 7 EBX show
/// the host's bits whatever the table says).
#[test]
fn a_linux_guest_s_command_line_turns_off_what_it_still_observes() {
    use krr_recorder::linux::{
        UNREPLAYABLE_FEATURES, host_command_line, without_unreplayable_features,
    };
    if let Err(why) = krr_recorder::kvm_available() {
        println!("skipped: {why}");
        return;
    }
    krr_recorder::cpuid::pin_current_thread().unwrap();
    let supported = krr_kvm::Vm::supported_cpuid().unwrap();
    let given = without_unreplayable_features(&supported);
    let vm = krr_recorder::vm::create(2 << 20, Some(&given)).unwrap();
    assert_eq!(vm.cpuid(), &given[..]);
    let observed = observe(vm.cpuid()).unwrap();
    let line = host_command_line(&observed).unwrap();
    println!("{line}");
    assert!(line.starts_with("console=ttyS0 mitigations=off"), "{line}");
    let clear: Vec<&str> = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("clearcpuid="))
        .map_or(Vec::new(), |v| v.split(',').collect());
    for f in UNREPLAYABLE_FEATURES {
        // By name here: what this host leaves fits in Linux's 127 characters.
        let named = clear.contains(&f.name);
        assert_eq!(
            named,
            f.present_in(&observed),
            "{}: observed {}, command line {line}",
            f.name,
            f.present_in(&observed)
        );
    }
}
