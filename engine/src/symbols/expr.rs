//! `print EXPR`: a C expression over the guest's variables, evaluated as gdb evaluates
//! it: variables (the frame's locals and parameters, then globals), registers (`$rax`),
//! numbers and characters, members (`.`, `->`), `*`, `&`, indexing, casts to a type of
//! the DWARF information (`(struct proc *)`), `sizeof`, and C's arithmetic, comparison
//! and logical operators with pointer arithmetic.

use super::Symbols;
use super::debuginfo::{BaseEncoding, DebugInfo, Place, Pointee, Type, find_field};
use super::unwind::{DWARF_PC, DwarfRegisters};
use super::values::{MemoryFault, ReadMemory, Value, bit_field, memory_error};
use std::sync::Arc;

/// What an expression can name.
pub struct ExprContext<'a> {
    pub info: &'a DebugInfo,
    pub symbols: &'a Symbols,
    /// The selected frame's variables, innermost scope first (parameters included).
    pub locals: Vec<(String, Value)>,
    /// A variable of the selected frame's unit is preferred among globals of one name.
    pub unit_of: Option<super::debuginfo::DieRef>,
    pub registers: DwarfRegisters,
    pub read: ReadMemory<'a>,
}

/// Most tokens of an expression.
const MAX_TOKENS: usize = 4096;
/// Deepest nesting of an expression.
const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Number(u64, bool),
    Char(u8),
    Register(String),
    Punct(&'static str),
}

const PUNCTS: [&str; 27] = [
    "->", "<<", ">>", "<=", ">=", "==", "!=", "&&", "||", ".", "[", "]", "(", ")", "*", "&", "+",
    "-", "/", "%", "<", ">", "!", "~", "^", "|", ",",
];

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if out.len() > MAX_TOKENS {
            return Err("expression too long".into());
        }
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Token::Ident(s[start..i].to_string()));
        } else if c == b'$' {
            let start = i + 1;
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Token::Register(s[start..i].to_string()));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric()) {
                i += 1;
            }
            let text = s[start..i].to_ascii_lowercase();
            let digits = text.trim_end_matches(['u', 'l']);
            let unsigned = text.contains('u');
            let v = if let Some(h) = digits.strip_prefix("0x") {
                u64::from_str_radix(h, 16)
            } else if digits.len() > 1 && digits.starts_with('0') {
                u64::from_str_radix(&digits[1..], 8)
            } else {
                digits.parse()
            }
            .map_err(|_| format!("Invalid number \"{}\".", &s[start..i]))?;
            out.push(Token::Number(v, unsigned));
        } else if c == b'\'' {
            let (ch, len) = match (b.get(i + 1), b.get(i + 2)) {
                (Some(b'\\'), Some(e)) => (
                    match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        b'0' => 0,
                        b'\\' => b'\\',
                        b'\'' => b'\'',
                        _ => return Err("Unmatched single quote.".into()),
                    },
                    4,
                ),
                (Some(&ch), Some(b'\'')) => (ch, 3),
                _ => return Err("Unmatched single quote.".into()),
            };
            if b.get(i + len - 1) != Some(&b'\'') {
                return Err("Unmatched single quote.".into());
            }
            out.push(Token::Char(ch));
            i += len;
        } else {
            let p = PUNCTS
                .iter()
                .find(|p| s[i..].starts_with(**p))
                .ok_or_else(|| format!("Invalid character '{}' in expression.", c as char))?;
            out.push(Token::Punct(p));
            i += p.len();
        }
    }
    Ok(out)
}

fn base(name: &str, size: u64, encoding: BaseEncoding) -> Arc<Type> {
    Arc::new(Type::Base {
        name: name.into(),
        size,
        encoding,
    })
}

fn int_type() -> Arc<Type> {
    base("int", 4, BaseEncoding::Signed)
}
fn long_type() -> Arc<Type> {
    base("long", 8, BaseEncoding::Signed)
}
fn ulong_type() -> Arc<Type> {
    base("unsigned long", 8, BaseEncoding::Unsigned)
}

fn rvalue(ty: Arc<Type>, v: u64) -> Value {
    let n = usize::try_from(ty.size().clamp(1, 8)).unwrap_or(8);
    Value {
        ty,
        place: Place::Bytes(v.to_le_bytes()[..n].to_vec()),
    }
}

/// C spellings of the base types, as DWARF (and gdb) name them.
fn dwarf_base_name(words: &str) -> &str {
    match words {
        "unsigned" | "unsigned int" => "unsigned int",
        "long" | "long int" | "signed long" => "long int",
        "unsigned long" | "unsigned long int" | "long unsigned int" => "long unsigned int",
        "short" | "short int" => "short int",
        "unsigned short" | "unsigned short int" => "short unsigned int",
        "long long" | "long long int" => "long long int",
        "unsigned long long" | "long long unsigned int" => "long long unsigned int",
        "signed char" => "signed char",
        "signed" | "signed int" => "int",
        w => w,
    }
}

struct Parser<'c, 'a> {
    tokens: Vec<Token>,
    pos: usize,
    ctx: &'c ExprContext<'a>,
    depth: usize,
}

/// Evaluates `expr` in `ctx`; the error is the message gdb would give, as near as
/// can be.
pub fn evaluate(expr: &str, ctx: &ExprContext<'_>) -> Result<Value, String> {
    let tokens = tokenize(expr)?;
    if tokens.is_empty() {
        return Err("An expression is needed.".into());
    }
    let mut p = Parser {
        tokens,
        pos: 0,
        ctx,
        depth: 0,
    };
    let v = p.binary(0)?;
    if p.pos < p.tokens.len() {
        return Err(format!(
            "A syntax error in expression, near `{}'.",
            p.rest()
        ));
    }
    Ok(v)
}

const BINARY: [(&str, u8); 18] = [
    ("||", 1),
    ("&&", 2),
    ("|", 3),
    ("^", 4),
    ("&", 5),
    ("==", 6),
    ("!=", 6),
    ("<", 7),
    (">", 7),
    ("<=", 7),
    (">=", 7),
    ("<<", 8),
    (">>", 8),
    ("+", 9),
    ("-", 9),
    ("*", 10),
    ("/", 10),
    ("%", 10),
];

impl Parser<'_, '_> {
    fn rest(&self) -> String {
        self.tokens[self.pos..]
            .iter()
            .map(|t| match t {
                Token::Ident(s) => s.clone(),
                Token::Number(n, _) => n.to_string(),
                Token::Char(c) => format!("'{}'", *c as char),
                Token::Register(r) => format!("${r}"),
                Token::Punct(p) => p.to_string(),
            })
            .collect::<Vec<_>>()
            .join("")
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn eat(&mut self, p: &str) -> bool {
        if matches!(self.peek(), Some(Token::Punct(q)) if *q == p) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &str) -> Result<(), String> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(format!(
                "A syntax error in expression, near `{}'.",
                self.rest()
            ))
        }
    }

    fn binary(&mut self, min: u8) -> Result<Value, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("expression nested too deeply".into());
        }
        let mut left = self.unary()?;
        while let Some(Token::Punct(op)) = self.peek() {
            let Some(&(op, prec)) = BINARY.iter().find(|(o, _)| o == op) else {
                break;
            };
            if prec <= min {
                break;
            }
            self.pos += 1;
            let right = self.binary(prec)?;
            left = self.apply(op, left, right)?;
        }
        self.depth -= 1;
        Ok(left)
    }

    fn unary(&mut self) -> Result<Value, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("expression nested too deeply".into());
        }
        let v = self.unary_inner();
        self.depth -= 1;
        v
    }

    fn unary_inner(&mut self) -> Result<Value, String> {
        if self.eat("*") {
            let v = self.unary()?;
            return self.deref(v);
        }
        if self.eat("&") {
            let v = self.unary()?;
            return match v.place {
                Place::Memory(a) => Ok(rvalue(
                    Arc::new(Type::Pointer(Pointee::Type(v.ty.clone()))),
                    a,
                )),
                _ => Err("Attempt to take address of value not located in memory.".into()),
            };
        }
        if self.eat("-") {
            let v = self.unary()?;
            let (n, ty) = self.integer(&v)?;
            return Ok(rvalue(ty, n.wrapping_neg()));
        }
        if self.eat("~") {
            let v = self.unary()?;
            let (n, ty) = self.integer(&v)?;
            return Ok(rvalue(ty, !n));
        }
        if self.eat("!") {
            let v = self.unary()?;
            let (n, _) = self.integer(&v)?;
            return Ok(rvalue(int_type(), u64::from(n == 0)));
        }
        if matches!(self.peek(), Some(Token::Ident(s)) if s == "sizeof") {
            self.pos += 1;
            let save = self.pos;
            if self.eat("(")
                && let Some(ty) = self.type_name()?
            {
                self.expect(")")?;
                return Ok(rvalue(ulong_type(), ty.size()));
            }
            self.pos = save;
            let v = self.unary()?;
            return Ok(rvalue(ulong_type(), v.ty.size()));
        }
        // A cast: `(type) expr`.
        if matches!(self.peek(), Some(Token::Punct("("))) {
            let save = self.pos;
            self.pos += 1;
            if let Some(ty) = self.type_name()?
                && self.eat(")")
            {
                let v = self.unary()?;
                return self.cast(v, ty);
            }
            self.pos = save;
        }
        self.postfix()
    }

    /// A type name at the current position (None, position unchanged, where there is
    /// none).
    fn type_name(&mut self) -> Result<Option<Arc<Type>>, String> {
        let start = self.pos;
        let mut words: Vec<String> = Vec::new();
        let mut qualifiers = Vec::new();
        while let Some(Token::Ident(w)) = self.peek().cloned() {
            match w.as_str() {
                "const" | "volatile" => {
                    qualifiers.push(w);
                    self.pos += 1;
                }
                "struct" | "union" | "enum" => {
                    self.pos += 1;
                    let Some(Token::Ident(tag)) = self.peek().cloned() else {
                        self.pos = start;
                        return Ok(None);
                    };
                    self.pos += 1;
                    words.push(format!("{w} {tag}"));
                    break;
                }
                "unsigned" | "signed" | "long" | "short" | "int" | "char" | "void" | "_Bool" => {
                    words.push(w);
                    self.pos += 1;
                }
                _ if words.is_empty()
                    && !self.ctx.locals.iter().any(|(n, _)| *n == w)
                    && self.ctx.info.named_type(&w).is_some() =>
                {
                    words.push(w);
                    self.pos += 1;
                    break;
                }
                _ => break,
            }
        }
        if words.is_empty() {
            self.pos = start;
            return Ok(None);
        }
        let name = words.join(" ");
        let mut ty = if name == "void" {
            Arc::new(Type::Void)
        } else if let Some(t) = self.ctx.info.named_type(dwarf_base_name(&name)) {
            t
        } else if let Some(t) = builtin_type(&name) {
            t
        } else {
            return Err(format!("No symbol \"{name}\" in current context."));
        };
        for q in qualifiers {
            let qualifier = if q == "const" { "const" } else { "volatile" };
            ty = Arc::new(Type::Qualified {
                qualifier,
                target: ty,
            });
        }
        while self.eat("*") {
            ty = Arc::new(Type::Pointer(Pointee::Type(ty)));
        }
        Ok(Some(ty))
    }

    fn postfix(&mut self) -> Result<Value, String> {
        let mut v = self.primary()?;
        loop {
            if self.eat(".") {
                let name = self.ident()?;
                v = self.member(v, &name)?;
            } else if self.eat("->") {
                let name = self.ident()?;
                let target = self.deref(v)?;
                v = self.member(target, &name)?;
            } else if self.eat("[") {
                let index = self.binary(0)?;
                self.expect("]")?;
                let (i, _) = self.integer(&index)?;
                v = self.index(v, i)?;
            } else {
                break;
            }
        }
        Ok(v)
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.peek().cloned() {
            Some(Token::Ident(s)) => {
                self.pos += 1;
                Ok(s)
            }
            _ => Err(format!(
                "A syntax error in expression, near `{}'.",
                self.rest()
            )),
        }
    }

    fn primary(&mut self) -> Result<Value, String> {
        match self.peek().cloned() {
            Some(Token::Number(n, unsigned)) => {
                self.pos += 1;
                let ty = match (unsigned, n > i32::MAX as u64, n > i64::MAX as u64) {
                    (false, false, _) => int_type(),
                    (true, false, _) => base("unsigned int", 4, BaseEncoding::Unsigned),
                    (false, true, false) => long_type(),
                    _ => ulong_type(),
                };
                Ok(rvalue(ty, n))
            }
            Some(Token::Char(c)) => {
                self.pos += 1;
                Ok(rvalue(
                    base("char", 1, BaseEncoding::SignedChar),
                    u64::from(c),
                ))
            }
            Some(Token::Register(r)) => {
                self.pos += 1;
                self.register(&r)
            }
            Some(Token::Ident(name)) => {
                self.pos += 1;
                self.variable(&name)
            }
            Some(Token::Punct("(")) => {
                self.pos += 1;
                let v = self.binary(0)?;
                self.expect(")")?;
                Ok(v)
            }
            _ => Err(format!(
                "A syntax error in expression, near `{}'.",
                self.rest()
            )),
        }
    }

    fn register(&self, name: &str) -> Result<Value, String> {
        const NAMES: [&str; 16] = [
            "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15",
        ];
        let (n, ty) = match name {
            "pc" | "rip" => (
                DWARF_PC,
                Arc::new(Type::Pointer(Pointee::Type(Arc::new(Type::Function {
                    ret: Arc::new(Type::Void),
                    params: Vec::new(),
                    prototyped: false,
                    varargs: false,
                })))),
            ),
            "sp" | "rsp" | "fp" | "rbp" => (
                if name.ends_with("sp") { 7 } else { 6 },
                Arc::new(Type::Pointer(Pointee::Type(Arc::new(Type::Void)))),
            ),
            _ => match NAMES.iter().position(|r| *r == name) {
                Some(n) => (n, long_type()),
                None => return Err(format!("Invalid register `{name}'")),
            },
        };
        match self.ctx.registers[n] {
            Some(v) => Ok(rvalue(ty, v)),
            None => Ok(Value {
                ty,
                place: Place::OptimizedOut,
            }),
        }
    }

    fn variable(&self, name: &str) -> Result<Value, String> {
        if let Some((_, v)) = self.ctx.locals.iter().find(|(n, _)| n == name) {
            return Ok(v.clone());
        }
        if let Some(die) = self.ctx.info.global(name, self.ctx.unit_of) {
            let ty = self.ctx.info.type_of(die);
            if matches!(ty.as_ref(), Type::Function { .. }) {
                let addr = self
                    .ctx
                    .symbols
                    .address_of(name)
                    .ok_or_else(|| format!("No symbol \"{name}\" in current context."))?;
                return Ok(Value {
                    ty,
                    place: Place::Memory(addr),
                });
            }
            if self.ctx.info.is_declaration(die) {
                let addr = self
                    .ctx
                    .symbols
                    .data_symbol(name)
                    .map(|d| d.addr)
                    .ok_or_else(|| format!("Missing ELF symbol \"{name}\"."))?;
                return Ok(Value {
                    ty,
                    place: Place::Memory(addr),
                });
            }
            let frame = super::debuginfo::FrameContext {
                regs: self.ctx.registers,
                first: true,
                caller: None,
                unwinder: None,
                read_memory: &|a, b| (self.ctx.read)(a, b).is_ok(),
            };
            return Ok(Value {
                ty,
                place: self.ctx.info.locate(die, &frame),
            });
        }
        if self.ctx.symbols.address_of(name).is_some() {
            return Err(format!(
                "'{name}' has unknown type; cast it to its declared type"
            ));
        }
        Err(format!("No symbol \"{name}\" in current context."))
    }

    fn bytes(&self, v: &Value, len: u64) -> Result<Vec<u8>, String> {
        match &v.place {
            Place::OptimizedOut => Err("value has been optimized out".into()),
            Place::Bytes(b) => {
                let mut b = b.clone();
                b.resize(usize::try_from(len.min(1 << 20)).unwrap_or(0), 0);
                Ok(b)
            }
            Place::Memory(a) => {
                let mut b = vec![0u8; usize::try_from(len.min(1 << 20)).unwrap_or(0)];
                (self.ctx.read)(*a, &mut b).map_err(|f: MemoryFault| memory_error(*a, f))?;
                Ok(b)
            }
        }
    }

    /// An integer (or pointer, enum, character) value and the type arithmetic gives it.
    fn integer(&self, v: &Value) -> Result<(u64, Arc<Type>), String> {
        let ty = v.ty.strip();
        let size = ty.size();
        match ty {
            Type::Base { encoding, .. } => {
                let b = self.bytes(v, size)?;
                let n = le(&b);
                let signed = matches!(encoding, BaseEncoding::Signed | BaseEncoding::SignedChar);
                let n = if signed { sign_extend(n, size) } else { n };
                // C's integer promotions: narrower than int becomes int.
                let ty = if size < 4 { int_type() } else { v.ty.clone() };
                Ok((n, ty))
            }
            Type::Enum { signed, .. } => {
                let b = self.bytes(v, size)?;
                let n = le(&b);
                Ok((
                    if *signed { sign_extend(n, size) } else { n },
                    if size <= 4 { int_type() } else { long_type() },
                ))
            }
            Type::Pointer(_) => {
                let b = self.bytes(v, 8)?;
                Ok((le(&b), v.ty.clone()))
            }
            // An array or a function is its address (C's decay to a pointer).
            Type::Array { .. } | Type::Function { .. } => match v.place {
                Place::Memory(a) => Ok((a, pointer_to(v.ty.clone()))),
                _ => Err("Attempt to take address of value not located in memory.".into()),
            },
            _ => Err("Argument to arithmetic operation not a number or boolean.".into()),
        }
    }

    fn deref(&self, v: Value) -> Result<Value, String> {
        match v.ty.strip() {
            Type::Pointer(p) => {
                let target = self.ctx.info.pointee(p);
                let addr = le(&self.bytes(&v, 8)?);
                if matches!(target.strip(), Type::Void) {
                    return Err("Attempt to take contents of a non-pointer value.".into());
                }
                Ok(Value {
                    ty: target,
                    place: Place::Memory(addr),
                })
            }
            Type::Array { element, .. } => self.index(
                Value {
                    ty: Arc::new(Type::Array {
                        element: element.clone(),
                        count: None,
                    }),
                    place: v.place,
                },
                0,
            ),
            Type::Function { .. } => Ok(v),
            _ => Err("Attempt to take contents of a non-pointer value.".into()),
        }
    }

    fn index(&self, v: Value, i: u64) -> Result<Value, String> {
        match v.ty.strip() {
            Type::Array { element, .. } => {
                let esize = element.size();
                match &v.place {
                    Place::Memory(a) => Ok(Value {
                        ty: element.clone(),
                        place: Place::Memory(a.wrapping_add(i.wrapping_mul(esize))),
                    }),
                    Place::Bytes(b) => {
                        let start = usize::try_from(i.saturating_mul(esize)).unwrap_or(usize::MAX);
                        let end = start.saturating_add(usize::try_from(esize).unwrap_or(0));
                        let bytes = b
                            .get(start..end)
                            .ok_or_else(|| "no such vector element".to_string())?;
                        Ok(Value {
                            ty: element.clone(),
                            place: Place::Bytes(bytes.to_vec()),
                        })
                    }
                    Place::OptimizedOut => Err("value has been optimized out".into()),
                }
            }
            Type::Pointer(p) => {
                let target = self.ctx.info.pointee(p);
                let addr = le(&self.bytes(&v, 8)?);
                Ok(Value {
                    place: Place::Memory(addr.wrapping_add(i.wrapping_mul(target.size()))),
                    ty: target,
                })
            }
            _ => Err("cannot subscript something of type `".to_string()
                + &self.ctx.info.type_name(&v.ty)
                + "'"),
        }
    }

    fn member(&self, v: Value, name: &str) -> Result<Value, String> {
        let Type::Aggregate { fields, .. } = v.ty.strip() else {
            return Err(
                "Attempt to extract a component of a value that is not a structure.".into(),
            );
        };
        let Some((offset, field)) = find_field(fields, name, 0) else {
            return Err(format!("There is no member named {name}."));
        };
        if let Some((bit, width)) = field.bits {
            let b = self.bytes(&v, v.ty.size())?;
            return Ok(rvalue(
                field.ty.clone(),
                bit_field(&b, offset, bit, width, false),
            ));
        }
        let size = field.ty.size();
        let place = match &v.place {
            Place::Memory(a) => Place::Memory(a.wrapping_add(offset)),
            Place::Bytes(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let end = start.saturating_add(usize::try_from(size).unwrap_or(0));
                Place::Bytes(b.get(start..end.min(b.len())).unwrap_or(&[]).to_vec())
            }
            Place::OptimizedOut => Place::OptimizedOut,
        };
        Ok(Value {
            ty: field.ty.clone(),
            place,
        })
    }

    fn cast(&self, v: Value, ty: Arc<Type>) -> Result<Value, String> {
        match ty.strip() {
            Type::Aggregate { .. } | Type::Array { .. } => {
                if v.ty.size() == ty.size() {
                    Ok(Value { ty, place: v.place })
                } else {
                    Err("Invalid cast.".into())
                }
            }
            Type::Void => Ok(Value {
                ty,
                place: Place::Bytes(Vec::new()),
            }),
            _ => {
                let (n, _) = match v.ty.strip() {
                    Type::Function { .. } => match v.place {
                        Place::Memory(a) => (a, v.ty.clone()),
                        _ => return Err("Invalid cast.".into()),
                    },
                    _ => self.integer(&v)?,
                };
                Ok(rvalue(ty, n))
            }
        }
    }

    fn apply(&self, op: &str, l: Value, r: Value) -> Result<Value, String> {
        if op == "&&" || op == "||" {
            let (a, _) = self.integer(&l)?;
            let (b, _) = self.integer(&r)?;
            let v = if op == "&&" {
                a != 0 && b != 0
            } else {
                a != 0 || b != 0
            };
            return Ok(rvalue(int_type(), u64::from(v)));
        }
        let lp = pointer_target(self.ctx.info, &l);
        let rp = pointer_target(self.ctx.info, &r);
        let (a, lt) = self.integer(&l)?;
        let (b, rt) = self.integer(&r)?;
        match (op, &lp, &rp) {
            ("+", Some(t), None) => {
                return Ok(rvalue(
                    pointer_to(t.clone()),
                    a.wrapping_add(b.wrapping_mul(t.size())),
                ));
            }
            ("+", None, Some(t)) => {
                return Ok(rvalue(
                    pointer_to(t.clone()),
                    b.wrapping_add(a.wrapping_mul(t.size())),
                ));
            }
            ("-", Some(t), None) => {
                return Ok(rvalue(
                    pointer_to(t.clone()),
                    a.wrapping_sub(b.wrapping_mul(t.size())),
                ));
            }
            ("-", Some(t), Some(_)) => {
                let size = t.size().max(1) as i64;
                return Ok(rvalue(
                    long_type(),
                    ((a.wrapping_sub(b) as i64) / size) as u64,
                ));
            }
            _ => {}
        }
        let unsigned = is_unsigned(&lt) || is_unsigned(&rt);
        let wide = lt.size() > 4 || rt.size() > 4;
        let ty = match (wide, unsigned) {
            (true, true) => ulong_type(),
            (true, false) => long_type(),
            (false, true) => base("unsigned int", 4, BaseEncoding::Unsigned),
            (false, false) => int_type(),
        };
        let cmp = |c: bool| Ok(rvalue(int_type(), u64::from(c)));
        let (sa, sb) = (a as i64, b as i64);
        match op {
            "+" => Ok(rvalue(ty, a.wrapping_add(b))),
            "-" => Ok(rvalue(ty, a.wrapping_sub(b))),
            "*" => Ok(rvalue(ty, a.wrapping_mul(b))),
            "/" | "%" => {
                if b == 0 {
                    return Err("Division by zero".into());
                }
                let v = match (op, unsigned) {
                    ("/", true) => a / b,
                    ("/", false) => sa.wrapping_div(sb) as u64,
                    (_, true) => a % b,
                    _ => sa.wrapping_rem(sb) as u64,
                };
                Ok(rvalue(ty, v))
            }
            "&" => Ok(rvalue(ty, a & b)),
            "|" => Ok(rvalue(ty, a | b)),
            "^" => Ok(rvalue(ty, a ^ b)),
            "<<" => Ok(rvalue(ty, a.wrapping_shl(b as u32))),
            ">>" => Ok(rvalue(
                ty,
                if unsigned {
                    a.wrapping_shr(b as u32)
                } else {
                    sa.wrapping_shr(b as u32) as u64
                },
            )),
            "==" => cmp(a == b),
            "!=" => cmp(a != b),
            "<" => cmp(if unsigned { a < b } else { sa < sb }),
            ">" => cmp(if unsigned { a > b } else { sa > sb }),
            "<=" => cmp(if unsigned { a <= b } else { sa <= sb }),
            ">=" => cmp(if unsigned { a >= b } else { sa >= sb }),
            _ => Err(format!("operator {op} is not supported")),
        }
    }
}

fn pointer_to(t: Arc<Type>) -> Arc<Type> {
    Arc::new(Type::Pointer(Pointee::Type(t)))
}

/// The pointed-to type of a pointer (or an array's element type).
fn pointer_target(info: &DebugInfo, v: &Value) -> Option<Arc<Type>> {
    match v.ty.strip() {
        Type::Pointer(p) => Some(info.pointee(p)),
        Type::Array { element, .. } => Some(element.clone()),
        _ => None,
    }
}

fn is_unsigned(t: &Type) -> bool {
    matches!(
        t.strip(),
        Type::Base {
            encoding: BaseEncoding::Unsigned | BaseEncoding::UnsignedChar | BaseEncoding::Bool,
            ..
        } | Type::Pointer(_)
    )
}

fn builtin_type(name: &str) -> Option<Arc<Type>> {
    Some(match name {
        "char" => base("char", 1, BaseEncoding::SignedChar),
        "signed char" => base("signed char", 1, BaseEncoding::SignedChar),
        "unsigned char" => base("unsigned char", 1, BaseEncoding::UnsignedChar),
        "short" | "short int" => base("short", 2, BaseEncoding::Signed),
        "unsigned short" | "unsigned short int" => {
            base("unsigned short", 2, BaseEncoding::Unsigned)
        }
        "int" | "signed" | "signed int" => int_type(),
        "unsigned" | "unsigned int" => base("unsigned int", 4, BaseEncoding::Unsigned),
        "long" | "long int" | "long long" | "long long int" => long_type(),
        "unsigned long" | "unsigned long int" | "unsigned long long" => ulong_type(),
        "_Bool" => base("_Bool", 1, BaseEncoding::Bool),
        _ => return None,
    })
}

fn le(b: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    let n = b.len().min(8);
    raw[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(raw)
}

fn sign_extend(v: u64, size: u64) -> u64 {
    if size == 0 || size >= 8 {
        return v;
    }
    let shift = 64 - 8 * size as u32;
    (((v << shift) as i64) >> shift) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = tokenize("tf->rip + 0x10 * 'a' <= $rax").unwrap();
        assert_eq!(t.len(), 9);
        assert_eq!(t[2], Token::Ident("rip".into()));
        assert_eq!(t[4], Token::Number(16, false));
        assert_eq!(t[6], Token::Char(b'a'));
        assert_eq!(t[8], Token::Register("rax".into()));
        assert!(tokenize("a @ b").is_err());
        assert!(tokenize("'ab").is_err());
        assert!(tokenize("0xzz").is_err());
    }
}
