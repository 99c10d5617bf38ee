//! The demo disk image: deterministic pseudo-random bytes (shared by build.rs and the library).

/// Size of the demo disk in bytes (256 KiB).
pub const DEMO_DISK_SIZE: usize = 256 * 1024;

/// Seed of the xorshift64 generator that fills the demo disk.
pub const DEMO_DISK_SEED: u64 = 0x6b72_722d_6469_736b;

/// The demo disk: xorshift64 (shifts 13, 7, 17) from [`DEMO_DISK_SEED`]; each step's state
/// is appended as 8 little-endian bytes, until [`DEMO_DISK_SIZE`] bytes.
pub fn demo_disk() -> Vec<u8> {
    let mut state = DEMO_DISK_SEED;
    let mut disk = Vec::with_capacity(DEMO_DISK_SIZE);
    while disk.len() < DEMO_DISK_SIZE {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        disk.extend_from_slice(&state.to_le_bytes());
    }
    disk.truncate(DEMO_DISK_SIZE);
    disk
}

/// FNV-1a 64 of `data`, the checksum the demo's disk program prints.
pub fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
