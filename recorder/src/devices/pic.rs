//! A pair of cascaded 8259A interrupt controllers (master at 0x20, slave at 0xa0).
//!
//! Edge-triggered, fully nested mode: what a kernel programs with the usual ICW1-4
//! sequence. Each chip is a device at its two ports (offset 0: command, 1: data); the
//! pair, [`Pic`], is the cascade the recorder drives: it asks [`Pic::pending_vector`]
//! when it may inject and calls [`Pic::acknowledge`] when it injects, as the CPU's INTA
//! cycle would.

use super::bus::lock;
use super::{Device, Io};
use std::sync::{Arc, Mutex};

/// Ports of each chip: command (offset 0) and data (offset 1).
pub const PORTS: u16 = 2;

/// One 8259A.
#[derive(Debug, Default, Clone)]
pub struct Chip {
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

impl Device for Chip {
    fn read(&mut self, offset: u64, data: &mut [u8], _io: &mut Io<'_>) {
        if let Some(d) = data.first_mut() {
            *d = if offset == 0 {
                self.read_command()
            } else {
                self.imr
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8], _io: &mut Io<'_>) {
        let value = data.first().copied().unwrap_or(0);
        if offset == 0 {
            self.write_command(value)
        } else {
            self.write_data(value)
        }
    }
}

/// The master/slave pair; the slave is cascaded on master line 2.
#[derive(Debug, Default)]
pub struct Pic {
    master: Arc<Mutex<Chip>>,
    slave: Arc<Mutex<Chip>>,
}

const CASCADE_LINE: u8 = 2;

impl Pic {
    pub fn new() -> Self {
        Self::default()
    }

    /// The master chip, to register at its ports.
    pub fn master(&self) -> Arc<Mutex<Chip>> {
        self.master.clone()
    }

    /// The slave chip, to register at its ports.
    pub fn slave(&self) -> Arc<Mutex<Chip>> {
        self.slave.clone()
    }

    /// Raises an edge on interrupt line `irq` (0-15).
    pub fn raise(&self, irq: u8) {
        let mut master = lock(&self.master);
        if irq < 8 {
            master.irr |= 1 << irq;
        } else if irq < 16 {
            lock(&self.slave).irr |= 1 << (irq - 8);
            master.irr |= 1 << CASCADE_LINE;
        }
    }

    /// The vector the CPU would receive if it acknowledged now.
    pub fn pending_vector(&self) -> Option<u8> {
        let master = lock(&self.master);
        let line = master.pending_line()?;
        if line == CASCADE_LINE {
            let slave = lock(&self.slave);
            if slave.irr != 0 {
                let sl = slave.pending_line()?;
                return Some(slave.vector_base.wrapping_add(sl));
            }
        }
        Some(master.vector_base.wrapping_add(line))
    }

    /// Acknowledges the pending interrupt and returns its vector.
    pub fn acknowledge(&self) -> Option<u8> {
        let mut master = lock(&self.master);
        let line = master.pending_line()?;
        if line == CASCADE_LINE {
            let mut slave = lock(&self.slave);
            if slave.irr != 0 {
                let sl = slave.pending_line()?;
                slave.acknowledge(sl);
                master.acknowledge(line);
                if slave.irr == 0 {
                    master.irr &= !(1 << CASCADE_LINE);
                }
                return Some(slave.vector_base.wrapping_add(sl));
            }
        }
        master.acknowledge(line);
        Some(master.vector_base.wrapping_add(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::Effect;
    use crate::devices::bus::{Bus, BusRange};
    use crate::devices::test_memory::NoMemory;
    use std::time::Instant;

    /// The pair on a port bus at the PC's addresses.
    struct Machine {
        pic: Pic,
        ports: Bus,
    }

    impl Machine {
        fn write(&self, port: u16, value: u8) {
            let mut effects: Vec<Effect> = Vec::new();
            let mut io = Io::new(Instant::now(), &NoMemory, &mut effects);
            assert!(self.ports.write(port.into(), &[value], &mut io));
        }
        fn read(&self, port: u16) -> u8 {
            let mut effects: Vec<Effect> = Vec::new();
            let mut io = Io::new(Instant::now(), &NoMemory, &mut effects);
            let mut data = [0];
            assert!(self.ports.read(port.into(), &mut data, &mut io));
            data[0]
        }
    }

    fn initialised() -> Machine {
        let pic = Pic::new();
        let mut ports = Bus::new();
        ports
            .insert(BusRange::ports(0x20, PORTS), "master", pic.master())
            .unwrap();
        ports
            .insert(BusRange::ports(0xa0, PORTS), "slave", pic.slave())
            .unwrap();
        let m = Machine { pic, ports };
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
            m.write(port, v);
        }
        m
    }

    #[test]
    fn remapped_timer_interrupt_and_eoi() {
        let m = initialised();
        let p = &m.pic;
        assert_eq!(p.pending_vector(), None);
        p.raise(0);
        assert_eq!(p.pending_vector(), Some(0x20));
        assert_eq!(p.acknowledge(), Some(0x20));
        // In service: a second edge waits for the EOI.
        p.raise(0);
        assert_eq!(p.pending_vector(), None);
        m.write(0x20, 0x20);
        assert_eq!(p.pending_vector(), Some(0x20));
    }

    #[test]
    fn mask_priority_and_slave_cascade() {
        let m = initialised();
        let p = &m.pic;
        m.write(0x21, 0x01); // mask IRQ0
        assert_eq!(m.read(0x21), 0x01);
        p.raise(0);
        assert_eq!(p.pending_vector(), None);
        p.raise(12);
        assert_eq!(p.pending_vector(), Some(0x2c));
        assert_eq!(p.acknowledge(), Some(0x2c));
        m.write(0x21, 0x00);
        // IRQ0 has priority over the in-service cascade line.
        assert_eq!(p.pending_vector(), Some(0x20));
        // OCW3 selects ISR for command-port reads.
        m.write(0xa0, 0x0b);
        assert_eq!(m.read(0xa0), 1 << 4);
        m.write(0xa0, 0x0a);
        assert_eq!(m.read(0xa0), 0);
    }
}
