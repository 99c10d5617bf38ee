//! An 8254 programmable interval timer, channel 0 only, driven by host time.
//!
//! The guest programs a reload value; the recorder polls [`Pit::due`] and raises IRQ0
//! for each period that elapsed. Reads of the counter return a value computed from host
//! time, which the recorder records like every port input. Ports, by offset: 0 channel
//! 0's counter, 3 the mode/command register (1 and 2, channels 1 and 2, do nothing).

use super::{Device, Io};
use std::time::{Duration, Instant};

/// Ports: the three counters and the command register.
pub const PORTS: u16 = 4;

/// The 8254 input clock.
pub const PIT_HZ: u64 = 1_193_182;

#[derive(Debug, Clone)]
pub struct Pit {
    reload: u32,
    mode: u8,
    access: u8,
    /// Low byte written, high byte expected next (lobyte/hibyte access).
    low_pending: Option<u8>,
    latched: Option<u16>,
    read_high_next: bool,
    /// When channel 0 was last started and when it fires next.
    started: Option<Instant>,
    next: Option<Instant>,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    pub fn new() -> Self {
        Pit {
            reload: 0x1_0000,
            mode: 0,
            access: 3,
            low_pending: None,
            latched: None,
            read_high_next: false,
            started: None,
            next: None,
        }
    }

    /// The period of channel 0, once the guest programmed it.
    pub fn period(&self) -> Option<Duration> {
        self.started?;
        Some(Duration::from_nanos(
            self.reload as u64 * 1_000_000_000 / PIT_HZ,
        ))
    }

    /// The instant the next tick is due, if the timer runs.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Number of ticks due at `now` (at most one is reported per call: ticks that the
    /// guest could not take in time are coalesced, as a real PIC would lose them).
    pub fn due(&mut self, now: Instant) -> bool {
        let (Some(next), Some(period)) = (self.next, self.period()) else {
            return false;
        };
        if now < next {
            return false;
        }
        let mut n = next + period;
        if n <= now {
            n = now + period;
        }
        // One-shot modes fire once.
        self.next = if self.mode == 0 || self.mode == 1 {
            None
        } else {
            Some(n)
        };
        true
    }

    /// A write to the register at `offset` (0-3).
    pub fn write(&mut self, offset: u16, value: u8, now: Instant) {
        match offset & 3 {
            3 => {
                let channel = value >> 6;
                let access = (value >> 4) & 3;
                if channel != 0 {
                    return;
                }
                if access == 0 {
                    self.latched = Some(self.current_count(now));
                    self.read_high_next = false;
                    return;
                }
                self.access = access;
                self.mode = (value >> 1) & 7;
                self.low_pending = None;
            }
            0 => match self.access {
                1 => self.load(value as u16, now),
                2 => self.load((value as u16) << 8, now),
                _ => match self.low_pending.take() {
                    None => self.low_pending = Some(value),
                    Some(low) => self.load(low as u16 | (value as u16) << 8, now),
                },
            },
            _ => {}
        }
    }

    /// A read of the register at `offset` (0-3).
    pub fn read(&mut self, offset: u16, now: Instant) -> u8 {
        if offset & 3 != 0 {
            return 0;
        }
        let count = self.latched.unwrap_or_else(|| self.current_count(now));
        let byte = match self.access {
            1 => count as u8,
            2 => (count >> 8) as u8,
            _ => {
                let high = self.read_high_next;
                self.read_high_next = !high;
                if high {
                    self.latched = None;
                    (count >> 8) as u8
                } else {
                    count as u8
                }
            }
        };
        if self.access != 3 {
            self.latched = None;
        }
        byte
    }

    fn load(&mut self, value: u16, now: Instant) {
        self.reload = if value == 0 { 0x1_0000 } else { value as u32 };
        self.started = Some(now);
        self.next = self.period().map(|p| now + p);
    }

    fn current_count(&self, now: Instant) -> u16 {
        let Some(start) = self.started else {
            return 0;
        };
        let ticks = (now - start).as_nanos() as u64 * PIT_HZ / 1_000_000_000;
        (self.reload as u64 - ticks % self.reload as u64) as u16
    }
}

impl Device for Pit {
    fn read(&mut self, offset: u64, data: &mut [u8], io: &mut Io<'_>) {
        if let Some(d) = data.first_mut() {
            *d = Pit::read(self, offset as u16, io.now);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8], io: &mut Io<'_>) {
        let value = data.first().copied().unwrap_or(0);
        Pit::write(self, offset as u16, value, io.now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hundred_hertz_programming_gives_ten_millisecond_ticks() {
        let t0 = Instant::now();
        let mut pit = Pit::new();
        assert!(!pit.due(t0 + Duration::from_secs(1)), "not programmed yet");
        let divisor = (PIT_HZ / 100) as u16;
        pit.write(3, 0x34, t0); // channel 0, lobyte/hibyte, mode 2
        pit.write(0, divisor as u8, t0);
        pit.write(0, (divisor >> 8) as u8, t0);
        let p = pit.period().unwrap();
        assert!(p > Duration::from_micros(9_990) && p < Duration::from_micros(10_010));
        assert!(!pit.due(t0 + Duration::from_millis(5)));
        assert!(pit.due(t0 + Duration::from_millis(11)));
        assert!(
            !pit.due(t0 + Duration::from_millis(12)),
            "one tick per period"
        );
        assert!(pit.due(t0 + Duration::from_millis(21)));
    }

    #[test]
    fn latched_count_reads_low_then_high() {
        let t0 = Instant::now();
        let mut pit = Pit::new();
        pit.write(3, 0x34, t0);
        pit.write(0, 0x00, t0);
        pit.write(0, 0x10, t0); // reload 0x1000
        pit.write(3, 0x00, t0); // latch at t0: full count
        let lo = pit.read(0, t0 + Duration::from_millis(1));
        let hi = pit.read(0, t0 + Duration::from_millis(1));
        assert_eq!((hi as u16) << 8 | lo as u16, 0x1000);
    }
}
