//! Trace format throughput: events pushed per second (postcard + zstd + write), events
//! read back per second, and compressed bytes per event, on a mix shaped like a
//! recording of a small Linux guest (mostly small events, some user reads, few DMA pages).
//!
//! `cargo bench -p krr-engine --bench trace`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use krr_engine::event::*;
use krr_engine::state::*;
use krr_engine::trace::{FinishInfo, Header, RecordingReader, RecordingWriter, WriterConfig};

const EVENTS: usize = 200_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Per 1000 events: 300 port inputs, 250 rdtsc, 150 system calls with registers, 100
/// kernel interrupts, 100 user reads of 16-256 bytes, 40 PTE reads, 50 console writes,
/// 9 MMIO reads, 1 DMA write of 4 KiB.
fn mix(n: usize) -> Vec<Event> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut icount = 0u64;
    let mut tsc = 1_000_000_000u64;
    (0..n)
        .map(|_| {
            icount += 1 + rng.below(2000);
            let pick = rng.below(1000);
            match pick {
                0..300 => Event::PortIn(PortIn {
                    icount,
                    port: [0x3fd, 0x64, 0x60, 0x1f7][rng.below(4) as usize],
                    size: 1,
                    value: rng.below(256) as u32,
                }),
                300..550 => {
                    tsc += rng.below(100_000);
                    Event::Random(RandomValue {
                        icount,
                        instruction: RandomInstruction::Rdtsc,
                        value: tsc,
                        success: true,
                    })
                }
                550..700 => {
                    let mut gpr = [0u64; 16];
                    gpr[0] = rng.below(400);
                    gpr[4] = 0x7ffd_1234_0000 + rng.below(4096) * 8;
                    gpr[6] = 0x5555_5555_0000 + rng.below(1 << 16);
                    gpr[7] = rng.below(64);
                    gpr[2] = rng.below(4096);
                    let regs = UserRegs {
                        gpr,
                        rip: 0x7f12_3456_0000 + rng.below(1 << 20),
                        rflags: 0x246,
                        cs: 0x33,
                        ss: 0x2b,
                        fs_base: 0x7f12_3400_0740,
                        gs_base: 0,
                    };
                    Event::UserEntry(UserEntry {
                        icount,
                        kind: EntryKind::Syscall,
                        regs,
                    })
                }
                700..800 => Event::KernelInterrupt(KernelInterrupt {
                    icount,
                    vector: 0xec,
                    rip: 0xffff_ffff_8100_0000 + rng.below(1 << 22),
                    point: InjectionPoint::Icount,
                }),
                800..900 => {
                    let len = 16 + rng.below(241) as usize;
                    let data: Vec<u8> = (0..len)
                        .map(|i| {
                            if i % 8 < 5 {
                                (rng.next() & 0x7f) as u8
                            } else {
                                0
                            }
                        })
                        .collect();
                    Event::UserRead(UserRead {
                        icount,
                        dst: 0xffff_8880_0000_0000 + rng.below(1 << 30),
                        src: 0x5555_5555_0000 + rng.below(1 << 16),
                        data,
                    })
                }
                900..940 => Event::PteRead(PteRead {
                    icount,
                    addr: 0xffff_8880_0100_0000 + rng.below(1 << 20) * 8,
                    value: (rng.below(1 << 24) << 12) | 0x67,
                }),
                940..990 => {
                    let len = 1 + rng.below(80) as usize;
                    Event::Console(ConsoleOutput {
                        icount,
                        bytes: (0..len).map(|_| b'a' + rng.below(26) as u8).collect(),
                    })
                }
                990..999 => Event::MmioRead(MmioRead {
                    icount,
                    gpa: 0xfee0_0000 + rng.below(64) * 16,
                    size: 4,
                    value: rng.below(1 << 32),
                }),
                _ => {
                    let data: Vec<u8> = (0..4096)
                        .map(|i| if i < 512 { rng.next() as u8 } else { 0 })
                        .collect();
                    Event::MemoryWrite(MemoryWrite {
                        icount,
                        gpa: rng.below(1 << 16) << 12,
                        source: WriteSource::Dma,
                        data,
                    })
                }
            }
        })
        .collect()
}

fn header() -> Header {
    Header::new(
        MachineConfig {
            regions: vec![MemoryRegion {
                gpa: 0,
                size: 256 << 20,
                kind: RegionKind::Ram,
            }],
            tsc_khz: None,
            counter: CounterSourceKind::KvmInsnEmulation,
            quirks: Default::default(),
            msrs: Default::default(),
        },
        KernelIdentity {
            name: "bench".into(),
            size: 0,
            sha256: [0; 32],
        },
    )
}

fn write<W: std::io::Write>(out: W, events: Vec<Event>) -> (W, krr_engine::trace::Stats) {
    write_with(out, events, WriterConfig::default())
}

fn write_with<W: std::io::Write>(
    out: W,
    events: Vec<Event>,
    cfg: WriterConfig,
) -> (W, krr_engine::trace::Stats) {
    let mut w = RecordingWriter::with_config(out, cfg).unwrap();
    w.write_header(&header()).unwrap();
    w.write_snapshot(&Snapshot {
        cpu: CpuState::default(),
        pages: vec![],
    })
    .unwrap();
    for e in events {
        w.push(e).unwrap();
    }
    let stats = w
        .finish(FinishInfo {
            kernel_instructions: 0,
            duration_s: 0.0,
            end_reason: "bench".into(),
        })
        .unwrap();
    (w.into_inner(), stats)
}

fn bench(c: &mut Criterion) {
    let events = mix(EVENTS);
    let raw: usize = events
        .iter()
        .map(|e| postcard::to_allocvec(e).unwrap().len())
        .sum();
    let (bytes, stats) = write(Vec::new(), events.clone());
    eprintln!(
        "trace mix: {EVENTS} events, postcard {:.2} bytes/event, file {} bytes = {:.2} bytes/event, event chunks {:.2} bytes/event",
        raw as f64 / EVENTS as f64,
        stats.file_size,
        stats.bytes_per_event,
        stats.event_bytes_per_event()
    );

    let mut g = c.benchmark_group("trace");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("write_memory", |b| {
        b.iter_batched(
            || events.clone(),
            |ev| black_box(write(Vec::with_capacity(bytes.len() + 4096), ev).0.len()),
            BatchSize::LargeInput,
        )
    });
    let level1 = WriterConfig {
        zstd_level: 1,
        ..WriterConfig::default()
    };
    let (_, stats1) = write_with(Vec::new(), events.clone(), level1);
    eprintln!(
        "zstd level 1: event chunks {:.2} bytes/event",
        stats1.event_bytes_per_event()
    );
    g.bench_function("write_memory_zstd1", |b| {
        b.iter_batched(
            || events.clone(),
            |ev| {
                black_box(
                    write_with(Vec::with_capacity(bytes.len() + 4096), ev, level1)
                        .0
                        .len(),
                )
            },
            BatchSize::LargeInput,
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.krr");
    g.bench_function("write_file", |b| {
        b.iter_batched(
            || events.clone(),
            |ev| {
                let (f, _) = write(std::fs::File::create(&path).unwrap(), ev);
                drop(f);
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("read_all", |b| {
        b.iter_batched(
            || bytes.clone(),
            |bytes| {
                let mut r = RecordingReader::from_bytes(bytes).unwrap();
                let mut n = 0u64;
                for e in r.events_from(0) {
                    n += black_box(e.unwrap()).icount() & 1;
                }
                n
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    // A 16 MiB snapshot: 4096 pages, each 1 KiB of random bytes and 3 KiB of a 64-byte
    // pattern that differs per page, plus 1024 zero pages (omitted).
    let mut rng = Rng(7);
    let pages: Vec<SnapshotPage> = (0..4096u64)
        .map(|i| {
            let data = (0..PAGE_SIZE)
                .map(|j| {
                    if j < 1024 {
                        rng.next() as u8
                    } else {
                        ((j % 64) as u64 * (i | 1)) as u8
                    }
                })
                .collect();
            SnapshotPage {
                gpa: i * PAGE_SIZE as u64,
                data,
            }
        })
        .collect();
    let snapshot = Snapshot {
        cpu: CpuState::default(),
        pages,
    };
    let zero = [0u8; PAGE_SIZE];
    let write_snapshot = |out: Vec<u8>| {
        let mut w = RecordingWriter::new(out).unwrap();
        w.write_header(&header()).unwrap();
        w.begin_snapshot(&snapshot.cpu).unwrap();
        for (i, p) in snapshot.pages.iter().enumerate() {
            w.add_page(p.gpa, p.data.as_slice().try_into().unwrap())
                .unwrap();
            if i % 4 == 0 {
                w.add_page((1 << 32) + p.gpa, &zero).unwrap();
            }
        }
        w.finish(FinishInfo {
            kernel_instructions: 0,
            duration_s: 0.0,
            end_reason: "bench".into(),
        })
        .unwrap();
        w.into_inner()
    };
    let snap_bytes = write_snapshot(Vec::new());
    eprintln!(
        "snapshot: 4096 pages (16 MiB) + 1024 zero pages -> {} bytes",
        snap_bytes.len()
    );
    let mut g = c.benchmark_group("trace_snapshot");
    g.throughput(Throughput::Bytes((snapshot.pages.len() * PAGE_SIZE) as u64));
    g.bench_function("write", |b| {
        b.iter(|| black_box(write_snapshot(Vec::with_capacity(snap_bytes.len() + 4096)).len()))
    });
    g.bench_function("read", |b| {
        b.iter_batched(
            || snap_bytes.clone(),
            |bytes| {
                let mut r = RecordingReader::from_bytes(bytes).unwrap();
                r.snapshot().unwrap().pages.len()
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1)).sample_size(10);
    targets = bench
}
criterion_main!(benches);
