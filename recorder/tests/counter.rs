//! The counter source detection against this host's KVM.

use krr_recorder::counter::KvmInsnEmulation;

#[test]
fn insn_emulation_counts_ring0_exactly_where_kvm_emulates_ring0() {
    if let Err(why) = krr_recorder::kvm_available() {
        println!("skipped: {why}");
        return;
    }
    let emulating_host = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let counts = KvmInsnEmulation::host_counts_ring0().expect("calibration VM runs");
    assert_eq!(
        counts, emulating_host,
        "insn_emulation is an exact ring-0 counter exactly on hosts that emulate ring 0"
    );
}
