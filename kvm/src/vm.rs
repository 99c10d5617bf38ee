//! The virtual machine: guest RAM regions, one vCPU, and its state as the engine's
//! [`CpuState`].

use crate::exit::Exit;
use crate::kick::{self, Kicker};
use crate::regs;
use crate::{Error, Result};
use krr_engine::state::{CpuState, CpuidEntry, MemoryRegion, RegionKind, msr};
use kvm_bindings::{
    CpuId, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_IO, KVM_EXIT_IO_IN, KVM_EXIT_MMIO,
    KVM_MAX_CPUID_ENTRIES, Msrs, kvm_cpuid_entry2, kvm_msr_entry, kvm_run,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::thread::ThreadId;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Where KVM keeps its real-mode TSS (three pages below 4 GiB, outside RAM).
const TSS_ADDRESS: usize = 0xfffb_d000;

/// The MSRs [`Vm::cpu_state`] reads (the ones a kernel programs).
pub const STATE_MSRS: [u32; 10] = [
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

/// A KVM virtual machine with guest memory and one vCPU, given the CPUID table KVM
/// supports. The vCPU's registers are synchronised into `kvm_run` at every exit
/// ([`VcpuFd::sync_regs`]).
pub struct Vm {
    /// Dropped by hand in `Drop`, or never (see there).
    vcpu: ManuallyDrop<VcpuFd>,
    /// Held for the VM's lifetime (nothing is done with it after creation).
    _vm: VmFd,
    /// After the VM fd (field order): KVM maps these pages until the VM is gone.
    mem: GuestMemoryMmap<()>,
    regions: Vec<MemoryRegion>,
    cpuid: Vec<CpuidEntry>,
    /// The threads [`Vm::accept_kicks`] registered the vCPU on: their kick handler may
    /// write to its `kvm_run`.
    kick_threads: Vec<ThreadId>,
}

impl Vm {
    /// Creates a VM with `regions` as guest memory (zeroed; sizes multiples of 4 KiB,
    /// sorted by address) and one vCPU, given the CPUID table KVM supports.
    pub fn new(regions: &[MemoryRegion]) -> Result<Vm> {
        Vm::create(regions, None)
    }

    /// As [`Vm::new`], the vCPU given `cpuid` instead (typically
    /// [`Vm::supported_cpuid`] with features taken out).
    pub fn with_cpuid(regions: &[MemoryRegion], cpuid: &[CpuidEntry]) -> Result<Vm> {
        Vm::create(regions, Some(cpuid))
    }

    /// The CPUID table KVM supports on this host (KVM_GET_SUPPORTED_CPUID): what
    /// [`Vm::new`] gives its vCPU.
    pub fn supported_cpuid() -> Result<Vec<CpuidEntry>> {
        let kvm = Kvm::new().map_err(|e| Error::kvm("open /dev/kvm", e))?;
        Ok(supported_cpuid(&kvm)?
            .as_slice()
            .iter()
            .map(entry_from_kvm)
            .collect())
    }

    fn create(regions: &[MemoryRegion], cpuid: Option<&[CpuidEntry]>) -> Result<Vm> {
        let kvm = Kvm::new().map_err(|e| Error::kvm("open /dev/kvm", e))?;
        let vm = kvm
            .create_vm()
            .map_err(|e| Error::kvm("KVM_CREATE_VM", e))?;
        vm.set_tss_address(TSS_ADDRESS)
            .map_err(|e| Error::kvm("KVM_SET_TSS_ADDR", e))?;
        let ranges: Vec<(GuestAddress, usize)> = regions
            .iter()
            .map(|r| (GuestAddress(r.gpa), r.size as usize))
            .collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).map_err(Error::Allocate)?;
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|source| Error::Memory {
                    gpa: region.start_addr().0,
                    source,
                })?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the host range belongs to `mem`, which lives as long as the VM: both
            // are fields of `Vm`, the VM fd is dropped first by field order, and KVM
            // touches guest memory only while the vCPU runs, which needs the `Vm` (when
            // `Drop` keeps the vCPU fd open, nothing can run it any more).
            unsafe { vm.set_user_memory_region(r) }
                .map_err(|e| Error::kvm("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        let mut vcpu = vm
            .create_vcpu(0)
            .map_err(|e| Error::kvm("KVM_CREATE_VCPU", e))?;
        let given = match cpuid {
            None => supported_cpuid(&kvm)?,
            Some(table) => {
                let entries: Vec<kvm_cpuid_entry2> = table
                    .iter()
                    .map(|e| kvm_cpuid_entry2 {
                        function: e.function,
                        index: e.index,
                        flags: e.flags,
                        eax: e.eax,
                        ebx: e.ebx,
                        ecx: e.ecx,
                        edx: e.edx,
                        ..Default::default()
                    })
                    .collect();
                CpuId::from_entries(&entries).map_err(|source| Error::CpuidList {
                    count: entries.len(),
                    source,
                })?
            }
        };
        // KVM_SET_CPUID2 must come before KVM_SET_SREGS and KVM_SET_XCRS.
        vcpu.set_cpuid2(&given)
            .map_err(|e| Error::kvm("KVM_SET_CPUID2", e))?;
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::SystemRegister);
        let cpuid = given.as_slice().iter().map(entry_from_kvm).collect();
        Ok(Vm {
            vcpu: ManuallyDrop::new(vcpu),
            _vm: vm,
            mem,
            regions: regions.to_vec(),
            cpuid,
            kick_threads: Vec::new(),
        })
    }

    /// A VM with `size` bytes of RAM at address 0.
    pub fn with_ram(size: u64) -> Result<Vm> {
        Vm::new(&[MemoryRegion {
            gpa: 0,
            size,
            kind: RegionKind::Ram,
        }])
    }

    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions
    }

    /// Bytes of RAM (the regions of kind [`RegionKind::Ram`]).
    pub fn ram_size(&self) -> u64 {
        self.regions
            .iter()
            .filter(|r| r.kind == RegionKind::Ram)
            .map(|r| r.size)
            .sum()
    }

    /// Whether `len` bytes at `gpa` lie in one region.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa.checked_add(len).is_some_and(|end| {
            self.regions
                .iter()
                .any(|r| gpa >= r.gpa && end <= r.gpa + r.size)
        })
    }

    /// The guest memory, for loaders that write into it themselves.
    pub fn memory(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|source| Error::Memory { gpa, source })
    }

    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|source| Error::Memory { gpa, source })
    }

    /// The CPUID table the vCPU was given (what KVM supports, as is, unless
    /// [`Vm::with_cpuid`] said otherwise). What a guest
    /// observes can differ: see [`crate::probe::observed_cpuid`].
    pub fn cpuid(&self) -> &[CpuidEntry] {
        &self.cpuid
    }

    /// The vCPU, for what this layer does not wrap (the run loop's `kvm_run` fields,
    /// sync regs, address translation).
    pub fn vcpu(&self) -> &VcpuFd {
        &self.vcpu
    }

    pub fn vcpu_mut(&mut self) -> &mut VcpuFd {
        &mut self.vcpu
    }

    /// Sets the vCPU's state: the general registers, RIP, RFLAGS, segments, descriptor
    /// tables, control registers, EFER and every MSR of `st.msrs` (all must be accepted).
    /// XCR0, the x87/SSE registers, the interrupt shadow and the halted state are left
    /// as they are; the APIC base is 0 (see [`regs::sregs_from_state`]).
    pub fn set_cpu_state(&mut self, st: &CpuState) -> Result<()> {
        self.vcpu
            .set_sregs(&regs::sregs_from_state(st))
            .map_err(|e| Error::kvm("KVM_SET_SREGS", e))?;
        if !st.msrs.is_empty() {
            let entries: Vec<kvm_msr_entry> = st
                .msrs
                .iter()
                .map(|&(index, data)| kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                })
                .collect();
            let msrs = msr_list(&entries)?;
            let accepted = self
                .vcpu
                .set_msrs(&msrs)
                .map_err(|e| Error::kvm("KVM_SET_MSRS", e))?;
            if accepted != entries.len() {
                return Err(Error::MsrRefused {
                    accepted,
                    count: entries.len(),
                    refused: entries[accepted].index,
                });
            }
        }
        self.vcpu
            .set_regs(&regs::regs_from_state(st))
            .map_err(|e| Error::kvm("KVM_SET_REGS", e))
    }

    /// The vCPU's architectural state: registers, [`STATE_MSRS`] and XCR0 (several
    /// ioctls); the x87/SSE registers are the reset state ([`regs::state_from`]).
    pub fn cpu_state(&self) -> Result<CpuState> {
        let r = self
            .vcpu
            .get_regs()
            .map_err(|e| Error::kvm("KVM_GET_REGS", e))?;
        let s = self
            .vcpu
            .get_sregs()
            .map_err(|e| Error::kvm("KVM_GET_SREGS", e))?;
        let mut state = regs::state_from(&r, &s);
        let entries: Vec<kvm_msr_entry> = STATE_MSRS
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = msr_list(&entries)?;
        let n = self
            .vcpu
            .get_msrs(&mut msrs)
            .map_err(|e| Error::kvm("KVM_GET_MSRS", e))?;
        for e in &msrs.as_slice()[..n] {
            state.set_msr(e.index, e.data);
        }
        if let Ok(xcrs) = self.vcpu.get_xcrs() {
            state.xcr0 = xcrs.xcrs[0].value;
        }
        Ok(state)
    }

    /// Injects external interrupt `vector` (KVM_INTERRUPT; there is no in-kernel
    /// interrupt controller). The guest must be ready for it
    /// (`kvm_run.ready_for_interrupt_injection`).
    pub fn inject_interrupt(&self, vector: u8) -> Result<()> {
        const KVM_INTERRUPT: libc::c_ulong = 0x4004_ae86;
        let irq = kvm_bindings::kvm_interrupt { irq: vector as u32 };
        // SAFETY: KVM_INTERRUPT reads one kvm_interrupt from the pointer, which is valid.
        let rc = unsafe { libc::ioctl(self.vcpu.as_raw_fd(), KVM_INTERRUPT, &irq) };
        if rc < 0 {
            return Err(Error::kvm("KVM_INTERRUPT", kvm_ioctls::Error::last()));
        }
        Ok(())
    }

    /// Runs the vCPU until its next exit. A pending `in` or MMIO read must have been
    /// completed ([`Vm::complete_io_in`], [`Vm::complete_mmio_read`]) before; whatever
    /// was not completed reads as the bytes left in `kvm_run`.
    pub fn run(&mut self) -> Result<Exit> {
        let exit = match self.vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => Exit::IoOut {
                port,
                data: data.to_vec(),
            },
            Ok(VcpuExit::IoIn(port, data)) => {
                let len = data.len();
                Exit::IoIn {
                    port,
                    size: self.io_element_size().unwrap_or(len),
                    len,
                }
            }
            Ok(VcpuExit::MmioRead(gpa, data)) => Exit::MmioRead {
                gpa,
                len: data.len(),
            },
            Ok(VcpuExit::MmioWrite(gpa, data)) => Exit::MmioWrite {
                gpa,
                data: data.to_vec(),
            },
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::IrqWindowOpen) => Exit::IrqWindowOpen,
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::InternalError) => self.internal_error(),
            Ok(other) => Exit::Other(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR => Exit::Interrupted,
            Err(e) => return Err(Error::kvm("KVM_RUN", e)),
        };
        Ok(exit)
    }

    /// The sub-error and data of the KVM_EXIT_INTERNAL_ERROR the vCPU just stopped at.
    fn internal_error(&mut self) -> Exit {
        let run = self.vcpu.get_kvm_run();
        if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
            return Exit::Other("InternalError".into());
        }
        // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active
        // member of the exit union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        Exit::InternalError {
            suberror: internal.suberror,
            data: internal.data[..n].to_vec(),
        }
    }

    /// The size of one element of the port access the vCPU stopped at, if it stopped at
    /// one.
    fn io_element_size(&mut self) -> Option<usize> {
        let run = self.vcpu.get_kvm_run();
        if run.exit_reason != KVM_EXIT_IO {
            return None;
        }
        // SAFETY: exit_reason is KVM_EXIT_IO, so `io` is the active member of the union.
        let io = unsafe { run.__bindgen_anon_1.io };
        (io.size != 0).then_some(io.size as usize)
    }

    /// Completes the input the vCPU stopped at (an `in` or an MMIO read, once its data is
    /// supplied) without running any further guest instruction: KVM finishes such an
    /// instruction only at the next KVM_RUN, and until then RIP is still on it. A KVM_RUN
    /// with `immediate_exit` set does exactly that (KVM's API: "re-enter the guest with
    /// ... the immediate_exit field set to complete pending operations without allowing
    /// any further instructions to be executed"). A kick already pending stays pending.
    pub fn complete_pending_input(&mut self) -> Result<()> {
        let kicked = self.vcpu.get_kvm_run().immediate_exit;
        self.vcpu.set_kvm_immediate_exit(1);
        let r = self.vcpu.run().map(|_| ());
        self.vcpu.set_kvm_immediate_exit(kicked);
        match r {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(Error::kvm("KVM_RUN (completing an input)", e)),
            Ok(()) => Err(Error::UnexpectedExit {
                what: "completing an input",
                exit: "an exit with immediate_exit set".into(),
            }),
        }
    }

    /// Completes the `in` the vCPU stopped at ([`Exit::IoIn`]): its first bytes are
    /// `data` (at most the access's length). An error if the last exit was not an `in`.
    pub fn complete_io_in(&mut self, data: &[u8]) -> Result<()> {
        let run = self.vcpu.get_kvm_run();
        if run.exit_reason != KVM_EXIT_IO {
            return Err(Error::NoPendingInput("an in"));
        }
        // SAFETY: exit_reason is KVM_EXIT_IO, so `io` is the active member of the union.
        let io = unsafe { run.__bindgen_anon_1.io };
        if u32::from(io.direction) != KVM_EXIT_IO_IN {
            return Err(Error::NoPendingInput("an in"));
        }
        let len = data.len().min(io.size as usize * io.count as usize);
        let base = (run as *mut kvm_run).cast::<u8>();
        // SAFETY: the kernel places the `in`'s size × count data bytes at data_offset
        // inside the kvm_run mapping, which spans the vCPU's whole mmap area (kvm-ioctls
        // builds its IoIn slice from the same fields); `len` is at most that many, and
        // `data` is a separate buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(io.data_offset as usize), len);
        }
        Ok(())
    }

    /// Completes the MMIO read the vCPU stopped at ([`Exit::MmioRead`]) with `data` (at
    /// most the access's length). An error if the last exit was not an MMIO read.
    pub fn complete_mmio_read(&mut self, data: &[u8]) -> Result<()> {
        let run = self.vcpu.get_kvm_run();
        if run.exit_reason != KVM_EXIT_MMIO {
            return Err(Error::NoPendingInput("an MMIO read"));
        }
        // SAFETY: exit_reason is KVM_EXIT_MMIO, so `mmio` is the active member of the
        // union.
        let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
        if mmio.is_write != 0 {
            return Err(Error::NoPendingInput("an MMIO read"));
        }
        let len = data.len().min(mmio.len as usize).min(mmio.data.len());
        mmio.data[..len].copy_from_slice(&data[..len]);
        Ok(())
    }

    /// Asks KVM to stop the vCPU with [`Exit::IrqWindowOpen`] as soon as the guest can
    /// take an interrupt (`on`), or stops asking.
    pub fn request_interrupt_window(&mut self, on: bool) {
        self.vcpu.get_kvm_run().request_interrupt_window = u8::from(on);
    }

    /// Whether KVM can inject an interrupt now (`kvm_run.ready_for_interrupt_injection`;
    /// the guest's RFLAGS.IF is a separate condition).
    pub fn ready_for_interrupt(&mut self) -> bool {
        self.vcpu.get_kvm_run().ready_for_interrupt_injection != 0
    }

    /// Runs until the guest writes to `port`; any other exit is an error naming `what`,
    /// and so is a kick. For scratch VMs, whose programs have no other exits.
    pub fn run_to_port(&mut self, port: u16, what: &'static str) -> Result<()> {
        loop {
            let error = match self.vcpu.run() {
                Ok(VcpuExit::IoOut(p, _)) if p == port => return Ok(()),
                Ok(other) => {
                    return Err(Error::UnexpectedExit {
                        what,
                        exit: format!("{other:?}"),
                    });
                }
                Err(e) => e,
            };
            // EINTR from a signal other than a kick: run on.
            if error.errno() != libc::EINTR || self.vcpu.get_kvm_run().immediate_exit != 0 {
                return Err(Error::kvm("KVM_RUN", error));
            }
        }
    }

    /// Makes the vCPU stoppable by the returned [`Kicker`], from any thread: a kick makes
    /// KVM_RUN return EINTR, whether it arrives during the call or before it. Call this
    /// on the thread that runs the vCPU; after a kick, [`Vm::clear_kick`] lets it run
    /// again.
    pub fn accept_kicks(&mut self) -> Kicker {
        let me = std::thread::current().id();
        if !self.kick_threads.contains(&me) {
            self.kick_threads.push(me);
        }
        kick::register(self.vcpu.get_kvm_run())
    }

    /// Lets the vCPU run again after a kick.
    pub fn clear_kick(&mut self) {
        self.vcpu.set_kvm_immediate_exit(0);
    }
}

fn msr_list(entries: &[kvm_msr_entry]) -> Result<Msrs> {
    Msrs::from_entries(entries).map_err(|source| Error::MsrList {
        count: entries.len(),
        source,
    })
}

impl Drop for Vm {
    fn drop(&mut self) {
        let me = std::thread::current().id();
        if self.kick_threads.iter().any(|&t| t != me) {
            // Another thread's kick handler may still write to this vCPU's kvm_run: keep
            // the vCPU, and with it the mapping, for the process's lifetime.
            return;
        }
        kick::unregister(self.vcpu.get_kvm_run());
        // SAFETY: `vcpu` is dropped here once and never used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.vcpu) };
    }
}

fn supported_cpuid(kvm: &Kvm) -> Result<CpuId> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::kvm("KVM_GET_SUPPORTED_CPUID", e))
}

fn entry_from_kvm(e: &kvm_cpuid_entry2) -> CpuidEntry {
    CpuidEntry {
        function: e.function,
        index: e.index,
        flags: e.flags,
        eax: e.eax,
        ebx: e.ebx,
        ecx: e.ecx,
        edx: e.edx,
    }
}
