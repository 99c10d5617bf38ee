//! Guest-physical memory for replay: 4 KiB copy-on-write pages in a persistent radix
//! tree, shared between clones.
//!
//! Each RAM region is a radix tree ([`Node`]): inner nodes of 64 children over leaves of
//! 32 page slots. A slot is a zero page (nothing allocated), a page (`Arc`), or a page
//! still in the recording file ([`PageSource`]: the snapshot is mapped lazily and read
//! when first touched). Nodes are allocated only where something is stored, so a region
//! costs nothing until it is written, whatever its size (up to [`MAX_GUEST_MEMORY`] in
//! all). Nodes and pages are shared through `Arc`s: `clone()` copies one root pointer per
//! region, and a write to a shared page copies the page and the nodes on its path (path
//! copying), so a clone taken as a time-travel checkpoint keeps only what was written
//! after it ([`GuestMemory::heap_bytes_not_in`] says exactly how much that is).
//!
//! The write cache: the CPU's loads and stores go through a small direct-mapped cache of
//! pages ([`CACHE_SLOTS`] entries, allocated on first use, empty in a clone). A page
//! written through it is checked out of the tree and owned by the cache (`Box`), so a
//! store to a page already owned is a tag compare and a store: no region search, no tree
//! walk, no reference-count check. Owned pages go back into the tree when evicted, on
//! [`GuestMemory::flush`], and, as copies, into a clone (a checkpoint flushes first, so
//! that it shares them instead).
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

/// The largest guest: the sum of a machine's region sizes. A recording that claims more
/// is refused. Regions cost memory only where they are written (or read from the
/// snapshot), so this bounds the address space, not what a replay allocates up front.
pub const MAX_GUEST_MEMORY: u64 = 64 << 30;
/// Most memory regions in a machine.
pub const MAX_REGIONS: usize = 64;

const PAGE_SHIFT: u32 = 12;
/// Code-tracking granularity: 64-byte lines, so one `u64` mask per page.
const LINE_SHIFT: u32 = 6;
/// Code writes remembered for [`GuestMemory::code_writes_since`]; a reader further
/// behind must drop all its decodes.
const CODE_LOG_LEN: usize = 64;
const PAGE_MASK: u64 = PAGE_SIZE as u64 - 1;

/// Page slots per leaf.
const LEAF_BITS: u32 = 5;
const LEAF_SLOTS: usize = 1 << LEAF_BITS;
/// Children per inner node.
const NODE_BITS: u32 = 6;
const NODE_KIDS: usize = 1 << NODE_BITS;
/// Entries of the write cache (a power of two).
pub const CACHE_SLOTS: usize = 128;
/// A cache tag that matches no page number.
const NO_PAGE: u64 = u64::MAX;

static ZERO_PAGE: Page = [0; PAGE_SIZE];

/// Heap bytes of one tree node (the `Arc`'s counts and the node).
const NODE_BYTES: u64 = (2 * std::mem::size_of::<usize>() + std::mem::size_of::<Node>()) as u64;
/// Heap bytes of one stored page: the `Arc` (counts and the box pointer) and the page.
const PAGE_BYTES: u64 = (3 * std::mem::size_of::<usize>() + PAGE_SIZE) as u64;
/// Heap bytes of a leaf's code masks, where it has any.
const CODE_BYTES: u64 = (LEAF_SLOTS * 8) as u64;

/// Where the pages of a lazily mapped snapshot come from (the recording file).
pub trait PageSource: Send + Sync {
    /// Reads the page stored at `loc` (a location given to [`GuestMemory::map_lazy`]).
    fn read_page(&self, loc: u64, out: &mut Page) -> Result<(), String>;
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MemoryError {
    #[error("guest-physical address {gpa:#x} (+{len}) is not RAM")]
    NotRam { gpa: u64, len: usize },
    #[error(
        "memory region at {gpa:#x} size {size:#x} is invalid (unaligned, empty or overlapping)"
    )]
    BadRegion { gpa: u64, size: u64 },
    #[error(
        "the machine claims {regions} memory regions of {total:#x} bytes in all; replay takes at most {MAX_REGIONS} regions of {MAX_GUEST_MEMORY:#x} bytes"
    )]
    TooLarge { regions: usize, total: u128 },
    #[error("snapshot page at {gpa:#x} is invalid (unaligned, wrong size or outside RAM)")]
    BadSnapshotPage { gpa: u64 },
}

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

fn new_instance_id() -> u64 {
    NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed)
}

/// A page slot of a leaf. Stored pages are boxed inside their `Arc` so that checking
/// one out for writing ([`GuestMemory::check_out`]) moves the box out of an unshared
/// `Arc` instead of copying 4 KiB.
#[derive(Clone)]
#[allow(clippy::redundant_allocation)]
enum Slot {
    /// A zero page (nothing stored).
    Zero,
    Page(Arc<Box<Page>>),
    /// Not read yet: at this location of the [`PageSource`].
    Lazy(u64),
}

#[derive(Clone)]
struct Leaf {
    slots: [Slot; LEAF_SLOTS],
    /// Per page, one bit per 64-byte line: instructions were decoded from it (absent:
    /// none in this leaf).
    code: Option<Box<[u64; LEAF_SLOTS]>>,
    /// One bit per page: it was read as a page table by a page walk.
    pt: u32,
}

#[derive(Clone)]
enum Node {
    Inner([Option<Arc<Node>>; NODE_KIDS]),
    Leaf(Leaf),
}

impl Node {
    /// An empty node `level` levels above the leaves.
    fn empty(level: u32) -> Node {
        if level == 0 {
            Node::Leaf(Leaf {
                slots: [const { Slot::Zero }; LEAF_SLOTS],
                code: None,
                pt: 0,
            })
        } else {
            Node::Inner([const { None }; NODE_KIDS])
        }
    }
}

#[derive(Clone)]
struct Region {
    gpa: u64,
    size: u64,
    kind: RegionKind,
    /// Inner levels above the leaves.
    levels: u32,
    /// None: every page is zero.
    root: Option<Arc<Node>>,
}

impl Region {
    /// The leaf holding page `i` of the region, if there is one (none: the page is zero).
    #[inline]
    fn leaf(&self, i: u64) -> Option<&Leaf> {
        let mut node = self.root.as_deref()?;
        let mut level = self.levels;
        loop {
            match node {
                Node::Leaf(l) => return Some(l),
                Node::Inner(kids) => {
                    level = level.checked_sub(1)?;
                    let k = (i >> (LEAF_BITS + NODE_BITS * level)) as usize & (NODE_KIDS - 1);
                    node = kids[k].as_deref()?;
                }
            }
        }
    }

    /// The leaf holding page `i`, created where absent and made private to this region's
    /// tree (path copying).
    fn leaf_mut(&mut self, i: u64) -> &mut Leaf {
        let levels = self.levels;
        let mut node: &mut Node = Arc::make_mut(
            self.root
                .get_or_insert_with(|| Arc::new(Node::empty(levels))),
        );
        let mut level = levels;
        loop {
            match node {
                Node::Leaf(l) => return l,
                Node::Inner(kids) => {
                    level -= 1;
                    let k = (i >> (LEAF_BITS + NODE_BITS * level)) as usize & (NODE_KIDS - 1);
                    node =
                        Arc::make_mut(kids[k].get_or_insert_with(|| Arc::new(Node::empty(level))));
                }
            }
        }
    }

    fn pages(&self) -> u64 {
        self.size >> PAGE_SHIFT
    }
}

/// The page an entry of the write cache holds.
#[allow(clippy::redundant_allocation)]
enum Buf {
    Zero,
    /// Shared with the tree (and possibly with clones): read only.
    Shared(Arc<Box<Page>>),
    /// Checked out of the tree: this memory's own, written in place.
    Owned(Box<Page>),
}

impl Buf {
    #[inline(always)]
    fn bytes(&self) -> &Page {
        match self {
            Buf::Zero => &ZERO_PAGE,
            Buf::Shared(p) => p,
            Buf::Owned(p) => p,
        }
    }
}

struct Entry {
    /// The page number (gpa >> 12) held, or [`NO_PAGE`].
    tag: u64,
    /// The page number when a store may go straight to the page (owned, not a page
    /// table, no watched line), else [`NO_PAGE`].
    wtag: u64,
    /// The page's code lines (a copy of the tree's).
    code: u64,
    /// The page is a page table (a copy of the tree's bit).
    pt: bool,
    page: Buf,
}

impl Entry {
    const EMPTY: Entry = Entry {
        tag: NO_PAGE,
        wtag: NO_PAGE,
        code: 0,
        pt: false,
        page: Buf::Zero,
    };
}

/// A page borrowed from a memory, or read for the occasion from its source.
enum PageRef<'a> {
    Borrowed(&'a Page),
    Loaded(Box<Page>),
}

impl std::ops::Deref for PageRef<'_> {
    type Target = Page;
    fn deref(&self) -> &Page {
        match self {
            PageRef::Borrowed(p) => p,
            PageRef::Loaded(p) => p,
        }
    }
}

#[inline(always)]
fn cache_index(pn: u64) -> usize {
    pn as usize & (CACHE_SLOTS - 1)
}

/// Guest-physical memory (see the module documentation).
pub struct GuestMemory {
    regions: Vec<Region>,
    /// The write cache: [`CACHE_SLOTS`] entries, or none before first use.
    cache: Vec<Entry>,
    source: Option<Arc<dyn PageSource>>,
    /// The first error reading a lazily mapped page (the page then reads as zero).
    source_error: Option<String>,
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

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMemory")
            .field("regions", &self.regions.len())
            .field("instance_id", &self.instance_id)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A copy whose tree shares every node and page with this one. Pages this memory holds
/// in its write cache are copied into the clone (call [`GuestMemory::flush`] first to
/// share them instead); the clone's cache starts empty.
impl Clone for GuestMemory {
    fn clone(&self) -> Self {
        let mut m = GuestMemory {
            regions: self.regions.clone(),
            cache: Vec::new(),
            source: self.source.clone(),
            source_error: self.source_error.clone(),
            code_generation: self.code_generation,
            code_log: self.code_log,
            pt_generation: self.pt_generation,
            instance_id: new_instance_id(),
            watched: self.watched.clone(),
            watch_hits: self.watch_hits,
        };
        for e in &self.cache {
            if let Buf::Owned(p) = &e.page
                && let Some((r, i)) = m.locate(e.tag << PAGE_SHIFT)
            {
                m.regions[r].leaf_mut(i).slots[slot_index(i)] = Slot::Page(Arc::new(Box::new(**p)));
            }
        }
        m
    }
}

/// Page statistics of a memory (see [`GuestMemory::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    /// Pages of address space in RAM regions.
    pub total_pages: u64,
    /// Pages that have backing storage (not the implicit zero page, nor still in the
    /// recording file).
    pub allocated_pages: u64,
    /// Allocated pages that are shared with another memory (a clone or checkpoint).
    pub shared_pages: u64,
    /// Pages of the snapshot not read from the recording file yet.
    pub lazy_pages: u64,
    /// Tree nodes this memory holds (shared ones included).
    pub nodes: u64,
}

#[inline(always)]
fn slot_index(i: u64) -> usize {
    i as usize & (LEAF_SLOTS - 1)
}

#[inline(always)]
fn read_value(p: &Page, off: usize, size: usize) -> u64 {
    // Fixed-size reads compile to single loads (no memcpy call).
    match size {
        1 => p[off] as u64,
        2 => u16::from_le_bytes([p[off], p[off + 1]]) as u64,
        4 => u32::from_le_bytes([p[off], p[off + 1], p[off + 2], p[off + 3]]) as u64,
        8 => u64::from_le_bytes(p[off..off + 8].try_into().unwrap_or([0; 8])),
        _ => {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(&p[off..off + size]);
            u64::from_le_bytes(b)
        }
    }
}

#[inline(always)]
fn write_value(p: &mut Page, off: usize, size: usize, value: u64) {
    match size {
        1 => p[off] = value as u8,
        2 => p[off..off + 2].copy_from_slice(&(value as u16).to_le_bytes()),
        4 => p[off..off + 4].copy_from_slice(&(value as u32).to_le_bytes()),
        8 => p[off..off + 8].copy_from_slice(&value.to_le_bytes()),
        _ => p[off..off + size].copy_from_slice(&value.to_le_bytes()[..size]),
    }
}

fn zero_page() -> Box<Page> {
    Box::new([0; PAGE_SIZE])
}

impl GuestMemory {
    /// Builds memory from the machine's regions and the snapshot's pages (absent pages
    /// are zero).
    pub fn from_snapshot(config: &MachineConfig, snapshot: &Snapshot) -> Result<Self, MemoryError> {
        let mut mem = Self::new(config)?;
        for page in &snapshot.pages {
            mem.add_snapshot_page(page.gpa, &page.data)?;
        }
        Ok(mem)
    }

    /// Stores one page of a snapshot (a later page at the same address replaces it).
    pub fn add_snapshot_page(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let data: &Page = data
            .try_into()
            .map_err(|_| MemoryError::BadSnapshotPage { gpa })?;
        let (r, i) = self.snapshot_slot(gpa)?;
        self.regions[r].leaf_mut(i).slots[slot_index(i)] = if data.iter().all(|&b| b == 0) {
            Slot::Zero
        } else {
            Slot::Page(Arc::new(Box::new(*data)))
        };
        Ok(())
    }

    /// Maps the snapshot page at `gpa` to location `loc` of the memory's [`PageSource`]:
    /// it is read when first touched (a later page at the same address replaces it).
    pub fn map_lazy(&mut self, gpa: u64, loc: u64) -> Result<(), MemoryError> {
        let (r, i) = self.snapshot_slot(gpa)?;
        self.regions[r].leaf_mut(i).slots[slot_index(i)] = Slot::Lazy(loc);
        Ok(())
    }

    /// Where the snapshot page at `gpa` goes; a cached copy of it is put back first.
    fn snapshot_slot(&mut self, gpa: u64) -> Result<(usize, u64), MemoryError> {
        if gpa & PAGE_MASK != 0 {
            return Err(MemoryError::BadSnapshotPage { gpa });
        }
        let at = self
            .locate(gpa)
            .ok_or(MemoryError::BadSnapshotPage { gpa })?;
        let k = cache_index(gpa >> PAGE_SHIFT);
        if self
            .cache
            .get(k)
            .is_some_and(|e| e.tag == gpa >> PAGE_SHIFT)
        {
            self.evict(k);
        }
        Ok(at)
    }

    /// Zero-filled memory with the configuration's regions. Nothing is allocated for
    /// them until they are written.
    pub fn new(config: &MachineConfig) -> Result<Self, MemoryError> {
        let total: u128 = config.regions.iter().map(|r| u128::from(r.size)).sum();
        if config.regions.len() > MAX_REGIONS || total > u128::from(MAX_GUEST_MEMORY) {
            return Err(MemoryError::TooLarge {
                regions: config.regions.len(),
                total,
            });
        }
        let mut regions: Vec<Region> = Vec::with_capacity(config.regions.len());
        for r in &config.regions {
            if r.gpa & PAGE_MASK != 0
                || r.size & PAGE_MASK != 0
                || r.size == 0
                || r.gpa.checked_add(r.size).is_none()
            {
                return Err(MemoryError::BadRegion {
                    gpa: r.gpa,
                    size: r.size,
                });
            }
            let leaves = (r.size >> PAGE_SHIFT).div_ceil(LEAF_SLOTS as u64);
            let mut levels = 0;
            while (NODE_KIDS as u64).pow(levels) < leaves {
                levels += 1;
            }
            regions.push(Region {
                gpa: r.gpa,
                size: r.size,
                kind: r.kind,
                levels,
                root: None,
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
            cache: Vec::new(),
            source: None,
            source_error: None,
            code_generation: 0,
            code_log: [(0, 0); CODE_LOG_LEN],
            pt_generation: 0,
            watched: Vec::new(),
            watch_hits: 0,
            instance_id: new_instance_id(),
        })
    }

    /// Reads pages mapped with [`Self::map_lazy`] from `source`.
    pub fn set_source(&mut self, source: Arc<dyn PageSource>) {
        self.source = Some(source);
    }

    /// The first error reading a lazily mapped page, if any (the page read as zero).
    pub fn source_error(&self) -> Option<&str> {
        self.source_error.as_deref()
    }

    /// (region index, page index in the region) of the page holding `gpa`.
    #[inline]
    fn locate(&self, gpa: u64) -> Option<(usize, u64)> {
        for (ri, r) in self.regions.iter().enumerate() {
            if gpa.wrapping_sub(r.gpa) < r.size {
                return Some((ri, (gpa - r.gpa) >> PAGE_SHIFT));
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

    /// Reads page `loc` from the source (zero, with the error kept, if it cannot).
    fn load(&self, loc: u64) -> Result<Box<Page>, String> {
        let mut p = zero_page();
        match &self.source {
            Some(s) => s.read_page(loc, &mut p)?,
            None => return Err("a lazily mapped page without a source".into()),
        }
        Ok(p)
    }

    /// The page holding `gpa` as it stands (cache first, then the tree), without
    /// changing anything: a page still in the file is read for the occasion.
    fn page_ref(&self, gpa: u64) -> Option<PageRef<'_>> {
        let pn = gpa >> PAGE_SHIFT;
        if let Some(e) = self.cache.get(cache_index(pn))
            && e.tag == pn
        {
            return Some(PageRef::Borrowed(e.page.bytes()));
        }
        let (r, i) = self.locate(gpa)?;
        Some(
            match self.regions[r].leaf(i).map(|l| &l.slots[slot_index(i)]) {
                None | Some(Slot::Zero) => PageRef::Borrowed(&ZERO_PAGE),
                Some(Slot::Page(p)) => PageRef::Borrowed(p),
                Some(Slot::Lazy(loc)) => {
                    PageRef::Loaded(self.load(*loc).unwrap_or_else(|_| zero_page()))
                }
            },
        )
    }

    /// Whether the page at `gpa` holds what the recording or replay stored there: a
    /// snapshot page that is not all zero, or a page written since. False for RAM never
    /// stored (it reads as zero) and for what is not RAM.
    pub fn is_stored(&self, gpa: u64) -> bool {
        let pn = gpa >> PAGE_SHIFT;
        if let Some(e) = self.cache.get(cache_index(pn))
            && e.tag == pn
        {
            return !matches!(e.page, Buf::Zero);
        }
        let Some((r, i)) = self.locate(gpa) else {
            return false;
        };
        matches!(
            self.regions[r].leaf(i).map(|l| &l.slots[slot_index(i)]),
            Some(Slot::Page(_) | Slot::Lazy(_))
        )
    }

    /// Reads `buf.len()` bytes at `gpa`. All of it must be RAM.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = gpa.wrapping_add(done as u64);
            let p = self.page_ref(a).ok_or(MemoryError::NotRam {
                gpa: a,
                len: buf.len() - done,
            })?;
            let off = (a & PAGE_MASK) as usize;
            let n = (PAGE_SIZE - off).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&p[off..off + n]);
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
            let page = self.page_for_write(a, n).ok_or(MemoryError::NotRam {
                gpa: a,
                len: data.len() - done,
            })?;
            page[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Reads a little-endian value of `size` (1, 2, 4 or 8) bytes that does not cross a
    /// page. Returns `None` if `gpa` is not RAM. Leaves the cache alone (see
    /// [`Self::load_in_page`]).
    #[inline]
    pub fn read_in_page(&self, gpa: u64, size: usize) -> Option<u64> {
        self.cached_value(gpa, size)
            .or_else(|| self.read_in_page_uncached(gpa, size))
    }

    /// The value at `gpa` if its page is in the write cache (the fast path of every
    /// in-page read; it calls nothing, so a caller's fast path needs no stack frame).
    #[inline(always)]
    pub fn cached_value(&self, gpa: u64, size: usize) -> Option<u64> {
        debug_assert!((gpa & PAGE_MASK) as usize + size <= PAGE_SIZE);
        let pn = gpa >> PAGE_SHIFT;
        let e = self.cache.get(cache_index(pn))?;
        (e.tag == pn).then(|| read_value(e.page.bytes(), (gpa & PAGE_MASK) as usize, size))
    }

    #[inline(never)]
    fn read_in_page_uncached(&self, gpa: u64, size: usize) -> Option<u64> {
        let p = self.page_ref(gpa)?;
        Some(read_value(&p, (gpa & PAGE_MASK) as usize, size))
    }

    /// Like [`Self::read_in_page`], and keeps the page in the cache (the CPU's loads).
    #[inline]
    pub fn load_in_page(&mut self, gpa: u64, size: usize) -> Option<u64> {
        if let Some(v) = self.cached_value(gpa, size) {
            return Some(v);
        }
        self.load_in_page_miss(gpa, size)
    }

    #[inline(never)]
    fn load_in_page_miss(&mut self, gpa: u64, size: usize) -> Option<u64> {
        let (r, i) = self.locate(gpa)?;
        let k = self.entry_for(gpa >> PAGE_SHIFT, r, i, false);
        Some(read_value(
            self.cache[k].page.bytes(),
            (gpa & PAGE_MASK) as usize,
            size,
        ))
    }

    /// Writes the low `size` bytes of `value` at `gpa` (within one page). Returns false if
    /// `gpa` is not RAM.
    #[inline]
    pub fn write_in_page(&mut self, gpa: u64, size: usize, value: u64) -> bool {
        self.write_cached(gpa, size, value) || self.write_in_page_miss(gpa, size, value)
    }

    /// Writes as [`Self::write_in_page`] if the write cache owns the page and the write
    /// touches no code (the fast path of every in-page write; it calls nothing).
    /// Returns false, having written nothing, otherwise.
    #[inline(always)]
    pub fn write_cached(&mut self, gpa: u64, size: usize, value: u64) -> bool {
        debug_assert!((gpa & PAGE_MASK) as usize + size <= PAGE_SIZE);
        let pn = gpa >> PAGE_SHIFT;
        let off = (gpa & PAGE_MASK) as usize;
        if let Some(e) = self.cache.get_mut(cache_index(pn))
            && e.wtag == pn
            && (e.code == 0 || e.code & line_mask(gpa, size) == 0)
            && let Buf::Owned(p) = &mut e.page
        {
            write_value(p, off, size, value);
            return true;
        }
        false
    }

    #[inline(never)]
    fn write_in_page_miss(&mut self, gpa: u64, size: usize, value: u64) -> bool {
        match self.page_for_write(gpa, size) {
            Some(p) => {
                write_value(p, (gpa & PAGE_MASK) as usize, size, value);
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

    /// Allocates the cache on first use.
    #[cold]
    fn allocate_cache(&mut self) {
        self.cache = (0..CACHE_SLOTS).map(|_| Entry::EMPTY).collect();
    }

    /// The index of the cache entry holding page `pn` (page `i` of region `r`), filled
    /// if it held another; with `write`, the page is owned by the entry.
    fn entry_for(&mut self, pn: u64, r: usize, i: u64, write: bool) -> usize {
        if self.cache.is_empty() {
            self.allocate_cache();
        }
        let k = cache_index(pn);
        if self.cache[k].tag != pn {
            self.evict(k);
            self.fill(k, pn, r, i);
        }
        if write && !matches!(self.cache[k].page, Buf::Owned(_)) {
            self.check_out(k, r, i);
        }
        k
    }

    /// Puts entry `k`'s page back into the tree, if it owns it, and empties the entry.
    fn evict(&mut self, k: usize) {
        let e = &mut self.cache[k];
        let tag = std::mem::replace(&mut e.tag, NO_PAGE);
        e.wtag = NO_PAGE;
        let page = std::mem::replace(&mut e.page, Buf::Zero);
        if let Buf::Owned(p) = page
            && let Some((r, i)) = self.locate(tag << PAGE_SHIFT)
        {
            self.regions[r].leaf_mut(i).slots[slot_index(i)] = Slot::Page(Arc::new(p));
        }
    }

    /// Fills the empty entry `k` with page `pn` (page `i` of region `r`) for reading. A
    /// page still in the file is read and stored in the tree.
    fn fill(&mut self, k: usize, pn: u64, r: usize, i: u64) {
        let j = slot_index(i);
        let (slot, code, pt) = match self.regions[r].leaf(i) {
            None => (Slot::Zero, 0, false),
            Some(l) => (
                l.slots[j].clone(),
                l.code.as_ref().map_or(0, |c| c[j]),
                l.pt & (1 << j) != 0,
            ),
        };
        let page = match slot {
            Slot::Zero => Buf::Zero,
            Slot::Page(p) => Buf::Shared(p),
            Slot::Lazy(loc) => match self.load(loc) {
                Ok(p) if p.iter().all(|&b| b == 0) => {
                    self.regions[r].leaf_mut(i).slots[j] = Slot::Zero;
                    Buf::Zero
                }
                Ok(p) => {
                    let p = Arc::new(p);
                    self.regions[r].leaf_mut(i).slots[j] = Slot::Page(p.clone());
                    Buf::Shared(p)
                }
                Err(e) => {
                    self.source_error.get_or_insert(e);
                    Buf::Zero
                }
            },
        };
        self.cache[k] = Entry {
            tag: pn,
            wtag: NO_PAGE,
            code,
            pt,
            page,
        };
    }

    /// Makes entry `k` (holding page `i` of region `r`) own its page: takes it out of
    /// the tree, copying it if it is shared with another memory.
    fn check_out(&mut self, k: usize, r: usize, i: u64) {
        // Drop the entry's reference first, so that a page only the tree holds moves.
        self.cache[k].page = Buf::Zero;
        let slot = std::mem::replace(
            &mut self.regions[r].leaf_mut(i).slots[slot_index(i)],
            Slot::Zero,
        );
        let page = match slot {
            Slot::Zero => zero_page(),
            Slot::Page(p) => Arc::try_unwrap(p).unwrap_or_else(|p| Box::new(**p)),
            Slot::Lazy(loc) => self.load(loc).unwrap_or_else(|e| {
                self.source_error.get_or_insert(e);
                zero_page()
            }),
        };
        let pn = self.cache[k].tag;
        let direct = !self.cache[k].pt && !self.watches_page(pn);
        let e = &mut self.cache[k];
        e.page = Buf::Owned(page);
        e.wtag = if direct { pn } else { NO_PAGE };
    }

    fn watches_page(&self, pn: u64) -> bool {
        self.watched.iter().any(|&(p, _)| p >> PAGE_SHIFT == pn)
    }

    /// Puts every page the cache owns back into the tree (the cache keeps them, shared),
    /// so that a clone shares them instead of copying them.
    pub fn flush(&mut self) {
        for k in 0..self.cache.len() {
            let e = &mut self.cache[k];
            if !matches!(e.page, Buf::Owned(_)) {
                continue;
            }
            let Buf::Owned(p) = std::mem::replace(&mut e.page, Buf::Zero) else {
                continue;
            };
            e.wtag = NO_PAGE;
            let p = Arc::new(p);
            e.page = Buf::Shared(p.clone());
            let tag = e.tag;
            if let Some((r, i)) = self.locate(tag << PAGE_SHIFT) {
                self.regions[r].leaf_mut(i).slots[slot_index(i)] = Slot::Page(p);
            }
        }
    }

    /// The page holding `gpa`, made private to this memory (copy on write), for a write
    /// of `len` bytes at `gpa` (within the page).
    fn page_for_write(&mut self, gpa: u64, len: usize) -> Option<&mut Page> {
        if !self.watched.is_empty() {
            self.note_watched_write(gpa, len);
        }
        let (r, i) = self.locate(gpa)?;
        let pn = gpa >> PAGE_SHIFT;
        let k = self.entry_for(pn, r, i, true);
        let hit = self.cache[k].code & line_mask(gpa, len);
        if hit != 0 {
            self.cache[k].code &= !hit;
            let code = self.cache[k].code;
            if let Some(c) = self.regions[r].leaf_mut(i).code.as_mut() {
                c[slot_index(i)] = code;
            }
            let slot = (self.code_generation % CODE_LOG_LEN as u64) as usize;
            self.code_log[slot] = (gpa & !PAGE_MASK, hit);
            self.code_generation += 1;
        }
        let e = &mut self.cache[k];
        if e.pt {
            self.pt_generation += 1;
        }
        match &mut e.page {
            Buf::Owned(p) => Some(p),
            _ => None,
        }
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
        // Stores to watched pages take the counting path.
        for k in 0..self.cache.len() {
            let e = &self.cache[k];
            let direct = matches!(e.page, Buf::Owned(_)) && !e.pt && !self.watches_page(e.tag);
            let tag = e.tag;
            self.cache[k].wtag = if direct { tag } else { NO_PAGE };
        }
    }

    /// Writes to watched lines (see [`Self::watch_ranges`]) so far.
    #[inline]
    pub fn watch_hits(&self) -> u64 {
        self.watch_hits
    }

    /// Marks the `len` bytes at `gpa` (clipped to the page) as holding a decoded
    /// instruction: a later write to them is logged (see [`Self::code_writes_since`]).
    #[inline]
    pub fn mark_code(&mut self, gpa: u64, len: usize) {
        let len = len.clamp(1, PAGE_SIZE - (gpa & PAGE_MASK) as usize);
        let lines = line_mask(gpa, len);
        let pn = gpa >> PAGE_SHIFT;
        if let Some(e) = self.cache.get(cache_index(pn))
            && e.tag == pn
            && e.code & lines == lines
        {
            return;
        }
        self.mark_code_slow(gpa, lines);
    }

    #[inline(never)]
    fn mark_code_slow(&mut self, gpa: u64, lines: u64) {
        let Some((r, i)) = self.locate(gpa) else {
            return;
        };
        let k = self.entry_for(gpa >> PAGE_SHIFT, r, i, false);
        let e = &mut self.cache[k];
        if e.code & lines == lines {
            return;
        }
        e.code |= lines;
        let code = e.code;
        let leaf = self.regions[r].leaf_mut(i);
        leaf.code.get_or_insert_with(|| Box::new([0; LEAF_SLOTS]))[slot_index(i)] = code;
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
    /// [`Self::pt_generation`], which makes the CPU flush its TLB). Keeps the page in
    /// the cache: the walk reads it next.
    #[inline]
    pub fn mark_page_table(&mut self, gpa: u64) {
        let pn = gpa >> PAGE_SHIFT;
        if let Some(e) = self.cache.get(cache_index(pn))
            && e.tag == pn
            && e.pt
        {
            return;
        }
        self.mark_page_table_slow(gpa);
    }

    #[inline(never)]
    fn mark_page_table_slow(&mut self, gpa: u64) {
        let Some((r, i)) = self.locate(gpa) else {
            return;
        };
        let k = self.entry_for(gpa >> PAGE_SHIFT, r, i, false);
        if self.cache[k].pt {
            return;
        }
        self.cache[k].pt = true;
        self.cache[k].wtag = NO_PAGE;
        self.regions[r].leaf_mut(i).pt |= 1 << slot_index(i);
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
        self.regions.iter().map(|r| r.pages()).sum()
    }

    /// Number of allocated pages shared with another memory object.
    pub fn shared_page_count(&self) -> u64 {
        self.stats().shared_pages
    }

    /// Visits every stored slot in address order: (page gpa, slot, whether a node on its
    /// path is shared with another memory). Pages the cache owns are not in the tree.
    fn for_each_slot(&self, f: &mut dyn FnMut(u64, &Slot, bool)) {
        fn walk(
            node: &Arc<Node>,
            level: u32,
            first: u64,
            shared: bool,
            gpa: u64,
            f: &mut dyn FnMut(u64, &Slot, bool),
        ) {
            let shared = shared || Arc::strong_count(node) > 1;
            match &**node {
                Node::Leaf(l) => {
                    for (j, s) in l.slots.iter().enumerate() {
                        let page = first + j as u64;
                        f(gpa + (page << PAGE_SHIFT), s, shared);
                    }
                }
                Node::Inner(kids) => {
                    let span = (LEAF_SLOTS as u64) << (NODE_BITS * (level - 1));
                    for (k, kid) in kids.iter().enumerate() {
                        if let Some(kid) = kid {
                            walk(kid, level - 1, first + k as u64 * span, shared, gpa, f);
                        }
                    }
                }
            }
        }
        for r in &self.regions {
            if let Some(root) = &r.root {
                walk(root, r.levels, 0, false, r.gpa, &mut |gpa, s, sh| {
                    if gpa - r.gpa < r.size {
                        f(gpa, s, sh)
                    }
                });
            }
        }
    }

    pub fn stats(&self) -> MemoryStats {
        let mut s = MemoryStats {
            total_pages: self.page_count(),
            ..MemoryStats::default()
        };
        let cached = |gpa: u64| {
            self.cache
                .get(cache_index(gpa >> PAGE_SHIFT))
                .filter(|e| e.tag == gpa >> PAGE_SHIFT)
        };
        self.for_each_slot(&mut |gpa, slot, shared_path| match slot {
            Slot::Zero => {}
            Slot::Lazy(_) => s.lazy_pages += 1,
            Slot::Page(p) => {
                s.allocated_pages += 1;
                // The cache's copy of the pointer is this memory's own.
                let own = 1 + usize::from(
                    cached(gpa)
                        .is_some_and(|e| matches!(&e.page, Buf::Shared(q) if Arc::ptr_eq(p, q))),
                );
                if shared_path || Arc::strong_count(p) > own {
                    s.shared_pages += 1;
                }
            }
        });
        s.allocated_pages += self
            .cache
            .iter()
            .filter(|e| matches!(e.page, Buf::Owned(_)))
            .count() as u64;
        fn count(n: &Node) -> u64 {
            match n {
                Node::Leaf(_) => 1,
                Node::Inner(kids) => 1 + kids.iter().flatten().map(|k| count(k)).sum::<u64>(),
            }
        }
        s.nodes = self
            .regions
            .iter()
            .filter_map(|r| r.root.as_deref())
            .map(count)
            .sum();
        s
    }

    /// Heap bytes this memory holds that `prev` does not share: tree nodes and pages not
    /// shared with it (compared by identity at the same place in the tree), the pages
    /// its cache owns, its cache and its region table. With `prev` None: all of it. What
    /// a checkpoint costs beyond its predecessor.
    pub fn heap_bytes_not_in(&self, prev: Option<&GuestMemory>) -> u64 {
        fn slot_bytes(a: &Slot, b: Option<&Slot>) -> u64 {
            match (a, b) {
                (Slot::Page(x), Some(Slot::Page(y))) if Arc::ptr_eq(x, y) => 0,
                (Slot::Page(_), _) => PAGE_BYTES,
                _ => 0,
            }
        }
        fn node_bytes(a: &Arc<Node>, b: Option<&Arc<Node>>) -> u64 {
            if b.is_some_and(|b| Arc::ptr_eq(a, b)) {
                return 0;
            }
            let b = b.map(|b| &**b);
            NODE_BYTES
                + match (&**a, b) {
                    (Node::Leaf(l), other) => {
                        let m = match other {
                            Some(Node::Leaf(m)) => Some(m),
                            _ => None,
                        };
                        let code = if l.code.is_some() { CODE_BYTES } else { 0 };
                        code + l
                            .slots
                            .iter()
                            .enumerate()
                            .map(|(j, s)| slot_bytes(s, m.map(|m| &m.slots[j])))
                            .sum::<u64>()
                    }
                    (Node::Inner(kids), other) => {
                        let theirs = match other {
                            Some(Node::Inner(t)) => Some(t),
                            _ => None,
                        };
                        kids.iter()
                            .enumerate()
                            .filter_map(|(k, kid)| {
                                kid.as_ref()
                                    .map(|kid| node_bytes(kid, theirs.and_then(|t| t[k].as_ref())))
                            })
                            .sum()
                    }
                }
        }
        let mut bytes = (self.regions.capacity() * std::mem::size_of::<Region>()
            + self.cache.capacity() * std::mem::size_of::<Entry>()
            + self.watched.capacity() * 16) as u64;
        for (ri, r) in self.regions.iter().enumerate() {
            let theirs = prev
                .and_then(|p| p.regions.get(ri))
                .filter(|p| p.gpa == r.gpa && p.size == r.size)
                .and_then(|p| p.root.as_ref());
            if let Some(root) = &r.root {
                bytes += node_bytes(root, theirs);
            }
        }
        bytes += self
            .cache
            .iter()
            .filter(|e| matches!(e.page, Buf::Owned(_)))
            .count() as u64
            * PAGE_SIZE as u64;
        bytes
    }

    /// FNV-1a over every page of every region in address order (zero pages included, so
    /// two memories with equal contents hash equally however they are stored).
    pub fn hash(&self) -> u64 {
        let mut h = Fnv1a::new();
        for r in &self.regions {
            h.write_u64(r.gpa);
            h.write_u64(r.size);
            for k in 0..r.pages() {
                match self.page_ref(r.gpa + (k << PAGE_SHIFT)) {
                    Some(p) => h.write(&p[..]),
                    None => h.write(&ZERO_PAGE),
                }
            }
        }
        h.finish()
    }

    /// Guest-physical addresses of the pages whose contents differ between two memories
    /// with the same layout (`None` if the layouts differ). Subtrees the two share are
    /// skipped.
    pub fn diff_pages(&self, other: &GuestMemory) -> Option<Vec<u64>> {
        if self.regions.len() != other.regions.len()
            || self
                .regions
                .iter()
                .zip(&other.regions)
                .any(|(a, b)| a.gpa != b.gpa || a.size != b.size)
        {
            return None;
        }
        // Candidates: pages where the trees are not the same, and pages either cache owns.
        fn walk(
            a: Option<&Arc<Node>>,
            b: Option<&Arc<Node>>,
            level: u32,
            first: u64,
            out: &mut Vec<u64>,
        ) {
            if let (Some(x), Some(y)) = (a, b)
                && Arc::ptr_eq(x, y)
            {
                return;
            }
            let (na, nb) = (a.map(|x| &**x), b.map(|y| &**y));
            if level == 0 {
                fn slots(n: Option<&Node>) -> Option<&[Slot; LEAF_SLOTS]> {
                    match n {
                        Some(Node::Leaf(l)) => Some(&l.slots),
                        _ => None,
                    }
                }
                let (sa, sb) = (slots(na), slots(nb));
                for j in 0..LEAF_SLOTS {
                    let same = match (sa.map(|s| &s[j]), sb.map(|s| &s[j])) {
                        (None | Some(Slot::Zero), None | Some(Slot::Zero)) => true,
                        (Some(Slot::Page(x)), Some(Slot::Page(y))) => Arc::ptr_eq(x, y),
                        (Some(Slot::Lazy(x)), Some(Slot::Lazy(y))) => x == y,
                        _ => false,
                    };
                    if !same {
                        out.push(first + j as u64);
                    }
                }
                return;
            }
            fn kids(n: Option<&Node>) -> Option<&[Option<Arc<Node>>; NODE_KIDS]> {
                match n {
                    Some(Node::Inner(k)) => Some(k),
                    _ => None,
                }
            }
            let (ka, kb) = (kids(na), kids(nb));
            let span = (LEAF_SLOTS as u64) << (NODE_BITS * (level - 1));
            for k in 0..NODE_KIDS {
                let (x, y) = (
                    ka.and_then(|c| c[k].as_ref()),
                    kb.and_then(|c| c[k].as_ref()),
                );
                if x.is_some() || y.is_some() {
                    walk(x, y, level - 1, first + k as u64 * span, out);
                }
            }
        }
        let mut candidates = Vec::new();
        for (a, b) in self.regions.iter().zip(&other.regions) {
            let mut pages = Vec::new();
            walk(a.root.as_ref(), b.root.as_ref(), a.levels, 0, &mut pages);
            candidates.extend(
                pages
                    .into_iter()
                    .filter(|&p| p < a.pages())
                    .map(|p| a.gpa + (p << PAGE_SHIFT)),
            );
        }
        for m in [self, other] {
            for e in &m.cache {
                if matches!(e.page, Buf::Owned(_)) {
                    candidates.push(e.tag << PAGE_SHIFT);
                }
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates.retain(|&gpa| {
            let a = self.page_ref(gpa).unwrap_or(PageRef::Borrowed(&ZERO_PAGE));
            let b = other.page_ref(gpa).unwrap_or(PageRef::Borrowed(&ZERO_PAGE));
            a[..] != b[..]
        });
        Some(candidates)
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
            msrs: Default::default(),
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

    fn big_config(gib: u64) -> MachineConfig {
        MachineConfig {
            regions: vec![MemoryRegion {
                gpa: 0,
                size: gib << 30,
                kind: RegionKind::Ram,
            }],
            tsc_khz: None,
            counter: CounterSourceKind::None,
            quirks: Default::default(),
            msrs: Default::default(),
        }
    }

    #[test]
    fn regions_are_allocated_lazily_and_bounded() {
        let m = GuestMemory::new(&big_config(64)).unwrap();
        assert_eq!(m.page_count(), 16 << 20);
        assert!(
            m.heap_bytes_not_in(None) < 4096,
            "a 64 GiB region costs nothing"
        );
        assert_eq!(m.read_u64(63 << 30).unwrap(), 0);
        let mut cfg = big_config(64);
        cfg.regions.push(MemoryRegion {
            gpa: 64 << 30,
            size: 4096,
            kind: RegionKind::Ram,
        });
        assert!(matches!(
            GuestMemory::new(&cfg),
            Err(MemoryError::TooLarge { regions: 2, .. })
        ));
        let mut cfg = big_config(1);
        cfg.regions = (0..MAX_REGIONS as u64 + 1)
            .map(|k| MemoryRegion {
                gpa: k << 20,
                size: 4096,
                kind: RegionKind::Ram,
            })
            .collect();
        assert!(GuestMemory::new(&cfg).is_err(), "too many regions");
    }

    /// A checkpoint of a 1 GiB guest that touched 10 pages costs kilobytes.
    #[test]
    fn checkpoint_of_a_big_guest_costs_what_was_written() {
        let mut m = GuestMemory::new(&big_config(1)).unwrap();
        for k in 0..10u64 {
            m.write_u64(k * (97 << 20), k + 1).unwrap();
        }
        m.flush();
        let first = m.clone();
        let all = first.heap_bytes_not_in(None);
        assert!(all < 100 << 10, "10 pages and their paths: {all} bytes");
        for k in 0..10u64 {
            m.write_u64(k * (97 << 20) + 8, k + 100).unwrap();
        }
        m.flush();
        let second = m.clone();
        let cost = second.heap_bytes_not_in(Some(&first));
        let pages = 10 * PAGE_BYTES;
        assert!(
            cost >= pages && cost < pages + 60 * NODE_BYTES,
            "a checkpoint costs its 10 pages and their paths: {cost} bytes"
        );
        let table = second.heap_bytes_not_in(Some(&second.clone()));
        assert!(
            table < 100,
            "a clone of a clone costs its region table: {table}"
        );
        assert_eq!(first.read_u64(97 << 20).unwrap(), 2);
        assert_eq!(first.read_u64((97 << 20) + 8).unwrap(), 0);
        assert_eq!(second.read_u64((97 << 20) + 8).unwrap(), 101);
        assert_eq!(second.diff_pages(&first).unwrap().len(), 10);
    }

    struct Source;

    impl PageSource for Source {
        fn read_page(&self, loc: u64, out: &mut Page) -> Result<(), String> {
            if loc == 99 {
                return Err("gone".into());
            }
            out.fill(loc as u8);
            Ok(())
        }
    }

    #[test]
    fn lazy_pages_are_read_when_touched() {
        let mut m = GuestMemory::new(&config()).unwrap();
        m.set_source(Arc::new(Source));
        m.map_lazy(0x1000, 7).unwrap();
        m.map_lazy(0x2000, 0).unwrap();
        m.map_lazy(0x3000, 99).unwrap();
        assert!(m.map_lazy(0x200000, 1).is_err());
        assert_eq!(m.stats().lazy_pages, 3);
        let c = m.clone();
        assert_eq!(m.read_u64(0x1000).unwrap(), 0x0707_0707_0707_0707);
        assert_eq!(
            m.stats().lazy_pages,
            3,
            "a read through & leaves it in the file"
        );
        assert_eq!(m.load_in_page(0x1008, 8), Some(0x0707_0707_0707_0707));
        assert_eq!(m.stats().lazy_pages, 2);
        assert!(m.write_in_page(0x2004, 1, 5));
        assert_eq!(m.read_u64(0x2000).unwrap(), 5 << 32);
        assert_eq!(m.source_error(), None);
        assert_eq!(m.load_in_page(0x3000, 1), Some(0));
        assert_eq!(m.source_error(), Some("gone"));
        assert_eq!(c.read_u64(0x1000).unwrap(), 0x0707_0707_0707_0707);
        assert_eq!(
            c.stats().lazy_pages,
            3,
            "the clone still reads from the file"
        );
        assert_eq!(m.diff_pages(&c).unwrap(), vec![0x2000]);
    }

    /// Random reads, writes, clones and flushes against a plain model, with pages that
    /// collide in the cache.
    #[test]
    fn matches_a_plain_model() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let size = 0x10000u64;
        let mut mems = vec![(
            GuestMemory::new(&config()).unwrap(),
            vec![0u8; size as usize],
        )];
        for step in 0..20_000 {
            let w = next(mems.len() as u64) as usize;
            // Pages 0..16 and the cache collisions among them.
            let gpa = next(size - 8);
            let count = mems.len();
            let (m, model) = &mut mems[w];
            match next(10) {
                0..=3 => {
                    let v = next(u64::MAX);
                    let len = [1usize, 2, 4, 8][next(4) as usize];
                    if (gpa & PAGE_MASK) as usize + len <= PAGE_SIZE {
                        assert!(m.write_in_page(gpa, len, v));
                    } else {
                        m.write(gpa, &v.to_le_bytes()[..len]).unwrap();
                    }
                    model[gpa as usize..gpa as usize + len]
                        .copy_from_slice(&v.to_le_bytes()[..len]);
                }
                4..=6 => {
                    let len = 8 - (gpa as usize & 7);
                    let got = if next(2) == 0 {
                        m.load_in_page(gpa, len.min(PAGE_SIZE - (gpa & PAGE_MASK) as usize))
                    } else {
                        m.read_in_page(gpa, len.min(PAGE_SIZE - (gpa & PAGE_MASK) as usize))
                    };
                    let len = len.min(PAGE_SIZE - (gpa & PAGE_MASK) as usize);
                    let mut b = [0u8; 8];
                    b[..len].copy_from_slice(&model[gpa as usize..gpa as usize + len]);
                    assert_eq!(got, Some(u64::from_le_bytes(b)), "step {step}");
                }
                7 => m.flush(),
                8 => m.mark_code(gpa, 3),
                _ if count < 6 => {
                    let c = (m.clone(), model.clone());
                    mems.push(c);
                }
                _ => {
                    mems.swap_remove(w);
                }
            }
        }
        for (m, model) in &mems {
            let mut all = vec![0u8; size as usize];
            m.read(0, &mut all).unwrap();
            assert!(all == *model);
        }
    }
}
