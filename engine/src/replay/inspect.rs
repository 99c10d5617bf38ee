//! What a debugger reads of a replay at its position: registers, memory through the
//! guest's page tables, and the instructions there. The CPU and memory themselves stay
//! private to the engine; everything outside reads them here (or through the timeline).

use super::Replay;
use crate::cpu::PageFault;
use crate::state::CpuState;
use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter};

/// Longest x86 instruction.
const MAX_INSTRUCTION_LEN: usize = 15;

impl Replay {
    /// The registers at the current position.
    pub fn regs(&self) -> &CpuState {
        self.cpu.state()
    }

    pub fn rip(&self) -> u64 {
        self.cpu.state().rip
    }

    /// Reads `buf.len()` bytes at a guest virtual address through the guest's page
    /// tables (no side effects); fails, having read nothing usable, if any page is not
    /// mapped.
    pub fn read_memory(&self, addr: u64, buf: &mut [u8]) -> Result<(), PageFault> {
        self.cpu.read_virtual(&self.mem, addr, buf)
    }

    /// Whether the page at guest virtual address `addr` holds recorded contents. Replay
    /// does not run user code, so what user code wrote is not in the recording (only
    /// what the kernel read of it, as user-read events): a page user mode may write
    /// is not recorded, nor is a read-only user page that neither the snapshot nor
    /// replay ever stored ([`GuestMemory::is_stored`]: it reads as zero here, which the
    /// guest may never have seen). Kernel pages are recorded: user code cannot write
    /// them, and replay applies every other write.
    ///
    /// [`GuestMemory::is_stored`]: crate::memory::GuestMemory::is_stored
    pub fn is_recorded(&self, addr: u64) -> bool {
        match self.cpu.user_mapping(&self.mem, addr) {
            Some((_, true)) => false,
            Some((gpa, false)) => self.mem.is_stored(gpa),
            None => true,
        }
    }

    /// Reads what is mapped of `buf.len()` bytes at a guest virtual address, page by
    /// page: the number of bytes read, up to the first page that is not mapped.
    pub fn read_available(&self, addr: u64, buf: &mut [u8]) -> usize {
        let mut done = 0usize;
        while done < buf.len() {
            let a = addr.wrapping_add(done as u64);
            let n = (0x1000 - (a & 0xfff) as usize).min(buf.len() - done);
            if self.read_memory(a, &mut buf[done..done + n]).is_err() {
                break;
            }
            done += n;
        }
        done
    }

    /// A u64 at a guest virtual address (None where it is not mapped).
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read_memory(addr, &mut b)
            .ok()
            .map(|()| u64::from_le_bytes(b))
    }

    /// FNV-1a over all of guest memory (equal contents hash equally).
    pub fn memory_hash(&self) -> u64 {
        self.mem.hash()
    }

    /// The instruction at `addr` decoded from the bytes mapped there (it may end before
    /// an unmapped page); invalid where they are not an instruction.
    pub fn decode_at(&self, addr: u64) -> Instruction {
        let mut bytes = [0u8; MAX_INSTRUCTION_LEN];
        let n = self.read_available(addr, &mut bytes);
        Decoder::with_ip(64, &bytes[..n], addr, DecoderOptions::NONE).decode()
    }

    /// The instruction at `addr`, if the bytes there are one.
    pub fn instruction_at(&self, addr: u64) -> Option<Instruction> {
        let ins = self.decode_at(addr);
        (!ins.is_invalid()).then_some(ins)
    }

    /// The instruction at RIP, if its bytes are readable.
    pub fn current_instruction(&self) -> Option<Instruction> {
        self.instruction_at(self.rip())
    }

    /// The instructions in the `len` bytes from `start` (up to the first unmapped page),
    /// decoded in sequence; invalid ones included.
    pub fn instructions(&self, start: u64, len: usize) -> Vec<Instruction> {
        let mut bytes = vec![0u8; len];
        let n = self.read_available(start, &mut bytes);
        Decoder::with_ip(64, &bytes[..n], start, DecoderOptions::NONE)
            .into_iter()
            .collect()
    }
}

/// An instruction in Intel syntax (`(bad)` for an invalid one).
pub fn format_instruction(ins: &Instruction) -> String {
    if ins.is_invalid() {
        return "(bad)".into();
    }
    let mut text = String::new();
    IntelFormatter::new().format(ins, &mut text);
    text
}
