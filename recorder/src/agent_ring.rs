//! The guest agent ABI on the Rust side: the machine constants and the ring layout of
//! `guest-agent/include/krr_agent_abi.h`, and the reader that turns ring records into
//! events.
//!
//! The header is the C definition; this module is the Rust one. `tests/agent_abi.rs`
//! compiles the header with gcc and checks every constant, size and offset against the
//! definitions here.
//!
//! The guest may be hostile: every field read from the ring is validated, and a ring
//! that breaks the protocol ends the recording with [`RingError`], never a panic.

use krr_engine::event::{
    EntryKind, Event, Icount, PteRead, RandomInstruction, RandomValue, UserEntry, UserRead,
    UserRegs,
};
use std::mem::{offset_of, size_of};

pub use krr_engine::machine::{
    PORT_COM1, PORT_DOORBELL, PORT_FW_CFG, PORT_FW_CFG_DATA, PORT_FW_CFG_DMA, PORT_PIC_MASTER,
    PORT_PIC_SLAVE, PORT_PIT, PORT_POWEROFF, PORT_RTC, PORT_SYSTEM_CONTROL_B, RING_GPA,
    RING_REGION_SIZE,
};

pub const DISK_FW_CFG_NAME: &str = "opt/krr/disk";

pub const DOORBELL_FULL: u32 = 1;
pub const DOORBELL_FLUSH: u32 = 2;

pub const RING_MAGIC: u32 = 0x5252_524b;
pub const RING_VERSION: u32 = 1;

pub const RECORD_ALIGN: u32 = 8;

pub const REC_USER_ENTRY: u16 = 1;
pub const REC_USER_READ: u16 = 2;
pub const REC_RDTSC: u16 = 3;
pub const REC_RDRAND: u16 = 4;
pub const REC_RDSEED: u16 = 5;
pub const REC_PTE_READ: u16 = 6;

pub const ENTRY_SYSCALL: u32 = 1;
pub const ENTRY_INTERRUPT: u32 = 2;
pub const ENTRY_EXCEPTION: u32 = 3;

pub const ENTRY_HAS_ERROR_CODE: u16 = 1;
pub const VALUE_CF: u16 = 1;

pub const FW_CFG_DMA_ERROR: u32 = 0x01;
pub const FW_CFG_DMA_READ: u32 = 0x02;
pub const FW_CFG_DMA_SKIP: u32 = 0x04;
pub const FW_CFG_DMA_SELECT: u32 = 0x08;
pub const FW_CFG_SIGNATURE: u16 = 0x0000;
pub const FW_CFG_ID: u16 = 0x0001;
pub const FW_CFG_FILE_DIR: u16 = 0x0019;

/// Bytes of [`RingHeader`] at the start of the region.
pub const RING_HEADER_SIZE: usize = size_of::<RingHeader>();

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RingHeader {
    pub magic: u32,
    pub version: u32,
    pub header_size: u32,
    pub capacity: u32,
    pub head: u64,
    pub lost: u64,
    pub reserved: [u64; 4],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordHeader {
    pub kind: u16,
    pub flags: u16,
    pub size: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RecUserEntry {
    pub h: RecordHeader,
    pub entry_kind: u32,
    pub vector: u32,
    pub error_code: u32,
    pub reserved: u32,
    pub cr2: u64,
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub cs: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RecUserRead {
    pub h: RecordHeader,
    pub dst: u64,
    pub src: u64,
    pub len: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RecValue {
    pub h: RecordHeader,
    pub value: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RecPteRead {
    pub h: RecordHeader,
    pub addr: u64,
    pub value: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FwCfgDmaAccess {
    pub control: u32,
    pub length: u32,
    pub address: u64,
}

/// Offset of `head` in the ring header: the recorder writes 0 there to reset the ring.
pub const HEAD_OFFSET: u64 = offset_of!(RingHeader, head) as u64;
/// Where the record area starts, as the recorder sets `header_size`.
pub const RECORD_AREA_OFFSET: u64 = 4096;
/// Bytes in the record area.
pub const RECORD_CAPACITY: u64 = RING_REGION_SIZE - RECORD_AREA_OFFSET;

/// A violation of the ring protocol by the guest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    #[error(
        "agent ring header changed by the guest: {field} is {value:#x}, expected {expected:#x}"
    )]
    HeaderChanged {
        field: &'static str,
        value: u64,
        expected: u64,
    },
    #[error("agent ring head {head:#x} is beyond the record area ({capacity:#x} bytes)")]
    HeadOutOfRange { head: u64, capacity: u64 },
    #[error("agent ring head moved backwards from {from:#x} to {to:#x} without a reset")]
    HeadBackwards { from: u64, to: u64 },
    #[error("agent ring record at offset {offset:#x}: {what}")]
    BadRecord { offset: u64, what: String },
}

/// The initial ring header the recorder writes before the guest starts.
pub fn initial_header() -> RingHeader {
    RingHeader {
        magic: RING_MAGIC,
        version: RING_VERSION,
        header_size: RECORD_AREA_OFFSET as u32,
        capacity: RECORD_CAPACITY as u32,
        ..Default::default()
    }
}

impl RingHeader {
    pub fn to_bytes(&self) -> [u8; size_of::<RingHeader>()] {
        let mut b = [0u8; size_of::<RingHeader>()];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.header_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.capacity.to_le_bytes());
        b[16..24].copy_from_slice(&self.head.to_le_bytes());
        b[24..32].copy_from_slice(&self.lost.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; size_of::<RingHeader>()]) -> RingHeader {
        RingHeader {
            magic: le32(b, 0),
            version: le32(b, 4),
            header_size: le32(b, 8),
            capacity: le32(b, 12),
            head: le64(b, 16),
            lost: le64(b, 24),
            reserved: [le64(b, 32), le64(b, 40), le64(b, 48), le64(b, 56)],
        }
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// Consumes records from the ring as the guest appends them.
///
/// The recorder calls [`RingReader::poll`] at every VM exit with the current ring bytes:
/// records that appeared since the last call become events in execution order. At a
/// doorbell it calls [`RingReader::reset`] after writing head = 0.
#[derive(Debug, Default)]
pub struct RingReader {
    /// Bytes of the record area already turned into events.
    consumed: u64,
    /// Records consumed since the start (for statistics).
    pub records: u64,
    /// Value of the agent's `lost` counter last seen.
    pub lost: u64,
}

impl RingReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of complete records the agent has written and we have consumed.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The bytes of the ring region that [`RingReader::poll`] will read besides the
    /// header: the records appended since the last poll. Only the header of `region`
    /// need be current (the recorder copies just these bytes of a megabyte region).
    pub fn unread(&self, region: &[u8]) -> Result<std::ops::Range<usize>, RingError> {
        let head = Self::check_header(region)?.head;
        if head < self.consumed {
            return Err(RingError::HeadBackwards {
                from: self.consumed,
                to: head,
            });
        }
        let area = RECORD_AREA_OFFSET as usize;
        Ok(area + self.consumed as usize..area + head as usize)
    }

    /// Parses the records in `region[RECORD_AREA_OFFSET + consumed .. + head]`.
    /// `region` is the ring region as it is now (the vCPU is stopped): its header and
    /// at least the bytes [`RingReader::unread`] names.
    pub fn poll(
        &mut self,
        region: &[u8],
        icount: Icount,
        out: &mut Vec<Event>,
    ) -> Result<(), RingError> {
        let header = Self::check_header(region)?;
        self.lost = header.lost;
        let head = header.head;
        if head < self.consumed {
            return Err(RingError::HeadBackwards {
                from: self.consumed,
                to: head,
            });
        }
        let area = &region[RECORD_AREA_OFFSET as usize..];
        while self.consumed < head {
            let offset = self.consumed;
            let rec = &area[offset as usize..head as usize];
            let (event, size) =
                parse_record(rec, icount).map_err(|what| RingError::BadRecord { offset, what })?;
            out.push(event);
            self.consumed += size;
            self.records += 1;
        }
        Ok(())
    }

    /// Forget consumed bytes after the recorder reset `head` to 0.
    pub fn reset(&mut self) {
        self.consumed = 0;
    }

    fn check_header(region: &[u8]) -> Result<RingHeader, RingError> {
        let Some(bytes) = region.get(..size_of::<RingHeader>()) else {
            return Err(RingError::HeadOutOfRange {
                head: 0,
                capacity: 0,
            });
        };
        let mut b = [0u8; size_of::<RingHeader>()];
        b.copy_from_slice(bytes);
        let h = RingHeader::from_bytes(&b);
        let expected = initial_header();
        for (field, value, exp) in [
            ("magic", h.magic as u64, expected.magic as u64),
            ("version", h.version as u64, expected.version as u64),
            (
                "header_size",
                h.header_size as u64,
                expected.header_size as u64,
            ),
            ("capacity", h.capacity as u64, expected.capacity as u64),
        ] {
            if value != exp {
                return Err(RingError::HeaderChanged {
                    field,
                    value,
                    expected: exp,
                });
            }
        }
        let capacity = RECORD_CAPACITY.min(region.len() as u64 - RECORD_AREA_OFFSET);
        if h.head > capacity {
            return Err(RingError::HeadOutOfRange {
                head: h.head,
                capacity,
            });
        }
        Ok(h)
    }
}

/// Parses one record at the start of `rec` (which holds at least every byte up to the
/// ring head). Returns the event and the record size.
fn parse_record(rec: &[u8], icount: Icount) -> Result<(Event, u64), String> {
    if rec.len() < size_of::<RecordHeader>() {
        return Err(format!(
            "{} bytes left before head, less than a record header",
            rec.len()
        ));
    }
    let kind = le16(rec, 0);
    let flags = le16(rec, 2);
    let size = le32(rec, 4) as usize;
    if size < size_of::<RecordHeader>() || !size.is_multiple_of(RECORD_ALIGN as usize) {
        return Err(format!("kind {kind}: bad size {size}"));
    }
    if size > rec.len() {
        return Err(format!(
            "kind {kind}: size {size} runs past the head ({} bytes left)",
            rec.len()
        ));
    }
    let body = &rec[..size];
    let need = |n: usize| -> Result<(), String> {
        if size < n {
            Err(format!("kind {kind}: size {size} is less than {n}"))
        } else {
            Ok(())
        }
    };
    let event = match kind {
        REC_USER_ENTRY => {
            need(size_of::<RecUserEntry>())?;
            let entry_kind = le32(body, offset_of!(RecUserEntry, entry_kind));
            let vector = le32(body, offset_of!(RecUserEntry, vector));
            let error_code = le32(body, offset_of!(RecUserEntry, error_code));
            let cr2 = le64(body, offset_of!(RecUserEntry, cr2));
            let vector: u8 = vector
                .try_into()
                .map_err(|_| format!("user entry: vector {vector} out of range"))?;
            let kind = match entry_kind {
                ENTRY_SYSCALL => EntryKind::Syscall,
                ENTRY_INTERRUPT => EntryKind::Interrupt { vector },
                ENTRY_EXCEPTION => EntryKind::Exception {
                    vector,
                    error_code: (flags & ENTRY_HAS_ERROR_CODE != 0).then_some(error_code),
                    cr2,
                },
                other => return Err(format!("user entry: unknown entry kind {other}")),
            };
            let mut gpr = [0u64; 16];
            let base = offset_of!(RecUserEntry, gpr);
            for (i, r) in gpr.iter_mut().enumerate() {
                *r = le64(body, base + 8 * i);
            }
            let selector = |off: usize, name: &str| -> Result<u16, String> {
                let v = le64(body, off);
                v.try_into()
                    .map_err(|_| format!("user entry: {name} {v:#x} is not a selector"))
            };
            Event::UserEntry(UserEntry {
                icount,
                kind,
                regs: UserRegs {
                    gpr,
                    rip: le64(body, offset_of!(RecUserEntry, rip)),
                    rflags: le64(body, offset_of!(RecUserEntry, rflags)),
                    cs: selector(offset_of!(RecUserEntry, cs), "cs")?,
                    ss: selector(offset_of!(RecUserEntry, ss), "ss")?,
                    fs_base: le64(body, offset_of!(RecUserEntry, fs_base)),
                    gs_base: le64(body, offset_of!(RecUserEntry, gs_base)),
                },
            })
        }
        REC_USER_READ => {
            let fixed = size_of::<RecUserRead>();
            need(fixed)?;
            let len = le64(body, offset_of!(RecUserRead, len));
            if len > (size - fixed) as u64 {
                return Err(format!(
                    "user read: length {len} exceeds the record ({} data bytes)",
                    size - fixed
                ));
            }
            let padded = (len as usize).div_ceil(RECORD_ALIGN as usize) * RECORD_ALIGN as usize;
            if fixed + padded != size {
                return Err(format!(
                    "user read: size {size} does not match length {len}"
                ));
            }
            Event::UserRead(UserRead {
                icount,
                dst: le64(body, offset_of!(RecUserRead, dst)),
                src: le64(body, offset_of!(RecUserRead, src)),
                data: body[fixed..fixed + len as usize].to_vec(),
            })
        }
        REC_RDTSC | REC_RDRAND | REC_RDSEED => {
            need(size_of::<RecValue>())?;
            let instruction = match kind {
                REC_RDTSC => RandomInstruction::Rdtsc,
                REC_RDRAND => RandomInstruction::Rdrand,
                _ => RandomInstruction::Rdseed,
            };
            Event::Random(RandomValue {
                icount,
                instruction,
                value: le64(body, offset_of!(RecValue, value)),
                success: instruction == RandomInstruction::Rdtsc || flags & VALUE_CF != 0,
            })
        }
        REC_PTE_READ => {
            need(size_of::<RecPteRead>())?;
            Event::PteRead(PteRead {
                icount,
                addr: le64(body, offset_of!(RecPteRead, addr)),
                value: le64(body, offset_of!(RecPteRead, value)),
            })
        }
        other => return Err(format!("unknown record kind {other}")),
    };
    Ok((event, size as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region_with(records: &[Vec<u8>]) -> Vec<u8> {
        let mut region = vec![0u8; RING_REGION_SIZE as usize];
        let mut h = initial_header();
        let mut at = RECORD_AREA_OFFSET as usize;
        for r in records {
            region[at..at + r.len()].copy_from_slice(r);
            at += r.len();
        }
        h.head = (at - RECORD_AREA_OFFSET as usize) as u64;
        region[..64].copy_from_slice(&h.to_bytes());
        region
    }

    fn value_record(kind: u16, value: u64) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&kind.to_le_bytes());
        r.extend_from_slice(&1u16.to_le_bytes());
        r.extend_from_slice(&16u32.to_le_bytes());
        r.extend_from_slice(&value.to_le_bytes());
        r
    }

    fn user_read_record(dst: u64, src: u64, data: &[u8]) -> Vec<u8> {
        let padded = data.len().div_ceil(8) * 8;
        let mut r = Vec::new();
        r.extend_from_slice(&REC_USER_READ.to_le_bytes());
        r.extend_from_slice(&0u16.to_le_bytes());
        r.extend_from_slice(&((32 + padded) as u32).to_le_bytes());
        r.extend_from_slice(&dst.to_le_bytes());
        r.extend_from_slice(&src.to_le_bytes());
        r.extend_from_slice(&(data.len() as u64).to_le_bytes());
        r.extend_from_slice(data);
        r.resize(32 + padded, 0);
        r
    }

    #[test]
    fn records_become_events_in_order_and_only_once() {
        let region = region_with(&[
            value_record(REC_RDTSC, 1234),
            user_read_record(0xffff_8000_0000_1000, 0x40_0000, b"hello"),
        ]);
        let mut reader = RingReader::new();
        let mut out = Vec::new();
        reader.poll(&region, 77, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        match &out[0] {
            Event::Random(v) => {
                assert_eq!(v.value, 1234);
                assert_eq!(v.icount, 77);
                assert_eq!(v.instruction, RandomInstruction::Rdtsc);
            }
            e => panic!("unexpected {e:?}"),
        }
        match &out[1] {
            Event::UserRead(r) => {
                assert_eq!(r.data, b"hello");
                assert_eq!(r.src, 0x40_0000);
            }
            e => panic!("unexpected {e:?}"),
        }
        // Polling again without new records yields nothing.
        reader.poll(&region, 80, &mut out).unwrap();
        assert_eq!(out.len(), 2);
    }

    /// The recorder copies only the header and the unread records into a buffer that
    /// otherwise holds stale bytes: polling that buffer gives the same events.
    #[test]
    fn unread_names_exactly_the_bytes_poll_reads() {
        let first = vec![value_record(REC_RDTSC, 1)];
        let both = vec![value_record(REC_RDTSC, 1), value_record(REC_RDRAND, 2)];
        let mut reader = RingReader::new();
        let mut stale = vec![0xa5u8; RING_REGION_SIZE as usize];
        let mut events = Vec::new();
        for (round, records) in [first, both].iter().enumerate() {
            let region = region_with(records);
            stale[..RING_HEADER_SIZE].copy_from_slice(&region[..RING_HEADER_SIZE]);
            let unread = reader.unread(&stale).unwrap();
            assert_eq!(unread.len(), 16, "round {round}: one 16-byte record is new");
            stale[unread.clone()].copy_from_slice(&region[unread]);
            reader.poll(&stale, round as u64, &mut events).unwrap();
        }
        assert_eq!(events.len(), 2);
        assert!(matches!(&events[1], Event::Random(v) if v.value == 2 && v.icount == 1));
        // A head that moved backwards is refused before anything is copied.
        let region = region_with(&[]);
        stale[..RING_HEADER_SIZE].copy_from_slice(&region[..RING_HEADER_SIZE]);
        assert!(matches!(
            reader.unread(&stale),
            Err(RingError::HeadBackwards { .. })
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut garbage = vec![0xabu8; 64];
        garbage[4..8].copy_from_slice(&0xffff_fff8u32.to_le_bytes());
        let region = region_with(&[garbage]);
        let err = RingReader::new()
            .poll(&region, 0, &mut Vec::new())
            .unwrap_err();
        assert!(
            matches!(err, RingError::BadRecord { offset: 0, .. }),
            "{err}"
        );

        let mut region = region_with(&[]);
        let mut h = initial_header();
        h.head = u64::MAX;
        region[..64].copy_from_slice(&h.to_bytes());
        let err = RingReader::new()
            .poll(&region, 0, &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, RingError::HeadOutOfRange { .. }), "{err}");

        let mut region = region_with(&[]);
        region[12..16].copy_from_slice(&7u32.to_le_bytes());
        let err = RingReader::new()
            .poll(&region, 0, &mut Vec::new())
            .unwrap_err();
        assert!(
            matches!(
                err,
                RingError::HeaderChanged {
                    field: "capacity",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn user_read_length_must_match_size() {
        let mut r = user_read_record(1, 2, b"12345678");
        r[24..32].copy_from_slice(&1000u64.to_le_bytes());
        let region = region_with(&[r]);
        let err = RingReader::new()
            .poll(&region, 0, &mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[test]
    fn every_byte_flip_of_a_valid_ring_is_handled() {
        let records = [
            value_record(REC_RDTSC, 5),
            user_read_record(10, 20, b"abcdefghijk"),
            value_record(REC_RDRAND, 6),
        ];
        let clean = region_with(&records);
        let used = RECORD_AREA_OFFSET as usize + records.iter().map(Vec::len).sum::<usize>();
        for at in (0..64).chain(RECORD_AREA_OFFSET as usize..used) {
            for bit in [0x01u8, 0x80] {
                let mut region = clean.clone();
                region[at] ^= bit;
                // Either parses or reports an error; never panics, never invents records.
                let mut out = Vec::new();
                match RingReader::new().poll(&region, 0, &mut out) {
                    Ok(()) => assert!(out.len() <= records.len(), "flip at {at}: {out:?}"),
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
            }
        }
    }
}
