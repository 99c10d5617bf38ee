//! An address space of devices (the I/O ports, or guest-physical addresses outside RAM):
//! each device is registered on a range, no two ranges overlap, and an access goes to
//! the device whose range holds its address, at the offset from the range's start. As
//! cloud-hypervisor's `vm-device` bus and vmm-reference's `register_pio`/`register_mmio`.
//!
//! An access is routed by its first address only: a multi-byte access that runs past
//! the end of a range goes, whole, to the device the range belongs to.

use super::{Device, Io};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// A device as the bus holds it: shared, so that the machine can keep a typed handle to
/// a device it also drives directly (the interrupt controller, the timer).
pub type SharedDevice = Arc<Mutex<dyn Device>>;

/// `len` addresses from `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BusRange {
    pub base: u64,
    pub len: u64,
}

impl BusRange {
    pub const fn new(base: u64, len: u64) -> BusRange {
        BusRange { base, len }
    }

    /// `len` ports from `port`.
    pub const fn ports(port: u16, len: u16) -> BusRange {
        BusRange::new(port as u64, len as u64)
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.len
    }

    /// Whether the two ranges share an address (neither may be empty or wrap).
    pub fn overlaps(&self, other: &BusRange) -> bool {
        self.base < other.base + other.len && other.base < self.base + self.len
    }
}

impl fmt::Display for BusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#x}..{:#x}",
            self.base,
            self.base.wrapping_add(self.len)
        )
    }
}

/// Why a device could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("{name} at {range}: the range is empty")]
    Empty { name: &'static str, range: BusRange },
    #[error("{name} at {range}: the range runs past the end of the address space")]
    Wraps { name: &'static str, range: BusRange },
    #[error("{name} at {range} overlaps {existing} at {existing_range}")]
    Overlap {
        name: &'static str,
        range: BusRange,
        existing: &'static str,
        existing_range: BusRange,
    },
}

struct Entry {
    range: BusRange,
    name: &'static str,
    device: SharedDevice,
}

/// Devices by range.
#[derive(Default)]
pub struct Bus {
    /// By base address: the candidate for an address is the last entry at or below it.
    entries: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Registers `device` (called `name` in errors and listings) on `range`. Refused if
    /// the range is empty, wraps, or overlaps a range already registered.
    pub fn insert(
        &mut self,
        range: BusRange,
        name: &'static str,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        if range.len == 0 {
            return Err(BusError::Empty { name, range });
        }
        if range.base.checked_add(range.len).is_none() {
            return Err(BusError::Wraps { name, range });
        }
        if let Some(e) = self.entries.values().find(|e| e.range.overlaps(&range)) {
            return Err(BusError::Overlap {
                name,
                range,
                existing: e.name,
                existing_range: e.range,
            });
        }
        self.entries.insert(
            range.base,
            Entry {
                range,
                name,
                device,
            },
        );
        Ok(())
    }

    /// The device whose range holds `addr`, and `addr`'s offset in that range.
    pub fn resolve(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let (_, e) = self.entries.range(..=addr).next_back()?;
        e.range
            .contains(addr)
            .then(|| (&e.device, addr - e.range.base))
    }

    /// Reads `data.len()` bytes at `addr` from the device there. False (and `data`
    /// untouched) where there is none.
    pub fn read(&self, addr: u64, data: &mut [u8], io: &mut Io<'_>) -> bool {
        let Some((device, offset)) = self.resolve(addr) else {
            return false;
        };
        data.fill(0);
        lock(device).read(offset, data, io);
        true
    }

    /// Writes `data` at `addr` to the device there. False where there is none.
    pub fn write(&self, addr: u64, data: &[u8], io: &mut Io<'_>) -> bool {
        let Some((device, offset)) = self.resolve(addr) else {
            return false;
        };
        lock(device).write(offset, data, io);
        true
    }

    /// The registered ranges and their devices' names, by address.
    pub fn ranges(&self) -> impl Iterator<Item = (BusRange, &'static str)> + '_ {
        self.entries.values().map(|e| (e.range, e.name))
    }
}

/// Locks a device. The recorder drives its devices from one thread, so a poisoned lock
/// only means a panic elsewhere already ended the recording: the state is used as is.
pub fn lock<T: ?Sized>(device: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::Effect;
    use crate::devices::test_memory::NoMemory;
    use std::time::Instant;

    /// Records every access as (offset, length), and reads back its offset.
    #[derive(Default)]
    struct Probe {
        reads: Vec<(u64, usize)>,
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl Device for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8], _io: &mut Io<'_>) {
            self.reads.push((offset, data.len()));
            data[0] = offset as u8;
        }
        fn write(&mut self, offset: u64, data: &[u8], io: &mut Io<'_>) {
            self.writes.push((offset, data.to_vec()));
            io.request(Effect::Irq(offset as u8));
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn overlapping_empty_and_wrapping_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(BusRange::new(0x20, 2), "a", probe()).unwrap();
        bus.insert(BusRange::new(0x40, 4), "b", probe()).unwrap();
        for (base, len) in [(0x21, 1), (0x1f, 2), (0x10, 0x100), (0x43, 8), (0x40, 4)] {
            let err = bus
                .insert(BusRange::new(base, len), "c", probe())
                .unwrap_err();
            assert!(
                matches!(err, BusError::Overlap { name: "c", .. }),
                "{base:#x}+{len}: {err}"
            );
        }
        assert_eq!(
            bus.insert(BusRange::new(0x30, 0), "e", probe()),
            Err(BusError::Empty {
                name: "e",
                range: BusRange::new(0x30, 0)
            })
        );
        assert!(matches!(
            bus.insert(BusRange::new(u64::MAX - 1, 4), "w", probe()),
            Err(BusError::Wraps { .. })
        ));
        // Adjacent ranges are fine, on either side.
        bus.insert(BusRange::new(0x22, 2), "after a", probe())
            .unwrap();
        bus.insert(BusRange::new(0x1e, 2), "before a", probe())
            .unwrap();
        let names: Vec<_> = bus.ranges().map(|(_, n)| n).collect();
        assert_eq!(names, ["before a", "a", "after a", "b"]);
        let err = bus
            .insert(BusRange::new(0x3f, 2), "c", probe())
            .unwrap_err();
        assert_eq!(err.to_string(), "c at 0x3f..0x41 overlaps b at 0x40..0x44");
    }

    #[test]
    fn lookups_go_by_range_and_devices_see_offsets_from_their_base() {
        let mut bus = Bus::new();
        let (low, high) = (probe(), probe());
        bus.insert(BusRange::ports(0x3f8, 8), "low", low.clone())
            .unwrap();
        bus.insert(BusRange::new(0xfd00_0000, 0x1000), "high", high.clone())
            .unwrap();
        let mut effects = Vec::new();
        let mut io = Io::new(Instant::now(), &NoMemory, &mut effects);
        for addr in [0x3f7, 0x400, 0, 0xfcff_ffff, 0xfd00_1000] {
            assert!(bus.resolve(addr).is_none(), "{addr:#x}");
            let mut data = [0xaa];
            assert!(!bus.read(addr, &mut data, &mut io), "{addr:#x}");
            assert_eq!(data, [0xaa], "nothing there: untouched");
            assert!(!bus.write(addr, &[1], &mut io));
        }
        let mut data = [0xaa; 4];
        assert!(bus.read(0x3fd, &mut data, &mut io));
        assert_eq!(data, [5, 0, 0, 0], "offset 5, the rest zeroed");
        assert!(bus.read(0x3f8, &mut data[..1], &mut io));
        assert!(bus.write(0x3ff, &[9, 8], &mut io));
        assert!(bus.read(0xfd00_0ffc, &mut data, &mut io));
        assert!(bus.write(0xfd00_0000, &[7], &mut io));
        assert_eq!(lock(&low).reads, [(5, 4), (0, 1)]);
        assert_eq!(lock(&low).writes, [(7, vec![9, 8])]);
        assert_eq!(lock(&high).reads, [(0xffc, 4)]);
        assert_eq!(lock(&high).writes, [(0, vec![7])]);
        assert_eq!(effects, [Effect::Irq(7), Effect::Irq(0)]);
    }

    #[test]
    fn one_device_on_two_ranges_sees_each_from_its_own_base() {
        let mut bus = Bus::new();
        let dev = probe();
        bus.insert(BusRange::ports(0x20, 2), "x", dev.clone())
            .unwrap();
        bus.insert(BusRange::ports(0xa0, 2), "x again", dev.clone())
            .unwrap();
        let mut effects = Vec::new();
        let mut io = Io::new(Instant::now(), &NoMemory, &mut effects);
        let mut data = [0];
        bus.read(0x21, &mut data, &mut io);
        bus.read(0xa1, &mut data, &mut io);
        bus.read(0xa0, &mut data, &mut io);
        assert_eq!(lock(&dev).reads, [(1, 1), (1, 1), (0, 1)]);
    }
}
