//! Linear-address translation (4-level paging), the TLB, and linear memory accesses.

use super::{Cpu, CpuError, Exception, Exit, Fault, R, exit, flags, vector};
use crate::arch::pf_error::{I as PF_I, P as PF_P, RSVD as PF_RSVD, W as PF_W};
use crate::arch::pte::{A as PTE_A, D as PTE_D, G as PTE_G, NX as PTE_NX, P as PTE_P};
use crate::arch::pte::{PS as PTE_PS, U as PTE_U, W as PTE_W};
use crate::arch::{cr0, cr4, efer, pte};
use crate::memory::GuestMemory;

/// The kind of a memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Fetch,
}

/// Why a linear address could not be translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageFault {
    /// A page fault with its architectural error code.
    Fault { linear: u64, error_code: u32 },
    /// The address is not canonical (a #GP, not a #PF).
    NonCanonical { linear: u64 },
    /// A paging-structure entry lies outside RAM.
    TableNotRam { linear: u64, gpa: u64 },
}

// TLB entry permission bits.
const T_W: u8 = 1;
const T_U: u8 = 2;
const T_NX: u8 = 4;
const T_D: u8 = 8;
const T_G: u8 = 16;

const TLB_SIZE: usize = 512;

/// TLB epochs live in tag bits 53..64, above any linear page number + 1 (up to 2^52).
const TLB_EPOCH_ONE: u64 = 1 << 53;
const TLB_EPOCH_MASK: u64 = !(TLB_EPOCH_ONE - 1);

#[derive(Clone, Copy, Default)]
struct TlbEntry {
    /// Linear page number + 1 with the TLB's epoch in bits 53..64 (0: empty). Entries
    /// of older epochs are stale: a flush only moves to a new epoch.
    tag: u64,
    page_gpa: u64,
    bits: u8,
}

#[derive(Clone)]
pub(crate) struct Tlb {
    entries: Box<[TlbEntry; TLB_SIZE]>,
    /// The linear page instructions are being fetched from (u64::MAX: none) and its
    /// guest-physical page: fetches within it skip the lookup and permission check.
    /// Every flush forgets it.
    pub fetch_vpn: u64,
    pub fetch_page: u64,
    /// The current epoch, in bits 53..64.
    epoch: u64,
}

impl Tlb {
    pub fn new() -> Tlb {
        Tlb {
            entries: Box::new([TlbEntry::default(); TLB_SIZE]),
            fetch_vpn: u64::MAX,
            fetch_page: 0,
            epoch: TLB_EPOCH_ONE,
        }
    }

    /// The tag of linear page `vpn` in the current epoch.
    #[inline(always)]
    fn tag(&self, vpn: u64) -> u64 {
        (vpn + 1) | self.epoch
    }

    /// Moves to a new epoch; every entry becomes stale. The entries are cleared only
    /// when the epoch counter wraps.
    fn next_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(TLB_EPOCH_ONE);
        if self.epoch == 0 {
            self.entries.fill(TlbEntry::default());
            self.epoch = TLB_EPOCH_ONE;
        }
    }

    pub fn flush_all(&mut self) {
        self.fetch_vpn = u64::MAX;
        self.next_epoch();
    }

    pub fn flush_non_global(&mut self) {
        self.fetch_vpn = u64::MAX;
        let old = self.epoch;
        self.next_epoch();
        let new = self.epoch;
        for e in self.entries.iter_mut() {
            if e.tag & TLB_EPOCH_MASK == old && e.bits & T_G != 0 {
                e.tag = (e.tag & !TLB_EPOCH_MASK) | new;
            }
        }
    }

    pub fn flush_page(&mut self, linear: u64) {
        self.fetch_vpn = u64::MAX;
        let vpn = linear >> 12;
        let tag = self.tag(vpn);
        let e = &mut self.entries[vpn as usize % TLB_SIZE];
        if e.tag == tag {
            *e = TlbEntry::default();
        }
    }
}

#[inline]
pub(crate) fn canonical(a: u64) -> bool {
    ((a as i64) << 16 >> 16) as u64 == a
}

/// A successful walk.
struct Walk {
    page_gpa: u64,
    bits: u8,
    /// Entries walked (gpa, value), top level first.
    entries: [(u64, u64); 4],
    n: usize,
}

impl Cpu {
    fn perm_fault(&self, bits: u8, acc: Access) -> bool {
        let st = &self.st;
        match acc {
            Access::Fetch => {
                (bits & T_NX != 0 && st.efer & efer::NXE != 0)
                    || (bits & T_U != 0 && st.cr4 & cr4::SMEP != 0)
            }
            Access::Read | Access::Write => {
                let smap = bits & T_U != 0 && st.cr4 & cr4::SMAP != 0 && st.rflags & flags::AC == 0;
                smap || (acc == Access::Write && bits & T_W == 0 && st.cr0 & cr0::WP != 0)
            }
        }
    }

    /// Walks the page tables for a supervisor access. Pure: no A/D updates.
    fn walk(
        &self,
        mem: &GuestMemory,
        la: u64,
        acc: Access,
        check: bool,
    ) -> Result<Walk, PageFault> {
        let st = &self.st;
        let nxe = st.efer & efer::NXE != 0;
        let addr_mask = ((1u64 << self.max_phys_bits) - 1) & !0xfff;
        // Bits between MAXPHYADDR and 51 are reserved in every entry; bit 63 without NXE.
        let mut rsvd = !((1u64 << self.max_phys_bits) - 1) & ((1u64 << 52) - 1);
        if !nxe {
            rsvd |= PTE_NX;
        }
        let mut table = st.cr3 & addr_mask;
        let mut w = Walk {
            page_gpa: 0,
            bits: T_W | T_U,
            entries: [(0, 0); 4],
            n: 0,
        };
        let fetch_flag = if acc == Access::Fetch && (nxe || st.cr4 & cr4::SMEP != 0) {
            PF_I
        } else {
            0
        };
        let wflag = if acc == Access::Write { PF_W } else { 0 };
        for level in (1..=4u32).rev() {
            let shift = 12 + 9 * (level - 1);
            let ea = table + ((la >> shift) & 0x1ff) * 8;
            let e = mem.read_in_page(ea, 8).ok_or(PageFault::TableNotRam {
                linear: la,
                gpa: ea,
            })?;
            w.entries[w.n] = (ea, e);
            w.n += 1;
            if e & PTE_P == 0 {
                return Err(PageFault::Fault {
                    linear: la,
                    error_code: wflag | fetch_flag,
                });
            }
            let large = e & PTE_PS != 0 && level > 1;
            let mut r = rsvd;
            if level == 4 {
                r |= PTE_PS;
            } else if large && level == 3 {
                if !self.has_1g_pages {
                    r |= PTE_PS;
                } else {
                    r |= pte::RESERVED_1G;
                }
            } else if large && level == 2 {
                r |= pte::RESERVED_2M;
            }
            if e & r != 0 {
                return Err(PageFault::Fault {
                    linear: la,
                    error_code: PF_P | PF_RSVD | wflag | fetch_flag,
                });
            }
            if e & PTE_W == 0 {
                w.bits &= !T_W;
            }
            if e & PTE_U == 0 {
                w.bits &= !T_U;
            }
            if e & PTE_NX != 0 {
                w.bits |= T_NX;
            }
            if level == 1 || large {
                let page_mask = (1u64 << shift) - 1;
                let base = e & addr_mask & !page_mask;
                w.page_gpa = base | (la & page_mask & !0xfff);
                if e & PTE_D != 0 {
                    w.bits |= T_D;
                }
                if e & PTE_G != 0 && st.cr4 & cr4::PGE != 0 {
                    w.bits |= T_G;
                }
                if check && self.perm_fault(w.bits, acc) {
                    return Err(PageFault::Fault {
                        linear: la,
                        error_code: PF_P | wflag | fetch_flag,
                    });
                }
                return Ok(w);
            }
            table = e & addr_mask;
        }
        unreachable!("the loop returns at level 1")
    }

    fn paging_enabled(&self) -> bool {
        self.st.cr0 & cr0::PG != 0
    }

    /// Translates a linear address without side effects (no A/D updates, no TLB fill).
    pub fn translate(
        &self,
        mem: &GuestMemory,
        linear: u64,
        access: Access,
    ) -> Result<u64, PageFault> {
        if !self.paging_enabled() {
            return Ok(linear);
        }
        if !canonical(linear) {
            return Err(PageFault::NonCanonical { linear });
        }
        self.walk(mem, linear, access, true)
            .map(|w| w.page_gpa | (linear & 0xfff))
    }

    /// Where `linear` is mapped for user mode (U/S set at every level): the
    /// guest-physical address, and whether user mode may write it (R/W at every level).
    pub fn user_mapping(&self, mem: &GuestMemory, linear: u64) -> Option<(u64, bool)> {
        if !self.paging_enabled() || !canonical(linear) {
            return None;
        }
        let w = self.walk(mem, linear, Access::Read, false).ok()?;
        (w.bits & T_U != 0).then_some((w.page_gpa | (linear & 0xfff), w.bits & T_W != 0))
    }

    /// Reads guest memory through the page tables without side effects (for the UI and
    /// gdb). Fails at the first page that is not mapped or not RAM.
    pub fn read_virtual(
        &self,
        mem: &GuestMemory,
        addr: u64,
        buf: &mut [u8],
    ) -> Result<(), PageFault> {
        let mut done = 0;
        while done < buf.len() {
            let a = addr.wrapping_add(done as u64);
            let gpa = self.translate(mem, a, Access::Read)?;
            let n = (4096 - (a & 0xfff) as usize).min(buf.len() - done);
            mem.read(gpa, &mut buf[done..done + n])
                .map_err(|_| PageFault::TableNotRam { linear: a, gpa })?;
            done += n;
        }
        Ok(())
    }

    /// Writes guest memory through the page tables (for gdb). Like a debugger, it
    /// ignores write protection; it needs the pages mapped. No A/D updates.
    pub fn write_virtual(
        &mut self,
        mem: &mut GuestMemory,
        addr: u64,
        data: &[u8],
    ) -> Result<(), PageFault> {
        let mut done = 0;
        while done < data.len() {
            let a = addr.wrapping_add(done as u64);
            let gpa = self.translate(mem, a, Access::Read)?;
            let n = (4096 - (a & 0xfff) as usize).min(data.len() - done);
            mem.write(gpa, &data[done..done + n])
                .map_err(|_| PageFault::TableNotRam { linear: a, gpa })?;
            done += n;
        }
        Ok(())
    }

    /// Translates for an access by the executing instruction: TLB, walk, A/D bits,
    /// exceptions.
    #[inline]
    pub(crate) fn translate_access(
        &mut self,
        mem: &mut GuestMemory,
        la: u64,
        acc: Access,
    ) -> R<u64> {
        if !self.paging_enabled() {
            return Ok(la);
        }
        let vpn = la >> 12;
        let e = self.tlb.entries[vpn as usize % TLB_SIZE];
        if e.tag == self.tlb.tag(vpn)
            && (acc != Access::Write || e.bits & T_D != 0)
            && !self.perm_fault(e.bits, acc)
        {
            return Ok(e.page_gpa | (la & 0xfff));
        }
        self.translate_slow(mem, la, acc)
    }

    fn translate_slow(&mut self, mem: &mut GuestMemory, la: u64, acc: Access) -> R<u64> {
        if !canonical(la) {
            return Err(super::gp0());
        }
        let w = match self.walk(mem, la, acc, true) {
            Ok(w) => w,
            Err(PageFault::Fault { linear, error_code }) => {
                // Watch the tables that were read: a fix by the kernel must be seen.
                self.mark_tables(mem, la);
                return Err(Fault::Exc(Exception {
                    vector: vector::PF,
                    error_code: Some(error_code),
                    cr2: linear,
                }));
            }
            Err(PageFault::NonCanonical { .. }) => return Err(super::gp0()),
            Err(PageFault::TableNotRam { linear, gpa }) => {
                return Err(exit(Exit::Error(CpuError::PageTableNotRam { linear, gpa })));
            }
        };
        let mut bits = w.bits;
        for (i, &(ea, e)) in w.entries[..w.n].iter().enumerate() {
            mem.mark_page_table(ea);
            let mut ne = e | PTE_A;
            if i + 1 == w.n && acc == Access::Write {
                ne |= PTE_D;
                bits |= T_D;
            }
            if ne != e {
                mem.write_pte(ea, ne);
            }
        }
        let vpn = la >> 12;
        self.tlb.entries[vpn as usize % TLB_SIZE] = TlbEntry {
            tag: self.tlb.tag(vpn),
            page_gpa: w.page_gpa,
            bits,
        };
        Ok(w.page_gpa | (la & 0xfff))
    }

    /// Marks as page tables the pages a (failed) walk of `la` read.
    fn mark_tables(&self, mem: &mut GuestMemory, la: u64) {
        let addr_mask = ((1u64 << self.max_phys_bits) - 1) & !0xfff;
        let mut table = self.st.cr3 & addr_mask;
        for level in (1..=4u32).rev() {
            let ea = table + ((la >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
            mem.mark_page_table(ea);
            match mem.read_in_page(ea, 8) {
                Some(e) if e & PTE_P != 0 && (level == 1 || e & PTE_PS == 0) => {
                    table = e & addr_mask
                }
                _ => return,
            }
        }
    }

    // ---- physical and linear accesses ----

    #[inline]
    fn phys_read(&mut self, mem: &mut GuestMemory, gpa: u64, size: usize) -> R<u64> {
        if let Some(v) = mem.load_in_page(gpa, size) {
            return Ok(v);
        }
        match self.mmio_input {
            Some((g, s, v)) if g == gpa && s as usize == size => Ok(v),
            _ => Err(exit(Exit::MmioRead {
                gpa,
                size: size as u8,
            })),
        }
    }

    #[inline]
    fn phys_write(&mut self, mem: &mut GuestMemory, gpa: u64, size: usize, v: u64) -> R<()> {
        if mem.write_in_page(gpa, size, v) {
            return Ok(());
        }
        if self.mmio_write.is_some() {
            return Err(exit(Exit::Error(CpuError::UnsupportedMmio {
                rip: self.st.rip,
                gpa,
                what: "two MMIO writes in one instruction",
            })));
        }
        self.mmio_write = Some((gpa, size as u8, v & flags::mask(size)));
        Ok(())
    }

    /// The guest-physical address of `la` if the TLB holds a translation that lets a
    /// supervisor access of this kind through with no further checks: a supervisor page
    /// (so SMAP cannot apply), and for a write one that is writable and already dirty.
    /// Anything else takes the full path ([`Self::translate_access`]), which gives the
    /// same answer for these entries.
    #[inline(always)]
    fn tlb_fast(&self, la: u64, write: bool) -> Option<u64> {
        let vpn = la >> 12;
        let e = &self.tlb.entries[vpn as usize % TLB_SIZE];
        let need = if write { T_W | T_D } else { 0 };
        if e.tag == self.tlb.tag(vpn) && e.bits & (T_U | need) == need && self.paging_enabled() {
            Some(e.page_gpa | (la & 0xfff))
        } else {
            None
        }
    }

    /// Reads `size` (1..=8) bytes at a linear address. `ss`: a stack access (#SS instead
    /// of #GP for a non-canonical address).
    #[inline(always)]
    pub(crate) fn read_lin(
        &mut self,
        mem: &mut GuestMemory,
        la: u64,
        size: usize,
        ss: bool,
    ) -> R<u64> {
        // The common case calls nothing (so the caller needs no stack frame for it);
        // the rest is out of line.
        if let Some(v) = self.read_lin_cached(mem, la, size) {
            return Ok(v);
        }
        self.read_lin_uncached(mem, la, size, ss)
    }

    /// [`Self::read_lin`]'s common case: the value if the access is within a page the
    /// TLB lets through and the memory's cache holds; `None` (having done nothing)
    /// otherwise. It calls nothing.
    #[inline(always)]
    pub(crate) fn read_lin_cached(&self, mem: &GuestMemory, la: u64, size: usize) -> Option<u64> {
        // A TLB hit is canonical (only canonical pages are entered, and the tag holds
        // every bit above the page offset): a stack access's #SS needs no test here.
        if (la & 0xfff) as usize + size <= 4096
            && let Some(gpa) = self.tlb_fast(la, false)
        {
            return mem.cached_value(gpa, size);
        }
        None
    }

    /// [`Self::read_lin`] where the page is not in the memory's cache, or not in the
    /// TLB, or the access is not within one page.
    #[inline(never)]
    fn read_lin_uncached(
        &mut self,
        mem: &mut GuestMemory,
        la: u64,
        size: usize,
        ss: bool,
    ) -> R<u64> {
        if (la & 0xfff) as usize + size <= 4096
            && (!ss || canonical(la))
            && let Some(gpa) = self.tlb_fast(la, false)
            && let Some(v) = mem.load_in_page(gpa, size)
        {
            return Ok(v);
        }
        self.read_lin_slow(mem, la, size, ss)
    }

    #[inline(never)]
    fn read_lin_slow(&mut self, mem: &mut GuestMemory, la: u64, size: usize, ss: bool) -> R<u64> {
        if ss && !canonical(la) {
            return Err(super::exc(vector::SS, Some(0)));
        }
        if (la & 0xfff) as usize + size <= 4096 {
            let gpa = self.translate_access(mem, la, Access::Read)?;
            return self.phys_read(mem, gpa, size);
        }
        let n1 = 4096 - (la & 0xfff) as usize;
        let la2 = la.wrapping_add(n1 as u64);
        if ss && !canonical(la2) {
            return Err(super::exc(vector::SS, Some(0)));
        }
        let g1 = self.translate_access(mem, la, Access::Read)?;
        let g2 = self.translate_access(mem, la2, Access::Read)?;
        if !mem.is_ram(g1) || !mem.is_ram(g2) {
            return Err(exit(Exit::Error(CpuError::UnsupportedMmio {
                rip: self.st.rip,
                gpa: g1,
                what: "read crossing a page into MMIO",
            })));
        }
        let lo = self.phys_read(mem, g1, n1)?;
        let hi = self.phys_read(mem, g2, size - n1)?;
        Ok(lo | (hi << (n1 * 8)))
    }

    /// Writes the low `size` bytes of `v` at a linear address.
    #[inline(always)]
    pub(crate) fn write_lin(
        &mut self,
        mem: &mut GuestMemory,
        la: u64,
        size: usize,
        v: u64,
        ss: bool,
    ) -> R<()> {
        // As in `read_lin`: the common case calls nothing.
        if self.write_lin_cached(mem, la, size, v) {
            return Ok(());
        }
        self.write_lin_uncached(mem, la, size, v, ss)
    }

    /// [`Self::write_lin`]'s common case: writes if the access is within a page the TLB
    /// lets through and the memory's cache owns, touching no code (so it is neither an
    /// MMIO write nor a write to code or page tables); returns false, having written
    /// nothing, otherwise. It calls nothing.
    #[inline(always)]
    pub(crate) fn write_lin_cached(
        &self,
        mem: &mut GuestMemory,
        la: u64,
        size: usize,
        v: u64,
    ) -> bool {
        // As in `read_lin_cached`, a TLB hit is canonical.
        if (la & 0xfff) as usize + size <= 4096
            && let Some(gpa) = self.tlb_fast(la, true)
        {
            return mem.write_cached(gpa, size, v);
        }
        false
    }

    /// [`Self::write_lin`] where the memory's cache does not own the page or the write
    /// touches code, or the page is not in the TLB, or the access is not within one
    /// page.
    #[inline(never)]
    fn write_lin_uncached(
        &mut self,
        mem: &mut GuestMemory,
        la: u64,
        size: usize,
        v: u64,
        ss: bool,
    ) -> R<()> {
        if (la & 0xfff) as usize + size <= 4096
            && (!ss || canonical(la))
            && let Some(gpa) = self.tlb_fast(la, true)
            && mem.write_in_page(gpa, size, v)
        {
            return Ok(());
        }
        self.write_lin_slow(mem, la, size, v, ss)
    }

    #[inline(never)]
    fn write_lin_slow(
        &mut self,
        mem: &mut GuestMemory,
        la: u64,
        size: usize,
        v: u64,
        ss: bool,
    ) -> R<()> {
        if ss && !canonical(la) {
            return Err(super::exc(vector::SS, Some(0)));
        }
        if (la & 0xfff) as usize + size <= 4096 {
            let gpa = self.translate_access(mem, la, Access::Write)?;
            return self.phys_write(mem, gpa, size, v);
        }
        let n1 = 4096 - (la & 0xfff) as usize;
        let la2 = la.wrapping_add(n1 as u64);
        if ss && !canonical(la2) {
            return Err(super::exc(vector::SS, Some(0)));
        }
        // The recording host's emulator splits a page-crossing write in two and
        // commits the first part before translating the second (which may fault).
        let g1 = self.translate_access(mem, la, Access::Write)?;
        if !mem.is_ram(g1) {
            return Err(exit(Exit::Error(CpuError::UnsupportedMmio {
                rip: self.st.rip,
                gpa: g1,
                what: "write crossing a page from MMIO",
            })));
        }
        self.phys_write(mem, g1, n1, v)?;
        let g2 = self.translate_access(mem, la2, Access::Write)?;
        if !mem.is_ram(g2) {
            return Err(exit(Exit::Error(CpuError::UnsupportedMmio {
                rip: self.st.rip,
                gpa: g2,
                what: "write crossing a page into MMIO",
            })));
        }
        self.phys_write(mem, g2, size - n1, v >> (n1 * 8))
    }

    /// Reads `buf.len()` bytes at a linear address (a block such as an `fxrstor` image
    /// or a string input batch), page by page; RAM only.
    pub(crate) fn read_block(&mut self, mem: &mut GuestMemory, la: u64, buf: &mut [u8]) -> R<()> {
        let mut done = 0;
        while done < buf.len() {
            let a = la.wrapping_add(done as u64);
            let n = (4096 - (a & 0xfff) as usize).min(buf.len() - done);
            let gpa = self.translate_access(mem, a, Access::Read)?;
            if mem.read(gpa, &mut buf[done..done + n]).is_err() {
                return Err(self.block_not_ram(gpa));
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at a linear address, page by page: as the recording host's
    /// emulator splits a page-crossing write, a page is written before the next one is
    /// translated (which may fault). RAM only.
    pub(crate) fn write_block(&mut self, mem: &mut GuestMemory, la: u64, data: &[u8]) -> R<()> {
        let mut done = 0;
        while done < data.len() {
            let a = la.wrapping_add(done as u64);
            let n = (4096 - (a & 0xfff) as usize).min(data.len() - done);
            let gpa = self.translate_access(mem, a, Access::Write)?;
            if mem.write(gpa, &data[done..done + n]).is_err() {
                return Err(self.block_not_ram(gpa));
            }
            done += n;
        }
        Ok(())
    }

    fn block_not_ram(&self, gpa: u64) -> Fault {
        exit(Exit::Error(CpuError::UnsupportedMmio {
            rip: self.st.rip,
            gpa,
            what: "a block access (fxsave, fxrstor, ins) to MMIO",
        }))
    }

    /// Checks that `size` bytes at `la` are writable (translating, setting A/D bits)
    /// without writing them.
    pub(crate) fn probe_write(&mut self, mem: &mut GuestMemory, la: u64, size: usize) -> R<()> {
        self.translate_access(mem, la, Access::Write)?;
        let last = la.wrapping_add(size as u64 - 1);
        if last >> 12 != la >> 12 {
            self.translate_access(mem, last, Access::Write)?;
        }
        Ok(())
    }

    /// Invalidation for `invlpg`.
    pub(crate) fn tlb_flush_page(&mut self, la: u64) {
        self.tlb.flush_page(la);
    }

    pub(crate) fn tlb_flush(&mut self, include_global: bool) {
        if include_global {
            self.tlb.flush_all();
        } else {
            self.tlb.flush_non_global();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(t: &mut Tlb, vpn: u64, bits: u8) {
        let tag = t.tag(vpn);
        t.entries[vpn as usize % TLB_SIZE] = TlbEntry {
            tag,
            page_gpa: vpn << 12,
            bits,
        };
    }

    fn holds(t: &Tlb, vpn: u64) -> bool {
        t.entries[vpn as usize % TLB_SIZE].tag == t.tag(vpn)
    }

    #[test]
    fn no_entry_survives_any_number_of_flushes() {
        // Kernel (upper-half) and user pages: their page numbers use all 52 bits.
        let pages = [0xf_ffff_8000_0000u64, 0x7_ffff_ffff, 1];
        for flushes in [1u32, 2, 2046, 2047, 2048, 2049, 4094, 4095, 4096, 6000] {
            let mut t = Tlb::new();
            for &p in &pages {
                insert(&mut t, p, 0);
                assert!(holds(&t, p));
            }
            for _ in 0..flushes {
                t.flush_all();
            }
            for &p in &pages {
                assert!(!holds(&t, p), "page {p:#x} survived {flushes} flushes");
            }
        }
    }

    #[test]
    fn non_global_flush_keeps_global_entries_only() {
        let mut t = Tlb::new();
        insert(&mut t, 10, T_G);
        for n in 1..=5000u32 {
            insert(&mut t, 11, 0);
            t.flush_non_global();
            assert!(!holds(&t, 11), "flush {n}");
            if t.epoch == TLB_EPOCH_ONE {
                // The epoch wrapped: everything was dropped, global entries too.
                assert!(!holds(&t, 10));
                insert(&mut t, 10, T_G);
            } else {
                assert!(holds(&t, 10), "flush {n}");
            }
        }
        t.flush_all();
        assert!(!holds(&t, 10));
    }
}
