//! Round trips through a real file: every event kind with arbitrary fields, snapshots
//! with zero pages, random access with event(n) and events_from(n), statistics.

use krr_engine::event::*;
use krr_engine::state::*;
use krr_engine::trace::{FinishInfo, Header, RecordingReader, RecordingWriter, WriterConfig};
use proptest::prelude::*;

fn regs() -> impl Strategy<Value = UserRegs> {
    (
        prop::array::uniform16(any::<u64>()),
        any::<u64>(),
        any::<u64>(),
        any::<u16>(),
        any::<u16>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(gpr, rip, rflags, cs, ss, fs_base, gs_base)| UserRegs {
            gpr,
            rip,
            rflags,
            cs,
            ss,
            fs_base,
            gs_base,
        })
}

fn entry_kind() -> impl Strategy<Value = EntryKind> {
    prop_oneof![
        Just(EntryKind::Syscall),
        any::<u8>().prop_map(|vector| EntryKind::Interrupt { vector }),
        (any::<u8>(), any::<Option<u32>>(), any::<u64>()).prop_map(|(vector, error_code, cr2)| {
            EntryKind::Exception {
                vector,
                error_code,
                cr2,
            }
        }),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn event() -> impl Strategy<Value = Event> {
    let ic = any::<u64>();
    prop_oneof![
        (ic, entry_kind(), regs()).prop_map(|(icount, kind, regs)| Event::UserEntry(UserEntry {
            icount,
            kind,
            regs
        })),
        (
            ic,
            any::<u8>(),
            any::<u64>(),
            prop_oneof![
                Just(InjectionPoint::Icount),
                Just(InjectionPoint::AfterExit),
                (any::<u64>(), any::<Option<u64>>(), any::<u64>()).prop_map(
                    |(regs_digest, stack_digest, since_position_ns)| InjectionPoint::Signature {
                        regs_digest,
                        stack_digest,
                        since_position_ns,
                    }
                )
            ]
        )
            .prop_map(|(icount, vector, rip, point)| Event::KernelInterrupt(
                KernelInterrupt {
                    icount,
                    vector,
                    rip,
                    point
                }
            )),
        (ic, any::<u16>(), any::<u8>(), any::<u32>()).prop_map(|(icount, port, size, value)| {
            Event::PortIn(PortIn {
                icount,
                port,
                size,
                value,
            })
        }),
        (ic, any::<u64>(), any::<u8>(), any::<u64>()).prop_map(|(icount, gpa, size, value)| {
            Event::MmioRead(MmioRead {
                icount,
                gpa,
                size,
                value,
            })
        }),
        (
            ic,
            any::<u64>(),
            prop_oneof![Just(WriteSource::Dma), Just(WriteSource::Vmm)],
            bytes(5000)
        )
            .prop_map(
                |(icount, gpa, source, data)| Event::MemoryWrite(MemoryWrite {
                    icount,
                    gpa,
                    source,
                    data
                })
            ),
        (ic, any::<u64>(), any::<u64>(), bytes(300)).prop_map(|(icount, dst, src, data)| {
            Event::UserRead(UserRead {
                icount,
                dst,
                src,
                data,
            })
        }),
        (ic, any::<u64>(), any::<u64>()).prop_map(|(icount, addr, value)| Event::PteRead(
            PteRead {
                icount,
                addr,
                value
            }
        )),
        (
            ic,
            prop_oneof![
                Just(RandomInstruction::Rdtsc),
                Just(RandomInstruction::Rdrand),
                Just(RandomInstruction::Rdseed)
            ],
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(
                |(icount, instruction, value, success)| Event::Random(RandomValue {
                    icount,
                    instruction,
                    value,
                    success
                })
            ),
        (ic, bytes(100))
            .prop_map(|(icount, bytes)| Event::Console(ConsoleOutput { icount, bytes })),
        (
            ic,
            any::<u64>(),
            any::<[u64; 16]>(),
            any::<u64>(),
            any::<Option<u64>>()
        )
            .prop_map(|(icount, rip, gpr, rflags, stack)| Event::Digest(Digest {
                icount,
                rip,
                registers: DigestRegisters::Full { gpr, rflags },
                stack
            })),
    ]
}

fn segment() -> impl Strategy<Value = Segment> {
    (any::<u16>(), any::<u64>(), any::<u32>(), any::<u16>()).prop_map(
        |(selector, base, limit, attr)| Segment {
            selector,
            base,
            limit,
            attr,
        },
    )
}

fn cpu_state() -> impl Strategy<Value = CpuState> {
    (
        (
            prop::array::uniform16(any::<u64>()),
            any::<u64>(),
            any::<u64>(),
            prop::array::uniform6(segment()),
            segment(),
            segment(),
        ),
        (
            any::<(u64, u16)>(),
            any::<(u64, u16)>(),
            prop::array::uniform8(any::<u64>()),
        ),
        (
            prop::collection::vec(any::<(u32, u64)>(), 0..8),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (gpr, rip, rflags, seg, tr, ldtr),
                (gdt, idt, c),
                (msrs, interrupt_shadow, halted),
            )| CpuState {
                gpr,
                rip,
                rflags,
                seg,
                tr,
                ldtr,
                gdtr: DescriptorTable {
                    base: gdt.0,
                    limit: gdt.1,
                },
                idtr: DescriptorTable {
                    base: idt.0,
                    limit: idt.1,
                },
                cr0: c[0],
                cr2: c[1],
                cr3: c[2],
                cr4: c[3],
                cr8: c[4],
                efer: c[5],
                xcr0: c[6],
                msrs,
                interrupt_shadow,
                halted,
                // Not stored in recordings.
                fpu: Default::default(),
            },
        )
}

/// Pages at distinct addresses; `zero` marks pages whose data is all zero.
fn pages() -> impl Strategy<Value = Vec<(u64, bool, u8, u64)>> {
    prop::collection::vec(
        (0u64..100_000, any::<bool>(), any::<u8>(), any::<u64>()),
        0..40,
    )
}

fn page_data(fill: u8, seed: u64) -> Vec<u8> {
    let mut d = vec![fill; PAGE_SIZE];
    let s = seed.to_le_bytes();
    d[(seed % 4088) as usize..][..8].copy_from_slice(&s);
    if d.iter().all(|b| *b == 0) {
        d[0] = 1;
    }
    d
}

fn header() -> Header {
    let mut h = Header::new(
        MachineConfig {
            regions: vec![MemoryRegion {
                gpa: 0,
                size: 64 << 20,
                kind: RegionKind::Ram,
            }],
            tsc_khz: Some(2_000_000),
            counter: CounterSourceKind::KvmInsnEmulation,
            quirks: krr_engine::state::Quirks {
                bit_scan_ignores_rep: true,
                undefined: {
                    use krr_engine::cpu::undefined::{Family, FlagRule, UndefinedBehaviour};
                    let mut u = UndefinedBehaviour::legacy();
                    u.set_rule(Family::Shr, 8, 0x10, FlagRule::Clear);
                    u
                },
            },
            msrs: {
                use krr_engine::cpu::{MsrBehaviour, MsrRead, MsrTable, MsrWrite};
                MsrTable::new([
                    (
                        0x10a,
                        MsrBehaviour {
                            read: MsrRead::Value(0x0c00_e16d),
                            write: MsrWrite::NotMeasured,
                        },
                    ),
                    (
                        0x3a,
                        MsrBehaviour {
                            read: MsrRead::Faults,
                            write: MsrWrite::Faults,
                        },
                    ),
                    (
                        0x8b,
                        MsrBehaviour {
                            read: MsrRead::Value(0x1_0000_0000),
                            write: MsrWrite::Ignored,
                        },
                    ),
                    (
                        0x140,
                        MsrBehaviour {
                            read: MsrRead::Value(0),
                            write: MsrWrite::Kept,
                        },
                    ),
                ])
            },
        },
        KernelIdentity {
            name: "builtin:demo".into(),
            size: 12345,
            sha256: [7; 32],
        },
    );
    h.cpuid = vec![CpuidEntry {
        function: 1,
        index: 0,
        flags: 0,
        eax: 1,
        ebx: 2,
        ecx: 3,
        edx: 4,
    }];
    h.symbols = vec![Symbol {
        name: "start_kernel".into(),
        addr: 0xffff_ffff_8100_0000,
        size: 64,
    }];
    h.kernel_image = Some(vec![0x7f, b'E', b'L', b'F', 2, 1, 1]);
    h.command_line = "krr-tui record --demo".into();
    h.kernel_command_line = "console=ttyS0 mitigations=off krr.boot_only".into();
    h.created_unix_s = 1_700_000_000;
    h
}

struct Written {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

fn write_recording(snapshot: &Snapshot, events: &[Event], cfg: WriterConfig) -> Written {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.krr");
    let file = std::fs::File::create(&path).unwrap();
    let mut w = RecordingWriter::with_config(file, cfg).unwrap();
    w.write_header(&header()).unwrap();
    w.write_snapshot(snapshot).unwrap();
    for e in events {
        w.push(e.clone()).unwrap();
    }
    let stats = w
        .finish(FinishInfo {
            kernel_instructions: 777,
            duration_s: 1.5,
            end_reason: "guest powered off".into(),
        })
        .unwrap();
    assert_eq!(stats.total_events, events.len() as u64);
    assert_eq!(stats.file_size, std::fs::metadata(&path).unwrap().len());
    Written { _dir: dir, path }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn events_round_trip(
        events in prop::collection::vec(event(), 0..300),
        chunk_events in 1usize..40,
        probes in prop::collection::vec(any::<prop::sample::Index>(), 1..20),
    ) {
        let cfg = WriterConfig { chunk_events, chunk_bytes: 2000, zstd_level: 3 };
        let snapshot = Snapshot { cpu: CpuState::default(), pages: vec![] };
        let w = write_recording(&snapshot, &events, cfg);
        let mut r = RecordingReader::open(&w.path).unwrap();
        prop_assert!(r.recovery().complete);
        prop_assert_eq!(r.event_count(), events.len() as u64);
        prop_assert_eq!(r.header(), &header());

        let all: Vec<Event> = r.events_from(0).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(&all, &events);

        if !events.is_empty() {
            for p in &probes {
                let n = p.index(events.len());
                prop_assert_eq!(&r.event(n as u64).unwrap(), &events[n]);
                let tail: Vec<Event> = r.events_from(n as u64).collect::<Result<_, _>>().unwrap();
                prop_assert_eq!(&tail[..], &events[n..]);
            }
        }
        prop_assert!(r.event(events.len() as u64).is_err());

        // first_event_at on sorted icounts: compare with a linear search.
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.icount());
        let w2 = write_recording(&snapshot, &sorted, cfg);
        let mut r2 = RecordingReader::open(&w2.path).unwrap();
        let mut targets: Vec<u64> = sorted.iter().flat_map(|e| [e.icount(), e.icount().saturating_add(1)]).collect();
        targets.extend([0, u64::MAX]);
        for t in targets {
            let expected = sorted.iter().position(|e| e.icount() >= t).unwrap_or(sorted.len()) as u64;
            prop_assert_eq!(r2.first_event_at(t).unwrap(), expected, "icount {}", t);
        }
        prop_assert_eq!(r.events_from(events.len() as u64).count(), 0);
        prop_assert!(r.events_from(events.len() as u64 + 1).next().unwrap().is_err());

        // Chunk index: contiguous, each within the configured size.
        let mut next = 0;
        for c in r.chunk_index() {
            prop_assert_eq!(c.first_event, next);
            prop_assert!(c.count as usize <= chunk_events);
            prop_assert_eq!(c.first_icount, events[next as usize].icount());
            next += u64::from(c.count);
            prop_assert_eq!(c.last_icount, events[next as usize - 1].icount());
        }
        prop_assert_eq!(next, events.len() as u64);

        // Statistics per kind.
        let stats = r.stats().clone();
        for kind in EventKind::ALL {
            let expected = events.iter().filter(|e| e.kind() == kind).count() as u64;
            prop_assert_eq!(stats.count(kind), expected);
        }
        prop_assert_eq!(stats.total_events, events.len() as u64);
        prop_assert_eq!(stats.kernel_instructions, 777);
    }

    #[test]
    fn snapshots_round_trip(cpu in cpu_state(), raw in pages()) {
        // Distinct page addresses; zero pages must come back absent.
        let mut seen = std::collections::HashSet::new();
        let mut input = Vec::new();
        for (pfn, zero, fill, seed) in raw {
            if seen.insert(pfn) {
                let data = if zero { vec![0; PAGE_SIZE] } else { page_data(fill, seed) };
                input.push(SnapshotPage { gpa: pfn * PAGE_SIZE as u64, data });
            }
        }
        let snapshot = Snapshot { cpu: cpu.clone(), pages: input.clone() };
        let w = write_recording(&snapshot, &[], WriterConfig::default());
        let mut r = RecordingReader::open(&w.path).unwrap();
        let back = r.snapshot().unwrap();
        prop_assert_eq!(&back.cpu, &cpu);
        let nonzero: Vec<SnapshotPage> = input.into_iter().filter(|p| p.data.iter().any(|b| *b != 0)).collect();
        prop_assert_eq!(&back.pages, &nonzero);
        prop_assert_eq!(r.snapshot_page_count(), nonzero.len() as u64);
    }
}

#[test]
fn large_snapshot_is_split_into_sections() {
    let pages: Vec<SnapshotPage> = (0..2500u64)
        .map(|i| SnapshotPage {
            gpa: i * PAGE_SIZE as u64,
            data: page_data(i as u8 | 1, i),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.krr");
    let mut w = RecordingWriter::create(&path).unwrap();
    w.write_header(&header()).unwrap();
    // Streaming interface, with zero pages in between.
    w.begin_snapshot(&CpuState::default()).unwrap();
    for p in &pages {
        w.add_page(p.gpa + (1 << 30), &[0; PAGE_SIZE]).unwrap();
        w.add_page(p.gpa, p.data.as_slice().try_into().unwrap())
            .unwrap();
    }
    w.finish(FinishInfo {
        kernel_instructions: 0,
        duration_s: 0.0,
        end_reason: "test".into(),
    })
    .unwrap();
    let mut r = RecordingReader::open(&path).unwrap();
    assert_eq!(r.snapshot_page_count(), 2500);
    let back: Vec<SnapshotPage> = r.snapshot_pages().collect::<Result<_, _>>().unwrap();
    assert_eq!(back, pages);
    r.verify().unwrap();
}

#[test]
fn writer_rejects_calls_out_of_order() {
    let mut w = RecordingWriter::new(Vec::new()).unwrap();
    let ev = Event::PortIn(PortIn {
        icount: 1,
        port: 0x3f8,
        size: 1,
        value: 0,
    });
    assert!(w.push(ev.clone()).is_err());
    assert!(w.begin_snapshot(&CpuState::default()).is_err());
    w.write_header(&header()).unwrap();
    assert!(w.push(ev.clone()).is_err(), "events before the snapshot");
    assert!(w.write_header(&header()).is_err(), "second header");
    w.begin_snapshot(&CpuState::default()).unwrap();
    assert!(
        w.add_page(0x1234, &[1; PAGE_SIZE]).is_err(),
        "unaligned page"
    );
    w.push(ev).unwrap();
    assert!(w.add_page(0, &[1; PAGE_SIZE]).is_err(), "page after events");
}

#[test]
fn stats_json_and_table() {
    let events = vec![
        Event::PortIn(PortIn {
            icount: 10,
            port: 0x60,
            size: 1,
            value: 0x1c,
        }),
        Event::PortIn(PortIn {
            icount: 20,
            port: 0x60,
            size: 1,
            value: 0x9c,
        }),
        Event::Console(ConsoleOutput {
            icount: 30,
            bytes: b"hello\n".to_vec(),
        }),
        Event::Random(RandomValue {
            icount: 40,
            instruction: RandomInstruction::Rdtsc,
            value: 99,
            success: true,
        }),
    ];
    let w = write_recording(
        &Snapshot {
            cpu: CpuState::default(),
            pages: vec![],
        },
        &events,
        WriterConfig::default(),
    );
    let r = RecordingReader::open(&w.path).unwrap();
    let j = r.stats().to_json();
    assert_eq!(j["total_events"], 4);
    assert_eq!(j["kernel_instructions"], 777);
    assert_eq!(j["duration_s"], 1.5);
    assert_eq!(j["events"]["port_in"], 2);
    assert_eq!(j["events"]["console"], 1);
    assert_eq!(j["events"]["rdtsc"], 1);
    assert_eq!(j["events"]["syscall"], 0);
    assert_eq!(j["events"].as_object().unwrap().len(), EventKind::ALL.len());
    assert_eq!(j["end_reason"], "guest powered off");
    assert_eq!(j["complete"], true);
    assert_eq!(j["file_size"], std::fs::metadata(&w.path).unwrap().len());
    assert!(j["bytes_per_event"].as_f64().unwrap() > 0.0);

    let table = r.stats().to_string();
    assert!(table.contains("port_in"), "{table}");
    assert!(table.contains("50.00%"), "{table}");
    assert!(
        !table.contains("syscall"),
        "zero kinds are left out: {table}"
    );
    assert!(table.contains("guest powered off"), "{table}");
}

/// Without an instruction counter the recorded positions are deterministic-exit
/// ordinals: the statistics must not call them instructions, whether they come from the
/// writer, from the trailer, or from a recording cut short.
#[test]
fn stats_of_a_recording_without_a_counter_count_exits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nc.krr");
    let mut h = header();
    h.machine.counter = CounterSourceKind::None;
    let mut w = RecordingWriter::new(std::fs::File::create(&path).unwrap()).unwrap();
    w.write_header(&h).unwrap();
    w.write_snapshot(&Snapshot {
        cpu: CpuState::default(),
        pages: vec![],
    })
    .unwrap();
    w.push(Event::Console(ConsoleOutput {
        icount: 5,
        bytes: b"x".to_vec(),
    }))
    .unwrap();
    let written = w
        .finish(FinishInfo {
            kernel_instructions: 42,
            duration_s: 1.0,
            end_reason: "guest powered off".into(),
        })
        .unwrap();
    let complete = RecordingReader::open(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.krr");
    std::fs::write(&cut, &bytes[..bytes.len() - 40]).unwrap();
    let incomplete = RecordingReader::open(&cut).unwrap();
    assert!(!incomplete.recovery().complete);
    for stats in [&written, complete.stats(), incomplete.stats()] {
        assert!(!stats.counted);
        let j = stats.to_json();
        assert!(j["kernel_instructions"].is_null(), "{j}");
        assert!(j["deterministic_exits"].as_u64().is_some(), "{j}");
        let table = stats.to_string();
        assert!(table.contains("deterministic exits: "), "{table}");
        assert!(!table.contains("kernel instructions"), "{table}");
    }
    assert_eq!(complete.stats().to_json()["deterministic_exits"], 42);
    // With a counter, the same numbers are instructions.
    let w = write_recording(
        &Snapshot {
            cpu: CpuState::default(),
            pages: vec![],
        },
        &[],
        WriterConfig::default(),
    );
    let r = RecordingReader::open(&w.path).unwrap();
    assert!(r.stats().counted);
    assert!(r.stats().to_json().get("deterministic_exits").is_none());
}

#[test]
fn oversized_header_is_refused_before_anything_is_written() {
    let mut w = RecordingWriter::new(Vec::new()).unwrap();
    let mut h = header();
    h.kernel_image = Some(vec![0x90; 65 << 20]);
    let err = w.write_header(&h).unwrap_err();
    assert!(err.to_string().contains("kernel image"), "{err}");
    assert_eq!(w.bytes_written(), 0);
    // The writer is still usable without the image.
    h.kernel_image = None;
    w.write_header(&h).unwrap();
    w.write_snapshot(&Snapshot {
        cpu: CpuState::default(),
        pages: vec![],
    })
    .unwrap();
    w.finish(FinishInfo {
        kernel_instructions: 0,
        duration_s: 0.0,
        end_reason: "test".into(),
    })
    .unwrap();
    let r = RecordingReader::from_bytes(w.into_inner()).unwrap();
    assert!(r.recovery().complete);
    assert_eq!(r.header().kernel_image, None);
}

/// Walks a recording by the layout documented in `trace` and `trace::section`, with
/// zstd and postcard directly, so that the documented format is the written one.
#[test]
fn file_layout_is_as_documented() {
    use krr_engine::trace::ChunkInfo;
    use krr_engine::trace::section::{FILE_MAGIC, FOOTER_MAGIC, SECTION_MAGIC};

    let events: Vec<Event> = (0..10)
        .map(|i| {
            Event::Console(ConsoleOutput {
                icount: i,
                bytes: vec![b'x'; i as usize],
            })
        })
        .collect();
    let snapshot = Snapshot {
        cpu: CpuState {
            rip: 0xfff0,
            ..CpuState::default()
        },
        pages: vec![SnapshotPage {
            gpa: 0x5000,
            data: page_data(3, 9),
        }],
    };
    let w = write_recording(
        &snapshot,
        &events,
        WriterConfig {
            chunk_events: 4,
            ..WriterConfig::default()
        },
    );
    let b = std::fs::read(&w.path).unwrap();
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());

    assert_eq!(b[0..8], FILE_MAGIC);
    assert_eq!(
        u32::from_le_bytes(b[8..12].try_into().unwrap()),
        krr_engine::trace::FORMAT_VERSION
    );
    assert_eq!(b[b.len() - 8..], FOOTER_MAGIC);
    let trailer_at = u64_at(b.len() - 24) as usize;

    let mut at = 16;
    let mut kinds = Vec::new();
    let mut got_events = Vec::new();
    while at < b.len() - 24 {
        assert_eq!(b[at..at + 4], SECTION_MAGIC);
        let kind = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap());
        let clen = u64_at(at + 8) as usize;
        let ulen = u64_at(at + 16) as usize;
        let meta = [
            u64_at(at + 24),
            u64_at(at + 32),
            u64_at(at + 40),
            u64_at(at + 48),
        ];
        let compressed = &b[at + 72..at + 72 + clen];
        let mut h = Fnv1a::new();
        h.write(compressed);
        assert_eq!(u64_at(at + 56), h.finish(), "payload checksum");
        let mut h = Fnv1a::new();
        h.write(&b[at..at + 64]);
        assert_eq!(u64_at(at + 64), h.finish(), "header checksum");
        let payload = zstd::decode_all(compressed).unwrap();
        assert_eq!(payload.len(), ulen);
        match kind {
            1 => assert_eq!(postcard::from_bytes::<Header>(&payload).unwrap(), header()),
            2 => assert_eq!(
                postcard::from_bytes::<CpuState>(&payload).unwrap(),
                snapshot.cpu
            ),
            3 => {
                assert_eq!(meta[0], 1);
                assert_eq!(
                    postcard::from_bytes::<Vec<SnapshotPage>>(&payload).unwrap(),
                    snapshot.pages
                );
            }
            4 => assert_eq!(meta[..2], [1, 1]),
            5 => {
                let chunk: Vec<Event> = postcard::from_bytes(&payload).unwrap();
                assert_eq!(
                    meta,
                    [
                        got_events.len() as u64,
                        chunk.len() as u64,
                        chunk[0].icount(),
                        chunk.last().unwrap().icount()
                    ]
                );
                got_events.extend(chunk);
            }
            6 => {
                assert_eq!(at, trailer_at);
                let (index, _) = postcard::take_from_bytes::<Vec<ChunkInfo>>(&payload).unwrap();
                assert_eq!(index.len(), 3);
                assert_eq!(index[1].first_event, 4);
            }
            other => panic!("unknown section kind {other}"),
        }
        kinds.push(kind);
        at += 72 + clen;
    }
    assert_eq!(at, b.len() - 24);
    assert_eq!(kinds, [1, 2, 3, 4, 5, 5, 5, 6]);
    assert_eq!(got_events, events);
}
