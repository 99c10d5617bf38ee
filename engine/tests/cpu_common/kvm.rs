//! Runs a test [`Image`](super::Image) under KVM: one vCPU, the image as guest RAM, the
//! same CPU state, and the per-vCPU `insn_emulation` statistic as instruction counter.

use std::os::fd::AsRawFd;
use std::time::Duration;

use krr_engine::state::{CpuState, CpuidEntry, Segment, msr};
use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, Msrs, kvm_msr_entry, kvm_segment, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use super::{END_PORT, EXC_PORT, Image, RAM_SIZE, port_in_value};

const KVM_GET_STATS_FD: libc::c_ulong = 0xaece;
const KVM_INTERRUPT: libc::c_ulong = 0x4004_ae86;

extern "C" fn kick(_: libc::c_int) {}

fn install_kick_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that does nothing (async-signal-safe), without
        // SA_RESTART so that KVM_RUN returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
        }
    });
}

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
    pub stats: Vec<(String, u64)>,
}

pub struct KvmMachine {
    _kvm: Kvm,
    _vm: VmFd,
    vcpu: VcpuFd,
    host: *mut u8,
    stats_fd: i32,
    insn_off: i64,
    pub cpuid: Vec<CpuidEntry>,
    /// When the guest writes this port, inject this interrupt vector (KVM_INTERRUPT).
    pub inject_on_port: Option<(u16, u8)>,
}

impl Drop for KvmMachine {
    fn drop(&mut self) {
        // SAFETY: `host` came from mmap of RAM_SIZE bytes in `new` and is unmapped once;
        // the VM using it is dropped after this (fields drop after `drop`), and KVM keeps
        // its own reference to the pages until the memory slot goes away with the VM.
        unsafe {
            libc::close(self.stats_fd);
            libc::munmap(self.host as *mut libc::c_void, RAM_SIZE as usize);
        }
    }
}

/// Whether KVM is usable here; prints the skip message if not.
/// Whether KVM can be used here (quietly; [`available`] says why not).
pub fn present() -> bool {
    std::path::Path::new("/dev/kvm").exists() && Kvm::new().is_ok()
}

pub fn available() -> bool {
    if present() {
        true
    } else {
        println!("skipped: /dev/kvm not available");
        false
    }
}

fn to_kvm_seg(s: &Segment) -> kvm_segment {
    let a = s.attr;
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (a & 0xf) as u8,
        present: ((a >> 7) & 1) as u8,
        dpl: ((a >> 5) & 3) as u8,
        db: ((a >> 14) & 1) as u8,
        s: ((a >> 4) & 1) as u8,
        l: ((a >> 13) & 1) as u8,
        g: ((a >> 15) & 1) as u8,
        avl: ((a >> 12) & 1) as u8,
        unusable: ((a >> 7) & 1 == 0) as u8,
        padding: 0,
    }
}

fn from_kvm_seg(k: &kvm_segment) -> Segment {
    let attr = (k.type_ as u16 & 0xf)
        | ((k.s as u16) << 4)
        | ((k.dpl as u16 & 3) << 5)
        | ((k.present as u16) << 7)
        | ((k.avl as u16) << 12)
        | ((k.l as u16) << 13)
        | ((k.db as u16) << 14)
        | ((k.g as u16) << 15);
    Segment {
        selector: k.selector,
        base: k.base,
        limit: k.limit,
        attr: if k.unusable != 0 { 0 } else { attr },
    }
}

/// Offset of a named u64 statistic in the stats fd.
fn stat_offset(fd: i32, want: &str) -> Option<i64> {
    let mut h = [0u32; 6];
    // SAFETY: reading 24 bytes into a 24-byte buffer owned by this frame.
    let n = unsafe { libc::pread(fd, h.as_mut_ptr() as *mut libc::c_void, 24, 0) };
    if n != 24 {
        return None;
    }
    let (name_size, num_desc, desc_offset, data_offset) =
        (h[1] as usize, h[2] as usize, h[4] as i64, h[5] as i64);
    if name_size > 4096 || num_desc > 65536 {
        return None;
    }
    let dsz = 16 + name_size;
    let mut descs = vec![0u8; dsz * num_desc];
    // SAFETY: reading into a buffer of exactly descs.len() bytes.
    let n = unsafe {
        libc::pread(
            fd,
            descs.as_mut_ptr() as *mut libc::c_void,
            descs.len(),
            desc_offset,
        )
    };
    if n != descs.len() as isize {
        return None;
    }
    for d in descs.chunks(dsz) {
        let off = u32::from_le_bytes([d[8], d[9], d[10], d[11]]) as i64;
        let name = &d[16..];
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        if &name[..end] == want.as_bytes() {
            return Some(data_offset + off);
        }
    }
    None
}

fn read_stat(fd: i32, off: i64) -> u64 {
    let mut v = 0u64;
    // SAFETY: reading 8 bytes into a u64 owned by this frame.
    unsafe { libc::pread(fd, &mut v as *mut u64 as *mut libc::c_void, 8, off) };
    v
}

impl KvmMachine {
    /// Creates a VM with the image's RAM and CPU state.
    pub fn new(img: &Image) -> KvmMachine {
        let kvm = Kvm::new().expect("open /dev/kvm");
        let vm = kvm.create_vm().expect("create_vm");
        vm.set_tss_address(0xfffb_d000).expect("set_tss_address");
        // SAFETY: an anonymous private mapping of RAM_SIZE bytes; checked for failure.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RAM_SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(host, libc::MAP_FAILED, "mmap guest RAM");
        let host = host as *mut u8;
        // SAFETY: the mapping is RAM_SIZE bytes and img.ram is RAM_SIZE bytes.
        unsafe { std::ptr::copy_nonoverlapping(img.ram.as_ptr(), host, RAM_SIZE as usize) };
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: RAM_SIZE,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a valid mapping that outlives the VM (unmapped in Drop
        // of KvmMachine, which owns the VM).
        unsafe {
            vm.set_user_memory_region(region)
                .expect("set_user_memory_region")
        };
        let vcpu = vm.create_vcpu(0).expect("create_vcpu");
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
        let stats_fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD) };
        assert!(stats_fd >= 0, "KVM_GET_STATS_FD");
        let insn_off = stat_offset(stats_fd, "insn_emulation").expect("insn_emulation statistic");
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .expect("supported cpuid");
        vcpu.set_cpuid2(&supported).expect("set_cpuid2");
        let cpuid = supported
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
            .collect();
        let m = KvmMachine {
            _kvm: kvm,
            _vm: vm,
            vcpu,
            host,
            stats_fd,
            insn_off,
            cpuid,
            inject_on_port: None,
        };
        m.set_state(&img.state);
        m
    }

    fn set_state(&self, st: &CpuState) {
        let mut s = self.vcpu.get_sregs().expect("get_sregs");
        s.es = to_kvm_seg(&st.seg[0]);
        s.cs = to_kvm_seg(&st.seg[1]);
        s.ss = to_kvm_seg(&st.seg[2]);
        s.ds = to_kvm_seg(&st.seg[3]);
        s.fs = to_kvm_seg(&st.seg[4]);
        s.gs = to_kvm_seg(&st.seg[5]);
        s.tr = to_kvm_seg(&st.tr);
        s.ldt = to_kvm_seg(&st.ldtr);
        s.gdt.base = st.gdtr.base;
        s.gdt.limit = st.gdtr.limit;
        s.idt.base = st.idtr.base;
        s.idt.limit = st.idtr.limit;
        s.cr0 = st.cr0;
        s.cr2 = st.cr2;
        s.cr3 = st.cr3;
        s.cr4 = st.cr4;
        s.cr8 = st.cr8;
        s.efer = st.efer;
        self.vcpu.set_sregs(&s).expect("set_sregs");
        let entries: Vec<kvm_msr_entry> = st
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).expect("msrs");
        let n = self.vcpu.set_msrs(&msrs).expect("set_msrs");
        assert_eq!(n, entries.len(), "all MSRs accepted");
        let mut r = self.vcpu.get_regs().expect("get_regs");
        let g = &st.gpr;
        r.rax = g[0];
        r.rcx = g[1];
        r.rdx = g[2];
        r.rbx = g[3];
        r.rsp = g[4];
        r.rbp = g[5];
        r.rsi = g[6];
        r.rdi = g[7];
        r.r8 = g[8];
        r.r9 = g[9];
        r.r10 = g[10];
        r.r11 = g[11];
        r.r12 = g[12];
        r.r13 = g[13];
        r.r14 = g[14];
        r.r15 = g[15];
        r.rip = st.rip;
        r.rflags = st.rflags;
        self.vcpu.set_regs(&r).expect("set_regs");
    }

    fn get_state(&self) -> CpuState {
        let r = self.vcpu.get_regs().expect("get_regs");
        let s = self.vcpu.get_sregs().expect("get_sregs");
        let mut st = CpuState {
            gpr: [
                r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ],
            rip: r.rip,
            rflags: r.rflags,
            ..Default::default()
        };
        st.seg = [
            from_kvm_seg(&s.es),
            from_kvm_seg(&s.cs),
            from_kvm_seg(&s.ss),
            from_kvm_seg(&s.ds),
            from_kvm_seg(&s.fs),
            from_kvm_seg(&s.gs),
        ];
        st.tr = from_kvm_seg(&s.tr);
        st.ldtr = from_kvm_seg(&s.ldt);
        st.gdtr.base = s.gdt.base;
        st.gdtr.limit = s.gdt.limit;
        st.idtr.base = s.idt.base;
        st.idtr.limit = s.idt.limit;
        st.cr0 = s.cr0;
        st.cr2 = s.cr2;
        st.cr3 = s.cr3;
        st.cr4 = s.cr4;
        st.cr8 = s.cr8;
        st.efer = s.efer;
        let want = [
            msr::IA32_STAR,
            msr::IA32_LSTAR,
            msr::IA32_FMASK,
            msr::IA32_KERNEL_GS_BASE,
            msr::IA32_SYSENTER_CS,
            msr::IA32_TSC_AUX,
        ];
        let entries: Vec<kvm_msr_entry> = want
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).expect("msrs");
        let n = self.vcpu.get_msrs(&mut msrs).expect("get_msrs");
        for e in &msrs.as_slice()[..n] {
            st.set_msr(e.index, e.data);
        }
        st
    }

    pub fn insn_emulation(&self) -> u64 {
        read_stat(self.stats_fd, self.insn_off)
    }

    pub fn ram(&self) -> Vec<u8> {
        let mut v = vec![0u8; RAM_SIZE as usize];
        // SAFETY: the mapping is RAM_SIZE bytes; the vCPU is not running.
        unsafe { std::ptr::copy_nonoverlapping(self.host, v.as_mut_ptr(), RAM_SIZE as usize) };
        v
    }

    /// Runs until a write to END_PORT or EXC_PORT, `hlt`, or an unexpected exit, with
    /// at most `max_exits` other exits and a time limit of a few seconds (a guest that
    /// loops inside KVM is interrupted with a signal).
    pub fn run(&mut self, max_exits: usize) -> KvmOutcome {
        install_kick_handler();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let watchdog = std::thread::spawn(move || {
            if stopped.recv_timeout(Duration::from_secs(5))
                != Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            {
                return;
            }
            while stopped.recv_timeout(Duration::from_millis(50))
                == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            {
                // SAFETY: `me` is the test thread, alive until it sends `stop`, and the
                // signal's handler does nothing.
                unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
            }
        });
        let before = self.insn_emulation();
        let mut exit = KvmExit::Other("exit budget exhausted".into());
        for _ in 0..max_exits {
            match self.vcpu.run() {
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
                    if let Some((p, vector)) = self.inject_on_port
                        && p == port
                    {
                        let irq = kvm_bindings::kvm_interrupt { irq: vector as u32 };
                        // SAFETY: KVM_INTERRUPT reads one kvm_interrupt from the pointer.
                        let r = unsafe {
                            libc::ioctl(self.vcpu.as_raw_fd(), KVM_INTERRUPT, &irq as *const _)
                        };
                        assert_eq!(r, 0, "KVM_INTERRUPT");
                    }
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    let v = port_in_value(port).to_le_bytes();
                    let n = data.len();
                    data.copy_from_slice(&v[..n]);
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
        let _ = stop.send(());
        let _ = watchdog.join();
        let after = self.insn_emulation();
        KvmOutcome {
            state: self.get_state(),
            ram: self.ram(),
            exit,
            insn_delta: after - before,
            stats: Vec::new(),
        }
    }
}

/// Leaves whose sub-leaf (ECX) selects the output.
const INDEXED_LEAVES: [u32; 11] = [4, 7, 0xb, 0xd, 0xf, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1f];

/// The CPUID a guest actually observes under this KVM (which differs from the
/// KVM_GET_SUPPORTED_CPUID table it is given), collected by running `cpuid` in a guest
/// for every leaf up to 0x20 and the hypervisor and extended ranges. This is the table a
/// recording must store for replay.
pub fn observed_cpuid() -> Vec<CpuidEntry> {
    static TABLE: std::sync::OnceLock<Vec<CpuidEntry>> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| {
            use iced_x86::code_asm::*;
            let mut queries = Vec::new();
            for leaf in (0..=0x20u32)
                .chain(0x4000_0000..=0x4000_0010)
                .chain(0x8000_0000..=0x8000_0020)
            {
                let subs = if INDEXED_LEAVES.contains(&leaf) {
                    0..4
                } else {
                    0..1
                };
                for sub in subs {
                    queries.push((leaf, sub));
                }
            }
            let out = super::DATA;
            let mut img = super::image();
            let mut a = super::asm();
            for (i, (leaf, sub)) in queries.iter().enumerate() {
                a.mov(eax, *leaf).unwrap();
                a.mov(ecx, *sub).unwrap();
                a.cpuid().unwrap();
                let at = out + 16 * i as u64;
                a.mov(dword_ptr(at), eax).unwrap();
                a.mov(dword_ptr(at + 4), ebx).unwrap();
                a.mov(dword_ptr(at + 8), ecx).unwrap();
                a.mov(dword_ptr(at + 12), edx).unwrap();
            }
            a.out(super::END_PORT as u32, al).unwrap();
            let code = a.assemble(0x40_0000).unwrap();
            img.write(0x40_0000, &code);
            img.state.rip = 0x40_0000;
            let mut m = KvmMachine::new(&img);
            let r = m.run(10);
            assert!(
                matches!(r.exit, KvmExit::Out { .. }),
                "cpuid probe: {:?}",
                r.exit
            );
            let word =
                |a: u64| u32::from_le_bytes(r.ram[a as usize..a as usize + 4].try_into().unwrap());
            queries
                .iter()
                .enumerate()
                .map(|(i, &(leaf, sub))| {
                    let at = out + 16 * i as u64;
                    CpuidEntry {
                        function: leaf,
                        index: sub,
                        flags: INDEXED_LEAVES.contains(&leaf) as u32,
                        eax: word(at),
                        ebx: word(at + 4),
                        ecx: word(at + 8),
                        edx: word(at + 12),
                    }
                })
                .filter(|e| e.eax | e.ebx | e.ecx | e.edx != 0)
                .collect()
        })
        .clone()
}

/// What this host gives where the architecture leaves results undefined, measured by
/// the recorder's probe ([`krr_engine::cpu::undefined::probe`]) run under KVM here and
/// fitted with the observed CPUID. The replay CPU in these tests follows it, as replay
/// follows the quirks stored in a recording.
pub fn host_quirks() -> krr_engine::cpu::Quirks {
    use krr_engine::cpu::undefined::probe::{ProbeLayout, ProbeProgram};
    static QUIRKS: std::sync::OnceLock<krr_engine::cpu::Quirks> = std::sync::OnceLock::new();
    QUIRKS
        .get_or_init(|| {
            const CODE: u64 = 0x80_0000;
            const RESULTS: u64 = 0x40_0000;
            let probe = ProbeProgram::new();
            let layout = ProbeLayout {
                results: RESULTS,
                stack_top: super::STACK_TOP,
                done_port: END_PORT as u8,
            };
            let code = probe.assemble(&layout);
            let mut img = super::image();
            img.write(CODE, &code);
            img.state.rip = CODE;
            let mut m = KvmMachine::new(&img);
            let r = m.run(10);
            assert!(
                matches!(r.exit, KvmExit::Out { port, .. } if port == END_PORT),
                "undefined-behaviour probe: {:?}",
                r.exit
            );
            let results = &r.ram[RESULTS as usize..RESULTS as usize + probe.results_len()];
            probe
                .fit(results, &observed_cpuid())
                .expect("fit the probe's results")
        })
        .clone()
}
