//! The recorder's devices, all emulated in user space so that the recorder sees, and
//! records, every value the guest reads and decides the moment of every interrupt.
//!
//! Every device implements [`Device`]: it sees reads and writes at offsets from the
//! start of the range it is registered at, and asks the machine for anything beyond its
//! own state (a console byte, a DMA write into guest memory, an interrupt, power-off)
//! through [`Io`]. [`Devices::new`] registers every device of the machine on its port
//! bus or its MMIO bus ([`bus::Bus`]), by range; the recorder's exit handlers look the
//! device up there. To add a device (a second UART, a virtio-mmio console), implement
//! [`Device`] and register it in [`Devices::new`].
//!
//! * [`serial`]: the 16550 UART of the console (COM1), interrupting on IRQ4.
//! * [`pic`]: the two cascaded 8259A interrupt controllers.
//! * [`pit`]: the 8254 timer (channel 0 drives IRQ0) and port 0x61 (channel 2's gate and
//!   output).
//! * [`rtc`]: the CMOS real-time clock and its RAM.
//! * [`fw_cfg`]: QEMU's fw_cfg with DMA, the machine's block device.
//! * [`control`]: the power-off port and the agent's doorbell.

pub mod bus;
pub mod control;
pub mod fw_cfg;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod serial;

use crate::image::DiskImage;
use bus::{Bus, BusError, BusRange, SharedDevice, lock};
use krr_engine::machine::{
    PORT_COM1, PORT_DOORBELL, PORT_FW_CFG, PORT_PIC_MASTER, PORT_PIC_SLAVE, PORT_PIT,
    PORT_POWEROFF, PORT_RTC, PORT_SYSTEM_CONTROL_B,
};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A device on a [`Bus`]. Offsets are from the start of the range the device is
/// registered at; a device never sees an absolute port or address.
pub trait Device: Send {
    /// A read of `data.len()` bytes at `offset`; `data` arrives zeroed. By default there
    /// is nothing to read: all ones, as from an absent device.
    fn read(&mut self, offset: u64, data: &mut [u8], io: &mut Io<'_>) {
        let _ = (offset, io);
        data.fill(0xff);
    }

    /// A write of `data` at `offset`. Ignored by default.
    fn write(&mut self, offset: u64, data: &[u8], io: &mut Io<'_>) {
        let _ = (offset, data, io);
    }
}

/// Guest memory as a device sees it (for DMA).
pub trait DmaMemory {
    /// Reads guest memory; false if the range is not RAM.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool;
    /// Whether `[gpa, gpa + len)` is RAM the device may write.
    fn writable(&self, gpa: u64, len: u64) -> bool;
}

/// A write a device performs into guest memory; the recorder applies and records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaWrite {
    pub gpa: u64,
    pub data: Vec<u8>,
}

/// The agent's doorbell as rung.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doorbell {
    /// A 4-byte write of this code.
    Code(u32),
    /// A write of another size (a protocol error).
    BadSize(usize),
}

/// What an access asks of the machine, beyond the device's own state. The recorder
/// carries these out in order once the access returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A byte the console transmitted.
    Console(u8),
    /// Guest memory the device writes (DMA): applied, and recorded as an event.
    MemoryWrite(DmaWrite),
    /// An edge on interrupt line `irq` (0-15) of the interrupt controller.
    Irq(u8),
    /// The guest asked the machine to power off.
    PowerOff,
    /// The guest agent rang its doorbell.
    Doorbell(Doorbell),
}

/// What a device sees of the machine during one access, and what it asks of it.
pub struct Io<'a> {
    /// Host time of the access (the timer counts from it).
    pub now: Instant,
    /// Guest memory, for DMA.
    pub memory: &'a dyn DmaMemory,
    effects: &'a mut Vec<Effect>,
}

impl<'a> Io<'a> {
    /// An access at `now`, whose effects go to `effects`.
    pub fn new(now: Instant, memory: &'a dyn DmaMemory, effects: &'a mut Vec<Effect>) -> Self {
        Io {
            now,
            memory,
            effects,
        }
    }

    /// Asks the machine for `effect` once the access returns.
    pub fn request(&mut self, effect: Effect) {
        self.effects.push(effect);
    }
}

/// `device`, as a bus holds it.
fn shared(device: impl Device + 'static) -> SharedDevice {
    Arc::new(Mutex::new(device))
}

/// Standard PC interrupt line of the PIT.
pub const IRQ_TIMER: u8 = 0;

/// The machine's devices: the port bus and the MMIO bus with every device registered on
/// them, and typed handles to the two the recorder also drives between accesses (the
/// interrupt controller and the timer).
pub struct Devices {
    ports: Bus,
    mmio: Bus,
    pic: pic::Pic,
    pit: Arc<Mutex<pit::Pit>>,
}

impl Devices {
    /// The recording machine (ports as in `krr_engine::machine`, which replay shares):
    /// COM1, the PIC pair, the PIT and port 0x61, the RTC, fw_cfg exposing `disk` as the
    /// file `opt/krr/disk`, the power-off port and the agent's doorbell. Nothing is mapped for MMIO yet:
    /// reads there return all ones.
    pub fn new(disk: Option<DiskImage>) -> Result<Devices, BusError> {
        let pic = pic::Pic::new();
        let pit = Arc::new(Mutex::new(pit::Pit::new()));
        let files = disk
            .map(|d| vec![(crate::agent_ring::DISK_FW_CFG_NAME.to_string(), d)])
            .unwrap_or_default();
        // Every device of the machine, by port range.
        let port_devices: [(u16, u16, &'static str, SharedDevice); 9] = [
            (
                PORT_COM1,
                serial::PORTS,
                "COM1 (16550 UART)",
                shared(serial::Serial::new()),
            ),
            (
                PORT_PIC_MASTER,
                pic::PORTS,
                "master 8259A PIC",
                pic.master(),
            ),
            (PORT_PIC_SLAVE, pic::PORTS, "slave 8259A PIC", pic.slave()),
            (PORT_PIT, pit::PORTS, "8254 PIT", pit.clone()),
            (
                PORT_SYSTEM_CONTROL_B,
                1,
                "system control port B",
                shared(pit::PortB(pit.clone())),
            ),
            (PORT_RTC, rtc::PORTS, "CMOS RTC", shared(rtc::Rtc::new())),
            (
                PORT_FW_CFG,
                fw_cfg::PORTS,
                "fw_cfg",
                shared(fw_cfg::FwCfg::new(files)),
            ),
            (
                PORT_POWEROFF,
                1,
                "power-off port",
                shared(control::PowerOff),
            ),
            (
                PORT_DOORBELL,
                1,
                "agent doorbell",
                shared(control::AgentDoorbell),
            ),
        ];
        let mut ports = Bus::new();
        for (port, len, name, device) in port_devices {
            ports.insert(BusRange::ports(port, len), name, device)?;
        }
        let mmio = Bus::new();
        Ok(Devices {
            ports,
            mmio,
            pic,
            pit,
        })
    }

    /// The port bus.
    pub fn ports(&self) -> &Bus {
        &self.ports
    }

    /// The MMIO bus.
    pub fn mmio(&self) -> &Bus {
        &self.mmio
    }

    /// An `in` from `port` into `data`: all ones where no device is.
    pub fn port_in(&self, port: u16, data: &mut [u8], io: &mut Io<'_>) {
        if !self.ports.read(port.into(), data, io) {
            data.fill(0xff);
        }
    }

    /// An `out` of `data` to `port`: ignored where no device is.
    pub fn port_out(&self, port: u16, data: &[u8], io: &mut Io<'_>) {
        self.ports.write(port.into(), data, io);
    }

    /// A read at guest-physical `gpa` outside RAM: all ones where no device is.
    pub fn mmio_read(&self, gpa: u64, data: &mut [u8], io: &mut Io<'_>) {
        if !self.mmio.read(gpa, data, io) {
            data.fill(0xff);
        }
    }

    /// A write at guest-physical `gpa` outside RAM: ignored where no device is.
    pub fn mmio_write(&self, gpa: u64, data: &[u8], io: &mut Io<'_>) {
        self.mmio.write(gpa, data, io);
    }

    /// The interrupt controller.
    pub fn pic(&self) -> &pic::Pic {
        &self.pic
    }

    /// Whether a timer period elapsed at `now` (see [`pit::Pit::due`]).
    pub fn timer_due(&self, now: Instant) -> bool {
        lock(&self.pit).due(now)
    }

    /// When the timer fires next, if it runs.
    pub fn timer_deadline(&self) -> Option<Instant> {
        lock(&self.pit).next_deadline()
    }
}

/// Guest memories for the devices' tests.
#[cfg(test)]
pub(crate) mod test_memory {
    use super::DmaMemory;
    use std::cell::RefCell;

    /// Guest memory that is all RAM, as large as its bytes.
    pub struct Ram(pub RefCell<Vec<u8>>);

    impl Ram {
        pub fn new(size: usize) -> Ram {
            Ram(RefCell::new(vec![0; size]))
        }
    }

    impl DmaMemory for Ram {
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

    /// No guest memory at all.
    pub struct NoMemory;

    impl DmaMemory for NoMemory {
        fn read(&self, _gpa: u64, _buf: &mut [u8]) -> bool {
            false
        }
        fn writable(&self, _gpa: u64, _len: u64) -> bool {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_memory::Ram;
    use super::*;

    fn port_in(d: &Devices, port: u16, len: usize) -> (Vec<u8>, Vec<Effect>) {
        let mut effects = Vec::new();
        let ram = Ram::new(0x10000);
        let mut data = vec![0xaa; len];
        d.port_in(
            port,
            &mut data,
            &mut Io::new(Instant::now(), &ram, &mut effects),
        );
        (data, effects)
    }

    fn port_out(d: &Devices, port: u16, data: &[u8]) -> Vec<Effect> {
        let mut effects = Vec::new();
        let ram = Ram::new(0x10000);
        d.port_out(port, data, &mut Io::new(Instant::now(), &ram, &mut effects));
        effects
    }

    #[test]
    fn the_machine_registers_every_device_on_the_ports_replay_knows() {
        let d = Devices::new(Some(DiskImage::from(vec![1, 2, 3]))).unwrap();
        let map: Vec<(String, &str)> = d
            .ports()
            .ranges()
            .map(|(r, name)| (r.to_string(), name))
            .collect();
        assert_eq!(
            map,
            [
                ("0x20..0x22".to_string(), "master 8259A PIC"),
                ("0x40..0x44".to_string(), "8254 PIT"),
                ("0x61..0x62".to_string(), "system control port B"),
                ("0x70..0x72".to_string(), "CMOS RTC"),
                ("0xa0..0xa2".to_string(), "slave 8259A PIC"),
                ("0xf4..0xf5".to_string(), "power-off port"),
                ("0x3f8..0x400".to_string(), "COM1 (16550 UART)"),
                ("0x510..0x51c".to_string(), "fw_cfg"),
                ("0x520..0x521".to_string(), "agent doorbell"),
            ]
        );
        assert_eq!(d.mmio().ranges().count(), 0);
    }

    #[test]
    fn accesses_reach_their_device_and_absent_ones_read_all_ones() {
        let d = Devices::new(None).unwrap();
        // Nothing at 0x80, nor for MMIO: all ones, whatever the size; writes vanish.
        assert_eq!(port_in(&d, 0x80, 4).0, [0xff; 4]);
        assert!(port_out(&d, 0x80, &[1]).is_empty());
        let mut effects = Vec::new();
        let ram = Ram::new(16);
        let mut data = [0u8; 8];
        d.mmio_read(
            0xfee0_0000,
            &mut data,
            &mut Io::new(Instant::now(), &ram, &mut effects),
        );
        assert_eq!(data, [0xff; 8]);
        // The UART at offset 0 transmits; its line status (offset 5) says it is idle.
        assert_eq!(port_out(&d, PORT_COM1, b"A"), [Effect::Console(b'A')]);
        assert_eq!(port_in(&d, PORT_COM1 + 5, 1).0, [0x60]);
        // A 2-byte read of a byte register: the byte, zero-extended.
        assert_eq!(port_in(&d, PORT_COM1 + 5, 2).0, [0x60, 0]);
        // fw_cfg: select the signature, read it from the data port; the selector port
        // itself reads as all ones.
        assert!(port_out(&d, PORT_FW_CFG, &0u16.to_le_bytes()).is_empty());
        let sig: Vec<u8> = (0..4)
            .map(|_| port_in(&d, PORT_FW_CFG + 1, 1).0[0])
            .collect();
        assert_eq!(sig, b"QEMU");
        assert_eq!(port_in(&d, PORT_FW_CFG, 1).0, [0xff]);
        // The control ports.
        assert_eq!(port_out(&d, PORT_POWEROFF, &[0]), [Effect::PowerOff]);
        assert_eq!(
            port_out(&d, PORT_DOORBELL, &2u32.to_le_bytes()),
            [Effect::Doorbell(Doorbell::Code(2))]
        );
        assert_eq!(
            port_out(&d, PORT_DOORBELL, &[1, 0]),
            [Effect::Doorbell(Doorbell::BadSize(2))]
        );
        assert_eq!(port_in(&d, PORT_DOORBELL, 4).0, [0xff; 4]);
        assert!(port_out(&d, PORT_DOORBELL + 1, &[0xff]).is_empty());
        // The PIT's counter, once programmed; the PIC raises the timer line.
        assert!(port_out(&d, PORT_PIT + 3, &[0x34]).is_empty());
        port_out(&d, PORT_PIT, &[0x00]);
        port_out(&d, PORT_PIT, &[0x10]);
        assert!(d.timer_deadline().is_some());
        for (port, v) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x01),
            (0x21, 0),
        ] {
            port_out(&d, port, &[v]);
        }
        d.pic().raise(IRQ_TIMER);
        assert_eq!(d.pic().pending_vector(), Some(0x20));
        // Port 0x61 keeps channel 2's gate; the RTC's register D says its RAM is valid.
        assert!(port_out(&d, PORT_SYSTEM_CONTROL_B, &[0x01]).is_empty());
        assert_eq!(port_in(&d, PORT_SYSTEM_CONTROL_B, 1).0[0] & 0x0f, 0x01);
        port_out(&d, PORT_RTC, &[0x8d]);
        assert_eq!(port_in(&d, PORT_RTC + 1, 1).0, [0x80]);
        // The UART's THRE interrupt reaches the PIC as IRQ4 with OUT2 set.
        port_out(&d, PORT_COM1 + 4, &[0x08]);
        assert_eq!(port_out(&d, PORT_COM1 + 1, &[0x02]), [Effect::Irq(4)]);
    }
}
