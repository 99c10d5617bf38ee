//! The C header of the agent ABI against its Rust definition (recorder/src/agent_ring.rs):
//! compiles a probe with gcc that prints every constant, size and offset, and compares.

use krr_recorder::agent_ring::*;
use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

const PROBE: &str = r#"
#include <stdio.h>
#include <stddef.h>
#include "krr_agent_abi.h"
#define C(x) printf("%s %llu\n", #x, (unsigned long long)(x));
#define S(t) printf("sizeof %s %zu\n", #t, sizeof(struct t));
#define O(t, f) printf("offsetof %s.%s %zu\n", #t, #f, offsetof(struct t, f));
int main(void) {
    C(KRR_RING_GPA) C(KRR_RING_REGION_SIZE) C(KRR_PORT_DOORBELL) C(KRR_PORT_POWEROFF)
    C(KRR_PORT_COM1) C(KRR_PORT_PIC_MASTER) C(KRR_PORT_PIC_SLAVE) C(KRR_PORT_PIT)
    C(KRR_PORT_SYSTEM_CONTROL_B) C(KRR_PORT_RTC)
    C(KRR_PORT_FW_CFG) C(KRR_PORT_FW_CFG_DATA) C(KRR_PORT_FW_CFG_DMA)
    C(KRR_DOORBELL_FULL) C(KRR_DOORBELL_FLUSH) C(KRR_RING_MAGIC) C(KRR_RING_VERSION)
    C(KRR_RECORD_ALIGN) C(KRR_REC_USER_ENTRY) C(KRR_REC_USER_READ) C(KRR_REC_RDTSC)
    C(KRR_REC_RDRAND) C(KRR_REC_RDSEED) C(KRR_REC_PTE_READ) C(KRR_ENTRY_SYSCALL)
    C(KRR_ENTRY_INTERRUPT) C(KRR_ENTRY_EXCEPTION) C(KRR_ENTRY_HAS_ERROR_CODE) C(KRR_VALUE_CF)
    C(KRR_FW_CFG_DMA_ERROR) C(KRR_FW_CFG_DMA_READ) C(KRR_FW_CFG_DMA_SKIP)
    C(KRR_FW_CFG_DMA_SELECT) C(KRR_FW_CFG_SIGNATURE) C(KRR_FW_CFG_ID) C(KRR_FW_CFG_FILE_DIR)
    printf("name KRR_DISK_FW_CFG_NAME %s\n", KRR_DISK_FW_CFG_NAME);
    S(krr_ring_header) S(krr_record_header) S(krr_rec_user_entry) S(krr_rec_user_read)
    S(krr_rec_value) S(krr_rec_pte_read) S(krr_fw_cfg_dma_access)
    O(krr_ring_header, magic) O(krr_ring_header, version) O(krr_ring_header, header_size)
    O(krr_ring_header, capacity) O(krr_ring_header, head) O(krr_ring_header, lost)
    O(krr_record_header, kind) O(krr_record_header, flags) O(krr_record_header, size)
    O(krr_rec_user_entry, entry_kind) O(krr_rec_user_entry, vector)
    O(krr_rec_user_entry, error_code) O(krr_rec_user_entry, cr2) O(krr_rec_user_entry, gpr)
    O(krr_rec_user_entry, rip) O(krr_rec_user_entry, rflags) O(krr_rec_user_entry, cs)
    O(krr_rec_user_entry, ss) O(krr_rec_user_entry, fs_base) O(krr_rec_user_entry, gs_base)
    O(krr_rec_user_read, dst) O(krr_rec_user_read, src) O(krr_rec_user_read, len)
    O(krr_rec_value, value) O(krr_rec_pte_read, addr) O(krr_rec_pte_read, value)
    O(krr_fw_cfg_dma_access, control) O(krr_fw_cfg_dma_access, length)
    O(krr_fw_cfg_dma_access, address)
    return 0;
}
"#;

fn c_side() -> BTreeMap<String, String> {
    let include = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-agent/include");
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("probe.c");
    let exe = dir.path().join("probe");
    std::fs::write(&src, PROBE).unwrap();
    let status = Command::new("gcc")
        .arg("-I")
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("gcc runs");
    assert!(status.success(), "the ABI header compiles");
    let out = Command::new(&exe).output().expect("probe runs");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
fn c_header_matches_rust_definitions() {
    let c = c_side();
    let mut rust: Vec<(&str, u64)> = vec![
        ("KRR_RING_GPA", RING_GPA),
        ("KRR_RING_REGION_SIZE", RING_REGION_SIZE),
        ("KRR_PORT_DOORBELL", PORT_DOORBELL as u64),
        ("KRR_PORT_POWEROFF", PORT_POWEROFF as u64),
        ("KRR_PORT_COM1", PORT_COM1 as u64),
        ("KRR_PORT_PIC_MASTER", PORT_PIC_MASTER as u64),
        ("KRR_PORT_PIC_SLAVE", PORT_PIC_SLAVE as u64),
        ("KRR_PORT_PIT", PORT_PIT as u64),
        ("KRR_PORT_SYSTEM_CONTROL_B", PORT_SYSTEM_CONTROL_B as u64),
        ("KRR_PORT_RTC", PORT_RTC as u64),
        ("KRR_PORT_FW_CFG", PORT_FW_CFG as u64),
        ("KRR_PORT_FW_CFG_DATA", PORT_FW_CFG_DATA as u64),
        ("KRR_PORT_FW_CFG_DMA", PORT_FW_CFG_DMA as u64),
        ("KRR_DOORBELL_FULL", DOORBELL_FULL as u64),
        ("KRR_DOORBELL_FLUSH", DOORBELL_FLUSH as u64),
        ("KRR_RING_MAGIC", RING_MAGIC as u64),
        ("KRR_RING_VERSION", RING_VERSION as u64),
        ("KRR_RECORD_ALIGN", RECORD_ALIGN as u64),
        ("KRR_REC_USER_ENTRY", REC_USER_ENTRY as u64),
        ("KRR_REC_USER_READ", REC_USER_READ as u64),
        ("KRR_REC_RDTSC", REC_RDTSC as u64),
        ("KRR_REC_RDRAND", REC_RDRAND as u64),
        ("KRR_REC_RDSEED", REC_RDSEED as u64),
        ("KRR_REC_PTE_READ", REC_PTE_READ as u64),
        ("KRR_ENTRY_SYSCALL", ENTRY_SYSCALL as u64),
        ("KRR_ENTRY_INTERRUPT", ENTRY_INTERRUPT as u64),
        ("KRR_ENTRY_EXCEPTION", ENTRY_EXCEPTION as u64),
        ("KRR_ENTRY_HAS_ERROR_CODE", ENTRY_HAS_ERROR_CODE as u64),
        ("KRR_VALUE_CF", VALUE_CF as u64),
        ("KRR_FW_CFG_DMA_ERROR", FW_CFG_DMA_ERROR as u64),
        ("KRR_FW_CFG_DMA_READ", FW_CFG_DMA_READ as u64),
        ("KRR_FW_CFG_DMA_SKIP", FW_CFG_DMA_SKIP as u64),
        ("KRR_FW_CFG_DMA_SELECT", FW_CFG_DMA_SELECT as u64),
        ("KRR_FW_CFG_SIGNATURE", FW_CFG_SIGNATURE as u64),
        ("KRR_FW_CFG_ID", FW_CFG_ID as u64),
        ("KRR_FW_CFG_FILE_DIR", FW_CFG_FILE_DIR as u64),
    ];
    macro_rules! size {
        ($c:literal, $t:ty) => {
            (concat!("sizeof ", $c), size_of::<$t>() as u64)
        };
    }
    macro_rules! off {
        ($c:literal, $t:ty, $f:ident) => {
            (
                concat!("offsetof ", $c, ".", stringify!($f)),
                offset_of!($t, $f) as u64,
            )
        };
    }
    rust.extend([
        size!("krr_ring_header", RingHeader),
        size!("krr_record_header", RecordHeader),
        size!("krr_rec_user_entry", RecUserEntry),
        size!("krr_rec_user_read", RecUserRead),
        size!("krr_rec_value", RecValue),
        size!("krr_rec_pte_read", RecPteRead),
        size!("krr_fw_cfg_dma_access", FwCfgDmaAccess),
        off!("krr_ring_header", RingHeader, magic),
        off!("krr_ring_header", RingHeader, version),
        off!("krr_ring_header", RingHeader, header_size),
        off!("krr_ring_header", RingHeader, capacity),
        off!("krr_ring_header", RingHeader, head),
        off!("krr_ring_header", RingHeader, lost),
        off!("krr_record_header", RecordHeader, kind),
        off!("krr_record_header", RecordHeader, flags),
        off!("krr_record_header", RecordHeader, size),
        off!("krr_rec_user_entry", RecUserEntry, entry_kind),
        off!("krr_rec_user_entry", RecUserEntry, vector),
        off!("krr_rec_user_entry", RecUserEntry, error_code),
        off!("krr_rec_user_entry", RecUserEntry, cr2),
        off!("krr_rec_user_entry", RecUserEntry, gpr),
        off!("krr_rec_user_entry", RecUserEntry, rip),
        off!("krr_rec_user_entry", RecUserEntry, rflags),
        off!("krr_rec_user_entry", RecUserEntry, cs),
        off!("krr_rec_user_entry", RecUserEntry, ss),
        off!("krr_rec_user_entry", RecUserEntry, fs_base),
        off!("krr_rec_user_entry", RecUserEntry, gs_base),
        off!("krr_rec_user_read", RecUserRead, dst),
        off!("krr_rec_user_read", RecUserRead, src),
        off!("krr_rec_user_read", RecUserRead, len),
        off!("krr_rec_value", RecValue, value),
        off!("krr_rec_pte_read", RecPteRead, addr),
        off!("krr_rec_pte_read", RecPteRead, value),
        off!("krr_fw_cfg_dma_access", FwCfgDmaAccess, control),
        off!("krr_fw_cfg_dma_access", FwCfgDmaAccess, length),
        off!("krr_fw_cfg_dma_access", FwCfgDmaAccess, address),
    ]);
    let mut mismatches = Vec::new();
    for (name, value) in &rust {
        match c.get(*name) {
            Some(v) if v == &value.to_string() => {}
            other => mismatches.push(format!("{name}: C {other:?}, Rust {value}")),
        }
    }
    assert_eq!(
        c.get("name KRR_DISK_FW_CFG_NAME").map(String::as_str),
        Some(DISK_FW_CFG_NAME)
    );
    assert!(
        mismatches.is_empty(),
        "ABI mismatches:\n{}",
        mismatches.join("\n")
    );
    // Everything the C side prints is checked.
    assert_eq!(c.len(), rust.len() + 1, "C side prints {} items", c.len());
}
