//! The x86-64 register set served to gdb: gdb's core registers (general registers,
//! rip, eflags, segment selectors and the x87 block gdb insists on), the segment bases,
//! and the system registers a kernel debugger needs (k_gs_base, control registers,
//! EFER), which gdbstub_arch's x86-64 description lacks.

use gdbstub::arch::{Arch, Registers};
use krr_engine::state::{CpuState, gpr, msr, seg};

/// The architecture marker for gdbstub.
pub enum KernelX86_64 {}

impl Arch for KernelX86_64 {
    type Usize = u64;
    type Registers = KernelRegs;
    type BreakpointKind = usize;
    type RegId = ();

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// gdb's register order for the sixteen general registers, as indices into
/// [`CpuState::gpr`] (hardware encoding order).
const GDB_GPR_ORDER: [usize; 16] = [
    gpr::RAX,
    gpr::RBX,
    gpr::RCX,
    gpr::RDX,
    gpr::RSI,
    gpr::RDI,
    gpr::RBP,
    gpr::RSP,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
];

/// gdb's order of the segment selectors, as indices into [`CpuState::seg`].
const GDB_SEG_ORDER: [usize; 6] = [seg::CS, seg::SS, seg::DS, seg::ES, seg::FS, seg::GS];

/// The system registers after the segment bases, in [`TARGET_XML`] order.
pub const SYSTEM_REGS: [&str; 7] = ["k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer"];

/// Bytes of the `g` packet payload, in [`TARGET_XML`] order.
pub const G_PACKET_BYTES: usize =
    16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 2 * 8 + SYSTEM_REGS.len() * 8;

/// The registers in gdb's order (general registers in gdb's order too).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelRegs {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub eflags: u32,
    /// cs, ss, ds, es, fs, gs.
    pub seg: [u32; 6],
    /// st0-st7: the replayed kernel is built without x87 code, so these and `fpu_ctrl`
    /// read as zero; gdb requires them in the core feature.
    pub st: [[u8; 10]; 8],
    /// fctrl, fstat, ftag, fiseg, fioff, foseg, fooff, fop.
    pub fpu_ctrl: [u32; 8],
    pub fs_base: u64,
    pub gs_base: u64,
    /// The registers named by [`SYSTEM_REGS`], in that order.
    pub system: [u64; SYSTEM_REGS.len()],
}

impl KernelRegs {
    pub fn from_state(st: &CpuState) -> KernelRegs {
        let mut r = KernelRegs::default();
        for (i, &hw) in GDB_GPR_ORDER.iter().enumerate() {
            r.gpr[i] = st.gpr[hw];
        }
        r.rip = st.rip;
        r.eflags = st.rflags as u32;
        for (i, &s) in GDB_SEG_ORDER.iter().enumerate() {
            r.seg[i] = st.seg[s].selector as u32;
        }
        r.fs_base = st.seg[seg::FS].base;
        r.gs_base = st.seg[seg::GS].base;
        r.system = [
            st.msr(msr::IA32_KERNEL_GS_BASE).unwrap_or(0),
            st.cr0,
            st.cr2,
            st.cr3,
            st.cr4,
            st.cr8,
            st.efer,
        ];
        r
    }
}

impl Registers for KernelRegs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        let mut put = |bytes: &[u8]| bytes.iter().for_each(|b| write_byte(Some(*b)));
        for r in &self.gpr {
            put(&r.to_le_bytes());
        }
        put(&self.rip.to_le_bytes());
        put(&self.eflags.to_le_bytes());
        for s in &self.seg {
            put(&s.to_le_bytes());
        }
        for st in &self.st {
            put(st);
        }
        for c in &self.fpu_ctrl {
            put(&c.to_le_bytes());
        }
        put(&self.fs_base.to_le_bytes());
        put(&self.gs_base.to_le_bytes());
        for r in &self.system {
            put(&r.to_le_bytes());
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        if bytes.len() < G_PACKET_BYTES {
            return Err(());
        }
        let mut rest = bytes;
        let mut take = |n: usize| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head
        };
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or([0; 4]));
        for r in &mut self.gpr {
            *r = u64_of(take(8));
        }
        self.rip = u64_of(take(8));
        self.eflags = u32_of(take(4));
        for s in &mut self.seg {
            *s = u32_of(take(4));
        }
        for st in &mut self.st {
            st.copy_from_slice(take(10));
        }
        for c in &mut self.fpu_ctrl {
            *c = u32_of(take(4));
        }
        self.fs_base = u64_of(take(8));
        self.gs_base = u64_of(take(8));
        for r in &mut self.system {
            *r = u64_of(take(8));
        }
        Ok(())
    }
}

/// The target description: gdb's i386 core feature (which must hold the x87 block for
/// gdb to accept it), the segment-base feature gdb knows for fs_base/gs_base, and a
/// feature of our own for the system registers (gdb shows them as extra registers).
pub const TARGET_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
  <architecture>i386:x86-64</architecture>
  <feature name="org.gnu.gdb.i386.core">
    <flags id="i386_eflags" size="4">
      <field name="CF" start="0" end="0"/>
      <field name="" start="1" end="1"/>
      <field name="PF" start="2" end="2"/>
      <field name="AF" start="4" end="4"/>
      <field name="ZF" start="6" end="6"/>
      <field name="SF" start="7" end="7"/>
      <field name="TF" start="8" end="8"/>
      <field name="IF" start="9" end="9"/>
      <field name="DF" start="10" end="10"/>
      <field name="OF" start="11" end="11"/>
      <field name="NT" start="14" end="14"/>
      <field name="RF" start="16" end="16"/>
      <field name="VM" start="17" end="17"/>
      <field name="AC" start="18" end="18"/>
      <field name="VIF" start="19" end="19"/>
      <field name="VIP" start="20" end="20"/>
      <field name="ID" start="21" end="21"/>
    </flags>
    <reg name="rax" bitsize="64" type="int64" regnum="0"/>
    <reg name="rbx" bitsize="64" type="int64"/>
    <reg name="rcx" bitsize="64" type="int64"/>
    <reg name="rdx" bitsize="64" type="int64"/>
    <reg name="rsi" bitsize="64" type="int64"/>
    <reg name="rdi" bitsize="64" type="int64"/>
    <reg name="rbp" bitsize="64" type="data_ptr"/>
    <reg name="rsp" bitsize="64" type="data_ptr"/>
    <reg name="r8" bitsize="64" type="int64"/>
    <reg name="r9" bitsize="64" type="int64"/>
    <reg name="r10" bitsize="64" type="int64"/>
    <reg name="r11" bitsize="64" type="int64"/>
    <reg name="r12" bitsize="64" type="int64"/>
    <reg name="r13" bitsize="64" type="int64"/>
    <reg name="r14" bitsize="64" type="int64"/>
    <reg name="r15" bitsize="64" type="int64"/>
    <reg name="rip" bitsize="64" type="code_ptr"/>
    <reg name="eflags" bitsize="32" type="i386_eflags"/>
    <reg name="cs" bitsize="32" type="int32"/>
    <reg name="ss" bitsize="32" type="int32"/>
    <reg name="ds" bitsize="32" type="int32"/>
    <reg name="es" bitsize="32" type="int32"/>
    <reg name="fs" bitsize="32" type="int32"/>
    <reg name="gs" bitsize="32" type="int32"/>
    <reg name="st0" bitsize="80" type="i387_ext"/>
    <reg name="st1" bitsize="80" type="i387_ext"/>
    <reg name="st2" bitsize="80" type="i387_ext"/>
    <reg name="st3" bitsize="80" type="i387_ext"/>
    <reg name="st4" bitsize="80" type="i387_ext"/>
    <reg name="st5" bitsize="80" type="i387_ext"/>
    <reg name="st6" bitsize="80" type="i387_ext"/>
    <reg name="st7" bitsize="80" type="i387_ext"/>
    <reg name="fctrl" bitsize="32" type="int" group="float"/>
    <reg name="fstat" bitsize="32" type="int" group="float"/>
    <reg name="ftag" bitsize="32" type="int" group="float"/>
    <reg name="fiseg" bitsize="32" type="int" group="float"/>
    <reg name="fioff" bitsize="32" type="int" group="float"/>
    <reg name="foseg" bitsize="32" type="int" group="float"/>
    <reg name="fooff" bitsize="32" type="int" group="float"/>
    <reg name="fop" bitsize="32" type="int" group="float"/>
  </feature>
  <feature name="org.gnu.gdb.i386.segments">
    <reg name="fs_base" bitsize="64" type="int"/>
    <reg name="gs_base" bitsize="64" type="int"/>
  </feature>
  <feature name="org.krr.x86-64.system">
    <reg name="k_gs_base" bitsize="64" type="int" group="system"/>
    <reg name="cr0" bitsize="64" type="int" group="system"/>
    <reg name="cr2" bitsize="64" type="int" group="system"/>
    <reg name="cr3" bitsize="64" type="int" group="system"/>
    <reg name="cr4" bitsize="64" type="int" group="system"/>
    <reg name="cr8" bitsize="64" type="int" group="system"/>
    <reg name="efer" bitsize="64" type="int" group="system"/>
  </feature>
</target>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g_packet_round_trips_and_has_the_described_size() {
        let mut st = CpuState::default();
        for (i, r) in st.gpr.iter_mut().enumerate() {
            *r = 0x1111_0000 + i as u64;
        }
        st.rip = 0xffff_ffff_8000_1234;
        st.rflags = 0x246;
        st.seg[seg::CS].selector = 0x10;
        st.seg[seg::GS].base = 0xffff_8880_0000_0000;
        st.set_msr(msr::IA32_KERNEL_GS_BASE, 0x7fff_0000);
        st.cr3 = 0x1000;
        st.efer = 0xd01;
        let regs = KernelRegs::from_state(&st);
        assert_eq!(regs.gpr[1], st.gpr[gpr::RBX]);
        assert_eq!(regs.gpr[7], st.gpr[gpr::RSP]);
        let mut bytes = Vec::new();
        regs.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        assert_eq!(bytes.len(), G_PACKET_BYTES);
        let mut back = KernelRegs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, regs);
        assert_eq!(back.system[0], 0x7fff_0000, "k_gs_base");
        assert_eq!(back.system[3], 0x1000, "cr3");
        assert_eq!(back.system[6], 0xd01, "efer");
        assert!(back.gdb_deserialize(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn description_lists_every_serialized_register() {
        let regs = TARGET_XML.matches("<reg ").count();
        assert_eq!(regs, 16 + 1 + 1 + 6 + 8 + 8 + 2 + SYSTEM_REGS.len());
        // The system feature names the registers in the order they are serialized.
        let system = TARGET_XML.split("org.krr.x86-64.system").nth(1).unwrap();
        let names: Vec<&str> = system
            .split("<reg name=\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap())
            .collect();
        assert_eq!(names, SYSTEM_REGS);
        let bits: usize = TARGET_XML
            .split("bitsize=\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap().parse::<usize>().unwrap())
            .sum();
        assert_eq!(bits / 8, G_PACKET_BYTES);
    }
}
