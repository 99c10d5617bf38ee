//! A synthetic recording of any length, written through the real trace writer (not
//! checked in): the ring-0 machine of `cpu_common` runs a loop that reads a port and
//! the TSC and stores into a window of guest RAM on every iteration (two events an
//! iteration), then powers off. Its guest RAM can be as large as the page tables map
//! (1 GiB). Used by the time-travel bench and the streaming tests.
#![allow(dead_code)]

use std::path::Path;

use iced_x86::code_asm::*;
use krr_engine::event::{Event, PortIn, RandomInstruction, RandomValue};
use krr_engine::machine::PORT_POWEROFF;
use krr_engine::state::{
    CounterSourceKind, KernelIdentity, MachineConfig, MemoryRegion, RegionKind,
};
use krr_engine::trace::{FinishInfo, Header, RecordingWriter, Stats, WriterConfig};

use crate::cpu_common::{asm, default_cpuid, image};

/// The port the loop reads.
pub const INPUT_PORT: u16 = 0x60;
/// Instructions before the loop, in it, and after it (the power-off).
const PROLOGUE: u64 = 3;
const LOOP: u64 = 9;
const EPILOGUE: u64 = 1;

/// What to write.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Loop iterations (two events each).
    pub iterations: u32,
    /// Guest RAM in bytes: a power of two from 16 MiB to 1 GiB.
    pub ram: u64,
    /// Bytes of RAM the loop's stores walk, from the middle of RAM on, wrapping: a
    /// power of two, at most half the RAM.
    pub window: u64,
    /// Bytes between the loop's stores (a multiple of 4): with a power of two, they
    /// touch `window / stride` places over and over.
    pub stride: u32,
    /// Events per chunk of the file.
    pub chunk_events: usize,
}

impl Spec {
    pub fn events(&self) -> u64 {
        2 * u64::from(self.iterations)
    }

    pub fn instructions(&self) -> u64 {
        PROLOGUE + LOOP * u64::from(self.iterations) + EPILOGUE
    }
}

/// Writes the recording of `spec` to `path`; returns the writer's statistics.
pub fn write(path: &Path, spec: Spec) -> Stats {
    assert!(spec.ram.is_power_of_two() && (16 << 20..=1 << 30).contains(&spec.ram));
    assert!(spec.window.is_power_of_two() && spec.window <= spec.ram / 2);
    let window = spec.window;
    let mut img = image();
    let mut a = asm();
    let mut top = a.create_label();
    a.mov(ecx, spec.iterations).unwrap();
    a.xor(r8d, r8d).unwrap();
    a.mov(r9, spec.ram / 2).unwrap();
    a.set_label(&mut top).unwrap();
    a.in_(al, INPUT_PORT as i32).unwrap();
    a.add(ebx, eax).unwrap();
    a.rdtsc().unwrap();
    a.xor(ebx, eax).unwrap();
    a.mov(dword_ptr(r9 + r8), ebx).unwrap();
    a.add(r8d, spec.stride).unwrap();
    a.and(r8d, (window - 1) as u32 & !3).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    a.out(PORT_POWEROFF as i32, al).unwrap();
    img.load_code(&mut a);

    let machine = MachineConfig {
        regions: vec![MemoryRegion {
            gpa: 0,
            size: spec.ram,
            kind: RegionKind::Ram,
        }],
        tsc_khz: None,
        counter: CounterSourceKind::KvmInsnEmulation,
        quirks: Default::default(),
        msrs: Default::default(),
    };
    let mut header = Header::new(
        machine,
        KernelIdentity {
            name: "synthetic".into(),
            size: 0,
            sha256: [0; 32],
        },
    );
    header.cpuid = default_cpuid();
    header.command_line = "synthetic recording (engine/tests/synthetic)".into();

    let file = std::fs::File::create(path).expect("create the recording");
    let cfg = WriterConfig {
        chunk_events: spec.chunk_events,
        ..WriterConfig::default()
    };
    let mut w = RecordingWriter::with_config(std::io::BufWriter::new(file), cfg).unwrap();
    w.write_header(&header).unwrap();
    w.write_snapshot(&img.snapshot()).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..u64::from(spec.iterations) {
        let at = PROLOGUE + LOOP * i;
        w.push(Event::PortIn(PortIn {
            icount: at + 1,
            port: INPUT_PORT,
            size: 1,
            value: next() as u32 & 0xff,
        }))
        .unwrap();
        w.push(Event::Random(RandomValue {
            icount: at + 3,
            instruction: RandomInstruction::Rdtsc,
            value: next(),
            success: true,
        }))
        .unwrap();
    }
    w.finish(FinishInfo {
        kernel_instructions: spec.instructions(),
        duration_s: 0.0,
        end_reason: "guest powered off".into(),
    })
    .unwrap()
}
