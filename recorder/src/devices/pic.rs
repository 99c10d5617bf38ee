//! A pair of cascaded 8259A interrupt controllers (master at 0x20, slave at 0xa0).
//!
//! Edge-triggered, fully nested mode: what a kernel programs with the usual ICW1-4
//! sequence. The recorder asks [`Pic::pending_vector`] when it may inject and calls
//! [`Pic::acknowledge`] when it injects, as the CPU's INTA cycle would.

#[derive(Debug, Default, Clone)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    vector_base: u8,
    /// Next initialisation word expected (2, 3, 4), or 0 when initialised.
    init_step: u8,
    expect_icw4: bool,
    auto_eoi: bool,
    read_isr: bool,
}

impl Chip {
    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            // ICW1: restart initialisation.
            *self = Chip {
                init_step: 2,
                expect_icw4: value & 1 != 0,
                ..Chip::default()
            };
        } else if value & 0x08 != 0 {
            // OCW3: select the register a command-port read returns.
            if value & 0x02 != 0 {
                self.read_isr = value & 0x01 != 0;
            }
        } else {
            // OCW2: end of interrupt.
            match value & 0xe0 {
                // Clear the highest-priority (lowest) in-service bit.
                0x20 if self.isr != 0 => self.isr &= self.isr - 1,
                0x60 => self.isr &= !(1 << (value & 7)),
                _ => {}
            }
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init_step {
            2 => {
                self.vector_base = value & 0xf8;
                self.init_step = 3;
            }
            3 => self.init_step = if self.expect_icw4 { 4 } else { 0 },
            4 => {
                self.auto_eoi = value & 0x02 != 0;
                self.init_step = 0;
            }
            _ => self.imr = value,
        }
    }

    fn read_command(&self) -> u8 {
        if self.read_isr { self.isr } else { self.irr }
    }

    /// The line that would be delivered now, if any.
    fn pending_line(&self) -> Option<u8> {
        let candidates = self.irr & !self.imr;
        if candidates == 0 {
            return None;
        }
        let line = candidates.trailing_zeros() as u8;
        // Fully nested: an in-service line of equal or higher priority blocks it.
        let blocking = self.isr & ((2u16 << line) - 1) as u8;
        (blocking == 0).then_some(line)
    }

    fn acknowledge(&mut self, line: u8) {
        self.irr &= !(1 << line);
        if !self.auto_eoi {
            self.isr |= 1 << line;
        }
    }
}

/// The master/slave pair; the slave is cascaded on master line 2.
#[derive(Debug, Default, Clone)]
pub struct Pic {
    master: Chip,
    slave: Chip,
}

const CASCADE_LINE: u8 = 2;

impl Pic {
    pub fn new() -> Self {
        Self::default()
    }

    /// Port access: `port` is 0x20, 0x21, 0xa0 or 0xa1.
    pub fn read(&mut self, port: u16) -> u8 {
        let chip = if port & 0x80 != 0 {
            &self.slave
        } else {
            &self.master
        };
        if port & 1 == 0 {
            chip.read_command()
        } else {
            chip.imr
        }
    }

    pub fn write(&mut self, port: u16, value: u8) {
        let chip = if port & 0x80 != 0 {
            &mut self.slave
        } else {
            &mut self.master
        };
        if port & 1 == 0 {
            chip.write_command(value)
        } else {
            chip.write_data(value)
        }
    }

    /// Raises an edge on interrupt line `irq` (0-15).
    pub fn raise(&mut self, irq: u8) {
        if irq < 8 {
            self.master.irr |= 1 << irq;
        } else if irq < 16 {
            self.slave.irr |= 1 << (irq - 8);
            self.master.irr |= 1 << CASCADE_LINE;
        }
    }

    /// The vector the CPU would receive if it acknowledged now.
    pub fn pending_vector(&self) -> Option<u8> {
        let line = self.master.pending_line()?;
        if line == CASCADE_LINE && self.slave.irr != 0 {
            let sl = self.slave.pending_line()?;
            return Some(self.slave.vector_base.wrapping_add(sl));
        }
        Some(self.master.vector_base.wrapping_add(line))
    }

    /// Acknowledges the pending interrupt and returns its vector.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let line = self.master.pending_line()?;
        if line == CASCADE_LINE && self.slave.irr != 0 {
            let sl = self.slave.pending_line()?;
            self.slave.acknowledge(sl);
            self.master.acknowledge(line);
            if self.slave.irr == 0 {
                self.master.irr &= !(1 << CASCADE_LINE);
            }
            return Some(self.slave.vector_base.wrapping_add(sl));
        }
        self.master.acknowledge(line);
        Some(self.master.vector_base.wrapping_add(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initialised() -> Pic {
        let mut p = Pic::new();
        for (port, v) in [
            (0x20, 0x11),
            (0xa0, 0x11),
            (0x21, 0x20),
            (0xa1, 0x28),
            (0x21, 0x04),
            (0xa1, 0x02),
            (0x21, 0x01),
            (0xa1, 0x01),
            (0x21, 0x00),
            (0xa1, 0x00),
        ] {
            p.write(port, v);
        }
        p
    }

    #[test]
    fn remapped_timer_interrupt_and_eoi() {
        let mut p = initialised();
        assert_eq!(p.pending_vector(), None);
        p.raise(0);
        assert_eq!(p.pending_vector(), Some(0x20));
        assert_eq!(p.acknowledge(), Some(0x20));
        // In service: a second edge waits for the EOI.
        p.raise(0);
        assert_eq!(p.pending_vector(), None);
        p.write(0x20, 0x20);
        assert_eq!(p.pending_vector(), Some(0x20));
    }

    #[test]
    fn mask_priority_and_slave_cascade() {
        let mut p = initialised();
        p.write(0x21, 0x01); // mask IRQ0
        p.raise(0);
        assert_eq!(p.pending_vector(), None);
        p.raise(12);
        assert_eq!(p.pending_vector(), Some(0x2c));
        assert_eq!(p.acknowledge(), Some(0x2c));
        p.write(0x21, 0x00);
        // IRQ0 has priority over the in-service cascade line.
        assert_eq!(p.pending_vector(), Some(0x20));
        // OCW3 selects ISR for command-port reads.
        p.write(0xa0, 0x0b);
        assert_eq!(p.read(0xa0), 1 << 4);
        p.write(0xa0, 0x0a);
        assert_eq!(p.read(0xa0), 0);
    }
}
