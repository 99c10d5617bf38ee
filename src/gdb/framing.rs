//! Checks the bytes gdb sends before gdbstub sees them: packets are framed and their
//! checksums verified here, so that a damaged packet is answered with a NACK, bytes
//! between packets are ignored, and an oversized packet ends the connection instead of
//! reaching gdbstub (which treats all of these as fatal).

use std::collections::VecDeque;

/// One unit of what gdb sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// `+` or `-`.
    Ack(u8),
    /// Ctrl-C (0x03) between packets.
    Interrupt,
    /// A complete packet with a valid checksum: `$body#xx`.
    Packet(Vec<u8>),
    /// A complete packet whose checksum does not match.
    BadChecksum,
}

/// The connection sent a packet larger than the stub accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Between,
    Body,
    Checksum1,
    Checksum2,
}

pub struct Framer {
    state: State,
    buf: Vec<u8>,
    max: usize,
}

impl Framer {
    /// `max` bounds a whole packet, `$` and checksum included.
    pub fn new(max: usize) -> Framer {
        Framer {
            state: State::Between,
            buf: Vec::new(),
            max,
        }
    }

    pub fn push(&mut self, byte: u8, out: &mut VecDeque<Unit>) -> Result<(), Oversized> {
        match self.state {
            State::Between => match byte {
                b'$' => {
                    self.buf.clear();
                    self.buf.push(byte);
                    self.state = State::Body;
                }
                b'+' | b'-' => out.push_back(Unit::Ack(byte)),
                0x03 => out.push_back(Unit::Interrupt),
                // Line noise between packets: ignored, as gdbserver does.
                _ => {}
            },
            State::Body => {
                if self.buf.len() + 3 > self.max {
                    self.state = State::Between;
                    self.buf.clear();
                    return Err(Oversized);
                }
                self.buf.push(byte);
                if byte == b'#' {
                    self.state = State::Checksum1;
                }
            }
            State::Checksum1 => {
                self.buf.push(byte);
                self.state = State::Checksum2;
            }
            State::Checksum2 => {
                self.buf.push(byte);
                self.state = State::Between;
                let packet = std::mem::take(&mut self.buf);
                out.push_back(if checksum_ok(&packet) {
                    Unit::Packet(packet)
                } else {
                    Unit::BadChecksum
                });
            }
        }
        Ok(())
    }
}

fn checksum_ok(packet: &[u8]) -> bool {
    // `$` body `#` hi lo
    let Some((&[hi, lo], rest)) = packet.split_last_chunk::<2>().map(|(r, c)| (c, r)) else {
        return false;
    };
    let Some(body) = rest.strip_prefix(b"$").and_then(|b| b.strip_suffix(b"#")) else {
        return false;
    };
    let want = match (hex_digit(hi), hex_digit(lo)) {
        (Some(h), Some(l)) => h << 4 | l,
        _ => return false,
    };
    body.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == want
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Encodes `body` as a packet.
pub fn packet(body: &[u8]) -> Vec<u8> {
    let sum = body.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    let mut p = Vec::with_capacity(body.len() + 4);
    p.push(b'$');
    p.extend_from_slice(body);
    p.extend_from_slice(format!("#{sum:02x}").as_bytes());
    p
}

/// For an `m addr,len` packet, whether the read is one the stub will serve: gdb never
/// asks for more than a packet's worth, and an address range must not wrap.
/// Returns `None` for packets that are not memory reads.
pub fn memory_read_ok(packet: &[u8], max_len: u64) -> Option<bool> {
    let body = packet.strip_prefix(b"$")?.split(|&b| b == b'#').next()?;
    let args = body.strip_prefix(b"m")?;
    let text = std::str::from_utf8(args).ok();
    let parsed = text.and_then(|t| {
        let (a, l) = t.split_once(',')?;
        Some((
            u64::from_str_radix(a, 16).ok()?,
            u64::from_str_radix(l, 16).ok()?,
        ))
    });
    Some(match parsed {
        Some((addr, len)) => len <= max_len && addr.checked_add(len).is_some(),
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8], max: usize) -> (Vec<Unit>, bool) {
        let mut f = Framer::new(max);
        let mut out = VecDeque::new();
        let mut over = false;
        for &b in bytes {
            if f.push(b, &mut out).is_err() {
                over = true;
            }
        }
        (out.into_iter().collect(), over)
    }

    #[test]
    fn frames_packets_acks_and_interrupts() {
        let mut input = b"+xx".to_vec();
        input.extend(packet(b"qSupported"));
        input.push(0x03);
        input.extend(b"$g#00");
        let (units, over) = frame(&input, 64);
        assert!(!over);
        assert_eq!(
            units,
            vec![
                Unit::Ack(b'+'),
                Unit::Packet(packet(b"qSupported")),
                Unit::Interrupt,
                Unit::BadChecksum
            ]
        );
    }

    #[test]
    fn oversized_packets_are_refused() {
        let mut input = vec![b'$'];
        input.extend(std::iter::repeat_n(b'a', 100));
        let (_, over) = frame(&input, 64);
        assert!(over);
    }

    #[test]
    fn memory_reads_are_bounded() {
        assert_eq!(memory_read_ok(&packet(b"mffff8000,40"), 4096), Some(true));
        assert_eq!(memory_read_ok(&packet(b"m0,ffffffff"), 4096), Some(false));
        assert_eq!(
            memory_read_ok(&packet(b"mffffffffffffffff,2"), 4096),
            Some(false)
        );
        assert_eq!(memory_read_ok(&packet(b"mzz,2"), 4096), Some(false));
        assert_eq!(memory_read_ok(&packet(b"g"), 4096), None);
    }
}
