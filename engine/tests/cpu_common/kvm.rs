//! Runs a test [`Image`](super::Image) under KVM through krr-kvm: one vCPU, the image as
//! guest RAM, the same CPU state, and the per-vCPU `insn_emulation` statistic as
//! instruction counter. Port reads and MMIO loads answer what the replay CPU's runs
//! answer ([`PortInput`], [`super::mmio_value`]).

use std::time::Duration;

use krr_engine::state::{CpuState, CpuidEntry};
use krr_kvm::Vm;
use krr_kvm::kick::TimeLimit;
use krr_kvm::stats::{StatDescriptor, Stats};
use kvm_ioctls::VcpuExit;

use super::{END_PORT, EXC_PORT, Image, IoLog, PortInput, RAM_SIZE};

/// How long a run may take before the guest is stopped (a guest that loops inside KVM).
const TIME_LIMIT: Duration = Duration::from_secs(5);

/// How a KVM run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmExit {
    Out { port: u16, value: u32 },
    Hlt,
    Other(String),
}

pub struct KvmOutcome {
    pub state: CpuState,
    pub ram: Vec<u8>,
    pub exit: KvmExit,
    /// Growth of `insn_emulation` over the run.
    pub insn_delta: u64,
    pub io: IoLog,
}

pub struct KvmMachine {
    vm: Vm,
    stats: Stats,
    insn_emulation: StatDescriptor,
    /// When the guest writes this port, inject this interrupt vector (KVM_INTERRUPT).
    pub inject_on_port: Option<(u16, u8)>,
}

/// Whether KVM can be used here (quietly; [`available`] says why not).
pub fn present() -> bool {
    krr_kvm::available().is_ok()
}

/// Whether KVM is usable here; prints the skip message if not.
pub fn available() -> bool {
    if present() {
        true
    } else {
        println!("skipped: /dev/kvm not available");
        false
    }
}

impl KvmMachine {
    /// Creates a VM with the image's RAM and CPU state.
    pub fn new(img: &Image) -> KvmMachine {
        let mut vm = Vm::with_ram(RAM_SIZE).expect("create the VM");
        vm.write(0, &img.ram).expect("guest RAM");
        vm.set_cpu_state(&img.state).expect("set the CPU state");
        let stats = Stats::open(&vm).expect("KVM statistics");
        let insn_emulation = stats
            .find("insn_emulation")
            .expect("insn_emulation statistic")
            .clone();
        KvmMachine {
            vm,
            stats,
            insn_emulation,
            inject_on_port: None,
        }
    }

    fn insn_emulation(&self) -> u64 {
        self.stats
            .read(&self.insn_emulation)
            .expect("read insn_emulation")
    }

    fn ram(&self) -> Vec<u8> {
        let mut v = vec![0u8; RAM_SIZE as usize];
        self.vm.read(0, &mut v).expect("guest RAM");
        v
    }

    /// Runs until a write to END_PORT or EXC_PORT, `hlt`, or an unexpected exit, with
    /// at most `max_exits` other exits and a time limit of a few seconds (a guest that
    /// loops inside KVM is kicked out).
    pub fn run(&mut self, max_exits: usize) -> KvmOutcome {
        let _limit = TimeLimit::start(self.vm.accept_kicks(), TIME_LIMIT);
        let before = self.insn_emulation();
        let mut exit = KvmExit::Other("exit budget exhausted".into());
        let mut ports = PortInput::default();
        let mut io = IoLog::default();
        for _ in 0..max_exits {
            match self.vm.vcpu_mut().run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    let mut b = [0u8; 4];
                    b[..data.len()].copy_from_slice(data);
                    if port == END_PORT || port == EXC_PORT {
                        exit = KvmExit::Out {
                            port,
                            value: u32::from_le_bytes(b),
                        };
                        break;
                    }
                    io.outputs.push((port, data.to_vec()));
                    if let Some((p, vector)) = self.inject_on_port
                        && p == port
                    {
                        self.vm.inject_interrupt(vector).expect("KVM_INTERRUPT");
                    }
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    // A string input chunk is one exit with all its elements.
                    io.inputs.push((port, data.len()));
                    data.copy_from_slice(&ports.take(port, data.len()));
                }
                Ok(VcpuExit::MmioRead(gpa, data)) => {
                    let v = super::mmio_value(gpa).to_le_bytes();
                    let n = data.len();
                    data.copy_from_slice(&v[..n]);
                }
                Ok(VcpuExit::MmioWrite(..)) => {}
                Ok(VcpuExit::Hlt) => {
                    exit = KvmExit::Hlt;
                    break;
                }
                Ok(other) => {
                    exit = KvmExit::Other(format!("{other:?}"));
                    break;
                }
                Err(e) => {
                    exit = KvmExit::Other(format!("KVM_RUN: {e} (time limit?)"));
                    break;
                }
            }
        }
        let after = self.insn_emulation();
        KvmOutcome {
            state: self.vm.cpu_state().expect("read the CPU state"),
            ram: self.ram(),
            exit,
            insn_delta: after - before,
            io,
        }
    }
}

/// Leaves whose sub-leaf (ECX) selects the output.
const INDEXED_LEAVES: [u32; 11] = [4, 7, 0xb, 0xd, 0xf, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1f];

/// The CPUID a guest actually observes under this KVM (which differs from the
/// KVM_GET_SUPPORTED_CPUID table it is given), for every leaf up to 0x20 and the
/// hypervisor and extended ranges ([`krr_kvm::probe::observed_cpuid`]), without the
/// all-zero ones. This is the table a recording must store for replay.
pub fn observed_cpuid() -> Vec<CpuidEntry> {
    static TABLE: std::sync::OnceLock<Vec<CpuidEntry>> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| {
            let mut queries = Vec::new();
            for leaf in (0..=0x20u32)
                .chain(0x4000_0000..=0x4000_0010)
                .chain(0x8000_0000..=0x8000_0020)
            {
                let indexed = INDEXED_LEAVES.contains(&leaf);
                for index in 0..if indexed { 4 } else { 1 } {
                    queries.push(CpuidEntry {
                        function: leaf,
                        index,
                        flags: indexed as u32,
                        eax: 0,
                        ebx: 0,
                        ecx: 0,
                        edx: 0,
                    });
                }
            }
            krr_kvm::probe::observed_cpuid(&queries)
                .expect("cpuid probe")
                .into_iter()
                .filter(|e| e.eax | e.ebx | e.ecx | e.edx != 0)
                .collect()
        })
        .clone()
}

/// What this host gives where the architecture leaves results undefined, measured as
/// the recorder measures it ([`krr_kvm::probe::undefined_results`]) with the observed
/// CPUID. The replay CPU in these tests follows it, as replay follows the quirks stored
/// in a recording.
pub fn host_quirks() -> krr_engine::cpu::Quirks {
    static QUIRKS: std::sync::OnceLock<krr_engine::cpu::Quirks> = std::sync::OnceLock::new();
    QUIRKS
        .get_or_init(|| {
            krr_kvm::probe::undefined_results(&observed_cpuid())
                .expect("the undefined-behaviour probe")
        })
        .clone()
}
