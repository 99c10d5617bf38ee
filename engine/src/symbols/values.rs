//! Values of the guest's variables printed as gdb prints them (its default settings:
//! `print pretty off`, `print elements 200`, `print repeats 10`, `print symbol on`), so
//! the UI and gdb attached to the same position read the same text.

use super::Symbols;
use super::debuginfo::{BaseEncoding, DebugInfo, Place, Pointee, Type};
use std::fmt::Write as _;
use std::sync::Arc;

/// A value: its type and where it is.
#[derive(Debug, Clone)]
pub struct Value {
    pub ty: Arc<Type>,
    pub place: Place,
}

/// Why guest memory could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryFault {
    /// No page maps the address.
    Unmapped,
    /// The page is mapped but its contents were not recorded (user memory).
    NotRecorded,
}

/// Reads guest virtual memory.
pub type ReadMemory<'a> = &'a dyn Fn(u64, &mut [u8]) -> Result<(), MemoryFault>;

/// How numbers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Radix {
    /// As the type says (decimal integers, characters, symbols).
    #[default]
    Natural,
    /// `/x`: hexadecimal.
    Hex,
}

/// gdb's `print elements`: most elements of an array or characters of a string.
const PRINT_ELEMENTS: usize = 200;
/// gdb's `print repeats`: runs longer than this print as `<repeats N times>`.
const REPEAT_THRESHOLD: usize = 10;
/// Most bytes of one value read at once (a larger array prints its first elements).
const MAX_VALUE_BYTES: u64 = 1 << 20;
/// Most levels of nested structures printed.
const MAX_NESTING: usize = 32;

/// Prints values the way gdb does.
pub struct ValuePrinter<'a> {
    pub info: &'a DebugInfo,
    pub symbols: &'a Symbols,
    pub read: ReadMemory<'a>,
    pub radix: Radix,
}

/// The text gdb prints for unreadable memory.
pub fn memory_error(addr: u64, fault: MemoryFault) -> String {
    match fault {
        MemoryFault::Unmapped => format!("Cannot access memory at address {addr:#x}"),
        MemoryFault::NotRecorded => format!("memory at {addr:#x} was not recorded"),
    }
}

impl ValuePrinter<'_> {
    /// The value's bytes (`len` of them from its start); Err with the text to show.
    pub fn bytes(&self, v: &Value, len: u64) -> Result<Vec<u8>, String> {
        match &v.place {
            Place::OptimizedOut => Err("<optimized out>".into()),
            Place::Bytes(b) => {
                let mut b = b.clone();
                b.resize(usize::try_from(len.min(MAX_VALUE_BYTES)).unwrap_or(0), 0);
                Ok(b)
            }
            Place::Memory(a) => {
                let mut b = vec![0u8; usize::try_from(len.min(MAX_VALUE_BYTES)).unwrap_or(0)];
                (self.read)(*a, &mut b).map_err(|f| match f {
                    MemoryFault::NotRecorded => "<unavailable>".to_string(),
                    f => format!("<error: {}>", memory_error(*a, f)),
                })?;
                Ok(b)
            }
        }
    }

    /// What `print EXPR` shows after `$N = `: a pointer gets its type in front, but
    /// for a plain `char *` (whose string says what it is) and under `/x`.
    pub fn top(&self, v: &Value) -> String {
        let body = self.value(v, 0);
        if matches!(v.place, Place::OptimizedOut) || self.radix == Radix::Hex {
            return body;
        }
        let Type::Pointer(_) = v.ty.strip() else {
            return body;
        };
        let plain_char = match v.ty.as_ref() {
            Type::Pointer(p) => {
                let target = self.info.pointee(p);
                let target = match target.as_ref() {
                    Type::Qualified { target, .. } => target.clone(),
                    _ => target,
                };
                matches!(target.as_ref(), Type::Base { name, .. } if name == "char")
            }
            _ => false,
        };
        if plain_char {
            body
        } else {
            format!("({}) {body}", self.info.type_name(&v.ty))
        }
    }

    /// A value as it appears inside a structure, in `info locals` or a backtrace.
    pub fn value(&self, v: &Value, depth: usize) -> String {
        if depth > MAX_NESTING {
            return "...".into();
        }
        let ty = v.ty.strip();
        let size = ty.size();
        match ty {
            Type::Aggregate { fields, .. } => {
                let bytes = match self.bytes(v, size) {
                    Ok(b) => b,
                    Err(e) => return e,
                };
                self.aggregate(fields, &bytes, v, depth)
            }
            Type::Array { element, count } => {
                let count = count.unwrap_or(0);
                let elem_size = element.size();
                let shown = count.min(MAX_VALUE_BYTES / elem_size.max(1));
                let bytes = match self.bytes(v, elem_size.saturating_mul(shown)) {
                    Ok(b) => b,
                    Err(e) => return e,
                };
                self.array(element, &bytes, count, v, depth)
            }
            Type::Function { .. } => {
                let addr = match v.place {
                    Place::Memory(a) => a,
                    _ => 0,
                };
                format!(
                    "{{{}}} {}",
                    self.info.type_name(&v.ty),
                    self.address_with_symbol(addr)
                )
            }
            Type::Void => "void".into(),
            _ => match self.bytes(v, size) {
                Ok(b) => self.scalar(&v.ty, &b),
                Err(e) => e,
            },
        }
    }

    /// A scalar (integer, character, boolean, enum, pointer) from its bytes.
    pub fn scalar(&self, ty: &Type, bytes: &[u8]) -> String {
        let ty = ty.strip();
        let size = bytes.len().min(8);
        let mut raw = [0u8; 8];
        raw[..size].copy_from_slice(&bytes[..size]);
        let unsigned = u64::from_le_bytes(raw);
        let signed = sign_extend(unsigned, size);
        if self.radix == Radix::Hex {
            return format!("{unsigned:#x}");
        }
        match ty {
            Type::Base { encoding, .. } => match encoding {
                BaseEncoding::Bool => match unsigned {
                    0 => "false".into(),
                    1 => "true".into(),
                    n => n.to_string(),
                },
                BaseEncoding::Signed if size == 1 => char_literal(signed, bytes[0]),
                BaseEncoding::SignedChar => char_literal(signed, bytes[0]),
                BaseEncoding::UnsignedChar => char_literal(unsigned as i64, bytes[0]),
                BaseEncoding::Unsigned if size == 1 => char_literal(unsigned as i64, bytes[0]),
                BaseEncoding::Signed => signed.to_string(),
                BaseEncoding::Float => float_text(unsigned, size),
                BaseEncoding::Unsigned => unsigned.to_string(),
            },
            Type::Enum {
                values, signed: s, ..
            } => {
                let n = if *s { signed } else { unsigned as i64 };
                match values.iter().find(|(_, v)| *v == n) {
                    Some((name, _)) => name.clone(),
                    None => n.to_string(),
                }
            }
            Type::Pointer(p) => self.pointer(p, unsigned),
            _ => unsigned.to_string(),
        }
    }

    fn pointer(&self, p: &Pointee, addr: u64) -> String {
        let target = self.info.pointee(p);
        let mut out = self.address_with_symbol(addr);
        if addr != 0 && is_textual(&target) {
            out.push(' ');
            out.push_str(&self.c_string(addr));
        }
        out
    }

    /// `0x...` and, where a symbol covers it, ` <name+offset>` (decimal, as gdb).
    pub fn address_with_symbol(&self, addr: u64) -> String {
        match gdb_symbol(self.symbols, addr) {
            Some(s) => format!("{addr:#x} <{s}>"),
            None => format!("{addr:#x}"),
        }
    }

    /// The NUL-terminated string at `addr`, at most [`PRINT_ELEMENTS`] characters.
    fn c_string(&self, addr: u64) -> String {
        let mut chars = Vec::new();
        let mut terminated = false;
        while chars.len() < PRINT_ELEMENTS {
            let mut b = [0u8; 1];
            let a = addr.wrapping_add(chars.len() as u64);
            if let Err(f) = (self.read)(a, &mut b) {
                if chars.is_empty() {
                    return match f {
                        MemoryFault::NotRecorded => "<unavailable>".into(),
                        f => format!("<error: {}>", memory_error(a, f)),
                    };
                }
                break;
            }
            if b[0] == 0 {
                terminated = true;
                break;
            }
            chars.push(b[0]);
        }
        if chars.is_empty() {
            return "\"\"".into();
        }
        let mut s = string_segments(&chars);
        if !terminated {
            s.push_str("...");
        }
        s
    }

    fn aggregate(
        &self,
        fields: &[super::debuginfo::Field],
        bytes: &[u8],
        v: &Value,
        depth: usize,
    ) -> String {
        let mut out = String::from("{");
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            if let Some(n) = &f.name {
                let _ = write!(out, "{n} = ");
            }
            let fsize = f.ty.size();
            let start = usize::try_from(f.offset).unwrap_or(usize::MAX);
            let text = if let Some((bit, width)) = f.bits {
                let value = bit_field(bytes, f.offset, bit, width, is_signed(&f.ty));
                self.scalar(
                    &f.ty,
                    &value.to_le_bytes()[..usize::try_from(fsize.clamp(1, 8)).unwrap_or(8)],
                )
            } else {
                let place = match v.place {
                    Place::Memory(a) => Place::Memory(a.wrapping_add(f.offset)),
                    _ => {
                        let end = start.saturating_add(usize::try_from(fsize).unwrap_or(0));
                        Place::Bytes(
                            bytes
                                .get(start..end.min(bytes.len()))
                                .unwrap_or(&[])
                                .to_vec(),
                        )
                    }
                };
                let member = Value {
                    ty: f.ty.clone(),
                    place,
                };
                if matches!(f.ty.strip(), Type::Aggregate { .. } | Type::Array { .. }) {
                    self.value(&member, depth + 1)
                } else {
                    let end = start.saturating_add(usize::try_from(fsize).unwrap_or(0));
                    match bytes.get(start..end) {
                        Some(b) => self.scalar(&f.ty, b),
                        None => self.value(&member, depth + 1),
                    }
                }
            };
            out.push_str(&text);
        }
        out.push('}');
        out
    }

    fn array(
        &self,
        element: &Arc<Type>,
        bytes: &[u8],
        count: u64,
        v: &Value,
        depth: usize,
    ) -> String {
        let esize = usize::try_from(element.size()).unwrap_or(0);
        if esize == 0 {
            return "{}".into();
        }
        let n = bytes.len() / esize;
        if is_textual(element) && esize == 1 && self.radix == Radix::Natural {
            let mut len = n;
            if len > 0 && bytes[len - 1] == 0 {
                len -= 1;
            }
            if len == 0 {
                return "\"\"".into();
            }
            let (text, finished) = string_runs(&bytes[..len]);
            return if finished { text } else { format!("{text}...") };
        }
        let mut out = String::from("{");
        let mut printed = 0usize;
        let mut i = 0usize;
        while i < n && printed < PRINT_ELEMENTS {
            if i > 0 {
                out.push_str(", ");
            }
            let elem = &bytes[i * esize..(i + 1) * esize];
            let mut reps = 1;
            while i + reps < n && &bytes[(i + reps) * esize..(i + reps + 1) * esize] == elem {
                reps += 1;
            }
            let place = match v.place {
                Place::Memory(a) => Place::Memory(a.wrapping_add((i * esize) as u64)),
                _ => Place::Bytes(elem.to_vec()),
            };
            let text = if matches!(element.strip(), Type::Aggregate { .. } | Type::Array { .. }) {
                self.value(
                    &Value {
                        ty: element.clone(),
                        place,
                    },
                    depth + 1,
                )
            } else {
                self.scalar(element, elem)
            };
            out.push_str(&text);
            if reps > REPEAT_THRESHOLD {
                let _ = write!(out, " <repeats {reps} times>");
                i += reps;
                printed += REPEAT_THRESHOLD;
            } else {
                i += 1;
                printed += 1;
            }
        }
        if (i as u64) < count {
            out.push_str("...");
        }
        out.push('}');
        out
    }
}

/// gdb's `<symbol+offset>` for an address: the function or data object that covers
/// it (offset in decimal).
pub fn gdb_symbol(symbols: &Symbols, addr: u64) -> Option<String> {
    let (name, offset) = if let Some(l) = symbols.lookup(addr) {
        (l.function.name.clone(), l.offset)
    } else {
        // gdb passes over data labels without a size (`__bss_end`, `user_image_start`).
        let d = symbols.lookup_data(addr)?;
        if d.data.size == 0 {
            return None;
        }
        (d.data.name.clone(), d.offset)
    };
    Some(if offset == 0 {
        name
    } else {
        format!("{name}+{offset}")
    })
}

/// A bit field's value: `width` bits from bit `bit` of the bytes at `start` (sign
/// extended where `signed`); bits past the bytes read as 0.
pub(super) fn bit_field(bytes: &[u8], start: u64, bit: u64, width: u64, signed: bool) -> u64 {
    let mut raw = [0u8; 8];
    if let Some(tail) = usize::try_from(start).ok().and_then(|s| bytes.get(s..)) {
        let n = tail.len().min(8);
        raw[..n].copy_from_slice(&tail[..n]);
    }
    let word = u64::from_le_bytes(raw);
    if width == 0 {
        return 0;
    }
    let mask = if width >= 64 {
        u64::MAX
    } else {
        (1 << width) - 1
    };
    let value = word
        .checked_shr(u32::try_from(bit).unwrap_or(u32::MAX))
        .unwrap_or(0)
        & mask;
    if signed && width < 64 && (value >> (width - 1)) & 1 == 1 {
        value | !mask
    } else {
        value
    }
}

fn sign_extend(v: u64, size: usize) -> i64 {
    if size == 0 || size >= 8 {
        return v as i64;
    }
    let shift = 64 - 8 * size as u32;
    ((v << shift) as i64) >> shift
}

fn is_signed(ty: &Type) -> bool {
    matches!(
        ty.strip(),
        Type::Base {
            encoding: BaseEncoding::Signed | BaseEncoding::SignedChar,
            ..
        } | Type::Enum { signed: true, .. }
    )
}

/// A one-byte integer type: gdb prints it as a character and arrays of it as strings.
fn is_textual(ty: &Type) -> bool {
    matches!(
        ty.strip(),
        Type::Base {
            size: 1,
            encoding: BaseEncoding::SignedChar
                | BaseEncoding::UnsignedChar
                | BaseEncoding::Signed
                | BaseEncoding::Unsigned,
            ..
        }
    )
}

fn float_text(bits: u64, size: usize) -> String {
    match size {
        4 => format!("{}", f32::from_bits(bits as u32)),
        8 => format!("{}", f64::from_bits(bits)),
        _ => format!("{bits:#x}"),
    }
}

/// `65 'A'`: a character's number and its literal.
fn char_literal(n: i64, byte: u8) -> String {
    format!("{n} '{}'", escape(byte, '\''))
}

/// A byte inside quotes, escaped as gdb escapes it.
fn escape(b: u8, quote: char) -> String {
    match b {
        7 => "\\a".into(),
        8 => "\\b".into(),
        9 => "\\t".into(),
        10 => "\\n".into(),
        11 => "\\v".into(),
        12 => "\\f".into(),
        13 => "\\r".into(),
        27 => "\\033".into(),
        b'\\' => "\\\\".into(),
        b if b as char == quote => format!("\\{quote}"),
        0x20..=0x7e => (b as char).to_string(),
        b => format!("\\{b:03o}"),
    }
}

/// Characters as gdb prints a string: quoted runs, and a character repeated more than
/// [`REPEAT_THRESHOLD`] times as `'c' <repeats N times>`; at most [`PRINT_ELEMENTS`]
/// characters counted (a run counts its length). Returns the text and whether every
/// character was printed.
fn string_runs(chars: &[u8]) -> (String, bool) {
    let mut parts: Vec<String> = Vec::new();
    let mut quoted = String::new();
    let mut counted = 0usize;
    let mut i = 0usize;
    while i < chars.len() && counted < PRINT_ELEMENTS {
        let c = chars[i];
        let mut run = 1;
        while i + run < chars.len() && chars[i + run] == c {
            run += 1;
        }
        if run > REPEAT_THRESHOLD {
            if !quoted.is_empty() {
                parts.push(format!("\"{}\"", std::mem::take(&mut quoted)));
            }
            parts.push(format!("'{}' <repeats {run} times>", escape(c, '\'')));
        } else {
            for _ in 0..run {
                quoted.push_str(&escape(c, '"'));
            }
        }
        counted += run;
        i += run;
    }
    if !quoted.is_empty() {
        parts.push(format!("\"{quoted}\""));
    }
    (parts.join(", "), i >= chars.len())
}

/// A NUL-terminated string's characters as gdb prints them.
fn string_segments(chars: &[u8]) -> String {
    string_runs(chars).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_print_runs_as_gdb_does() {
        let mut name = b"hello".to_vec();
        name.resize(255, 0);
        assert_eq!(
            string_runs(&name).0,
            "\"hello\", '\\000' <repeats 250 times>"
        );
        assert_eq!(string_runs(b"a\nb\"").0, "\"a\\nb\\\"\"");
        assert_eq!(string_runs(&[b'x'; 10]).0, "\"xxxxxxxxxx\"");
        assert_eq!(string_runs(&[b'x'; 11]).0, "'x' <repeats 11 times>");
        let long = [b'a', b'b'].repeat(150);
        let (text, finished) = string_runs(&long);
        assert!(!finished);
        assert_eq!(text.len(), 200 + 2);
    }

    #[test]
    fn bit_fields_read_within_their_bytes_whatever_the_dwarf_says() {
        let bytes = [0b1011_0100u8, 0xff];
        assert_eq!(bit_field(&bytes, 0, 2, 3, false), 0b101);
        assert_eq!(bit_field(&bytes, 0, 2, 3, true), (-3i64) as u64);
        assert_eq!(bit_field(&bytes, 1, 0, 8, false), 0xff);
        // Hostile: past the bytes, a zero width, a shift past the word.
        assert_eq!(bit_field(&bytes, 99, 0, 8, false), 0);
        assert_eq!(bit_field(&bytes, 0, 0, 0, true), 0);
        assert_eq!(bit_field(&bytes, 0, 200, 64, true), 0);
    }

    #[test]
    fn characters_and_signs() {
        assert_eq!(char_literal(65, 65), "65 'A'");
        assert_eq!(char_literal(0, 0), "0 '\\000'");
        assert_eq!(char_literal(-56, 200), "-56 '\\310'");
        assert_eq!(sign_extend(0xff, 1), -1);
        assert_eq!(sign_extend(0x7fff_ffff, 4), 0x7fff_ffff);
    }
}
