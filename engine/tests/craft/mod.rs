//! Builds recordings section by section, as a hostile user would: any header, any
//! counts, any payload, with valid checksums (FNV-1a, which a crafted file passes).
//! Shared by the engine's and the command line's limit tests (`#[path]`).

#![allow(dead_code)]

use krr_engine::event::{ConsoleOutput, Event};
use krr_engine::state::{
    CounterSourceKind, CpuState, KernelIdentity, MachineConfig, MemoryRegion, RegionKind,
};
use krr_engine::trace::section::{SectionEncoder, SectionKind, encode_footer, encode_preamble};
use krr_engine::trace::{ChunkInfo, FORMAT_VERSION, Header};

/// A recording being built.
pub struct Craft {
    pub bytes: Vec<u8>,
    enc: SectionEncoder,
    pub index: Vec<ChunkInfo>,
    next_event: u64,
}

impl Default for Craft {
    fn default() -> Self {
        Self::new()
    }
}

impl Craft {
    pub fn new() -> Craft {
        Craft {
            bytes: encode_preamble(FORMAT_VERSION).to_vec(),
            enc: SectionEncoder::new(3).expect("zstd"),
            index: Vec::new(),
            next_event: 0,
        }
    }

    pub fn section(&mut self, kind: SectionKind, meta: [u64; 4], payload: &[u8]) {
        self.enc
            .write(&mut self.bytes, kind, meta, payload, "crafted")
            .expect("section");
    }

    pub fn header(&mut self, h: &Header) {
        self.section(
            SectionKind::Header,
            [0; 4],
            &postcard::to_allocvec(h).unwrap(),
        );
    }

    /// The snapshot: a CPU state and no pages.
    pub fn empty_snapshot(&mut self) {
        self.section(
            SectionKind::SnapshotBegin,
            [0; 4],
            &postcard::to_allocvec(&CpuState::default()).unwrap(),
        );
        self.section(SectionKind::SnapshotEnd, [0, 0, 0, 0], &[]);
    }

    /// An event chunk of `count` events with this payload (the postcard `Vec<Event>`).
    pub fn chunk(&mut self, count: u64, payload: &[u8]) {
        let info = ChunkInfo {
            offset: self.bytes.len() as u64,
            first_event: self.next_event,
            count: count as u32,
            first_icount: 0,
            last_icount: 0,
        };
        self.section(
            SectionKind::EventChunk,
            [self.next_event, count, 0, 0],
            payload,
        );
        self.next_event += count;
        self.index.push(info);
    }

    /// The trailer (with this index) and the footer: a finished recording.
    pub fn finish_with(&mut self, index: &[ChunkInfo]) {
        let at = self.bytes.len() as u64;
        let total: u64 = index.iter().map(|c| u64::from(c.count)).sum();
        let mut counts = [0u64; 15];
        counts[13] = total; // all console events
        let stats = (counts, total, 0u64, 1.0f64, "guest powered off", 0u64);
        self.section(
            SectionKind::Trailer,
            [index.len() as u64, 0, 0, 0],
            &postcard::to_allocvec(&(index, stats)).unwrap(),
        );
        self.bytes.extend_from_slice(&encode_footer(at));
    }

    pub fn finish(&mut self) {
        let index = std::mem::take(&mut self.index);
        self.finish_with(&index);
        self.index = index;
    }
}

/// A machine with these (gpa, size) RAM regions and no counter.
pub fn machine(regions: &[(u64, u64)]) -> MachineConfig {
    MachineConfig {
        regions: regions
            .iter()
            .map(|&(gpa, size)| MemoryRegion {
                gpa,
                size,
                kind: RegionKind::Ram,
            })
            .collect(),
        tsc_khz: None,
        counter: CounterSourceKind::KvmInsnEmulation,
        quirks: Default::default(),
        msrs: Default::default(),
    }
}

pub fn header(regions: &[(u64, u64)]) -> Header {
    Header::new(
        machine(regions),
        KernelIdentity {
            name: "crafted".into(),
            size: 0,
            sha256: [0; 32],
        },
    )
}

/// The 64 MiB guest every crafted recording starts from.
pub const RAM: (u64, u64) = (0, 64 << 20);

/// A finished recording with the 64 MiB guest, no snapshot pages and no events.
pub fn start(regions: &[(u64, u64)]) -> Craft {
    let mut c = Craft::new();
    c.header(&header(regions));
    c.empty_snapshot();
    c
}

/// The postcard encoding of `n` console events of no bytes at icount 0: 3 bytes each.
pub fn console_events(n: u64) -> Vec<u8> {
    let one = postcard::to_allocvec(&Event::Console(ConsoleOutput {
        icount: 0,
        bytes: Vec::new(),
    }))
    .unwrap();
    assert_eq!(one.len(), 3);
    let mut v = Vec::with_capacity(10 + 3 * n as usize);
    let mut k = n;
    loop {
        let b = (k & 0x7f) as u8;
        k >>= 7;
        if k == 0 {
            v.push(b);
            break;
        }
        v.push(b | 0x80);
    }
    for _ in 0..n {
        v.extend_from_slice(&one);
    }
    v
}

/// A recording of `n` console events in chunks of `per_chunk`, finished.
pub fn many_events(n: u64, per_chunk: u64) -> Vec<u8> {
    let mut c = start(&[RAM]);
    let mut left = n;
    while left > 0 {
        let k = left.min(per_chunk);
        c.chunk(k, &console_events(k));
        left -= k;
    }
    c.finish();
    c.bytes
}

/// `chunks` chunks of 65,536 console events of 1,000 zero bytes each: 64 MiB payloads
/// (the largest a section holds) that compress to about 64 KB each.
pub fn big_console_chunks(chunks: u64) -> Vec<u8> {
    let n = 65_536u64;
    let one = postcard::to_allocvec(&Event::Console(ConsoleOutput {
        icount: 0,
        bytes: vec![0; 1000],
    }))
    .unwrap();
    let mut payload = vec![0x80, 0x80, 0x04]; // 65,536
    for _ in 0..n {
        payload.extend_from_slice(&one);
    }
    let mut c = start(&[RAM]);
    for _ in 0..chunks {
        c.chunk(n, &payload);
    }
    c.finish();
    c.bytes
}

/// One event chunk whose payload expands to 64 MiB of 3-byte console events (about
/// 22 M of them), cut short (no trailer): the file is about 68 KB.
pub fn chunk_bomb() -> Vec<u8> {
    let n = ((64u64 << 20) - 4) / 3;
    let mut c = start(&[RAM]);
    c.chunk(n, &console_events(n));
    c.bytes
}

/// The same chunk in a finished recording (its trailer's index names it).
pub fn chunk_bomb_finished() -> Vec<u8> {
    let n = ((64u64 << 20) - 4) / 3;
    let mut c = start(&[RAM]);
    c.chunk(n, &console_events(n));
    c.finish();
    c.bytes
}

/// A header that declares `extra` more regions of `size` bytes after the 64 MiB guest.
pub fn region_bomb(extra: u64, size: u64) -> Vec<u8> {
    let regions: Vec<(u64, u64)> = std::iter::once(RAM)
        .chain((0..extra).map(|k| ((k + 1) << 40, size)))
        .collect();
    let mut c = start(&regions);
    c.chunk(1, &console_events(1));
    c.finish();
    c.bytes
}

/// A trailer whose index claims 64 MiB of 5-byte chunk entries (about 13 M).
pub fn trailer_bomb() -> Vec<u8> {
    let mut c = start(&[RAM]);
    c.chunk(1, &console_events(1));
    let at = c.bytes.len() as u64;
    let n = ((64u64 << 20) - 200) / 5;
    let mut payload = Vec::with_capacity(64 << 20);
    let mut k = n;
    loop {
        let b = (k & 0x7f) as u8;
        k >>= 7;
        if k == 0 {
            payload.push(b);
            break;
        }
        payload.push(b | 0x80);
    }
    payload.resize(payload.len() + 5 * n as usize, 0);
    let stats = ([0u64; 15], 0u64, 0u64, 1.0f64, "", 0u64);
    payload.extend_from_slice(&postcard::to_allocvec(&stats).unwrap());
    c.section(SectionKind::Trailer, [n, 0, 0, 0], &payload);
    c.bytes.extend_from_slice(&encode_footer(at));
    c.bytes
}

/// A header whose symbol table claims 64 MiB of 3-byte symbols (about 22 M).
pub fn symbol_bomb() -> Vec<u8> {
    let h = header(&[RAM]);
    let mut payload =
        postcard::to_allocvec(&(h.format_version, &h.machine, &h.cpuid, &h.kernel)).unwrap();
    let n = ((64u64 << 20) - 1000) / 3;
    let mut k = n;
    loop {
        let b = (k & 0x7f) as u8;
        k >>= 7;
        if k == 0 {
            payload.push(b);
            break;
        }
        payload.push(b | 0x80);
    }
    payload.resize(payload.len() + 3 * n as usize, 0);
    payload.extend_from_slice(
        &postcard::to_allocvec(&(
            &h.kernel_image,
            &h.command_line,
            h.created_unix_s,
            &h.recorder_version,
            &h.kernel_command_line,
        ))
        .unwrap(),
    );
    let mut c = Craft::new();
    c.section(SectionKind::Header, [0; 4], &payload);
    c.empty_snapshot();
    c.chunk(1, &console_events(1));
    c.finish();
    c.bytes
}

/// A header whose MSR table claims 60 MiB of 3-byte entries (about 21 M).
pub fn msr_table_bomb() -> Vec<u8> {
    let h = header(&[RAM]);
    let m = &h.machine;
    let mut payload = postcard::to_allocvec(&(
        h.format_version,
        &m.regions,
        m.tsc_khz,
        m.counter,
        &m.quirks,
    ))
    .unwrap();
    let n = (60u64 << 20) / 3;
    let mut k = n;
    loop {
        let b = (k & 0x7f) as u8;
        k >>= 7;
        if k == 0 {
            payload.push(b);
            break;
        }
        payload.push(b | 0x80);
    }
    // MSR 0, read #GP (variant 1), write #GP (variant 0).
    for _ in 0..n {
        payload.extend_from_slice(&[0, 1, 0]);
    }
    payload.extend_from_slice(
        &postcard::to_allocvec(&(
            &h.cpuid,
            &h.kernel,
            &h.symbols,
            &h.kernel_image,
            &h.command_line,
            h.created_unix_s,
            &h.recorder_version,
        ))
        .unwrap(),
    );
    let mut c = Craft::new();
    c.section(SectionKind::Header, [0; 4], &payload);
    c.empty_snapshot();
    c.chunk(1, &console_events(1));
    c.finish();
    c.bytes
}

/// A snapshot of `sections` sections of 1024 pages filled with ones (4 MiB each,
/// compressing to about 4.5 KB with their addresses), spread over a 60 GiB guest.
pub fn snapshot_bomb(sections: u64) -> Vec<u8> {
    let size = 60u64 << 30;
    let mut c = Craft::new();
    c.header(&header(&[(0, size)]));
    c.section(
        SectionKind::SnapshotBegin,
        [0; 4],
        &postcard::to_allocvec(&CpuState::default()).unwrap(),
    );
    let page = vec![1u8; 4096];
    let stride = (size >> 12) / (sections * 1024);
    let mut payload = Vec::with_capacity((4 << 20) + 8192);
    for s in 0..sections {
        payload.clear();
        payload.extend_from_slice(&[0x80, 0x08]); // 1024
        for p in 0..1024u64 {
            let gpa = ((s * 1024 + p) * stride) << 12;
            let mut k = gpa;
            loop {
                let b = (k & 0x7f) as u8;
                k >>= 7;
                if k == 0 {
                    payload.push(b);
                    break;
                }
                payload.push(b | 0x80);
            }
            payload.extend_from_slice(&[0x80, 0x20]); // 4096
            payload.extend_from_slice(&page);
        }
        c.section(SectionKind::SnapshotPages, [1024, 0, 0, 0], &payload);
    }
    c.section(
        SectionKind::SnapshotEnd,
        [sections * 1024, sections, 0, 0],
        &[],
    );
    c.chunk(1, &console_events(1));
    c.finish();
    c.bytes
}
