//! Writes small valid recordings into `corpus/reader/` (run from `fuzz/`):
//! `cargo run --bin make_seeds`; and some of the engine tests' crafted recordings (those
//! that decode quickly), so the fuzzer starts at the reader's limits.

#[path = "../../engine/tests/craft/mod.rs"]
mod craft;

use krr_engine::event::*;
use krr_engine::state::*;
use krr_engine::trace::{FinishInfo, Header, RecordingWriter, WriterConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new("corpus/reader");
    std::fs::create_dir_all(dir)?;
    for (name, events, chunk_events, finish) in [
        ("empty", 0u64, 4, true),
        ("small", 12, 4, true),
        ("cut", 12, 4, false),
    ] {
        let mut w = RecordingWriter::with_config(
            Vec::new(),
            WriterConfig {
                chunk_events,
                ..WriterConfig::default()
            },
        )?;
        let mut header = Header::new(
            MachineConfig {
                regions: vec![MemoryRegion {
                    gpa: 0,
                    size: 1 << 20,
                    kind: RegionKind::Ram,
                }],
                tsc_khz: None,
                counter: CounterSourceKind::None,
                quirks: Default::default(),
                msrs: {
                    use krr_engine::cpu::{MsrBehaviour, MsrRead, MsrTable, MsrWrite};
                    MsrTable::new([
                        (
                            0x1a0,
                            MsrBehaviour {
                                read: MsrRead::Value(1),
                                write: MsrWrite::NotMeasured,
                            },
                        ),
                        (
                            0x8b,
                            MsrBehaviour {
                                read: MsrRead::Value(0),
                                write: MsrWrite::Ignored,
                            },
                        ),
                        (
                            0x3a,
                            MsrBehaviour {
                                read: MsrRead::Faults,
                                write: MsrWrite::Faults,
                            },
                        ),
                    ])
                },
            },
            KernelIdentity {
                name: "builtin:demo".into(),
                size: 4,
                sha256: [1; 32],
            },
        );
        header.created_unix_s = 0;
        header.symbols = vec![Symbol {
            name: "start".into(),
            addr: 0x1000,
            size: 16,
        }];
        w.write_header(&header)?;
        let mut page = [0u8; PAGE_SIZE];
        page[..4].copy_from_slice(b"\xf4\xeb\xfd\x90");
        w.begin_snapshot(&CpuState {
            rip: 0x1000,
            ..CpuState::default()
        })?;
        w.add_page(0x1000, &page)?;
        for i in 0..events {
            let e = match i % 4 {
                0 => Event::PortIn(PortIn {
                    icount: i,
                    port: 0x3f8,
                    size: 1,
                    value: 7,
                }),
                1 => Event::Console(ConsoleOutput {
                    icount: i,
                    bytes: b"hi".to_vec(),
                }),
                2 => Event::Random(RandomValue {
                    icount: i,
                    instruction: RandomInstruction::Rdtsc,
                    value: i * 3,
                    success: true,
                }),
                _ => Event::UserRead(UserRead {
                    icount: i,
                    dst: 1,
                    src: 2,
                    data: vec![9; 16],
                }),
            };
            w.push(e)?;
        }
        let bytes = if finish {
            w.finish(FinishInfo {
                kernel_instructions: events,
                duration_s: 0.5,
                end_reason: "guest powered off".into(),
            })?;
            w.into_inner()
        } else {
            let mut b = w.into_inner();
            b.truncate(b.len() - 10);
            b
        };
        std::fs::write(dir.join(name), bytes)?;
    }
    for (name, bytes) in [
        ("crafted-chunk-bomb", craft::chunk_bomb()),
        ("crafted-events", craft::many_events(300, 64)),
        ("crafted-regions", craft::region_bomb(3, 1 << 30)),
        ("crafted-snapshot", craft::snapshot_bomb(1)),
    ] {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}
