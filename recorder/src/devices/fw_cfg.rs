//! A fw_cfg device with the DMA interface, laid out as QEMU's (selector at 0x510, data at
//! 0x511, DMA address at 0x514/0x518, big endian). It is the machine's block device: the
//! disk image is the file `opt/krr/disk`, and reads move it into guest memory by DMA,
//! so the same guest reads the same disk under QEMU (`-fw_cfg name=opt/krr/disk,file=...`).
//! A file's contents are read where the guest reads them ([`DiskImage::read_at`]), never
//! whole.

use super::{Device, DmaMemory, DmaWrite, Effect, Io};
use crate::agent_ring::{
    FW_CFG_DMA_ERROR, FW_CFG_DMA_READ, FW_CFG_DMA_SELECT, FW_CFG_DMA_SKIP, FW_CFG_FILE_DIR,
    FW_CFG_ID, FW_CFG_SIGNATURE,
};
use crate::image::DiskImage;
use krr_engine::machine::{PORT_FW_CFG, PORT_FW_CFG_DATA, PORT_FW_CFG_DMA};

/// Ports from the selector: selector (2 bytes), data, and the 8-byte DMA address.
pub const PORTS: u16 = PORT_FW_CFG_DMA - PORT_FW_CFG + 8;
/// Offsets of the registers in the device's range.
const SELECTOR: u64 = 0;
const DATA: u64 = (PORT_FW_CFG_DATA - PORT_FW_CFG) as u64;
const DMA: u64 = (PORT_FW_CFG_DMA - PORT_FW_CFG) as u64;

/// Selector of the first file item, as QEMU numbers them.
const FIRST_FILE_SELECTOR: u16 = 0x20;
/// Largest single DMA transfer the device performs.
pub const MAX_DMA_LEN: u32 = 64 << 20;
/// `fw_cfg_dma_access` is 16 bytes.
pub const DMA_ACCESS_SIZE: usize = 16;
/// Feature bits of FW_CFG_ID: traditional interface and DMA.
const ID_FEATURES: u32 = 0b11;

/// What an item holds: a few bytes of the device's own, or a file's image.
#[derive(Debug, Clone)]
enum Contents {
    Bytes(Vec<u8>),
    File(DiskImage),
}

impl Contents {
    fn len(&self) -> u64 {
        match self {
            Contents::Bytes(b) => b.len() as u64,
            Contents::File(f) => f.len(),
        }
    }

    /// Fills `buf` from `offset`, which is below `len()`, with at most `len() - offset`
    /// bytes.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Contents::Bytes(b) => {
                let start = offset as usize;
                buf.copy_from_slice(&b[start..start + buf.len()]);
                Ok(())
            }
            Contents::File(f) => f.read_at(offset, buf),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FwCfg {
    items: Vec<(u16, Contents)>,
    selected: Option<usize>,
    offset: u64,
    dma_high: u32,
}

impl FwCfg {
    /// A device exposing `files` (name, contents) besides the standard items. A file's
    /// size is 32 bits in the directory: [`DiskImage::open`] refuses larger images.
    pub fn new(files: Vec<(String, DiskImage)>) -> Self {
        let mut dir = Vec::new();
        dir.extend_from_slice(&(files.len() as u32).to_be_bytes());
        let mut items = vec![
            (FW_CFG_SIGNATURE, Contents::Bytes(b"QEMU".to_vec())),
            (
                FW_CFG_ID,
                Contents::Bytes(ID_FEATURES.to_le_bytes().to_vec()),
            ),
        ];
        for (i, (name, data)) in files.into_iter().enumerate() {
            let selector = FIRST_FILE_SELECTOR + i as u16;
            let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&selector.to_be_bytes());
            dir.extend_from_slice(&0u16.to_be_bytes());
            let mut n = [0u8; 56];
            let len = name.len().min(55);
            n[..len].copy_from_slice(&name.as_bytes()[..len]);
            dir.extend_from_slice(&n);
            items.push((selector, Contents::File(data)));
        }
        items.push((FW_CFG_FILE_DIR, Contents::Bytes(dir)));
        FwCfg {
            items,
            selected: None,
            offset: 0,
            dma_high: 0,
        }
    }

    pub fn select(&mut self, selector: u16) {
        self.selected = self.items.iter().position(|(s, _)| *s == selector);
        self.offset = 0;
    }

    /// A byte from the data port.
    pub fn read_data(&mut self) -> u8 {
        let mut b = [0u8];
        if let Some(i) = self.selected {
            let item = &self.items[i].1;
            if self.offset < item.len() && item.read_at(self.offset, &mut b).is_err() {
                b[0] = 0;
            }
        }
        self.offset = self.offset.saturating_add(1);
        b[0]
    }

    /// A 32-bit write to the DMA address register (`offset` 0: high half, 4: low half).
    /// Writing the low half starts the transfer. `raw` is the value as the `out`
    /// instruction wrote it (the register is big endian).
    pub fn write_dma(&mut self, offset: u16, raw: [u8; 4], mem: &dyn DmaMemory) -> Vec<DmaWrite> {
        let value = u32::from_be_bytes(raw);
        if offset == 0 {
            self.dma_high = value;
            return Vec::new();
        }
        let access = (self.dma_high as u64) << 32 | value as u64;
        self.dma_high = 0;
        self.transfer(access, mem)
    }

    fn transfer(&mut self, access_gpa: u64, mem: &dyn DmaMemory) -> Vec<DmaWrite> {
        let mut raw = [0u8; DMA_ACCESS_SIZE];
        if !mem.read(access_gpa, &mut raw) {
            // Nowhere to report the error: QEMU ignores such a request too.
            return Vec::new();
        }
        let control = u32::from_be_bytes(raw[0..4].try_into().unwrap_or_default());
        let length = u32::from_be_bytes(raw[4..8].try_into().unwrap_or_default());
        let address = u64::from_be_bytes(raw[8..16].try_into().unwrap_or_default());
        let mut writes = Vec::new();
        if control & FW_CFG_DMA_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let mut error = false;
        if control & FW_CFG_DMA_READ != 0 {
            if length > MAX_DMA_LEN || !mem.writable(address, length as u64) {
                error = true;
            } else {
                match self.read_selected(length as usize) {
                    Ok(data) => writes.push(DmaWrite { gpa: address, data }),
                    Err(e) => {
                        tracing::warn!("fw_cfg: reading item for a DMA transfer failed: {e}");
                        error = true;
                    }
                }
                self.offset = self.offset.saturating_add(length as u64);
            }
        } else if control & FW_CFG_DMA_SKIP != 0 {
            self.offset = self.offset.saturating_add(length as u64);
        }
        let status: u32 = if error { FW_CFG_DMA_ERROR } else { 0 };
        writes.push(DmaWrite {
            gpa: access_gpa,
            data: status.to_be_bytes().to_vec(),
        });
        writes
    }

    /// `length` bytes of the selected item from the current offset: zeros past its end
    /// (or with no item selected).
    fn read_selected(&self, length: usize) -> std::io::Result<Vec<u8>> {
        let mut data = vec![0u8; length];
        if let Some(i) = self.selected {
            let item = &self.items[i].1;
            if self.offset < item.len() {
                let n = (item.len() - self.offset).min(length as u64) as usize;
                item.read_at(self.offset, &mut data[..n])?;
            }
        }
        Ok(data)
    }
}

impl Device for FwCfg {
    /// Only the data port reads; the other registers read as all ones.
    fn read(&mut self, offset: u64, data: &mut [u8], _io: &mut Io<'_>) {
        match (offset, data.first_mut()) {
            (DATA, Some(d)) => *d = self.read_data(),
            _ => data.fill(0xff),
        }
    }

    /// The selector takes a 2-byte write, the DMA address 4-byte writes (high half,
    /// then low half, which starts the transfer); anything else is ignored.
    fn write(&mut self, offset: u64, data: &[u8], io: &mut Io<'_>) {
        if offset == SELECTOR
            && let Ok(selector) = <[u8; 2]>::try_from(data)
        {
            self.select(u16::from_le_bytes(selector));
        } else if (DMA..DMA + 8).contains(&offset)
            && let Ok(raw) = <[u8; 4]>::try_from(data)
        {
            for w in self.write_dma((offset - DMA) as u16, raw, io.memory) {
                io.request(Effect::MemoryWrite(w));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_memory::Ram;

    fn request(mem: &Ram, at: usize, control: u32, length: u32, address: u64) {
        let mut m = mem.0.borrow_mut();
        m[at..at + 4].copy_from_slice(&control.to_be_bytes());
        m[at + 4..at + 8].copy_from_slice(&length.to_be_bytes());
        m[at + 8..at + 16].copy_from_slice(&address.to_be_bytes());
    }

    fn run(dev: &mut FwCfg, mem: &Ram, at: u64) -> Vec<DmaWrite> {
        dev.write_dma(0, ((at >> 32) as u32).to_be_bytes(), mem);
        let w = dev.write_dma(4, (at as u32).to_be_bytes(), mem);
        for x in &w {
            mem.0.borrow_mut()[x.gpa as usize..x.gpa as usize + x.data.len()]
                .copy_from_slice(&x.data);
        }
        w
    }

    #[test]
    fn directory_lookup_then_dma_read_with_skip() {
        let disk: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut dev = FwCfg::new(vec![("opt/krr/disk".into(), disk.clone().into())]);
        let mem = Ram::new(0x10000);

        // Signature through the data port.
        dev.select(FW_CFG_SIGNATURE);
        let sig: Vec<u8> = (0..4).map(|_| dev.read_data()).collect();
        assert_eq!(sig, b"QEMU");

        // Directory by DMA.
        request(
            &mem,
            0x100,
            (FW_CFG_FILE_DIR as u32) << 16 | FW_CFG_DMA_SELECT | FW_CFG_DMA_READ,
            68,
            0x200,
        );
        run(&mut dev, &mem, 0x100);
        let m = mem.0.borrow().clone();
        assert_eq!(u32::from_be_bytes(m[0x200..0x204].try_into().unwrap()), 1);
        assert_eq!(
            u32::from_be_bytes(m[0x204..0x208].try_into().unwrap()),
            10_000
        );
        let sel = u16::from_be_bytes(m[0x208..0x20a].try_into().unwrap());
        assert_eq!(&m[0x20c..0x20c + 12], b"opt/krr/disk");
        assert_eq!(
            u32::from_be_bytes(m[0x100..0x104].try_into().unwrap()),
            0,
            "control cleared"
        );

        // Select, skip 5000, read 100.
        request(
            &mem,
            0x100,
            (sel as u32) << 16 | FW_CFG_DMA_SELECT | FW_CFG_DMA_SKIP,
            5000,
            0,
        );
        run(&mut dev, &mem, 0x100);
        request(&mem, 0x100, FW_CFG_DMA_READ, 100, 0x1000);
        let w = run(&mut dev, &mem, 0x100);
        assert_eq!(w[0].data, disk[5000..5100]);
        assert_eq!(&mem.0.borrow()[0x1000..0x1064], &disk[5000..5100]);
    }

    #[test]
    fn a_read_outside_ram_sets_the_error_bit_and_writes_nothing_else() {
        let mut dev = FwCfg::new(vec![("opt/krr/disk".into(), vec![1; 64].into())]);
        let mem = Ram::new(0x1000);
        request(
            &mem,
            0,
            0x20 << 16 | FW_CFG_DMA_SELECT | FW_CFG_DMA_READ,
            0xffff_ff00,
            0x10,
        );
        let w = run(&mut dev, &mem, 0);
        assert_eq!(w.len(), 1);
        assert_eq!(
            u32::from_be_bytes(w[0].data[..].try_into().unwrap()),
            FW_CFG_DMA_ERROR
        );
    }

    #[test]
    fn a_file_item_is_read_where_the_guest_reads_it() {
        use std::io::{Seek, SeekFrom, Write};
        // A sparse 3 GiB disk with a marker near its end: only what is read is read.
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let at = (3u64 << 30) - 4096;
        f.as_file_mut().seek(SeekFrom::Start(at)).unwrap();
        f.write_all(b"the end of the disk").unwrap();
        f.as_file().set_len(3 << 30).unwrap();
        let disk = DiskImage::open(f.path()).unwrap();
        let mut dev = FwCfg::new(vec![("opt/krr/disk".into(), disk)]);
        let mem = Ram::new(0x10000);
        // Skip to the marker in 32-bit steps (the DMA length field is 32 bits), read it.
        let sel = 0x20u32;
        let mut skipped = 0u64;
        let mut control = sel << 16 | FW_CFG_DMA_SELECT | FW_CFG_DMA_SKIP;
        while skipped < at {
            let step = (at - skipped).min(1 << 30) as u32;
            request(&mem, 0x100, control, step, 0);
            run(&mut dev, &mem, 0x100);
            skipped += step as u64;
            control = FW_CFG_DMA_SKIP;
        }
        request(&mem, 0x100, FW_CFG_DMA_READ, 32, 0x1000);
        let w = run(&mut dev, &mem, 0x100);
        assert_eq!(&w[0].data[..19], b"the end of the disk");
        assert!(w[0].data[19..].iter().all(|&b| b == 0));
        // Past the end: zeros, and no error.
        request(&mem, 0x100, FW_CFG_DMA_READ, 8192, 0x2000);
        let w = run(&mut dev, &mem, 0x100);
        assert!(w[0].data.iter().all(|&b| b == 0));
        assert_eq!(w[1].data, 0u32.to_be_bytes());
    }
}
