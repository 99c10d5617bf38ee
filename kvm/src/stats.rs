//! The vCPU's binary statistics file (KVM_GET_STATS_FD), read by name: `insn_emulation`
//! is an exact ring-0 instruction counter on hosts whose KVM emulates guest ring-0 code.

use crate::{Error, Result, Vm};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// One statistic of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatDescriptor {
    pub name: String,
    /// Absolute file offset of the statistic's first u64.
    pub offset: u64,
    /// Number of u64 values.
    pub size: u16,
}

/// Largest statistics header accepted (name size, descriptors): the file is the
/// kernel's, but the parser still bounds what it allocates.
const MAX_NAME_SIZE: u32 = 256;
const MAX_DESCRIPTORS: u32 = 4096;

/// Parses the header and descriptors of a KVM binary statistics file (the layout of
/// `struct kvm_stats_header` and `struct kvm_stats_desc`); `read_at` fills a buffer from
/// an offset of the file.
pub fn parse(
    read_at: &dyn Fn(u64, &mut [u8]) -> std::io::Result<()>,
) -> Result<Vec<StatDescriptor>> {
    let mut h = [0u8; 24];
    read_at(0, &mut h).map_err(Error::StatsRead)?;
    let word = |i: usize| u32::from_le_bytes([h[i * 4], h[i * 4 + 1], h[i * 4 + 2], h[i * 4 + 3]]);
    let (name_size, num_desc, desc_offset, data_offset) = (word(1), word(2), word(4), word(5));
    if name_size == 0 || name_size > MAX_NAME_SIZE {
        return Err(Error::StatsHeader("name size"));
    }
    if num_desc > MAX_DESCRIPTORS {
        return Err(Error::StatsHeader("number of descriptors"));
    }
    let desc_size = 16 + name_size as usize;
    let mut descs = vec![0u8; desc_size * num_desc as usize];
    read_at(desc_offset as u64, &mut descs).map_err(Error::StatsRead)?;
    Ok(descs
        .chunks_exact(desc_size)
        .map(|d| {
            let size = u16::from_le_bytes([d[6], d[7]]);
            let offset = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
            let name = &d[16..];
            let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            StatDescriptor {
                name: String::from_utf8_lossy(&name[..len]).into_owned(),
                offset: data_offset as u64 + offset as u64,
                size,
            }
        })
        .collect())
}

/// The open statistics file of one vCPU and its descriptors.
#[derive(Debug)]
pub struct Stats {
    file: File,
    descriptors: Vec<StatDescriptor>,
}

impl Stats {
    /// Opens the statistics of `vm`'s vCPU (fails on hosts without KVM_GET_STATS_FD).
    pub fn open(vm: &Vm) -> Result<Stats> {
        const KVM_GET_STATS_FD: libc::c_ulong = 0xaece;
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
        let fd = unsafe { libc::ioctl(vm.vcpu().as_raw_fd(), KVM_GET_STATS_FD) };
        if fd < 0 {
            return Err(Error::kvm("KVM_GET_STATS_FD", kvm_ioctls::Error::last()));
        }
        // SAFETY: a non-negative return value is a fresh fd that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let descriptors = parse(&|offset, buf| file.read_exact_at(buf, offset))?;
        Ok(Stats { file, descriptors })
    }

    pub fn descriptors(&self) -> &[StatDescriptor] {
        &self.descriptors
    }

    /// The statistic called `name`, if this host has it.
    pub fn find(&self, name: &str) -> Option<&StatDescriptor> {
        self.descriptors.iter().find(|d| d.name == name)
    }

    /// The current value of `stat` (its first u64). Read while the vCPU is stopped.
    pub fn read(&self, stat: &StatDescriptor) -> Result<u64> {
        let mut b = [0u8; 8];
        self.file
            .read_exact_at(&mut b, stat.offset)
            .map_err(Error::StatsRead)?;
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(file: &[u8]) -> impl Fn(u64, &mut [u8]) -> std::io::Result<()> + '_ {
        move |off, buf| {
            let src = file
                .get(off as usize..off as usize + buf.len())
                .ok_or(std::io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    #[test]
    fn parser_finds_a_named_statistic_and_bounds_sizes() {
        // Header: flags, name_size=48, num_desc=2, id_offset=24, desc_offset=80,
        // data_offset=200.
        let mut file = vec![0u8; 256];
        for (i, v) in [0u32, 48, 2, 24, 80, 200].iter().enumerate() {
            file[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        let desc = |file: &mut Vec<u8>, at: usize, offset: u32, name: &str| {
            file[at + 6..at + 8].copy_from_slice(&1u16.to_le_bytes());
            file[at + 8..at + 12].copy_from_slice(&offset.to_le_bytes());
            file[at + 16..at + 16 + name.len()].copy_from_slice(name.as_bytes());
        };
        desc(&mut file, 80, 0, "exits");
        desc(&mut file, 80 + 64, 8, "insn_emulation");
        file[208..216].copy_from_slice(&12345u64.to_le_bytes());
        let descs = parse(&reader(&file)).unwrap();
        let d = descs.iter().find(|d| d.name == "insn_emulation").unwrap();
        assert_eq!((d.offset, d.size), (208, 1));

        // A header claiming four billion descriptors is rejected without allocating.
        let mut bad = file.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse(&reader(&bad)),
            Err(Error::StatsHeader("number of descriptors"))
        ));
        // A file cut short is a read error.
        assert!(matches!(
            parse(&reader(&file[..100])),
            Err(Error::StatsRead(_))
        ));
    }
}
