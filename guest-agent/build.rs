//! Builds the guest code with the system gcc: the demo kernel (with its user programs
//! embedded), the hostile test guests, and the demo disk image, all into OUT_DIR.

use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code)]
#[path = "src/disk.rs"]
mod disk;

/// Ring-0 code: no SSE/x87/MMX (KVM's emulator here cannot run them), no red zone, kernel
/// code model, no rep string instructions, no CET instructions, DWARF kept.
const KERNEL_CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-O2",
    "-g",
    "-Wall",
    "-Wextra",
    "-march=x86-64",
    "-mtune=generic",
    "-ffreestanding",
    "-nostdlib",
    "-mno-red-zone",
    "-mcmodel=kernel",
    "-mgeneral-regs-only",
    "-mno-sse",
    "-mno-mmx",
    "-mno-80387",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-builtin",
    "-fno-tree-loop-distribute-patterns",
    "-mstringop-strategy=loop",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
];

/// Ring-3 code runs natively and could use anything, but the kernel does not switch FPU/SSE
/// state between processes, so the programs stay general-register only too.
const USER_CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-O2",
    "-g",
    "-Wall",
    "-Wextra",
    "-march=x86-64",
    "-ffreestanding",
    "-nostdlib",
    "-mgeneral-regs-only",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-builtin",
    "-fno-tree-loop-distribute-patterns",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-DKRR_USER",
];

const KERNEL_SOURCES: &[&str] = &[
    "demo/boot.S",
    "demo/entry.S",
    "demo/arch.c",
    "demo/lib.c",
    "demo/uart.c",
    "demo/pic_pit.c",
    "demo/fwcfg.c",
    "demo/mm.c",
    "demo/sched.c",
    "demo/syscall.c",
    "demo/random.c",
    "demo/trap.c",
];

const USER_SOURCES: &[&str] = &[
    "demo/user/crt0.S",
    "demo/user/ulib.c",
    "demo/lib.c",
    "demo/user/primes.c",
    "demo/user/disk.c",
    "demo/user/clock.c",
    "demo/user/pager.c",
];

/// Hostile guests: (exported name, HOSTILE_KIND in hostile/hostile.c).
const HOSTILE: &[(&str, u32)] = &[
    ("ring-garbage", 1),
    ("ring-header", 2),
    ("doorbell-nonsense", 3),
    ("no-poweroff", 4),
    ("triple-fault", 5),
    ("partial-line", 6),
    ("partial-line-silent", 7),
    ("port-input", 8),
];

/// Iterations of the replay-speed benchmark loop (26 instructions each, bench/bench.h).
const BENCH_LOOP_ITERATIONS: u64 = 2_000_000;

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({})\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("cargo:warning={line}");
    }
}

fn object_name(src: &str, tag: &str) -> String {
    let stem = src.replace(['/', '.'], "_");
    format!("{tag}_{stem}.o")
}

fn compile(cc: &str, src: &Path, obj: &Path, flags: &[&str], extra: &[String]) {
    run(Command::new(cc)
        .args(flags)
        .args(extra)
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(obj));
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let cc = std::env::var("KRR_GUEST_CC").unwrap_or_else(|_| "gcc".to_string());
    let objcopy = std::env::var("KRR_GUEST_OBJCOPY").unwrap_or_else(|_| "objcopy".to_string());
    for dir in [
        "demo",
        "agent",
        "hostile",
        "bench",
        "include",
        "src/disk.rs",
        "build.rs",
    ] {
        println!("cargo:rerun-if-changed={dir}");
    }
    println!("cargo:rerun-if-env-changed=KRR_GUEST_CC");
    println!("cargo:rerun-if-env-changed=KRR_GUEST_OBJCOPY");

    let includes: Vec<String> = ["demo", "agent", "include"]
        .iter()
        .map(|d| format!("-I{}", manifest.join(d).display()))
        .collect();

    // User programs: one flat image at USER_IMAGE_BASE.
    let mut user_objs = Vec::new();
    for src in USER_SOURCES {
        let obj = out.join(object_name(src, "user"));
        let mut extra = includes.clone();
        extra.push(format!("-I{}", manifest.join("demo/user").display()));
        compile(&cc, &manifest.join(src), &obj, USER_CFLAGS, &extra);
        user_objs.push(obj);
    }
    let user_elf = out.join("user.elf");
    let user_bin = out.join("user.bin");
    run(Command::new(&cc)
        .args(["-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none"])
        .arg("-Wl,--no-warn-rwx-segments")
        .arg(format!(
            "-Wl,-T,{}",
            manifest.join("demo/user/user.ld").display()
        ))
        .arg("-o")
        .arg(&user_elf)
        .args(&user_objs));
    run(Command::new(&objcopy)
        .args(["-O", "binary"])
        .arg(&user_elf)
        .arg(&user_bin));

    // Kernel objects shared by the demo and the hostile guests.
    let mut core_objs = Vec::new();
    for src in KERNEL_SOURCES {
        let obj = out.join(object_name(src, "k"));
        compile(&cc, &manifest.join(src), &obj, KERNEL_CFLAGS, &includes);
        core_objs.push(obj);
    }
    let blob = out.join("k_user_blob.o");
    let mut extra = includes.clone();
    extra.push(format!("-DUSER_BIN_PATH=\"{}\"", user_bin.display()));
    compile(
        &cc,
        &manifest.join("demo/user_blob.S"),
        &blob,
        KERNEL_CFLAGS,
        &extra,
    );
    core_objs.push(blob);

    let link = |objs: &[&Path], elf: &Path| {
        run(Command::new(&cc)
            .args(["-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none"])
            .arg("-Wl,-z,max-page-size=4096")
            .arg(format!(
                "-Wl,-T,{}",
                manifest.join("demo/kernel.ld").display()
            ))
            .arg("-o")
            .arg(elf)
            .args(objs)
            .args(&core_objs));
    };
    let kernel_obj = |src: &str, name: &str, defines: &[&str]| -> PathBuf {
        let obj = out.join(name);
        let mut extra = includes.clone();
        extra.extend(defines.iter().map(|d| format!("-D{d}")));
        compile(&cc, &manifest.join(src), &obj, KERNEL_CFLAGS, &extra);
        obj
    };

    let agent = kernel_obj("agent/agent.c", "k_agent.o", &[]);
    let main_obj = kernel_obj("demo/main.c", "k_main.o", &[]);
    link(&[&main_obj, &agent], &out.join("demo.elf"));

    // Test build: the kernel consumes its own (tiny) ring and checks every record.
    let selftest = "KRR_AGENT_SELFTEST";
    let objs = [
        kernel_obj("demo/main.c", "k_main_selftest.o", &[selftest]),
        kernel_obj("agent/agent.c", "k_agent_selftest.o", &[selftest]),
        kernel_obj(
            "demo/agent_selftest.c",
            "k_agent_selftest_ring.o",
            &[selftest],
        ),
    ];
    let objs: Vec<&Path> = objs.iter().map(PathBuf::as_path).collect();
    link(&objs, &out.join("demo-agent-selftest.elf"));

    for (name, kind) in HOSTILE {
        let define = format!("HOSTILE_KIND={kind}");
        let obj = kernel_obj(
            "hostile/hostile.c",
            &format!("hostile_{kind}.o"),
            &[&define],
        );
        link(&[&obj, &agent], &out.join(format!("hostile-{name}.elf")));
    }

    // The replay-speed benchmark: the full loop, and the boot-only variant (0 iterations)
    // whose time a benchmark subtracts.
    let bench_includes = format!("-I{}", manifest.join("bench").display());
    let bench_loop = out.join("k_bench_loop.o");
    compile(
        &cc,
        &manifest.join("bench/bench_loop.S"),
        &bench_loop,
        KERNEL_CFLAGS,
        std::slice::from_ref(&bench_includes),
    );
    for (name, iterations) in [
        ("bench-loop", BENCH_LOOP_ITERATIONS),
        ("bench-loop-boot", 0),
    ] {
        let define = format!("BENCH_ITERATIONS={iterations}UL");
        let obj = out.join(format!("k_{name}.o"));
        let mut extra = includes.clone();
        extra.push(bench_includes.clone());
        extra.push(format!("-D{define}"));
        compile(
            &cc,
            &manifest.join("bench/bench.c"),
            &obj,
            KERNEL_CFLAGS,
            &extra,
        );
        link(
            &[&obj, &bench_loop, &agent],
            &out.join(format!("{name}.elf")),
        );
    }
    println!("cargo:rustc-env=KRR_BENCH_LOOP_ITERATIONS={BENCH_LOOP_ITERATIONS}");

    std::fs::write(out.join("disk.img"), disk::demo_disk()).expect("write disk.img");
}
