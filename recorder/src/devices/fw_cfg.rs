//! A fw_cfg device with the DMA interface, laid out as QEMU's (selector at 0x510, data at
//! 0x511, DMA address at 0x514/0x518, big endian). It is the machine's block device: the
//! disk image is the file `opt/krr/disk`, and reads move it into guest memory by DMA,
//! so the same guest reads the same disk under QEMU (`-fw_cfg name=opt/krr/disk,file=...`).

use crate::agent_ring::{
    FW_CFG_DMA_ERROR, FW_CFG_DMA_READ, FW_CFG_DMA_SELECT, FW_CFG_DMA_SKIP, FW_CFG_FILE_DIR,
    FW_CFG_ID, FW_CFG_SIGNATURE,
};

/// Selector of the first file item, as QEMU numbers them.
const FIRST_FILE_SELECTOR: u16 = 0x20;
/// Largest single DMA transfer the device performs.
pub const MAX_DMA_LEN: u32 = 64 << 20;
/// `fw_cfg_dma_access` is 16 bytes.
pub const DMA_ACCESS_SIZE: usize = 16;
/// Feature bits of FW_CFG_ID: traditional interface and DMA.
const ID_FEATURES: u32 = 0b11;

/// Guest memory as the device sees it.
pub trait DmaMemory {
    /// Reads guest memory; false if the range is not RAM.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool;
    /// Whether `[gpa, gpa + len)` is RAM the device may write.
    fn writable(&self, gpa: u64, len: u64) -> bool;
}

/// A write the device performs into guest memory; the caller applies and records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaWrite {
    pub gpa: u64,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct FwCfg {
    items: Vec<(u16, Vec<u8>)>,
    selected: Option<usize>,
    offset: usize,
    dma_high: u32,
}

impl FwCfg {
    /// A device exposing `files` (name, contents) besides the standard items.
    pub fn new(files: Vec<(String, Vec<u8>)>) -> Self {
        let mut dir = Vec::new();
        dir.extend_from_slice(&(files.len() as u32).to_be_bytes());
        let mut items = vec![
            (FW_CFG_SIGNATURE, b"QEMU".to_vec()),
            (FW_CFG_ID, ID_FEATURES.to_le_bytes().to_vec()),
        ];
        for (i, (name, data)) in files.into_iter().enumerate() {
            let selector = FIRST_FILE_SELECTOR + i as u16;
            dir.extend_from_slice(&(data.len() as u32).to_be_bytes());
            dir.extend_from_slice(&selector.to_be_bytes());
            dir.extend_from_slice(&0u16.to_be_bytes());
            let mut n = [0u8; 56];
            let len = name.len().min(55);
            n[..len].copy_from_slice(&name.as_bytes()[..len]);
            dir.extend_from_slice(&n);
            items.push((selector, data));
        }
        items.push((FW_CFG_FILE_DIR, dir));
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
        let b = self
            .selected
            .and_then(|i| self.items[i].1.get(self.offset).copied())
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        b
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
                let mut data = vec![0u8; length as usize];
                if let Some(i) = self.selected {
                    let item = &self.items[i].1;
                    if self.offset < item.len() {
                        let n = (item.len() - self.offset).min(data.len());
                        data[..n].copy_from_slice(&item[self.offset..self.offset + n]);
                    }
                }
                self.offset = self.offset.saturating_add(length as usize);
                writes.push(DmaWrite { gpa: address, data });
            }
        } else if control & FW_CFG_DMA_SKIP != 0 {
            self.offset = self.offset.saturating_add(length as usize);
        }
        let status: u32 = if error { FW_CFG_DMA_ERROR } else { 0 };
        writes.push(DmaWrite {
            gpa: access_gpa,
            data: status.to_be_bytes().to_vec(),
        });
        writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    struct Mem(RefCell<Vec<u8>>);
    impl DmaMemory for Mem {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
            let m = self.0.borrow();
            let Some(src) = m.get(gpa as usize..gpa as usize + buf.len()) else {
                return false;
            };
            buf.copy_from_slice(src);
            true
        }
        fn writable(&self, gpa: u64, len: u64) -> bool {
            gpa.checked_add(len)
                .is_some_and(|end| end <= self.0.borrow().len() as u64)
        }
    }

    fn request(mem: &Mem, at: usize, control: u32, length: u32, address: u64) {
        let mut m = mem.0.borrow_mut();
        m[at..at + 4].copy_from_slice(&control.to_be_bytes());
        m[at + 4..at + 8].copy_from_slice(&length.to_be_bytes());
        m[at + 8..at + 16].copy_from_slice(&address.to_be_bytes());
    }

    fn run(dev: &mut FwCfg, mem: &Mem, at: u64) -> Vec<DmaWrite> {
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
        let mut dev = FwCfg::new(vec![("opt/krr/disk".into(), disk.clone())]);
        let mem = Mem(RefCell::new(vec![0u8; 0x10000]));

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
        let mut dev = FwCfg::new(vec![("opt/krr/disk".into(), vec![1; 64])]);
        let mem = Mem(RefCell::new(vec![0u8; 0x1000]));
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
}
