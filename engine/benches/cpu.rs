//! Replay CPU throughput: a ring-0 checksum loop (loads, read-modify-write stores,
//! rotates, branches) run for a fixed number of instructions. Reports instructions per
//! second (criterion's "elements").

#[path = "../tests/cpu_common/mod.rs"]
#[allow(unused_imports)]
mod cpu_common;

use cpu_common::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iced_x86::code_asm::*;
use krr_engine::cpu::{Cpu, Exit};

const INSTRUCTIONS: u64 = 2_000_000;

fn checksum_image() -> Image {
    let mut img = image();
    let mut a = asm();
    checksum_loop(&mut a);
    a.out(END_PORT as u32, al).unwrap();
    img.load_code(&mut a);
    img
}

fn bench(c: &mut Criterion) {
    let img = checksum_image();
    let mem0 = img.memory();
    let cpu0 = Cpu::new(img.state.clone(), default_cpuid());
    let mut g = c.benchmark_group("cpu");
    g.throughput(Throughput::Elements(INSTRUCTIONS));
    g.sample_size(20);
    g.bench_function("checksum_loop", |b| {
        b.iter_batched(
            || (cpu0.clone(), mem0.clone()),
            |(mut cpu, mut mem)| {
                let e = cpu.run(&mut mem, INSTRUCTIONS);
                assert_eq!(e, Exit::Limit);
                cpu.icount()
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
