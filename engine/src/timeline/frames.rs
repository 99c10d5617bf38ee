//! The stack at the position as gdb shows it: frames unwound through the kernel's
//! call-frame information with every register the rules save, each call inlined there a
//! frame of its own; their arguments and locals; and `print EXPR` in a frame.

use super::{ReadError, Timeline};
use crate::state::gpr;
use crate::symbols::{
    DWARF_PC, DwarfRegisters, ExprContext, FrameContext, MAX_FRAMES, MemoryFault, Place, Radix,
    ReadMemory, ScopeFrame, SourceLine, Type, Value, ValuePrinter, evaluate_expression, gdb_symbol,
    memory_error,
};

/// The x86 register number ([`gpr`]) of each DWARF register number 0-15.
const GPR_OF_DWARF: [usize; 16] = [
    gpr::RAX,
    gpr::RDX,
    gpr::RCX,
    gpr::RBX,
    gpr::RSI,
    gpr::RDI,
    gpr::RBP,
    gpr::RSP,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
];

/// Variables by name with their values.
type NamedValues = Vec<(String, Value)>;

/// gdb's `max-value-size`: the largest value `print` reads.
const MAX_PRINTED_VALUE: u64 = 65536;

/// A frame of the stack.
#[derive(Debug, Clone)]
pub struct StackFrame {
    /// gdb's frame number.
    pub level: usize,
    /// The frame's pc: the current instruction, or a return address.
    pub pc: u64,
    /// The function's (or inlined call's) name, from DWARF or the symbol table.
    pub function: Option<String>,
    /// A call inlined into the next frame out (same registers).
    pub inlined: bool,
    /// The source line gdb gives the frame: at the pc, the call before a return
    /// address, or an inlined call's call site for the frame it is inlined into.
    pub line: Option<SourceLine>,
    /// Whether gdb prints the pc (`#1  0x... in f (...)`): not at the start of its line.
    pub show_address: bool,
    regs: DwarfRegisters,
    first: bool,
    caller: Option<DwarfRegisters>,
    scope: Option<ScopeFrame>,
}

/// A variable of a frame and its value as gdb prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableText {
    pub name: String,
    pub value: String,
}

/// A frame's parameters and locals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameVariables {
    pub arguments: Vec<VariableText>,
    pub locals: Vec<VariableText>,
}

impl Timeline {
    fn dwarf_registers(&self) -> DwarfRegisters {
        let regs = self.regs();
        let mut out = [None; 17];
        for (d, &g) in GPR_OF_DWARF.iter().enumerate() {
            out[d] = Some(regs.gpr[g]);
        }
        out[DWARF_PC] = Some(regs.rip);
        out
    }

    fn read_for_values(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryFault> {
        self.read_memory(addr, buf).map_err(|e| match e {
            ReadError::Unmapped(_) => MemoryFault::Unmapped,
            ReadError::NotRecorded => MemoryFault::NotRecorded,
        })
    }

    /// The frames at the position, innermost first, at most `max`.
    pub fn stack_frames(&self, max: usize) -> Vec<StackFrame> {
        let symbols = self.symbols();
        let info = symbols.debug_info();
        let read_u64 = |a: u64| self.read_u64(a);
        // Physical frames: registers, outermost last.
        let mut physical = vec![self.dwarf_registers()];
        while physical.len() < MAX_FRAMES {
            let inner = physical[physical.len() - 1];
            let first = physical.len() == 1;
            let Some(pc) = inner[DWARF_PC] else { break };
            let lookup = if first { pc } else { pc.wrapping_sub(1) };
            let described = symbols.unwinder().is_some_and(|u| u.covers(lookup));
            let caller = if described {
                symbols
                    .unwinder()
                    .and_then(|u| u.caller_registers(&inner, first, &read_u64))
            } else {
                self.prologue_caller(&inner)
            };
            let Some(caller) = caller else {
                break;
            };
            // Past the code the symbols know (gdb's `?? ()` frames) nothing is a frame.
            let (Some(caller_pc), Some(sp), Some(inner_sp)) =
                (caller[DWARF_PC], caller[7], inner[7])
            else {
                break;
            };
            // The stack grows down: a caller's frame is above its callee's.
            if caller_pc == 0
                || sp <= inner_sp
                || symbols.lookup(caller_pc.wrapping_sub(1)).is_none()
            {
                break;
            }
            physical.push(caller);
        }
        let mut frames = Vec::new();
        for (i, regs) in physical.iter().enumerate() {
            let first = i == 0;
            let Some(pc) = regs[DWARF_PC] else { break };
            let lookup = if first { pc } else { pc.wrapping_sub(1) };
            let caller = physical.get(i + 1).copied();
            let scopes = info.map(|d| d.frames_at(lookup)).unwrap_or_default();
            let line_here = symbols.line(lookup);
            let show_address = if first {
                symbols.line_range(pc).is_none_or(|r| r.start != pc)
            } else {
                true
            };
            if scopes.is_empty() {
                frames.push(StackFrame {
                    level: frames.len(),
                    pc,
                    function: symbols.lookup(lookup).map(|l| l.function.name.clone()),
                    inlined: false,
                    line: line_here,
                    show_address,
                    regs: *regs,
                    first,
                    caller,
                    scope: None,
                });
                continue;
            }
            let mut line = line_here;
            for (k, scope) in scopes.iter().enumerate() {
                frames.push(StackFrame {
                    level: frames.len(),
                    pc,
                    function: scope.name.clone(),
                    inlined: scope.inlined,
                    line: line.clone(),
                    show_address: k == 0 && show_address,
                    regs: *regs,
                    first,
                    caller,
                    scope: Some(scope.clone()),
                });
                // The frame an inlined call is inlined into shows the call's line.
                line = scope.call_site.as_ref().map(|(file, l)| SourceLine {
                    file: file.clone().unwrap_or_default(),
                    line: *l,
                });
            }
        }
        frames.truncate(max);
        frames
    }

    /// The caller of a frame the call-frame information does not describe (assembly),
    /// found as gdb's prologue analyzer finds it: after `push %rbp; mov %rsp,%rbp` the
    /// frame is at RBP; right after the push, at RSP + 8; otherwise the return address
    /// is at RSP.
    fn prologue_caller(&self, regs: &DwarfRegisters) -> Option<DwarfRegisters> {
        let pc = regs[DWARF_PC]?;
        let rsp = regs[7]?;
        let start = self.symbols().lookup(pc)?.function.addr;
        let mut code = [0u8; 4];
        let n = self.read_available(start, &mut code);
        let push = n >= 1 && code[0] == 0x55;
        let mov = push
            && n >= 4
            && (code[1..4] == [0x48, 0x89, 0xe5] || code[1..4] == [0x48, 0x8b, 0xec]);
        let mut out = *regs;
        if mov && pc >= start + 4 {
            let rbp = regs[6]?;
            out[DWARF_PC] = Some(self.read_u64(rbp.wrapping_add(8))?);
            out[7] = Some(rbp.wrapping_add(16));
            out[6] = Some(self.read_u64(rbp)?);
        } else if push && pc > start {
            out[DWARF_PC] = Some(self.read_u64(rsp.wrapping_add(8))?);
            out[7] = Some(rsp.wrapping_add(16));
            out[6] = Some(self.read_u64(rsp)?);
        } else {
            out[DWARF_PC] = Some(self.read_u64(rsp)?);
            out[7] = Some(rsp.wrapping_add(8));
        }
        Some(out)
    }

    fn frame_context<'a>(
        &'a self,
        frame: &StackFrame,
        read: &'a dyn Fn(u64, &mut [u8]) -> bool,
    ) -> FrameContext<'a> {
        FrameContext {
            regs: frame.regs,
            first: frame.first,
            caller: frame.caller,
            unwinder: self.symbols().unwinder(),
            read_memory: read,
        }
    }

    /// A frame's variables as values: parameters, then locals innermost scope first.
    fn frame_values(&self, frame: &StackFrame) -> (NamedValues, NamedValues) {
        let (Some(info), Some(scope)) = (self.symbols().debug_info(), &frame.scope) else {
            return (Vec::new(), Vec::new());
        };
        let read = |a: u64, b: &mut [u8]| self.read_memory(a, b).is_ok();
        let ctx = self.frame_context(frame, &read);
        let value = |v: crate::symbols::Variable| {
            let ty = info.type_of(v.die);
            let place = info.locate(v.die, &ctx);
            (v.name, Value { ty, place })
        };
        let args = info.parameters(scope).into_iter().map(value).collect();
        let locals = info.locals(scope).into_iter().map(value).collect();
        (args, locals)
    }

    fn printer<'a>(&'a self, read: ReadMemory<'a>, radix: Radix) -> Option<ValuePrinter<'a>> {
        Some(ValuePrinter {
            info: self.symbols().debug_info()?,
            symbols: self.symbols(),
            read,
            radix,
        })
    }

    /// The arguments and locals of frame `level` as gdb's `info args` and `info locals`
    /// print them.
    pub fn frame_variables(&self, level: usize) -> Option<FrameVariables> {
        let frame = self.stack_frames(level + 1).into_iter().nth(level)?;
        let (args, locals) = self.frame_values(&frame);
        let read = |a: u64, b: &mut [u8]| self.read_for_values(a, b);
        let printer = self.printer(&read, Radix::Natural)?;
        let text = |(name, v): (String, Value)| VariableText {
            value: printer.value(&v, 0),
            name,
        };
        Some(FrameVariables {
            arguments: args.into_iter().map(text).collect(),
            locals: locals.into_iter().map(text).collect(),
        })
    }

    /// A backtrace line as gdb prints it (`print frame-arguments scalars`: structures,
    /// unions and arrays show as `...`), without the `#N  `.
    pub fn frame_text(&self, frame: &StackFrame) -> String {
        let (args, _) = self.frame_values(frame);
        let read = |a: u64, b: &mut [u8]| self.read_for_values(a, b);
        let printer = self.printer(&read, Radix::Natural);
        let args: Vec<String> = args
            .iter()
            .map(|(name, v)| {
                let text = if v.ty.is_scalar() {
                    printer.as_ref().map(|p| p.value(v, 0)).unwrap_or_default()
                } else {
                    "...".into()
                };
                format!("{name}={text}")
            })
            .collect();
        let name = frame
            .function
            .clone()
            .or_else(|| gdb_symbol(self.symbols(), frame.pc))
            .unwrap_or_else(|| "??".into());
        let mut out = String::new();
        if frame.show_address {
            out.push_str(&format!("{:#018x} in ", frame.pc));
        }
        out.push_str(&name);
        out.push_str(&format!(" ({})", args.join(", ")));
        if let Some(l) = &frame.line {
            let file = l
                .file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push_str(&format!(" at {file}:{}", l.line));
        }
        out
    }

    /// `print EXPR` in frame `level`: the value as gdb prints it after `$N = `.
    pub fn print_expression(
        &self,
        expr: &str,
        level: usize,
        radix: Radix,
    ) -> Result<String, String> {
        let symbols = self.symbols();
        let info = symbols
            .debug_info()
            .ok_or("no DWARF debugging information for the kernel (try --kernel FILE)")?;
        let frame = self
            .stack_frames(level + 1)
            .into_iter()
            .nth(level)
            .ok_or_else(|| format!("No frame at level {level}."))?;
        let (args, locals) = self.frame_values(&frame);
        let read = |a: u64, b: &mut [u8]| self.read_for_values(a, b);
        let ctx = ExprContext {
            info,
            symbols,
            locals: locals.into_iter().chain(args).collect(),
            unit_of: frame.scope.as_ref().map(|s| s.die),
            registers: frame.regs,
            read: &read,
        };
        let value = evaluate_expression(expr, &ctx)?;
        // As gdb: a value that cannot be read at all is an error, not a value.
        if let Place::Memory(a) = value.place
            && !matches!(value.ty.strip(), Type::Function { .. })
        {
            let size = value.ty.size();
            if size > MAX_PRINTED_VALUE {
                return Err(format!(
                    "value requires {size} bytes, which is more than max-value-size"
                ));
            }
            let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
            read(a, &mut buf).map_err(|f| memory_error(a, f))?;
        }
        let printer = self
            .printer(&read, radix)
            .ok_or("no DWARF debugging information")?;
        Ok(printer.top(&value))
    }
}
