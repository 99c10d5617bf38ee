//! The recording machine's memory map on a [`krr_kvm::Vm`]: RAM at 0 and the agent ring
//! region above it.

use crate::RecorderError;
use crate::agent_ring::{RING_GPA, RING_REGION_SIZE};
use krr_engine::state::{CpuidEntry, MemoryRegion, RegionKind};

/// Largest RAM the machine accepts: RAM must end below the agent ring.
pub const MAX_RAM: u64 = RING_GPA;

/// Creates a VM with `ram_size` bytes of RAM at 0 and the agent ring region, its vCPU
/// given `cpuid` (default: what KVM supports).
pub fn create(ram_size: u64, cpuid: Option<&[CpuidEntry]>) -> Result<krr_kvm::Vm, RecorderError> {
    if ram_size == 0 || ram_size > MAX_RAM || !ram_size.is_multiple_of(4096) {
        return Err(RecorderError::MemorySize {
            size: ram_size,
            max: MAX_RAM,
        });
    }
    let regions = [
        MemoryRegion {
            gpa: 0,
            size: ram_size,
            kind: RegionKind::Ram,
        },
        MemoryRegion {
            gpa: RING_GPA,
            size: RING_REGION_SIZE,
            kind: RegionKind::AgentRing,
        },
    ];
    match cpuid {
        None => krr_kvm::Vm::new(&regions),
        Some(table) => krr_kvm::Vm::with_cpuid(&regions, table),
    }
    .map_err(RecorderError::CreateVm)
}
