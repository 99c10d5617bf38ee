//! KVM's register structures (`kvm_regs`, `kvm_sregs`, `kvm_segment`) to and from the
//! engine's [`CpuState`].
//!
//! Unusable segments, one convention: a segment is usable exactly when its present bit
//! (P, bit 7 of [`Segment::attr`]) is set. Going to KVM, `unusable` is `!P`; coming from
//! KVM, P is `present && !unusable` and the other attribute bits are as KVM reports
//! them. KVM keeps `unusable == !present` itself (VMX and SVM alike), so nothing is lost;
//! the replay CPU's null-selector loads (attribute 0) are unusable by the same rule.

use krr_engine::state::{CpuState, DescriptorTable, Segment};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use krr_engine::arch::seg_attr::P as ATTR_P;

pub fn segment_to_kvm(s: &Segment) -> kvm_segment {
    let a = s.attr;
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (a & 0xf) as u8,
        s: ((a >> 4) & 1) as u8,
        dpl: ((a >> 5) & 3) as u8,
        present: ((a >> 7) & 1) as u8,
        avl: ((a >> 12) & 1) as u8,
        l: ((a >> 13) & 1) as u8,
        db: ((a >> 14) & 1) as u8,
        g: ((a >> 15) & 1) as u8,
        unusable: (a & ATTR_P == 0) as u8,
        padding: 0,
    }
}

pub fn segment_from_kvm(k: &kvm_segment) -> Segment {
    let present = k.present != 0 && k.unusable == 0;
    let attr = (k.type_ as u16 & 0xf)
        | (k.s as u16 & 1) << 4
        | (k.dpl as u16 & 3) << 5
        | (present as u16) << 7
        | (k.avl as u16 & 1) << 12
        | (k.l as u16 & 1) << 13
        | (k.db as u16 & 1) << 14
        | (k.g as u16 & 1) << 15;
    Segment {
        selector: k.selector,
        base: k.base,
        limit: k.limit,
        attr,
    }
}

/// The general registers in hardware encoding order (the order of [`CpuState::gpr`]).
pub fn gprs(r: &kvm_regs) -> [u64; 16] {
    [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ]
}

/// The general registers, RIP and RFLAGS of `st`.
pub fn regs_from_state(st: &CpuState) -> kvm_regs {
    let g = &st.gpr;
    kvm_regs {
        rax: g[0],
        rcx: g[1],
        rdx: g[2],
        rbx: g[3],
        rsp: g[4],
        rbp: g[5],
        rsi: g[6],
        rdi: g[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip: st.rip,
        rflags: st.rflags,
    }
}

/// The system registers of `st`. What [`CpuState`] does not hold is zero: the APIC base
/// (this machine has no local APIC: interrupts arrive through KVM_INTERRUPT) and the
/// pending-interrupt bitmap.
pub fn sregs_from_state(st: &CpuState) -> kvm_sregs {
    let [es, cs, ss, ds, fs, gs] = st.seg.map(|s| segment_to_kvm(&s));
    let table = |t: &DescriptorTable| kvm_bindings::kvm_dtable {
        base: t.base,
        limit: t.limit,
        padding: [0; 3],
    };
    kvm_sregs {
        cs,
        ds,
        es,
        fs,
        gs,
        ss,
        tr: segment_to_kvm(&st.tr),
        ldt: segment_to_kvm(&st.ldtr),
        gdt: table(&st.gdtr),
        idt: table(&st.idtr),
        cr0: st.cr0,
        cr2: st.cr2,
        cr3: st.cr3,
        cr4: st.cr4,
        cr8: st.cr8,
        efer: st.efer,
        ..Default::default()
    }
}

/// The state in `regs` and `sregs`; XCR0 is 1 (x87 only), there are no MSRs (the
/// caller reads those separately) and the x87/SSE registers are the reset state (KVM's
/// KVM_GET_FPU does not report MXCSR on the recording hosts; recordings start from a
/// new vCPU, whose state that is).
pub fn state_from(regs: &kvm_regs, sregs: &kvm_sregs) -> CpuState {
    CpuState {
        gpr: gprs(regs),
        rip: regs.rip,
        rflags: regs.rflags,
        seg: [
            &sregs.es, &sregs.cs, &sregs.ss, &sregs.ds, &sregs.fs, &sregs.gs,
        ]
        .map(segment_from_kvm),
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
        fpu: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_segments_round_trip_and_unusable_ones_are_not_present() {
        let code = Segment {
            selector: 0x08,
            base: 0x1234_5000,
            limit: 0xffff_ffff,
            attr: 0xa09b,
        };
        let k = segment_to_kvm(&code);
        assert_eq!((k.present, k.unusable, k.l, k.g, k.db), (1, 0, 1, 1, 0));
        assert_eq!(segment_from_kvm(&k), code);

        // A null data segment as the replay CPU loads it.
        let null = Segment {
            selector: 0,
            base: 0,
            limit: 0,
            attr: 0,
        };
        let k = segment_to_kvm(&null);
        assert_eq!((k.present, k.unusable), (0, 1));
        assert_eq!(segment_from_kvm(&k), null);

        // KVM reporting a segment unusable keeps its type and DPL, never P.
        let k = kvm_segment {
            type_: 3,
            s: 1,
            dpl: 3,
            present: 1,
            unusable: 1,
            ..Default::default()
        };
        let s = segment_from_kvm(&k);
        assert_eq!(s.attr, 0x3 | 1 << 4 | 3 << 5);
        assert_eq!(segment_to_kvm(&s).unusable, 1);
    }

    #[test]
    fn state_round_trips_through_kvm_structures() {
        let mut st = CpuState {
            rip: 0xffff_ffff_8100_0000,
            rflags: 0x246,
            cr0: 0x8005_0033,
            cr2: 0xdead_b000,
            cr3: 0x1000,
            cr4: 0x6a0,
            cr8: 2,
            efer: 0xd01,
            gdtr: DescriptorTable {
                base: 0x500,
                limit: 0x1f,
            },
            idtr: DescriptorTable {
                base: 0x2000,
                limit: 0xfff,
            },
            xcr0: 1,
            ..Default::default()
        };
        for (i, g) in st.gpr.iter_mut().enumerate() {
            *g = 0x1111 * (i as u64 + 1);
        }
        for (i, s) in st.seg.iter_mut().enumerate() {
            *s = Segment {
                selector: 8 * i as u16,
                base: 0x1000 * i as u64,
                limit: 0xffff,
                attr: 0xc093,
            };
        }
        st.tr = Segment {
            selector: 0x18,
            base: 0x7000,
            limit: 0x67,
            attr: 0x8b,
        };
        st.ldtr = Segment {
            selector: 0,
            base: 0,
            limit: 0xffff,
            attr: 0x82,
        };
        let back = state_from(&regs_from_state(&st), &sregs_from_state(&st));
        assert_eq!(back, st);
    }
}
