//! The CMOS real-time clock (MC146818) at ports 0x70 (index) and 0x71 (data), as Linux
//! reads it at boot (`mach_get_cmos_time`, `mc146818_get_time`): the time registers show
//! the host's UTC time, in BCD or binary and in 24- or 12-hour form as register B says;
//! register A's update-in-progress bit is set in the last 244 microseconds of every host
//! second, as on the chip; register D reports valid RAM. The rest of the 128 bytes is
//! plain CMOS RAM. Bit 7 of the index (NMI disable on a PC) is ignored.
//!
//! No interrupts: Linux does not enable them at boot (no RTC driver in its configuration
//! here), and nothing else uses them. Guest writes to the time registers are ignored (the
//! clock is the host's); the alarms, registers A and B and the RAM keep what is written.

use super::{Device, Io};
use std::time::{SystemTime, UNIX_EPOCH};

/// Ports: index, data.
pub const PORTS: u16 = 2;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
/// The century byte of the IBM PC's CMOS layout (BCD like the time).
const CENTURY: u8 = 0x32;

/// Register A: update in progress.
pub const REG_A_UIP: u8 = 0x80;
/// Register A at reset: 32.768 kHz time base, 1024 Hz periodic rate.
const REG_A_DEFAULT: u8 = 0x26;
/// Register B: binary (not BCD) data mode, 24-hour mode, updates inhibited.
pub const REG_B_BINARY: u8 = 0x04;
pub const REG_B_24H: u8 = 0x02;
/// Register D: the RAM and time are valid (the battery is good).
const REG_D_VALID: u8 = 0x80;
/// The update cycle takes this long before each second ticks over (UIP set).
const UPDATE_NS: u32 = 244_000;

#[derive(Debug, Clone)]
pub struct Rtc {
    index: u8,
    ram: [u8; 128],
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

/// A calendar time, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    /// 1 = Sunday, as the chip counts.
    pub weekday: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl DateTime {
    /// The calendar time `secs` seconds after 1970-01-01 00:00 UTC.
    pub fn from_unix(secs: u64) -> DateTime {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Days to civil date (proleptic Gregorian), from 0000-03-01-based eras.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + u64::from(month <= 2)) as u32;
        DateTime {
            year,
            month,
            day,
            // 1970-01-01 was a Thursday (5 counting Sunday as 1).
            weekday: ((days + 4) % 7 + 1) as u8,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

impl Rtc {
    pub fn new() -> Self {
        let mut ram = [0u8; 128];
        ram[REG_A as usize] = REG_A_DEFAULT;
        ram[REG_B as usize] = REG_B_24H;
        ram[REG_D as usize] = REG_D_VALID;
        Rtc { index: 0, ram }
    }

    /// Register `reg` at host time `now` (nanoseconds within the second for UIP).
    pub fn read_register(&mut self, reg: u8, now: SystemTime) -> u8 {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let b = self.ram[REG_B as usize];
        let encode = |v: u8| if b & REG_B_BINARY != 0 { v } else { to_bcd(v) };
        let t = DateTime::from_unix(since.as_secs());
        match reg {
            SECONDS => encode(t.second),
            MINUTES => encode(t.minute),
            HOURS if b & REG_B_24H != 0 => encode(t.hour),
            HOURS => {
                let pm = if t.hour >= 12 { 0x80 } else { 0 };
                let h12 = match t.hour % 12 {
                    0 => 12,
                    h => h,
                };
                encode(h12) | pm
            }
            WEEKDAY => encode(t.weekday),
            DAY => encode(t.day),
            MONTH => encode(t.month),
            YEAR => encode((t.year % 100) as u8),
            CENTURY => encode((t.year / 100 % 100) as u8),
            REG_A => {
                let uip = if since.subsec_nanos() >= 1_000_000_000 - UPDATE_NS {
                    REG_A_UIP
                } else {
                    0
                };
                self.ram[REG_A as usize] & !REG_A_UIP | uip
            }
            // No interrupt is ever flagged; reading C clears it anyway.
            REG_C => 0,
            REG_D => REG_D_VALID,
            _ => self.ram[(reg & 0x7f) as usize],
        }
    }

    /// A write of register `reg`.
    pub fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY => {}
            REG_A => self.ram[REG_A as usize] = value & !REG_A_UIP,
            REG_C | REG_D => {}
            _ => self.ram[(reg & 0x7f) as usize] = value,
        }
    }
}

impl Device for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8], _io: &mut Io<'_>) {
        let Some(d) = data.first_mut() else {
            return;
        };
        *d = match offset {
            // The index register is write-only on a PC.
            0 => 0xff,
            _ => self.read_register(self.index, SystemTime::now()),
        };
    }

    fn write(&mut self, offset: u64, data: &[u8], _io: &mut Io<'_>) {
        let value = data.first().copied().unwrap_or(0);
        match offset {
            0 => self.index = value & 0x7f,
            _ => self.write_register(self.index, value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn unix_time_converts_to_the_calendar() {
        assert_eq!(
            DateTime::from_unix(0),
            DateTime {
                year: 1970,
                month: 1,
                day: 1,
                weekday: 5,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        // 2000-02-29 23:59:59, a Tuesday; 2026-12-03 06:50:07, a Thursday.
        let leap = DateTime::from_unix(951_868_799);
        assert_eq!(
            (leap.year, leap.month, leap.day, leap.weekday),
            (2000, 2, 29, 3)
        );
        assert_eq!((leap.hour, leap.minute, leap.second), (23, 59, 59));
        let t = DateTime::from_unix(1_796_280_607);
        assert_eq!(
            (
                t.year, t.month, t.day, t.weekday, t.hour, t.minute, t.second
            ),
            (2026, 12, 3, 5, 6, 50, 7)
        );
    }

    #[test]
    fn time_registers_follow_register_b_and_uip_the_second() {
        let mut rtc = Rtc::new();
        // 2026-12-03 18:05:09 UTC, 0.5 s into the second.
        let secs = 1_796_256_000 + 18 * 3600 + 5 * 60 + 9;
        let t = UNIX_EPOCH + Duration::new(secs, 500_000_000);
        let dt = DateTime::from_unix(secs);
        assert_eq!((dt.day, dt.hour, dt.minute, dt.second), (3, 18, 5, 9));
        // Default: BCD, 24 hours.
        let regs = |rtc: &mut Rtc| {
            [SECONDS, MINUTES, HOURS, DAY, MONTH, YEAR, CENTURY].map(|r| rtc.read_register(r, t))
        };
        assert_eq!(regs(&mut rtc), [0x09, 0x05, 0x18, 0x03, 0x12, 0x26, 0x20]);
        rtc.write_register(REG_B, REG_B_BINARY | REG_B_24H);
        assert_eq!(regs(&mut rtc), [9, 5, 18, 3, 12, 26, 20]);
        // 12-hour BCD: 6 PM.
        rtc.write_register(REG_B, 0);
        assert_eq!(rtc.read_register(HOURS, t), 0x80 | 0x06);
        // UIP only in the last 244 us of the second.
        assert_eq!(rtc.read_register(REG_A, t), REG_A_DEFAULT);
        let late = t + Duration::from_nanos(499_900_000);
        assert_eq!(rtc.read_register(REG_A, late), REG_A_DEFAULT | REG_A_UIP);
        assert_eq!(rtc.read_register(REG_D, t), REG_D_VALID);
        assert_eq!(rtc.read_register(REG_C, t), 0);
    }

    #[test]
    fn the_index_port_selects_ram_and_ignores_the_nmi_bit() {
        let mut rtc = Rtc::new();
        let mut effects = Vec::new();
        let memory = crate::devices::test_memory::NoMemory;
        let mut io = Io::new(std::time::Instant::now(), &memory, &mut effects);
        Device::write(&mut rtc, 0, &[0x80 | 0x40], &mut io);
        Device::write(&mut rtc, 1, &[0xa5], &mut io);
        Device::write(&mut rtc, 0, &[0x40], &mut io);
        let mut d = [0];
        Device::read(&mut rtc, 1, &mut d, &mut io);
        assert_eq!(d, [0xa5]);
        // The time registers ignore writes; register D stays valid.
        Device::write(&mut rtc, 0, &[0x8d], &mut io);
        Device::write(&mut rtc, 1, &[0], &mut io);
        Device::read(&mut rtc, 1, &mut d, &mut io);
        assert_eq!(d, [REG_D_VALID]);
        assert!(effects.is_empty());
    }
}
