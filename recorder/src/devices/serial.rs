//! A 16550 UART with no input: the guest console. Transmitted bytes go to the console
//! ([`Effect::Console`]); the line status always reports an empty transmitter so the
//! guest never waits.

use super::{Device, Effect, Io};

/// Registers, one port each.
pub const PORTS: u16 = 8;

/// Line status: transmitter holding register empty, transmitter empty.
const LSR_IDLE: u8 = 0x60;
/// Modem status: carrier detect, data set ready, clear to send.
const MSR_READY: u8 = 0xb0;
const LCR_DLAB: u8 = 0x80;

#[derive(Debug, Default, Clone)]
pub struct Serial {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    fcr: u8,
    divisor: u16,
}

impl Serial {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads register `offset` (0-7).
    pub fn read(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.divisor as u8,
            0 => 0,
            1 if dlab => (self.divisor >> 8) as u8,
            1 => self.ier,
            // No interrupt pending; FIFO-enabled bits mirror FCR bit 0.
            2 => 0x01 | if self.fcr & 1 != 0 { 0xc0 } else { 0 },
            3 => self.lcr,
            4 => self.mcr,
            5 => LSR_IDLE,
            6 => MSR_READY,
            7 => self.scr,
            _ => 0xff,
        }
    }

    /// Writes register `offset`; returns the byte transmitted, if any.
    pub fn write(&mut self, offset: u16, value: u8) -> Option<u8> {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.divisor = (self.divisor & 0xff00) | value as u16,
            0 => return Some(value),
            1 if dlab => self.divisor = (self.divisor & 0x00ff) | ((value as u16) << 8),
            1 => self.ier = value & 0x0f,
            2 => self.fcr = value,
            3 => self.lcr = value,
            4 => self.mcr = value,
            7 => self.scr = value,
            _ => {}
        }
        None
    }
}

impl Device for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8], _io: &mut Io<'_>) {
        if let Some(d) = data.first_mut() {
            *d = Serial::read(self, offset as u16);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8], io: &mut Io<'_>) {
        let value = data.first().copied().unwrap_or(0);
        if let Some(b) = Serial::write(self, offset as u16, value) {
            io.request(Effect::Console(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmits_and_honours_the_divisor_latch() {
        let mut s = Serial::new();
        assert_eq!(s.write(0, b'A'), Some(b'A'));
        s.write(3, LCR_DLAB | 3);
        assert_eq!(s.write(0, 1), None, "with DLAB set offset 0 is the divisor");
        s.write(1, 0);
        assert_eq!(s.read(0), 1);
        s.write(3, 3);
        assert_eq!(s.read(3), 3);
        assert_eq!(s.read(5) & 0x20, 0x20, "transmitter always ready");
        assert_eq!(s.write(0, b'\n'), Some(b'\n'));
    }
}
