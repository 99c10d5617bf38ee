//! An 8254 programmable interval timer driven by host time, and port 0x61 (the PC's
//! "system control port B", [`PortB`]) that gates its channel 2 and shows that channel's
//! output.
//!
//! * Channel 0 drives IRQ0: the recorder polls [`Pit::due`] and raises IRQ0 for each
//!   period that elapsed.
//! * Channel 2 counts while port 0x61 bit 0 (its gate) is set; bit 5 of port 0x61 reads
//!   its output. Linux calibrates the TSC against it (`quick_pit_calibrate`,
//!   `pit_calibrate_tsc`: mode 0, the gate, polling bit 5 or the counter's MSB).
//! * Channel 1 (DRAM refresh on old PCs) counts like the others and is connected to
//!   nothing.
//!
//! Counters are computed from host time, and every value the guest reads is recorded like
//! every port input. Modes 0-5, binary counting (the BCD bit is kept, not used), latch
//! and read-back commands, LSB/MSB/both access. Ports, by offset: 0-2 the counters, 3
//! the mode/command register.

use super::bus::lock;
use super::{Device, Io};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Ports: the three counters and the command register.
pub const PORTS: u16 = 4;

/// The 8254 input clock.
pub const PIT_HZ: u64 = 1_193_182;

/// Port 0x61 bits: channel 2's gate, the speaker enable (both written by the guest),
/// the refresh toggle and channel 2's output (read only).
pub const PORT_B_GATE2: u8 = 0x01;
pub const PORT_B_SPEAKER: u8 = 0x02;
pub const PORT_B_REFRESH: u8 = 0x10;
pub const PORT_B_OUT2: u8 = 0x20;
/// The bits port 0x61 keeps as written (gate, speaker, parity and channel-check enables).
const PORT_B_WRITABLE: u8 = 0x0f;
/// The refresh toggle flips every 15.085 microseconds on a PC.
const REFRESH_PERIOD_NS: u128 = 15_085;

/// One counter.
#[derive(Debug, Clone)]
struct Channel {
    /// The count the counter starts from (1-0x10000; a written 0 means 0x10000).
    reload: u32,
    mode: u8,
    /// 1: LSB only, 2: MSB only, 3: LSB then MSB.
    access: u8,
    bcd: bool,
    /// Low byte written, high byte expected next (LSB/MSB access).
    low_pending: Option<u8>,
    latched: Option<u16>,
    status_latched: Option<u8>,
    read_high_next: bool,
    gate: bool,
    /// A count was written since the mode was set.
    loaded: bool,
    /// Input clock ticks counted before `since`.
    counted: u64,
    /// Counting since then (None while not counting: not loaded, gate low in modes
    /// 0 and 4, or not triggered in modes 1 and 5).
    since: Option<Instant>,
}

impl Channel {
    fn new(gate: bool) -> Self {
        Channel {
            reload: 0x1_0000,
            mode: 0,
            access: 3,
            bcd: false,
            low_pending: None,
            latched: None,
            status_latched: None,
            read_high_next: false,
            gate,
            loaded: false,
            counted: 0,
            since: None,
        }
    }

    /// Input clock ticks counted since the counter was loaded (or triggered).
    fn ticks(&self, now: Instant) -> u64 {
        let running = self.since.map_or(0, |s| {
            u64::try_from(
                now.saturating_duration_since(s).as_nanos() * PIT_HZ as u128 / 1_000_000_000,
            )
            .unwrap_or(u64::MAX)
        });
        self.counted.saturating_add(running)
    }

    fn triggered_by_gate(&self) -> bool {
        matches!(self.mode, 1 | 5)
    }

    /// The counting element's value now.
    fn count(&self, now: Instant) -> u16 {
        if !self.loaded {
            return 0;
        }
        let reload = self.reload as u64;
        let ticks = self.ticks(now);
        match self.mode {
            // Down to 0, then on, wrapping through 0xffff.
            0 | 1 | 4 | 5 => (reload.wrapping_sub(ticks) & 0xffff) as u16,
            // reload .. 1, again and again.
            2 => (reload - ticks % reload) as u16,
            // Twice as fast, from an even reload.
            _ => {
                let even = reload & !1;
                (even - (2 * ticks) % even.max(2)) as u16
            }
        }
    }

    /// The output pin now.
    fn out(&self, now: Instant) -> bool {
        if !self.loaded {
            // Mode 0 sets the output low on the mode write; the others high.
            return self.mode != 0;
        }
        let reload = self.reload as u64;
        let ticks = self.ticks(now);
        match self.mode {
            0 => ticks >= reload,
            1 => self.since.is_none() || ticks >= reload,
            2 => !self.gate || ticks % reload != reload - 1,
            4 | 5 => ticks != reload,
            _ => !self.gate || ticks % reload < reload.div_ceil(2),
        }
    }

    fn status(&self, now: Instant) -> u8 {
        u8::from(self.out(now)) << 7
            | u8::from(!self.loaded) << 6
            | self.access << 4
            | self.mode << 1
            | u8::from(self.bcd)
    }

    fn set_mode(&mut self, access: u8, mode: u8, bcd: bool) {
        self.access = access;
        // Modes 6 and 7 are 2 and 3.
        self.mode = if mode >= 6 { mode - 4 } else { mode };
        self.bcd = bcd;
        self.low_pending = None;
        self.latched = None;
        self.read_high_next = false;
        self.loaded = false;
        self.counted = 0;
        self.since = None;
    }

    fn latch(&mut self, now: Instant) {
        // A second latch before the first is read is ignored.
        if self.latched.is_none() {
            self.latched = Some(self.count(now));
            self.read_high_next = false;
        }
    }

    fn write(&mut self, value: u8, now: Instant) {
        match self.access {
            1 => self.load(value as u16, now),
            2 => self.load((value as u16) << 8, now),
            _ => match self.low_pending.take() {
                None => self.low_pending = Some(value),
                Some(low) => self.load(low as u16 | (value as u16) << 8, now),
            },
        }
    }

    fn load(&mut self, value: u16, now: Instant) {
        self.reload = if value == 0 { 0x1_0000 } else { value as u32 };
        self.loaded = true;
        self.counted = 0;
        // Gate-triggered modes wait for a rising gate; the others count while it is high
        // (modes 2 and 3 reload on its rising edge too, below).
        self.since = (self.gate && !self.triggered_by_gate()).then_some(now);
    }

    fn set_gate(&mut self, gate: bool, now: Instant) {
        let rising = gate && !self.gate;
        self.gate = gate;
        if !self.loaded {
            return;
        }
        match self.mode {
            0 | 4 => {
                if gate && self.since.is_none() {
                    self.since = Some(now);
                } else if !gate && let Some(s) = self.since.take() {
                    let ran = now.saturating_duration_since(s).as_nanos() * PIT_HZ as u128
                        / 1_000_000_000;
                    self.counted = self
                        .counted
                        .saturating_add(u64::try_from(ran).unwrap_or(u64::MAX));
                }
            }
            // A rising gate (re)starts the count; in modes 2 and 3 a low gate stops it.
            _ if rising => {
                self.counted = 0;
                self.since = Some(now);
            }
            2 | 3 if !gate => {
                self.counted = 0;
                self.since = None;
            }
            _ => {}
        }
    }

    fn read(&mut self, now: Instant) -> u8 {
        if let Some(status) = self.status_latched.take() {
            return status;
        }
        let count = self.latched.unwrap_or_else(|| self.count(now));
        match self.access {
            1 => {
                self.latched = None;
                count as u8
            }
            2 => {
                self.latched = None;
                (count >> 8) as u8
            }
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
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pit {
    channels: [Channel; 3],
    /// Port 0x61's writable bits (bit 0 is channel 2's gate).
    port_b: u8,
    /// The refresh toggle's reference.
    epoch: Instant,
    /// When channel 0 fires next, if it runs.
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
            // Channels 0 and 1 have their gates tied high on a PC; channel 2's is port
            // 0x61 bit 0.
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            port_b: 0,
            epoch: Instant::now(),
            next: None,
        }
    }

    /// The period of channel 0, once the guest programmed it.
    pub fn period(&self) -> Option<Duration> {
        let c = &self.channels[0];
        c.loaded
            .then(|| Duration::from_nanos(c.reload as u64 * 1_000_000_000 / PIT_HZ))
    }

    /// The instant the next tick is due, if the timer runs.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Whether channel 0 fired by `now` (at most one tick is reported per call: ticks
    /// that the guest could not take in time are coalesced, as a real PIC would lose
    /// them).
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
        // The one-shot modes fire once.
        self.next = if matches!(self.channels[0].mode, 0 | 1 | 4 | 5) {
            None
        } else {
            Some(n)
        };
        true
    }

    /// A write to the register at `offset` (0-3).
    pub fn write(&mut self, offset: u16, value: u8, now: Instant) {
        match offset & 3 {
            3 => self.command(value, now),
            n => {
                let c = &mut self.channels[n as usize];
                c.write(value, now);
                if n == 0 && c.low_pending.is_none() && c.loaded {
                    self.next = self.period().map(|p| now + p);
                }
            }
        }
    }

    fn command(&mut self, value: u8, now: Instant) {
        let select = value >> 6;
        let access = (value >> 4) & 3;
        if select == 3 {
            // Read-back: bits 1-3 select the channels; bit 5 clear latches their counts,
            // bit 4 clear their status.
            for (n, c) in self.channels.iter_mut().enumerate() {
                if value & (2 << n) == 0 {
                    continue;
                }
                if value & 0x20 == 0 {
                    c.latch(now);
                }
                if value & 0x10 == 0 && c.status_latched.is_none() {
                    c.status_latched = Some(c.status(now));
                }
            }
            return;
        }
        let c = &mut self.channels[select as usize];
        if access == 0 {
            c.latch(now);
            return;
        }
        c.set_mode(access, (value >> 1) & 7, value & 1 != 0);
        if select == 0 {
            self.next = None;
        }
    }

    /// A read of the register at `offset` (0-3); the command register reads as 0.
    pub fn read(&mut self, offset: u16, now: Instant) -> u8 {
        match offset & 3 {
            3 => 0,
            n => self.channels[n as usize].read(now),
        }
    }

    /// A read of port 0x61.
    pub fn read_port_b(&self, now: Instant) -> u8 {
        let mut v = self.port_b;
        let refresh = now.saturating_duration_since(self.epoch).as_nanos() / REFRESH_PERIOD_NS;
        if refresh & 1 != 0 {
            v |= PORT_B_REFRESH;
        }
        if self.channels[2].out(now) {
            v |= PORT_B_OUT2;
        }
        v
    }

    /// A write of port 0x61: bit 0 gates channel 2.
    pub fn write_port_b(&mut self, value: u8, now: Instant) {
        self.port_b = value & PORT_B_WRITABLE;
        self.channels[2].set_gate(value & PORT_B_GATE2 != 0, now);
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

/// Port 0x61 (one port): the timer's channel 2 gate and output, the speaker enable and
/// the refresh toggle.
pub struct PortB(pub Arc<Mutex<Pit>>);

impl Device for PortB {
    fn read(&mut self, _offset: u64, data: &mut [u8], io: &mut Io<'_>) {
        if let Some(d) = data.first_mut() {
            *d = lock(&self.0).read_port_b(io.now);
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8], io: &mut Io<'_>) {
        let value = data.first().copied().unwrap_or(0);
        lock(&self.0).write_port_b(value, io.now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn read_count(pit: &mut Pit, channel: u16, now: Instant) -> u16 {
        pit.write(3, (channel as u8) << 6, now); // latch
        let lo = pit.read(channel, now);
        let hi = pit.read(channel, now);
        (hi as u16) << 8 | lo as u16
    }

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
        assert!(!pit.due(t0 + ms(5)));
        assert!(pit.due(t0 + ms(11)));
        assert!(!pit.due(t0 + ms(12)), "one tick per period");
        assert!(pit.due(t0 + ms(21)));
    }

    #[test]
    fn one_shot_modes_fire_once() {
        let t0 = Instant::now();
        for mode in [0u8, 4] {
            let mut pit = Pit::new();
            pit.write(3, 0x30 | mode << 1, t0);
            pit.write(0, 0x00, t0);
            pit.write(0, 0x10, t0);
            assert!(pit.due(t0 + ms(5)), "mode {mode}");
            assert!(!pit.due(t0 + ms(50)), "mode {mode}: once");
        }
    }

    #[test]
    fn latched_count_reads_low_then_high() {
        let t0 = Instant::now();
        let mut pit = Pit::new();
        pit.write(3, 0x34, t0);
        pit.write(0, 0x00, t0);
        pit.write(0, 0x10, t0); // reload 0x1000
        pit.write(3, 0x00, t0); // latch at t0: full count
        // A second latch before the read does not replace the first.
        pit.write(3, 0x00, t0 + ms(1));
        let lo = pit.read(0, t0 + ms(1));
        let hi = pit.read(0, t0 + ms(1));
        assert_eq!((hi as u16) << 8 | lo as u16, 0x1000);
        // 1 ms later the count moved on by about 1193 ticks.
        assert_eq!(read_count(&mut pit, 0, t0 + ms(1)), 0x1000 - 1193);
    }

    /// Linux's `pit_calibrate_tsc`: gate on, channel 2 in mode 0 with a 10 ms count, poll
    /// port 0x61 bit 5 until the output goes high.
    #[test]
    fn channel_2_mode_0_with_the_gate_sets_out2_at_terminal_count() {
        let t0 = Instant::now();
        let mut pit = Pit::new();
        let latch = (PIT_HZ / 100) as u16; // 10 ms
        pit.write_port_b((pit.read_port_b(t0) & !PORT_B_SPEAKER) | PORT_B_GATE2, t0);
        pit.write(3, 0xb0, t0); // channel 2, LSB/MSB, mode 0
        assert_eq!(pit.read_port_b(t0) & PORT_B_OUT2, 0, "mode 0: output low");
        pit.write(2, latch as u8, t0);
        pit.write(2, (latch >> 8) as u8, t0);
        assert_eq!(pit.read_port_b(t0 + ms(9)) & PORT_B_OUT2, 0);
        assert_eq!(pit.read_port_b(t0 + ms(11)) & PORT_B_OUT2, PORT_B_OUT2);
        assert_eq!(
            pit.read_port_b(t0) & (PORT_B_GATE2 | PORT_B_SPEAKER),
            PORT_B_GATE2
        );
        // Channel 0 does not fire for it.
        assert!(!pit.due(t0 + ms(20)));
    }

    /// Linux's `quick_pit_calibrate`: gate on, mode 0 with 0xffff, then the MSB alone
    /// (`inb(0x42)` twice, LSB then MSB) falls by one every 256 ticks.
    #[test]
    fn channel_2_counts_down_from_host_time_and_the_gate_pauses_mode_0() {
        let t0 = Instant::now();
        let mut pit = Pit::new();
        pit.write_port_b(PORT_B_GATE2, t0);
        pit.write(3, 0xb0, t0);
        pit.write(2, 0xff, t0);
        pit.write(2, 0xff, t0);
        let at = |n: u64| t0 + Duration::from_nanos(n * 1_000_000_000 / PIT_HZ + 1);
        assert_eq!(pit.read(2, at(0)), 0xff);
        assert_eq!(pit.read(2, at(0)), 0xff);
        let _ = pit.read(2, at(256));
        assert_eq!(pit.read(2, at(256)), 0xfe);
        let _ = pit.read(2, at(512 + 3));
        assert_eq!(pit.read(2, at(512 + 3)), 0xfd);
        // Gate low at 1000 ticks: the count stays there.
        pit.write_port_b(0, at(1000));
        let held = read_count(&mut pit, 2, at(5000));
        assert!((0xffff - 1001..=0xffff - 999).contains(&held), "{held:#x}");
        pit.write_port_b(PORT_B_GATE2, at(5000));
        let later = read_count(&mut pit, 2, at(6000));
        assert!(
            (0xffff - 2001..=0xffff - 1999).contains(&later),
            "{later:#x}"
        );
    }

    #[test]
    fn channel_2_mode_2_reloads_on_the_gate_and_read_back_latches_status() {
        let t0 = Instant::now();
        let mut pit = Pit::new();
        pit.write(3, 0x94, t0); // channel 2, LSB only, mode 2
        pit.write(2, 100, t0);
        // Gate low: not counting, output high.
        assert_eq!(pit.read(2, t0 + ms(5)), 100);
        assert_eq!(pit.read_port_b(t0 + ms(5)) & PORT_B_OUT2, PORT_B_OUT2);
        pit.write_port_b(PORT_B_GATE2, t0 + ms(5));
        let at = |n: u64| t0 + ms(5) + Duration::from_nanos(n * 1_000_000_000 / PIT_HZ + 1);
        assert_eq!(pit.read(2, at(30)), 70);
        assert_eq!(pit.read(2, at(130)), 70, "periodic");
        assert_eq!(pit.read_port_b(at(99)) & PORT_B_OUT2, 0, "low at count 1");
        // Read-back of channel 2's status and count (0xc0 | count and status | ch 2).
        pit.write(3, 0xc8, at(40));
        assert_eq!(
            pit.read(2, at(50)),
            0x80 | 0x10 | 2 << 1,
            "out high, LSB, mode 2"
        );
        assert_eq!(pit.read(2, at(50)), 60, "the count latched at 40 ticks");
    }

    #[test]
    fn port_b_keeps_its_low_bits_and_toggles_refresh() {
        let t0 = Instant::now();
        let mut pit = Pit::new();
        pit.write_port_b(0xff, t0);
        assert_eq!(pit.read_port_b(t0) & 0x0f, 0x0f);
        let toggles: std::collections::BTreeSet<u8> = (0..8)
            .map(|n| pit.read_port_b(t0 + Duration::from_micros(8 * n)) & PORT_B_REFRESH)
            .collect();
        assert_eq!(toggles.len(), 2, "the refresh bit toggles");
    }
}
