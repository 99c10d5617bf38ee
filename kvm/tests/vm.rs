//! The KVM layer against this host's KVM: the engine's CPU state goes in and comes back
//! out unchanged, and a guest looping inside KVM is stopped by a time limit.

use std::time::{Duration, Instant};

use krr_engine::state::{Segment, msr};
use krr_kvm::kick::TimeLimit;
use krr_kvm::long_mode::{self, FLAT_CODE_GPA};
use krr_kvm::{Error, Vm};

fn kvm_here() -> bool {
    match krr_kvm::available() {
        Ok(()) => true,
        Err(e) => {
            println!("skipped: /dev/kvm: {e}");
            false
        }
    }
}

#[test]
fn the_cpu_state_set_is_the_cpu_state_read() {
    if !kvm_here() {
        return;
    }
    let mut vm = Vm::with_ram(2 << 20).unwrap();
    long_mode::build(&vm).unwrap();
    let mut st = long_mode::entry_state(FLAT_CODE_GPA);
    for (i, g) in st.gpr.iter_mut().enumerate() {
        *g = 0x0101_0101_0101_0101 * (i as u64 + 1);
    }
    st.rflags = 0x2 | 1 << 0 | 1 << 6 | 1 << 11;
    st.cr2 = 0xdead_b000;
    st.cr8 = 3;
    // An unusable segment: FS with a null selector, as the replay CPU loads it.
    st.seg[krr_engine::state::seg::FS] = Segment {
        selector: 0,
        base: 0x7fff_0000,
        limit: 0,
        attr: 0,
    };
    st.set_msr(msr::IA32_STAR, 0x0023_0010_0000_0000);
    st.set_msr(msr::IA32_LSTAR, 0xffff_ffff_8100_0000);
    st.set_msr(msr::IA32_FMASK, 0x4700);
    st.set_msr(msr::IA32_KERNEL_GS_BASE, 0xffff_8880_0000_0000);
    st.set_msr(msr::IA32_PAT, 0x0007_0406_0007_0406);
    vm.set_cpu_state(&st).unwrap();
    let back = vm.cpu_state().unwrap();
    assert_eq!(back.gpr, st.gpr);
    assert_eq!((back.rip, back.rflags), (st.rip, st.rflags));
    assert_eq!(back.seg, st.seg);
    assert_eq!((back.tr, back.ldtr), (st.tr, st.ldtr));
    assert_eq!((back.gdtr, back.idtr), (st.gdtr, st.idtr));
    assert_eq!(
        (back.cr0, back.cr2, back.cr3, back.cr4, back.cr8, back.efer),
        (st.cr0, st.cr2, st.cr3, st.cr4, st.cr8, st.efer)
    );
    for &(index, value) in &st.msrs {
        assert_eq!(back.msr(index), Some(value), "MSR {index:#x}");
    }
    assert_eq!(back.xcr0 & 1, 1, "x87 is always on in XCR0");
}

#[test]
fn a_refused_msr_is_an_error_naming_it() {
    if !kvm_here() {
        return;
    }
    let mut vm = Vm::with_ram(2 << 20).unwrap();
    let mut st = long_mode::entry_state(FLAT_CODE_GPA);
    st.set_msr(msr::IA32_STAR, 0);
    // Not an MSR on any CPU.
    st.set_msr(0x4000_1234, 1);
    match vm.set_cpu_state(&st) {
        Err(Error::MsrRefused { refused, .. }) => assert_eq!(refused, 0x4000_1234),
        other => panic!("expected a refused MSR, got {other:?}"),
    }
}

#[test]
fn a_guest_looping_in_kvm_is_kicked_out_at_its_time_limit() {
    if !kvm_here() {
        return;
    }
    let mut vm = Vm::with_ram(2 << 20).unwrap();
    long_mode::load_flat_code(&mut vm, &[0xeb, 0xfe]).unwrap(); // jmp $
    for _ in 0..2 {
        let started = Instant::now();
        let limit = TimeLimit::start(vm.accept_kicks(), Duration::from_millis(100));
        let err = match vm.vcpu_mut().run() {
            Ok(exit) => panic!("unexpected exit {exit:?}"),
            Err(e) => e,
        };
        drop(limit);
        assert_eq!(err.errno(), libc::EINTR);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(vm.cpu_state().unwrap().rip, FLAT_CODE_GPA);
        // Kicked once, the vCPU stays stopped until the kick is cleared.
        assert_eq!(vm.vcpu_mut().run().unwrap_err().errno(), libc::EINTR);
        assert!(matches!(
            vm.run_to_port(0x80, "a looping guest"),
            Err(Error::Kvm { op: "KVM_RUN", .. })
        ));
        vm.clear_kick();
    }
}

#[test]
fn run_to_port_reports_another_exit() {
    if !kvm_here() {
        return;
    }
    let mut vm = Vm::with_ram(2 << 20).unwrap();
    long_mode::load_flat_code(&mut vm, &[0xf4]).unwrap(); // hlt
    let err = vm.run_to_port(0x80, "a halting guest").unwrap_err();
    assert!(
        matches!(&err, Error::UnexpectedExit { what: "a halting guest", exit } if exit == "Hlt"),
        "{err:?}"
    );
}

/// An `in` completed with `complete_pending_input`: RIP moves past it and the value is in
/// AL, and no further instruction runs (the next exit is the `hlt` right after it). A
/// string input reports its element size and its chunk's length.
#[test]
fn a_pending_input_completes_without_running_on() {
    if !kvm_here() {
        return;
    }
    let mut vm = Vm::with_ram(2 << 20).unwrap();
    // in al, 0x80; hlt; mov edi, 0x20000; mov ecx, 6; mov dx, 0x80; rep insw; hlt
    let code = [
        0xe4, 0x80, 0xf4, 0xbf, 0x00, 0x00, 0x02, 0x00, 0xb9, 0x06, 0x00, 0x00, 0x00, 0x66, 0xba,
        0x80, 0x00, 0x66, 0xf3, 0x6d, 0xf4,
    ];
    long_mode::load_flat_code(&mut vm, &code).unwrap();
    let exit = vm.run().unwrap();
    assert_eq!(
        exit,
        krr_kvm::Exit::IoIn {
            port: 0x80,
            size: 1,
            len: 1
        }
    );
    assert_eq!(
        vm.vcpu().sync_regs().regs.rip,
        FLAT_CODE_GPA,
        "not completed yet"
    );
    vm.complete_io_in(&[0x42]).unwrap();
    vm.complete_pending_input().unwrap();
    let regs = vm.vcpu().sync_regs().regs;
    assert_eq!((regs.rip, regs.rax & 0xff), (FLAT_CODE_GPA + 2, 0x42));
    assert_eq!(vm.run().unwrap(), krr_kvm::Exit::Hlt);
    let exit = vm.run().unwrap();
    assert_eq!(
        exit,
        krr_kvm::Exit::IoIn {
            port: 0x80,
            size: 2,
            len: 12
        }
    );
    let words: Vec<u8> = (1..=12).collect();
    vm.complete_io_in(&words).unwrap();
    vm.complete_pending_input().unwrap();
    let mut written = [0u8; 12];
    vm.read(0x2_0000, &mut written).unwrap();
    assert_eq!(written.to_vec(), words);
    assert_eq!(vm.vcpu().sync_regs().regs.rcx, 0);
    assert_eq!(vm.run().unwrap(), krr_kvm::Exit::Hlt);
}
