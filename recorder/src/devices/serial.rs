//! A 16550A UART: the guest console (COM1). Transmitted bytes go to the console
//! ([`Effect::Console`]) at once, so the transmitter is always empty again when the guest
//! looks. It interrupts on IRQ4 as a 16550 on a PC does, so that a driver (Linux's 8250)
//! can run it interrupt-driven:
//!
//! * causes, by priority ([`Serial::pending`]): receiver line status (an overrun), received
//!   data (with the FIFO on: a full trigger level, or fewer bytes, reported as a character
//!   timeout at once), transmitter holding register empty, modem status (never: the lines
//!   do not change);
//! * the THRE cause is set when the transmitter empties and when IER.ETBEI is turned on
//!   while it is empty (Linux's THRE test relies on this edge), and cleared by a read of
//!   IIR that reports it, by a write of THR, and by turning ETBEI off;
//! * the interrupt line is the OR of the enabled causes, gated by MCR.OUT2 (on a PC OUT2
//!   drives the IRQ line's buffer) and low in loopback mode; a rising edge raises IRQ4 at
//!   the edge-triggered PIC ([`Effect::Irq`]).
//!
//! Receiving: [`Serial::receive`] queues bytes into the receive FIFO (16 bytes, an overrun
//! beyond). The recorder has no console input today, so only loopback mode (MCR.LOOP:
//! transmitted bytes come back to the receiver instead of the console, as Linux's FIFO
//! size probe expects) fills it.

use super::{Device, Effect, Io};
use std::collections::VecDeque;

/// Registers, one port each.
pub const PORTS: u16 = 8;

/// The interrupt line of COM1 on a PC.
pub const IRQ_COM1: u8 = 4;

/// Receive FIFO depth of a 16550A.
const FIFO_DEPTH: usize = 16;

const IER_ERBFI: u8 = 0x01;
const IER_ETBEI: u8 = 0x02;
const IER_ELSI: u8 = 0x04;

const IIR_NONE: u8 = 0x01;
const IIR_LINE_STATUS: u8 = 0x06;
const IIR_RECEIVED: u8 = 0x04;
const IIR_TIMEOUT: u8 = 0x0c;
const IIR_THRE: u8 = 0x02;
const IIR_FIFO_ENABLED: u8 = 0xc0;

const FCR_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;

const LCR_DLAB: u8 = 0x80;

const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;

const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
/// Transmitter holding register empty, transmitter empty: always, bytes leave at once.
const LSR_TX_EMPTY: u8 = 0x60;

/// Modem status outside loopback: carrier detect, data set ready, clear to send.
const MSR_READY: u8 = 0xb0;

/// Receive FIFO trigger levels by FCR bits 6-7.
const TRIGGER_LEVELS: [usize; 4] = [1, 4, 8, 14];

#[derive(Debug, Clone)]
pub struct Serial {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    fcr: u8,
    divisor: u16,
    rx: VecDeque<u8>,
    /// An overrun not yet reported by an LSR read.
    overrun: bool,
    /// The THRE interrupt cause.
    thr_ipending: bool,
    /// The level of the interrupt line, to raise IRQ4 on its rising edges.
    irq_line: bool,
}

impl Default for Serial {
    fn default() -> Self {
        Self::new()
    }
}

impl Serial {
    pub fn new() -> Self {
        Serial {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            fcr: 0,
            divisor: 0,
            rx: VecDeque::new(),
            overrun: false,
            thr_ipending: false,
            irq_line: false,
        }
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & FCR_ENABLE != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    /// Queues `bytes` as received (console input); beyond the FIFO they are lost, as an
    /// overrun. Returns whether the interrupt line rose (IRQ4 to raise).
    pub fn receive(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            self.push_rx(b);
        }
        self.update_line()
    }

    fn push_rx(&mut self, byte: u8) {
        let depth = if self.fifo_enabled() { FIFO_DEPTH } else { 1 };
        if self.rx.len() >= depth {
            self.overrun = true;
            if depth == 1 {
                // Without a FIFO the new byte overwrites the holding register.
                self.rx.clear();
                self.rx.push_back(byte);
            }
        } else {
            self.rx.push_back(byte);
        }
    }

    /// The highest-priority interrupt cause enabled, as IIR reports it (bits 0-3).
    pub fn pending(&self) -> Option<u8> {
        if self.ier & IER_ELSI != 0 && self.overrun {
            return Some(IIR_LINE_STATUS);
        }
        if self.ier & IER_ERBFI != 0 && !self.rx.is_empty() {
            let trigger = TRIGGER_LEVELS[(self.fcr >> 6) as usize];
            return Some(if !self.fifo_enabled() || self.rx.len() >= trigger {
                IIR_RECEIVED
            } else {
                IIR_TIMEOUT
            });
        }
        if self.ier & IER_ETBEI != 0 && self.thr_ipending {
            return Some(IIR_THRE);
        }
        None
    }

    /// Recomputes the interrupt line; true on a rising edge.
    fn update_line(&mut self) -> bool {
        let line = self.mcr & MCR_OUT2 != 0 && !self.loopback() && self.pending().is_some();
        let rose = line && !self.irq_line;
        self.irq_line = line;
        rose
    }

    fn modem_status(&self) -> u8 {
        if !self.loopback() {
            return MSR_READY;
        }
        // Loopback: the modem control outputs drive the modem status inputs.
        let mut msr = 0;
        for (out, input) in [
            (MCR_RTS, 0x10),  // CTS
            (MCR_DTR, 0x20),  // DSR
            (MCR_OUT1, 0x40), // RI
            (MCR_OUT2, 0x80), // DCD
        ] {
            if self.mcr & out != 0 {
                msr |= input;
            }
        }
        msr
    }

    /// Reads register `offset` (0-7).
    pub fn read(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.divisor as u8,
            0 => self.rx.pop_front().unwrap_or(0),
            1 if dlab => (self.divisor >> 8) as u8,
            1 => self.ier,
            2 => {
                let fifo = if self.fifo_enabled() {
                    IIR_FIFO_ENABLED
                } else {
                    0
                };
                match self.pending() {
                    Some(cause) => {
                        if cause == IIR_THRE {
                            // Reading IIR with THRE as its source clears it.
                            self.thr_ipending = false;
                        }
                        cause | fifo
                    }
                    None => IIR_NONE | fifo,
                }
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let mut lsr = LSR_TX_EMPTY;
                if !self.rx.is_empty() {
                    lsr |= LSR_DR;
                }
                if std::mem::take(&mut self.overrun) {
                    lsr |= LSR_OE;
                }
                lsr
            }
            6 => self.modem_status(),
            7 => self.scr,
            _ => 0xff,
        }
    }

    /// Writes register `offset`; returns the byte transmitted to the console, if any.
    pub fn write(&mut self, offset: u16, value: u8) -> Option<u8> {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.divisor = (self.divisor & 0xff00) | value as u16,
            0 => {
                // The write clears THRE; the byte leaves at once and the transmitter is
                // empty again.
                self.thr_ipending = true;
                if self.loopback() {
                    self.push_rx(value);
                    return None;
                }
                return Some(value);
            }
            1 if dlab => self.divisor = (self.divisor & 0x00ff) | ((value as u16) << 8),
            1 => {
                let changed = (self.ier ^ value) & IER_ETBEI;
                self.ier = value & 0x0f;
                if changed != 0 {
                    // Turning ETBEI on with the transmitter empty raises THRE (a real
                    // 16550 does; Linux's THRE test and start of transmission rely on
                    // it); turning it off drops the cause.
                    self.thr_ipending = self.ier & IER_ETBEI != 0;
                }
            }
            2 => {
                if (self.fcr ^ value) & FCR_ENABLE != 0 || value & FCR_CLEAR_RX != 0 {
                    // Switching the FIFOs on or off clears them too.
                    self.rx.clear();
                }
                // The reset bits (1, 2) and DMA mode do not stay set.
                self.fcr = value & 0xc1;
            }
            3 => self.lcr = value,
            4 => self.mcr = value & 0x1f,
            7 => self.scr = value,
            _ => {}
        }
        None
    }
}

impl Device for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8], io: &mut Io<'_>) {
        if let Some(d) = data.first_mut() {
            *d = Serial::read(self, offset as u16);
        }
        if self.update_line() {
            io.request(Effect::Irq(IRQ_COM1));
        }
    }

    fn write(&mut self, offset: u64, data: &[u8], io: &mut Io<'_>) {
        let value = data.first().copied().unwrap_or(0);
        if let Some(b) = Serial::write(self, offset as u16, value) {
            io.request(Effect::Console(b));
        }
        if self.update_line() {
            io.request(Effect::Irq(IRQ_COM1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_memory::NoMemory;
    use std::time::Instant;

    /// An access through the device interface: the value read and the effects.
    fn read(s: &mut Serial, offset: u64) -> (u8, Vec<Effect>) {
        let mut effects = Vec::new();
        let mut data = [0u8];
        Device::read(
            s,
            offset,
            &mut data,
            &mut Io::new(Instant::now(), &NoMemory, &mut effects),
        );
        (data[0], effects)
    }

    fn write(s: &mut Serial, offset: u64, value: u8) -> Vec<Effect> {
        let mut effects = Vec::new();
        Device::write(
            s,
            offset,
            &[value],
            &mut Io::new(Instant::now(), &NoMemory, &mut effects),
        );
        effects
    }

    const IIR: u64 = 2;
    const IER: u64 = 1;
    const MCR: u64 = 4;
    const LSR: u64 = 5;

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
        assert_eq!(s.read(5) & 0x60, 0x60, "transmitter always empty");
        assert_eq!(s.write(0, b'\n'), Some(b'\n'));
    }

    /// Linux's 8250 THRE test (serial8250_do_startup): ETBEI on with THR empty gives a THRE
    /// interrupt, an IIR read clears it, and turning ETBEI off and on again reasserts it.
    #[test]
    fn thre_is_raised_by_enabling_etbei_and_cleared_by_reading_iir() {
        let mut s = Serial::new();
        assert_eq!(read(&mut s, IIR).0, IIR_NONE);
        write(&mut s, IER, IER_ETBEI);
        assert_eq!(read(&mut s, IIR).0, IIR_THRE);
        assert_eq!(read(&mut s, IIR).0, IIR_NONE, "the read cleared it");
        write(&mut s, IER, 0);
        assert_eq!(read(&mut s, IIR).0, IIR_NONE);
        write(&mut s, IER, IER_ETBEI);
        assert_eq!(read(&mut s, IIR).0, IIR_THRE, "reasserted");
        // Writing ETBEI again without a change does not reassert it.
        assert_eq!(read(&mut s, IIR).0, IIR_NONE);
        write(&mut s, IER, IER_ETBEI);
        assert_eq!(read(&mut s, IIR).0, IIR_NONE);
        // A transmitted byte empties the transmitter again: THRE.
        write(&mut s, 0, b'x');
        assert_eq!(read(&mut s, IIR).0, IIR_THRE);
        // Off, the cause goes.
        write(&mut s, 0, b'y');
        write(&mut s, IER, 0);
        assert_eq!(read(&mut s, IIR).0, IIR_NONE);
        // FIFO-enabled bits.
        write(&mut s, 2, FCR_ENABLE);
        assert_eq!(read(&mut s, IIR).0, IIR_NONE | IIR_FIFO_ENABLED);
    }

    /// IRQ4 rises only with OUT2 set, on a rising edge of the line.
    #[test]
    fn the_irq_line_is_gated_by_out2_and_raised_on_its_edges() {
        let mut s = Serial::new();
        assert!(write(&mut s, IER, IER_ETBEI).is_empty(), "OUT2 off: no IRQ");
        assert_eq!(
            write(&mut s, MCR, MCR_OUT2 | MCR_DTR | MCR_RTS),
            [Effect::Irq(4)]
        );
        // Still high: no second edge.
        assert!(write(&mut s, 7, 0x55).is_empty());
        // The IIR read drops the line; a transmitted byte raises it again.
        assert!(read(&mut s, IIR).1.is_empty());
        assert_eq!(
            write(&mut s, 0, b'a'),
            [Effect::Console(b'a'), Effect::Irq(4)]
        );
        // 16 bytes in a row (the 8250 driver's tx_loadsz) while the line is high: no
        // more edges, and no stall: THRE is reported after every one.
        for b in b"0123456789abcdef" {
            assert_eq!(write(&mut s, 0, *b), [Effect::Console(*b)]);
            assert_eq!(read(&mut s, LSR).0 & 0x20, 0x20);
        }
        assert_eq!(read(&mut s, IIR).0, IIR_THRE);
        // Stopping transmission (ETBEI off) and starting it again is a new edge.
        write(&mut s, IER, 0);
        assert_eq!(write(&mut s, IER, IER_ETBEI), [Effect::Irq(4)]);
        // OUT2 off drops the line; back on with the cause pending is an edge.
        assert!(write(&mut s, MCR, 0).is_empty());
        assert_eq!(write(&mut s, MCR, MCR_OUT2), [Effect::Irq(4)]);
    }

    #[test]
    fn received_data_has_priority_over_thre_and_overruns_are_reported() {
        let mut s = Serial::new();
        write(&mut s, MCR, MCR_OUT2);
        write(&mut s, IER, IER_ETBEI);
        assert_eq!(read(&mut s, IIR).0, IIR_THRE);
        write(&mut s, IER, IER_ETBEI | IER_ERBFI | IER_ELSI);
        // No FIFO: one byte is the trigger; a second overruns it.
        assert!(s.receive(b"k"));
        assert_eq!(read(&mut s, LSR).0, LSR_TX_EMPTY | LSR_DR);
        assert_eq!(read(&mut s, IIR).0, IIR_RECEIVED);
        assert!(!s.receive(b"l"), "the line is already high");
        assert_eq!(read(&mut s, IIR).0, IIR_LINE_STATUS);
        assert_eq!(read(&mut s, LSR).0, LSR_TX_EMPTY | LSR_DR | LSR_OE);
        assert_eq!(read(&mut s, IIR).0, IIR_RECEIVED, "the LSR read cleared OE");
        assert_eq!(read(&mut s, 0).0, b'l');
        assert_eq!(read(&mut s, LSR).0, LSR_TX_EMPTY);
        // THRE was cleared by the first IIR read (the second IER write left ETBEI on, so
        // it did not reassert it): nothing pending now.
        assert_eq!(read(&mut s, IIR).0, IIR_NONE);
        // FIFO on, trigger 4: below it a timeout is reported, at it received data.
        write(&mut s, 2, FCR_ENABLE | 0x40);
        s.receive(b"abc");
        assert_eq!(read(&mut s, IIR).0, IIR_TIMEOUT | IIR_FIFO_ENABLED);
        s.receive(b"d");
        assert_eq!(read(&mut s, IIR).0, IIR_RECEIVED | IIR_FIFO_ENABLED);
        let got: Vec<u8> = (0..4).map(|_| read(&mut s, 0).0).collect();
        assert_eq!(got, b"abcd");
        // 17 bytes into the 16-byte FIFO: the last is lost, an overrun.
        s.receive(&[7; 17]);
        assert_eq!(read(&mut s, LSR).0 & LSR_OE, LSR_OE);
        let mut n = 0;
        while read(&mut s, LSR).0 & LSR_DR != 0 {
            read(&mut s, 0);
            n += 1;
        }
        assert_eq!(n, 16);
        // A FIFO reset empties it.
        s.receive(b"zz");
        write(&mut s, 2, FCR_ENABLE | FCR_CLEAR_RX);
        assert_eq!(read(&mut s, LSR).0 & LSR_DR, 0);
    }

    /// Loopback: bytes come back to the receiver instead of the console (Linux counts
    /// them to size the FIFO), the modem outputs drive the modem inputs, and the
    /// interrupt line stays low.
    #[test]
    fn loopback_returns_transmitted_bytes_and_mirrors_the_modem_lines() {
        let mut s = Serial::new();
        write(&mut s, MCR, MCR_LOOP | MCR_OUT2 | MCR_RTS);
        assert_eq!(read(&mut s, 6).0, 0x90);
        write(&mut s, 2, FCR_ENABLE);
        write(&mut s, IER, IER_ERBFI);
        for b in 0..=255u8 {
            assert!(write(&mut s, 0, b).is_empty(), "no console byte, no IRQ");
        }
        let mut got = Vec::new();
        while read(&mut s, LSR).0 & LSR_DR != 0 {
            got.push(read(&mut s, 0).0);
        }
        assert_eq!(got, (0..16).collect::<Vec<u8>>());
        write(&mut s, MCR, MCR_OUT2);
        assert_eq!(read(&mut s, 6).0, MSR_READY);
    }
}
