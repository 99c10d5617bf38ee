//! Guest-physical memory for replay: 4 KiB copy-on-write pages shared between clones.
//!
//! A [`GuestMemory`] is built from the machine's RAM regions and the initial snapshot.
//! Every page is an `Arc<[u8; 4096]>` (or absent, meaning zero), so `clone()` costs one
//! reference-count increment per page and a clone taken as a time-travel checkpoint owns
//! only the pages written after it was taken.
//!
//! Code tracking: the replay CPU marks the 64-byte lines it decodes instructions from
//! ([`GuestMemory::mark_code`]). A write to a marked line, by the CPU or by the driver
//! applying a DMA write, unmarks the lines it touched and appends them to a short log
//! ([`GuestMemory::code_writes_since`]), numbered by [`GuestMemory::code_generation`],
//! so the CPU drops only the decoded instructions of those lines. Kernels keep data next
//! to code (even on the same page); tracking lines rather than pages or the whole memory
//! keeps such writes from discarding unrelated decodes. Every memory object also has a unique
//! [`GuestMemory::instance_id`] (a clone gets a new one), so a CPU that is handed a
//! different memory (a restored checkpoint) notices it.
//!
//! Watched lines: the time-travel layer names the 64-byte lines under its write
//! watchpoints ([`GuestMemory::watch_ranges`]); every write to one, by the CPU or by the
//! driver, counts in [`GuestMemory::watch_hits`], so a stretch of replay in which the
//! count did not move wrote nothing watched (the memory path reports the hits, as a
//! debugger's memory sniffer does).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use crate::state::{Fnv1a, MachineConfig, PAGE_SIZE, RegionKind, Snapshot};

/// One guest page.
pub type Page = [u8; PAGE_SIZE];

const PAGE_SHIFT: u32 = 12;
/// Code-tracking granularity: 64-byte lines, so one `u64` mask per page.
const LINE_SHIFT: u32 = 6;
/// Code writes remembered for [`GuestMemory::code_writes_since`]; a reader further
/// behind must drop all its decodes.
const CODE_LOG_LEN: usize = 64;
const PAGE_MASK: u64 = PAGE_SIZE as u64 - 1;

/// Largest region accepted (a recording claims its sizes; refuse absurd ones).
const MAX_REGION_SIZE: u64 = 64 << 30;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MemoryError {
    #[error("guest-physical address {gpa:#x} (+{len}) is not RAM")]
    NotRam { gpa: u64, len: usize },
    #[error(
        "memory region at {gpa:#x} size {size:#x} is invalid (unaligned, empty, too large or overlapping)"
    )]
    BadRegion { gpa: u64, size: u64 },
    #[error("snapshot page at {gpa:#x} is invalid (unaligned, wrong size or outside RAM)")]
    BadSnapshotPage { gpa: u64 },
}

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

fn new_instance_id() -> u64 {
    NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed)
}

#[derive(Debug)]
struct Region {
    gpa: u64,
    size: u64,
    kind: RegionKind,
    pages: Vec<Option<Arc<Page>>>,
    /// Per page, one bit per 64-byte line: instructions were decoded from it.
    code: Vec<u64>,
    /// One bit per page: it was read as a page table by a page walk.
    pt: Vec<u64>,
}

impl Clone for Region {
    fn clone(&self) -> Self {
        Region {
            gpa: self.gpa,
            size: self.size,
            kind: self.kind,
            pages: self.pages.clone(),
            code: self.code.clone(),
            pt: self.pt.clone(),
        }
    }
}

/// Guest-physical memory (see the module documentation).
#[derive(Debug)]
pub struct GuestMemory {
    regions: Vec<Region>,
    /// Number of code writes ever logged; entry `n` is at `code_log[n % CODE_LOG_LEN]`.
    code_generation: u64,
    /// (page gpa, mask of written code lines) of the last code writes.
    code_log: [(u64, u64); CODE_LOG_LEN],
    pt_generation: u64,
    instance_id: u64,
    /// Watched lines: (page gpa, mask of 64-byte lines); see [`Self::watch_ranges`].
    watched: Vec<(u64, u64)>,
    /// Writes to watched lines so far.
    watch_hits: u64,
}

impl Clone for GuestMemory {
    fn clone(&self) -> Self {
        GuestMemory {
            regions: self.regions.clone(),
            code_generation: self.code_generation,
            code_log: self.code_log,
            pt_generation: self.pt_generation,
            instance_id: new_instance_id(),
            watched: self.watched.clone(),
            watch_hits: self.watch_hits,
        }
    }
}

/// Page statistics of a memory (see [`GuestMemory::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    /// Pages of address space in RAM regions.
    pub total_pages: u64,
    /// Pages that have backing storage (not the implicit zero page).
    pub allocated_pages: u64,
    /// Allocated pages that are shared with another memory (a clone or checkpoint).
    pub shared_pages: u64,
}

impl GuestMemory {
    /// Builds memory from the machine's regions and the snapshot's pages (absent pages
    /// are zero).
    pub fn from_snapshot(config: &MachineConfig, snapshot: &Snapshot) -> Result<Self, MemoryError> {
        let mut mem = Self::new(config)?;
        for page in &snapshot.pages {
            if page.gpa & PAGE_MASK != 0 || page.data.len() != PAGE_SIZE {
                return Err(MemoryError::BadSnapshotPage { gpa: page.gpa });
            }
            let (r, i) = mem
                .locate(page.gpa)
                .ok_or(MemoryError::BadSnapshotPage { gpa: page.gpa })?;
            let mut p = Box::new([0u8; PAGE_SIZE]);
            p.copy_from_slice(&page.data);
            mem.regions[r].pages[i] = if p.iter().all(|&b| b == 0) {
                None
            } else {
                Some(Arc::from(p))
            };
        }
        Ok(mem)
    }

    /// Zero-filled memory with the configuration's regions.
    pub fn new(config: &MachineConfig) -> Result<Self, MemoryError> {
        let mut regions: Vec<Region> = Vec::with_capacity(config.regions.len());
        for r in &config.regions {
            let bad = MemoryError::BadRegion {
                gpa: r.gpa,
                size: r.size,
            };
            if r.gpa & PAGE_MASK != 0
                || r.size & PAGE_MASK != 0
                || r.size == 0
                || r.size > MAX_REGION_SIZE
                || r.gpa.checked_add(r.size).is_none()
            {
                return Err(bad);
            }
            let n = (r.size >> PAGE_SHIFT) as usize;
            regions.push(Region {
                gpa: r.gpa,
                size: r.size,
                kind: r.kind,
                pages: vec![None; n],
                code: vec![0; n],
                pt: vec![0; n.div_ceil(64)],
            });
        }
        regions.sort_by_key(|r| r.gpa);
        for w in regions.windows(2) {
            if w[0].gpa + w[0].size > w[1].gpa {
                return Err(MemoryError::BadRegion {
                    gpa: w[1].gpa,
                    size: w[1].size,
                });
            }
        }
        Ok(GuestMemory {
            regions,
            code_generation: 0,
            code_log: [(0, 0); CODE_LOG_LEN],
            pt_generation: 0,
            watched: Vec::new(),
            watch_hits: 0,
            instance_id: new_instance_id(),
        })
    }

    /// (region index, page index) of the page holding `gpa`.
    #[inline]
    fn locate(&self, gpa: u64) -> Option<(usize, usize)> {
        for (ri, r) in self.regions.iter().enumerate() {
            if gpa.wrapping_sub(r.gpa) < r.size {
                return Some((ri, ((gpa - r.gpa) >> PAGE_SHIFT) as usize));
            }
        }
        None
    }

    /// Whether `gpa` is in a RAM region (anything else is MMIO for the CPU).
    pub fn is_ram(&self, gpa: u64) -> bool {
        self.locate(gpa).is_some()
    }

    /// The kind of region holding `gpa`.
    pub fn region_kind(&self, gpa: u64) -> Option<RegionKind> {
        self.locate(gpa).map(|(r, _)| self.regions[r].kind)
    }

    /// Reads `buf.len()` bytes at `gpa`. All of it must be RAM.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = gpa.wrapping_add(done as u64);
            let (r, i) = self.locate(a).ok_or(MemoryError::NotRam {
                gpa: a,
                len: buf.len() - done,
            })?;
            let off = (a & PAGE_MASK) as usize;
            let n = (PAGE_SIZE - off).min(buf.len() - done);
            match &self.regions[r].pages[i] {
                Some(p) => buf[done..done + n].copy_from_slice(&p[off..off + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `gpa`. All of it must be RAM; nothing is written otherwise.
    pub fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        // Check the whole range first so that a failing write changes nothing.
        let pages = ((gpa & PAGE_MASK) as usize + data.len()).div_ceil(PAGE_SIZE);
        for k in 0..pages as u64 {
            let a = (gpa & !PAGE_MASK).wrapping_add(k << PAGE_SHIFT);
            if self.locate(a).is_none() {
                return Err(MemoryError::NotRam {
                    gpa: a.max(gpa),
                    len: data.len(),
                });
            }
        }
        let mut done = 0usize;
        while done < data.len() {
            let a = gpa.wrapping_add(done as u64);
            let off = (a & PAGE_MASK) as usize;
            let n = (PAGE_SIZE - off).min(data.len() - done);
            let page = self.page_mut(a, n).ok_or(MemoryError::NotRam {
                gpa: a,
                len: data.len() - done,
            })?;
            page[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Reads a little-endian value of `size` (1, 2, 4 or 8) bytes that does not cross a
    /// page. Returns `None` if `gpa` is not RAM.
    #[inline]
    pub fn read_in_page(&self, gpa: u64, size: usize) -> Option<u64> {
        debug_assert!((gpa & PAGE_MASK) as usize + size <= PAGE_SIZE);
        let (r, i) = self.locate(gpa)?;
        let off = (gpa & PAGE_MASK) as usize;
        let Some(p) = &self.regions[r].pages[i] else {
            return Some(0);
        };
        // Fixed-size reads compile to single loads (no memcpy call).
        Some(match size {
            1 => p[off] as u64,
            2 => u16::from_le_bytes([p[off], p[off + 1]]) as u64,
            4 => u32::from_le_bytes(p[off..off + 4].try_into().ok()?) as u64,
            8 => u64::from_le_bytes(p[off..off + 8].try_into().ok()?),
            _ => {
                let mut b = [0u8; 8];
                b[..size].copy_from_slice(&p[off..off + size]);
                u64::from_le_bytes(b)
            }
        })
    }

    /// Writes the low `size` bytes of `value` at `gpa` (within one page). Returns false if
    /// `gpa` is not RAM.
    #[inline]
    pub fn write_in_page(&mut self, gpa: u64, size: usize, value: u64) -> bool {
        debug_assert!((gpa & PAGE_MASK) as usize + size <= PAGE_SIZE);
        let off = (gpa & PAGE_MASK) as usize;
        match self.page_mut(gpa, size) {
            Some(p) => {
                match size {
                    1 => p[off] = value as u8,
                    2 => p[off..off + 2].copy_from_slice(&(value as u16).to_le_bytes()),
                    4 => p[off..off + 4].copy_from_slice(&(value as u32).to_le_bytes()),
                    8 => p[off..off + 8].copy_from_slice(&value.to_le_bytes()),
                    _ => p[off..off + size].copy_from_slice(&value.to_le_bytes()[..size]),
                }
                true
            }
            None => false,
        }
    }

    pub fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn write_u64(&mut self, gpa: u64, v: u64) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// The page holding `gpa`, made private to this memory (copy on write), for a write
    /// of `len` bytes at `gpa` (within the page).
    #[inline]
    fn page_mut(&mut self, gpa: u64, len: usize) -> Option<&mut Page> {
        if !self.watched.is_empty() {
            self.note_watched_write(gpa, len);
        }
        let (r, i) = self.locate(gpa)?;
        let region = &mut self.regions[r];
        let code = region.code[i];
        if code != 0 {
            let hit = code & line_mask(gpa, len);
            if hit != 0 {
                region.code[i] = code & !hit;
                let slot = (self.code_generation % CODE_LOG_LEN as u64) as usize;
                self.code_log[slot] = (gpa & !PAGE_MASK, hit);
                self.code_generation += 1;
            }
        }
        if region.pt[i / 64] & (1 << (i % 64)) != 0 {
            self.pt_generation += 1;
        }
        let slot = &mut region.pages[i];
        let arc = slot.get_or_insert_with(|| Arc::new([0u8; PAGE_SIZE]));
        Some(Arc::make_mut(arc))
    }

    /// Counts a write of `len` bytes at `gpa` (within one page) if it touches a watched
    /// line.
    #[cold]
    fn note_watched_write(&mut self, gpa: u64, len: usize) {
        let page = gpa & !PAGE_MASK;
        let lines = line_mask(gpa, len);
        if self
            .watched
            .iter()
            .any(|&(p, m)| p == page && m & lines != 0)
        {
            self.watch_hits += 1;
        }
    }

    /// Watches the given guest-physical ranges (each `(gpa, len)` within one page),
    /// replacing those watched before (none: nothing is watched). Writes to their 64-byte
    /// lines count in [`Self::watch_hits`].
    pub fn watch_ranges(&mut self, ranges: impl IntoIterator<Item = (u64, usize)>) {
        self.watched.clear();
        for (gpa, len) in ranges {
            let page = gpa & !PAGE_MASK;
            let lines = line_mask(gpa, len);
            match self.watched.iter_mut().find(|(p, _)| *p == page) {
                Some((_, m)) => *m |= lines,
                None => self.watched.push((page, lines)),
            }
        }
    }

    /// Writes to watched lines (see [`Self::watch_ranges`]) so far.
    #[inline]
    pub fn watch_hits(&self) -> u64 {
        self.watch_hits
    }

    /// Borrow a whole page for reading (`None`: not RAM; `Some(None)`: a zero page).
    #[inline]
    pub fn page(&self, gpa: u64) -> Option<Option<&Page>> {
        let (r, i) = self.locate(gpa)?;
        Some(self.regions[r].pages[i].as_deref())
    }

    /// Marks the `len` bytes at `gpa` (clipped to the page) as holding a decoded
    /// instruction: a later write to them is logged (see [`Self::code_writes_since`]).
    #[inline]
    pub fn mark_code(&mut self, gpa: u64, len: usize) {
        if let Some((r, i)) = self.locate(gpa) {
            let len = len.clamp(1, PAGE_SIZE - (gpa & PAGE_MASK) as usize);
            self.regions[r].code[i] |= line_mask(gpa, len);
        }
    }

    /// The code writes logged after generation `generation` (see
    /// [`Self::code_generation`]) as (page gpa, mask of 64-byte lines written), or `None`
    /// if the log no longer reaches back that far (drop every decode then).
    pub fn code_writes_since(
        &self,
        generation: u64,
    ) -> Option<impl Iterator<Item = (u64, u64)> + '_> {
        if generation > self.code_generation
            || self.code_generation - generation > CODE_LOG_LEN as u64
        {
            return None;
        }
        Some(
            (generation..self.code_generation)
                .map(|g| self.code_log[(g % CODE_LOG_LEN as u64) as usize]),
        )
    }

    /// Marks the page holding `gpa` as a page table (writes to it bump
    /// [`Self::pt_generation`], which makes the CPU flush its TLB).
    #[inline]
    pub fn mark_page_table(&mut self, gpa: u64) {
        if let Some((r, i)) = self.locate(gpa) {
            self.regions[r].pt[i / 64] |= 1 << (i % 64);
        }
    }

    /// Incremented whenever a page marked with [`Self::mark_page_table`] is written.
    #[inline]
    pub fn pt_generation(&self) -> u64 {
        self.pt_generation
    }

    /// Writes a page-table entry on behalf of the page walker (setting A/D bits): it
    /// does not count as a page-table change (the walk that sets them already used the
    /// entry's new value).
    pub fn write_pte(&mut self, gpa: u64, value: u64) -> bool {
        let before = self.pt_generation;
        let ok = gpa & 7 == 0 && self.write_in_page(gpa, 8, value);
        self.pt_generation = before;
        ok
    }

    /// Incremented whenever bytes marked with [`Self::mark_code`] are written.
    #[inline]
    pub fn code_generation(&self) -> u64 {
        self.code_generation
    }

    /// Unique per memory object; a clone gets a new one.
    #[inline]
    pub fn instance_id(&self) -> u64 {
        self.instance_id
    }

    /// Number of 4 KiB pages of RAM.
    pub fn page_count(&self) -> u64 {
        self.regions.iter().map(|r| r.size >> PAGE_SHIFT).sum()
    }

    /// Number of allocated pages shared with another memory object.
    pub fn shared_page_count(&self) -> u64 {
        self.stats().shared_pages
    }

    pub fn stats(&self) -> MemoryStats {
        let mut s = MemoryStats::default();
        for r in &self.regions {
            s.total_pages += r.size >> PAGE_SHIFT;
            for p in r.pages.iter().flatten() {
                s.allocated_pages += 1;
                if Arc::strong_count(p) > 1 {
                    s.shared_pages += 1;
                }
            }
        }
        s
    }

    /// FNV-1a over every page of every region in address order (zero pages included, so
    /// two memories with equal contents hash equally however they are stored).
    pub fn hash(&self) -> u64 {
        let zero = [0u8; PAGE_SIZE];
        let mut h = Fnv1a::new();
        for r in &self.regions {
            h.write_u64(r.gpa);
            h.write_u64(r.size);
            for p in &r.pages {
                h.write(p.as_deref().unwrap_or(&zero));
            }
        }
        h.finish()
    }

    /// Guest-physical addresses of the pages whose contents differ between two memories
    /// with the same layout (`None` if the layouts differ).
    pub fn diff_pages(&self, other: &GuestMemory) -> Option<Vec<u64>> {
        if self.regions.len() != other.regions.len() {
            return None;
        }
        let mut out = Vec::new();
        for (a, b) in self.regions.iter().zip(&other.regions) {
            if a.gpa != b.gpa || a.size != b.size {
                return None;
            }
            for (i, (pa, pb)) in a.pages.iter().zip(&b.pages).enumerate() {
                let same = match (pa, pb) {
                    (Some(x), Some(y)) => Arc::ptr_eq(x, y) || x[..] == y[..],
                    (None, None) => true,
                    (Some(x), None) | (None, Some(x)) => x.iter().all(|&v| v == 0),
                };
                if !same {
                    out.push(a.gpa + ((i as u64) << PAGE_SHIFT));
                }
            }
        }
        Some(out)
    }
}

/// The bit of the 64-byte line holding `addr` in a per-page line mask (bit n: line n).
/// Virtual and physical addresses share the offset within a page, so either will do.
#[inline(always)]
pub(crate) fn line_bit(addr: u64) -> u64 {
    1 << ((addr & PAGE_MASK) >> LINE_SHIFT)
}

/// Mask of the 64-byte lines of a page that `len` (>= 1) bytes at `gpa` touch (within
/// the page).
#[inline]
fn line_mask(gpa: u64, len: usize) -> u64 {
    let first = ((gpa & PAGE_MASK) >> LINE_SHIFT) as u32;
    let last = (((gpa & PAGE_MASK) + len.max(1) as u64 - 1).min(PAGE_MASK) >> LINE_SHIFT) as u32;
    // Bits first..=last.
    (u64::MAX >> (63 - last)) & (u64::MAX << first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{CounterSourceKind, MemoryRegion, SnapshotPage};

    fn config() -> MachineConfig {
        MachineConfig {
            regions: vec![
                MemoryRegion {
                    gpa: 0,
                    size: 0x10000,
                    kind: RegionKind::Ram,
                },
                MemoryRegion {
                    gpa: 0x100000,
                    size: 0x2000,
                    kind: RegionKind::AgentRing,
                },
            ],
            tsc_khz: None,
            counter: CounterSourceKind::None,
            quirks: Default::default(),
        }
    }

    #[test]
    fn snapshot_read_write_and_cow() {
        let snap = Snapshot {
            cpu: Default::default(),
            pages: vec![SnapshotPage {
                gpa: 0x1000,
                data: vec![7; PAGE_SIZE],
            }],
        };
        let mut m = GuestMemory::from_snapshot(&config(), &snap).unwrap();
        let mut b = [0u8; 4];
        m.read(0xffe, &mut b).unwrap();
        assert_eq!(b, [0, 0, 7, 7]);
        let c = m.clone();
        assert_ne!(c.instance_id(), m.instance_id());
        assert_eq!(m.stats().shared_pages, 1);
        m.write(0x1ffe, &[1, 2, 3, 4]).unwrap();
        assert_eq!(m.stats().shared_pages, 0);
        assert_eq!(c.read_u64(0x1ff8).unwrap(), 0x0707_0707_0707_0707);
        assert_ne!(m.hash(), c.hash());
        assert_eq!(m.diff_pages(&c).unwrap(), vec![0x1000, 0x2000]);
        assert!(m.write(0xfffe, &[1, 2, 3]).is_err());
        assert_eq!(
            m.read_u64(0xfff8).unwrap(),
            0,
            "failed write changed nothing"
        );
        assert!(m.is_ram(0x101fff) && !m.is_ram(0x102000));
    }

    #[test]
    fn code_generation_tracks_marked_pages() {
        let mut m = GuestMemory::new(&config()).unwrap();
        m.write(0x3000, &[1]).unwrap();
        assert_eq!(m.code_generation(), 0);
        m.mark_code(0x3000, 3);
        m.mark_code(0x3fe0, 15);
        // Another line of the same page: not code.
        m.write(0x3800, &[1]).unwrap();
        assert_eq!(m.code_generation(), 0);
        m.write(0x3ffe, &[1, 2, 3, 4]).unwrap();
        assert_eq!(m.code_generation(), 1);
        let w: Vec<_> = m.code_writes_since(0).unwrap().collect();
        assert_eq!(w, vec![(0x3000, 1 << 63)]);
        // The written line is no longer marked; the first one still is.
        m.write(0x3ff0, &[1]).unwrap();
        assert_eq!(m.code_generation(), 1);
        m.write_u64(0x3000, 5).unwrap();
        assert_eq!(m.code_generation(), 2);
        assert_eq!(
            m.code_writes_since(1).unwrap().collect::<Vec<_>>(),
            vec![(0x3000, 1)]
        );
        for k in 0..CODE_LOG_LEN as u64 + 1 {
            m.mark_code(0x4000, 1);
            m.write(0x4000, &[k as u8]).unwrap();
        }
        assert!(m.code_writes_since(0).is_none(), "log overran");
        assert_eq!(m.code_writes_since(m.code_generation()).unwrap().count(), 0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut cfg = config();
        cfg.regions[0].size = 0x10001;
        assert!(GuestMemory::new(&cfg).is_err());
        let snap = Snapshot {
            cpu: Default::default(),
            pages: vec![SnapshotPage {
                gpa: 0x200000,
                data: vec![0; PAGE_SIZE],
            }],
        };
        assert!(GuestMemory::from_snapshot(&config(), &snap).is_err());
    }

    #[test]
    fn writes_to_watched_lines_are_counted() {
        let mut m = GuestMemory::new(&config()).unwrap();
        m.watch_ranges([(0x1040, 8)]);
        assert!(m.write_in_page(0x1000, 8, 1), "another line of the page");
        assert_eq!(m.watch_hits(), 0);
        assert!(m.write_in_page(0x107f, 1, 1), "the same 64-byte line");
        assert_eq!(m.watch_hits(), 1);
        m.write(0x103c, &[0; 8]).unwrap();
        assert_eq!(m.watch_hits(), 2, "a write that reaches into the line");
        let mut c = m.clone();
        c.write_u64(0x1040, 5).unwrap();
        assert_eq!(
            (m.watch_hits(), c.watch_hits()),
            (2, 3),
            "counted per memory"
        );
        c.watch_ranges([]);
        c.write_u64(0x1040, 6).unwrap();
        assert_eq!(c.watch_hits(), 3);
    }
}
