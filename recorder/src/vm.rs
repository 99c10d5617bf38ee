//! The KVM virtual machine: one vCPU, guest RAM, the agent ring region, and the
//! conversion of the vCPU state to the engine's [`CpuState`].

use crate::RecorderError;
use crate::agent_ring::{RING_GPA, RING_REGION_SIZE};
use krr_engine::state::{
    CpuState, CpuidEntry, DescriptorTable, MemoryRegion, RegionKind, Segment, msr,
};
use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Where KVM keeps its real-mode TSS (three pages below 4 GiB, outside RAM).
const TSS_ADDRESS: usize = 0xfffb_d000;

/// Largest RAM the machine accepts: RAM must end below the agent ring.
pub const MAX_RAM: u64 = RING_GPA;

/// The MSRs saved in the snapshot (the ones a kernel programs).
pub const SNAPSHOT_MSRS: [u32; 10] = [
    msr::IA32_SYSENTER_CS,
    msr::IA32_SYSENTER_ESP,
    msr::IA32_SYSENTER_EIP,
    msr::IA32_PAT,
    msr::IA32_STAR,
    msr::IA32_LSTAR,
    msr::IA32_CSTAR,
    msr::IA32_FMASK,
    msr::IA32_KERNEL_GS_BASE,
    msr::IA32_TSC_AUX,
];

pub struct Vm {
    pub kvm: Kvm,
    pub vm: VmFd,
    pub vcpu: VcpuFd,
    pub mem: GuestMemoryMmap<()>,
    pub ram_size: u64,
    pub cpuid: Vec<CpuidEntry>,
}

impl Vm {
    /// Creates a VM with `ram_size` bytes of RAM at 0 and the agent ring region.
    pub fn new(ram_size: u64) -> Result<Vm, RecorderError> {
        if ram_size == 0 || ram_size > MAX_RAM || !ram_size.is_multiple_of(4096) {
            return Err(RecorderError::Config(format!(
                "memory size {ram_size:#x} must be a positive multiple of 4 KiB below {MAX_RAM:#x}"
            )));
        }
        let kvm = Kvm::new().map_err(|e| RecorderError::kvm("open /dev/kvm", e))?;
        let vm = kvm
            .create_vm()
            .map_err(|e| RecorderError::kvm("KVM_CREATE_VM", e))?;
        vm.set_tss_address(TSS_ADDRESS)
            .map_err(|e| RecorderError::kvm("KVM_SET_TSS_ADDR", e))?;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), ram_size as usize),
            (GuestAddress(RING_GPA), RING_REGION_SIZE as usize),
        ])
        .map_err(|e| RecorderError::Config(format!("guest memory: {e}")))?;
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| RecorderError::Config(format!("guest memory: {e}")))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the host range belongs to `mem`, which lives as long as the VM (both
            // are fields of `Vm`, and the VM fd is dropped first by field order).
            unsafe { vm.set_user_memory_region(r) }
                .map_err(|e| RecorderError::kvm("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        let mut vcpu = vm
            .create_vcpu(0)
            .map_err(|e| RecorderError::kvm("KVM_CREATE_VCPU", e))?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| RecorderError::kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        let cpuid = guest_cpuid(&supported);
        // KVM_SET_CPUID2 must come before KVM_SET_SREGS and KVM_SET_XCRS.
        vcpu.set_cpuid2(&supported)
            .map_err(|e| RecorderError::kvm("KVM_SET_CPUID2", e))?;
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::SystemRegister);
        Ok(Vm {
            kvm,
            vm,
            vcpu,
            mem,
            ram_size,
            cpuid,
        })
    }

    /// Runs a probe (a scratch VM's code) until it writes to `port`; any other exit is
    /// an error naming `what`.
    pub fn run_until_out(&mut self, port: u16, what: &str) -> Result<(), RecorderError> {
        loop {
            match self.vcpu.run() {
                Ok(kvm_ioctls::VcpuExit::IoOut(p, _)) if p == port => return Ok(()),
                Ok(other) => {
                    return Err(RecorderError::Guest(format!(
                        "{what}: unexpected exit {other:?}"
                    )));
                }
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) => return Err(RecorderError::kvm("KVM_RUN (probe)", e)),
            }
        }
    }

    pub fn regions(&self) -> Vec<MemoryRegion> {
        vec![
            MemoryRegion {
                gpa: 0,
                size: self.ram_size,
                kind: RegionKind::Ram,
            },
            MemoryRegion {
                gpa: RING_GPA,
                size: RING_REGION_SIZE,
                kind: RegionKind::AgentRing,
            },
        ]
    }

    pub fn is_ram(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        end <= self.ram_size || (gpa >= RING_GPA && end <= RING_GPA + RING_REGION_SIZE)
    }

    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), RecorderError> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| RecorderError::Config(format!("guest write at {gpa:#x}: {e}")))
    }

    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), RecorderError> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| RecorderError::Config(format!("guest read at {gpa:#x}: {e}")))
    }

    /// The per-vCPU binary statistics file descriptor (KVM_GET_STATS_FD), if the host
    /// supports it.
    pub fn stats_fd(&self) -> Option<OwnedFd> {
        const KVM_GET_STATS_FD: libc::c_ulong = 0xaece;
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
        let fd = unsafe { libc::ioctl(self.vcpu.as_raw_fd(), KVM_GET_STATS_FD) };
        // SAFETY: a non-negative return value is a fresh fd that we now own.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Injects an external interrupt (KVM_INTERRUPT; no in-kernel irqchip).
    pub fn inject(&self, vector: u8) -> Result<(), RecorderError> {
        const KVM_INTERRUPT: libc::c_ulong = 0x4004_ae86;
        let irq: u32 = vector as u32;
        // SAFETY: KVM_INTERRUPT reads one u32 from the pointer, which is valid.
        let rc = unsafe { libc::ioctl(self.vcpu.as_raw_fd(), KVM_INTERRUPT, &irq) };
        if rc < 0 {
            return Err(RecorderError::kvm(
                "KVM_INTERRUPT",
                kvm_ioctls::Error::last(),
            ));
        }
        Ok(())
    }

    /// Sets the long-mode entry state: the registers and system registers.
    pub fn set_entry_state(
        &mut self,
        regs: &kvm_regs,
        sregs: &kvm_sregs,
    ) -> Result<(), RecorderError> {
        self.vcpu
            .set_sregs(sregs)
            .map_err(|e| RecorderError::kvm("KVM_SET_SREGS", e))?;
        self.vcpu
            .set_regs(regs)
            .map_err(|e| RecorderError::kvm("KVM_SET_REGS", e))?;
        Ok(())
    }

    pub fn set_msrs(&self, msrs: &[(u32, u64)]) -> Result<(), RecorderError> {
        let entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let m = Msrs::from_entries(&entries)
            .map_err(|e| RecorderError::Config(format!("MSR list: {e:?}")))?;
        self.vcpu
            .set_msrs(&m)
            .map_err(|e| RecorderError::kvm("KVM_SET_MSRS", e))?;
        Ok(())
    }

    /// The complete architectural state (several ioctls: use at the start and end only).
    pub fn cpu_state(&self) -> Result<CpuState, RecorderError> {
        let regs = self
            .vcpu
            .get_regs()
            .map_err(|e| RecorderError::kvm("KVM_GET_REGS", e))?;
        let sregs = self
            .vcpu
            .get_sregs()
            .map_err(|e| RecorderError::kvm("KVM_GET_SREGS", e))?;
        let mut state = cpu_state_from(&regs, &sregs);
        let entries: Vec<kvm_msr_entry> = SNAPSHOT_MSRS
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut m = Msrs::from_entries(&entries)
            .map_err(|e| RecorderError::Config(format!("MSR list: {e:?}")))?;
        let n = self
            .vcpu
            .get_msrs(&mut m)
            .map_err(|e| RecorderError::kvm("KVM_GET_MSRS", e))?;
        for e in &m.as_slice()[..n] {
            state.set_msr(e.index, e.data);
        }
        if let Ok(xcrs) = self.vcpu.get_xcrs() {
            state.xcr0 = xcrs.xcrs[0].value;
        }
        Ok(state)
    }
}

/// The CPUID table the guest sees: what KVM supports, as is. Recorded in the header so
/// replay answers `cpuid` identically.
fn guest_cpuid(supported: &CpuId) -> Vec<CpuidEntry> {
    supported
        .as_slice()
        .iter()
        .map(|e| CpuidEntry {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        })
        .collect()
}

pub fn segment_from_kvm(s: &kvm_segment) -> Segment {
    let attr = (s.type_ as u16 & 0xf)
        | (s.s as u16 & 1) << 4
        | (s.dpl as u16 & 3) << 5
        | (s.present as u16 & 1) << 7
        | (s.avl as u16 & 1) << 12
        | (s.l as u16 & 1) << 13
        | (s.db as u16 & 1) << 14
        | (s.g as u16 & 1) << 15
        | (s.unusable as u16 & 1) << 8;
    Segment {
        selector: s.selector,
        base: s.base,
        limit: s.limit,
        attr,
    }
}

pub fn segment_to_kvm(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (s.attr & 0xf) as u8,
        s: ((s.attr >> 4) & 1) as u8,
        dpl: ((s.attr >> 5) & 3) as u8,
        present: ((s.attr >> 7) & 1) as u8,
        unusable: ((s.attr >> 8) & 1) as u8,
        avl: ((s.attr >> 12) & 1) as u8,
        l: ((s.attr >> 13) & 1) as u8,
        db: ((s.attr >> 14) & 1) as u8,
        g: ((s.attr >> 15) & 1) as u8,
        padding: 0,
    }
}

/// The general registers in hardware encoding order.
pub fn gprs(r: &kvm_regs) -> [u64; 16] {
    [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ]
}

pub fn cpu_state_from(regs: &kvm_regs, sregs: &kvm_sregs) -> CpuState {
    let seg = [
        segment_from_kvm(&sregs.es),
        segment_from_kvm(&sregs.cs),
        segment_from_kvm(&sregs.ss),
        segment_from_kvm(&sregs.ds),
        segment_from_kvm(&sregs.fs),
        segment_from_kvm(&sregs.gs),
    ];
    CpuState {
        gpr: gprs(regs),
        rip: regs.rip,
        rflags: regs.rflags,
        seg,
        tr: segment_from_kvm(&sregs.tr),
        ldtr: segment_from_kvm(&sregs.ldt),
        gdtr: DescriptorTable {
            base: sregs.gdt.base,
            limit: sregs.gdt.limit,
        },
        idtr: DescriptorTable {
            base: sregs.idt.base,
            limit: sregs.idt.limit,
        },
        cr0: sregs.cr0,
        cr2: sregs.cr2,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        cr8: sregs.cr8,
        efer: sregs.efer,
        xcr0: 1,
        msrs: Vec::new(),
        interrupt_shadow: false,
        halted: false,
    }
}
