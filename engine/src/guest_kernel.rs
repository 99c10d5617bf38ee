//! What the debugger knows of the guest's kernel beyond its symbols and DWARF: the names
//! of its system calls and where its current process is kept. One home per kernel: the
//! built-in demo kernel (its `syscalls.h` and `struct proc`, checked against the C
//! sources by a test) and Linux (`current_task`, and its `task_struct`'s `pid` and
//! `comm`, through the vmlinux's DWARF types).

use crate::symbols::{Member, Symbols};
use crate::trace::Header;

/// The kernels the debugger knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKernel {
    /// The built-in demo kernel (`guest-agent/demo`), with where its current process is
    /// (None where its symbols or DWARF types do not say).
    Demo(Option<DemoProcess>),
    /// Linux, with where its current task is (None where the vmlinux's DWARF types are
    /// not at hand).
    Linux(Option<LinuxTask>),
    /// A kernel the debugger knows only by its symbols.
    Unknown,
}

/// The demo kernel's system calls by number (`guest-agent/demo/syscalls.h`).
pub const DEMO_SYSCALLS: [&str; 9] = [
    "write",
    "read_disk",
    "sleep",
    "getpid",
    "uptime",
    "exit",
    "spawn",
    "wait",
    "random",
];

/// Where the demo kernel keeps its current process: `struct proc *cur`, and the
/// members of `struct proc` read from the DWARF types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoProcess {
    cur: u64,
    pid: Member,
    name: Member,
}

/// Where Linux keeps its current task: the per-CPU `current_task` (CPU 0's: the
/// guest has one CPU; a kernel built without SMP has it as a plain variable) and the
/// members of `struct task_struct` read from the DWARF types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxTask {
    current_task: u64,
    /// `__per_cpu_offset`, whose first entry is CPU 0's per-CPU base (SMP kernels).
    per_cpu_offset: Option<u64>,
    pid: Member,
    comm: Member,
}

/// A process of the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u64,
    pub name: String,
}

/// Longest process name read from the guest.
const MAX_NAME: usize = 32;

impl GuestKernel {
    /// The kernel a recording ran: the demo by its header's name, or by the symbols
    /// only the demo has (a demo kernel named by file).
    pub fn of(header: &Header, symbols: &Symbols) -> GuestKernel {
        let demo_symbols = ["syscall_dispatch", "proc_spawn", "procs", "cur"]
            .iter()
            .all(|s| symbols.address_of(s).is_some());
        let linux_symbols = ["start_kernel", "init_task", "current_task"]
            .iter()
            .all(|s| symbols.address_of(s).is_some());
        if linux_symbols {
            let task = (|| {
                Some(LinuxTask {
                    current_task: symbols.address_of("current_task")?,
                    per_cpu_offset: symbols.data_symbol("__per_cpu_offset").map(|d| d.addr),
                    pid: symbols.member("task_struct", "pid")?,
                    comm: symbols.member("task_struct", "comm")?,
                })
            })();
            return GuestKernel::Linux(task);
        }
        if header.kernel.name == "builtin:demo" || demo_symbols {
            let process = (|| {
                Some(DemoProcess {
                    cur: symbols.address_of("cur")?,
                    pid: symbols.member("proc", "pid")?,
                    name: symbols.member("proc", "name")?,
                })
            })();
            GuestKernel::Demo(process)
        } else {
            GuestKernel::Unknown
        }
    }

    /// The name of system call `nr`, where known: the demo's table; Linux's
    /// `sys_call_table` entry, read with `read` (guest virtual memory) and named by
    /// `symbols` without its `__x64_sys_` prefix, as `strace` names it.
    pub fn syscall_name(
        self,
        nr: u64,
        symbols: &Symbols,
        read: &dyn Fn(u64, &mut [u8]) -> bool,
    ) -> Option<String> {
        match self {
            GuestKernel::Demo(_) => DEMO_SYSCALLS
                .get(usize::try_from(nr).ok()?)
                .map(|s| s.to_string()),
            GuestKernel::Linux(_) => {
                // A data symbol from the vmlinux; in a recording's own symbol list
                // (no vmlinux at hand) it is listed among the functions.
                let (table, size) = match symbols.data_symbol("sys_call_table") {
                    Some(d) => (d.addr, d.size),
                    None => {
                        let addr = symbols.address_of("sys_call_table")?;
                        let located = symbols.lookup(addr).filter(|l| l.offset == 0)?;
                        (addr, located.function.size)
                    }
                };
                if nr >= size / 8 {
                    return None;
                }
                let handler = read_uint(read, table.wrapping_add(nr * 8), 8)?;
                let located = symbols.lookup(handler)?;
                if located.offset != 0 {
                    return None;
                }
                let name = &located.function.name;
                Some(
                    name.strip_prefix("__x64_sys_")
                        .or_else(|| name.strip_prefix("__x64_"))
                        .unwrap_or(name)
                        .to_string(),
                )
            }
            GuestKernel::Unknown => None,
        }
    }

    /// The process the kernel runs now, read with `read` (guest virtual memory; false
    /// where unmapped) through the layout of its structures. None in the kernel's
    /// own context (the demo's `cur` is null there) or where the kernel is unknown.
    pub fn current_process(self, read: &dyn Fn(u64, &mut [u8]) -> bool) -> Option<Process> {
        match self {
            GuestKernel::Demo(layout) => {
                // struct proc *cur; cur->pid (int), cur->name (const char *).
                let DemoProcess { cur, pid, name } = layout?;
                let cur = read_uint(read, cur, 8)?;
                if cur == 0 {
                    return None;
                }
                let pid = read_uint(read, cur.wrapping_add(pid.offset), pid.size)?;
                let name_ptr = read_uint(read, cur.wrapping_add(name.offset), 8)?;
                Some(Process {
                    pid,
                    name: read_c_string(read, name_ptr),
                })
            }
            GuestKernel::Linux(layout) => {
                // current_task (per CPU), task->pid (pid_t), task->comm (char[16]).
                let LinuxTask {
                    current_task,
                    per_cpu_offset,
                    pid,
                    comm,
                } = layout?;
                let base = match per_cpu_offset {
                    Some(table) => read_uint(read, table, 8)?,
                    None => 0,
                };
                let task = read_uint(read, base.wrapping_add(current_task), 8)?;
                if task == 0 {
                    return None;
                }
                let pid = read_uint(read, task.wrapping_add(pid.offset), pid.size)?;
                let mut name = vec![0u8; comm.size.min(MAX_NAME as u64) as usize];
                if !read(task.wrapping_add(comm.offset), &mut name) {
                    return None;
                }
                let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                Some(Process {
                    pid,
                    name: String::from_utf8_lossy(&name[..end]).into_owned(),
                })
            }
            GuestKernel::Unknown => None,
        }
    }
}

/// A little-endian unsigned integer of `size` bytes (1 to 8) at `addr`.
fn read_uint(read: &dyn Fn(u64, &mut [u8]) -> bool, addr: u64, size: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    let n = usize::try_from(size.clamp(1, 8)).ok()?;
    read(addr, &mut b[..n]).then(|| u64::from_le_bytes(b))
}

/// A NUL-terminated string of at most [`MAX_NAME`] bytes (`?` where unreadable).
fn read_c_string(read: &dyn Fn(u64, &mut [u8]) -> bool, addr: u64) -> String {
    let mut out = Vec::new();
    for i in 0..MAX_NAME as u64 {
        let mut b = [0u8; 1];
        if !read(addr.wrapping_add(i), &mut b) {
            return "?".into();
        }
        if b[0] == 0 {
            break;
        }
        out.push(b[0]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Most records read from the kernel log (the ring holds fewer; a corrupt ring stops
/// here).
const MAX_LOG_RECORDS: usize = 1 << 20;
/// Largest kernel log ring accepted (Linux's `log_buf_len` is at most 2 GiB; the
/// guest's 32 bits of `size_bits` are read from guest memory).
const MAX_LOG_BITS: u32 = 31;

/// The layout of Linux's printk ring buffer (`kernel/printk/printk_ringbuffer.h`) from
/// the vmlinux's DWARF types, read as the kernel's own `lx-dmesg` reads it.
struct PrintkLayout {
    prb: u64,
    desc_ring: u64,
    text_data_ring: u64,
    count_bits: Member,
    descs: Member,
    infos: Member,
    head_id: Member,
    tail_id: Member,
    desc_size: u64,
    state_var: u64,
    text_begin: u64,
    text_next: u64,
    info_size: u64,
    ts_nsec: u64,
    text_len: u64,
    size_bits: Member,
    data: Member,
}

impl PrintkLayout {
    fn of(symbols: &Symbols) -> Option<PrintkLayout> {
        let info = symbols.debug_info()?;
        let m = |s: &str, f: &str| symbols.member(s, f);
        let size = |s: &str| info.named_type(&format!("struct {s}")).map(|t| t.size());
        let lpos = m("prb_desc", "text_blk_lpos")?.offset;
        Some(PrintkLayout {
            prb: symbols.data_symbol("prb")?.addr,
            desc_ring: m("printk_ringbuffer", "desc_ring")?.offset,
            text_data_ring: m("printk_ringbuffer", "text_data_ring")?.offset,
            count_bits: m("prb_desc_ring", "count_bits")?,
            descs: m("prb_desc_ring", "descs")?,
            infos: m("prb_desc_ring", "infos")?,
            head_id: m("prb_desc_ring", "head_id")?,
            tail_id: m("prb_desc_ring", "tail_id")?,
            desc_size: size("prb_desc")?,
            state_var: m("prb_desc", "state_var")?.offset,
            text_begin: lpos + m("prb_data_blk_lpos", "begin")?.offset,
            text_next: lpos + m("prb_data_blk_lpos", "next")?.offset,
            info_size: size("printk_info")?,
            ts_nsec: m("printk_info", "ts_nsec")?.offset,
            text_len: m("printk_info", "text_len")?.offset,
            size_bits: m("prb_data_ring", "size_bits")?,
            data: m("prb_data_ring", "data")?,
        })
    }
}

/// Why the kernel log cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelLogError {
    #[error(
        "the kernel log is Linux's printk ring; this kernel has none (the console pane shows its output)"
    )]
    NotLinux,
    #[error(
        "the printk ring's layout is not in the kernel's DWARF information (replay with --kernel VMLINUX)"
    )]
    NoLayout,
    #[error("the printk ring cannot be read here: {0}")]
    Unreadable(&'static str),
}

impl GuestKernel {
    /// The kernel log (`dmesg`) as it stands: Linux's printk ring read through the
    /// vmlinux's types, one `[seconds] text` line per line of each record, as
    /// `lx-dmesg` prints it.
    pub fn kernel_log(
        self,
        symbols: &Symbols,
        read: &dyn Fn(u64, &mut [u8]) -> bool,
    ) -> Result<Vec<String>, KernelLogError> {
        let GuestKernel::Linux(_) = self else {
            return Err(KernelLogError::NotLinux);
        };
        let l = PrintkLayout::of(symbols).ok_or(KernelLogError::NoLayout)?;
        let unreadable = KernelLogError::Unreadable;
        let uint = |a: u64, size: u64| read_uint(read, a, size);
        let prb = uint(l.prb, 8).ok_or(unreadable("prb"))?;
        let ring = prb.wrapping_add(l.desc_ring);
        let count_bits =
            uint(ring + l.count_bits.offset, l.count_bits.size).ok_or(unreadable("count_bits"))?;
        if count_bits > u64::from(MAX_LOG_BITS) {
            return Err(unreadable("count_bits out of range"));
        }
        let count = 1u64 << count_bits;
        let descs = uint(ring + l.descs.offset, 8).ok_or(unreadable("descs"))?;
        let infos = uint(ring + l.infos.offset, 8).ok_or(unreadable("infos"))?;
        let head = uint(ring + l.head_id.offset, l.head_id.size).ok_or(unreadable("head_id"))?;
        let tail = uint(ring + l.tail_id.offset, l.tail_id.size).ok_or(unreadable("tail_id"))?;
        let data_ring = prb.wrapping_add(l.text_data_ring);
        let size_bits = uint(data_ring + l.size_bits.offset, l.size_bits.size)
            .ok_or(unreadable("size_bits"))?;
        if size_bits > u64::from(MAX_LOG_BITS) {
            return Err(unreadable("size_bits out of range"));
        }
        let data_size = 1u64 << size_bits;
        let data = uint(data_ring + l.data.offset, 8).ok_or(unreadable("data"))?;
        // state_var: the top two bits are the state, the rest the id.
        const COMMITTED: u64 = 1;
        const FINALIZED: u64 = 2;
        let flags_shift = 62;
        let id_mask = !(3u64 << flags_shift);
        let mut out = Vec::new();
        let mut id = tail;
        for _ in 0..MAX_LOG_RECORDS.min(usize::try_from(count).unwrap_or(usize::MAX)) {
            let index = id % count;
            let desc = descs.wrapping_add(index * l.desc_size);
            let info = infos.wrapping_add(index * l.info_size);
            let state = uint(desc + l.state_var, 8).map(|v| (v >> flags_shift) & 3);
            if matches!(state, Some(COMMITTED | FINALIZED)) {
                let begin = uint(desc + l.text_begin, 8).unwrap_or(1) % data_size;
                let end = uint(desc + l.text_next, 8).unwrap_or(0) % data_size;
                let text = if begin & 1 == 1 {
                    String::new()
                } else {
                    // A block that wraps starts at the beginning of the data ring; its
                    // text follows the block's id.
                    let begin = if begin > end { 0 } else { begin };
                    let start = begin + 8;
                    let len = uint(info + l.text_len, 2).unwrap_or(0);
                    let len = len.min(end.saturating_sub(start));
                    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
                    if read(data.wrapping_add(start), &mut buf) {
                        String::from_utf8_lossy(&buf).into_owned()
                    } else {
                        "<unreadable>".into()
                    }
                };
                let ts = uint(info + l.ts_nsec, 8).unwrap_or(0);
                for line in text.lines() {
                    out.push(format!(
                        "[{:5}.{:06}] {line}",
                        ts / 1_000_000_000,
                        ts % 1_000_000_000 / 1000
                    ));
                }
            }
            if id == head {
                break;
            }
            id = (id + 1) & id_mask;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table is the demo's `syscalls.h`: every `#define SYS_NAME N` at its number.
    #[test]
    fn the_demo_syscall_names_are_those_of_its_header() {
        let header = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-agent/demo/syscalls.h"),
        )
        .expect("syscalls.h");
        let mut seen = 0;
        for line in header.lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("#define") {
                continue;
            }
            let (Some(name), Some(nr)) = (w.next(), w.next()) else {
                continue;
            };
            let (Some(name), Ok(nr)) = (name.strip_prefix("SYS_"), nr.parse::<u64>()) else {
                continue;
            };
            assert_eq!(
                GuestKernel::Demo(None).syscall_name(nr, &Symbols::empty(), &|_, _| false),
                Some(name.to_lowercase()),
                "SYS_{name}"
            );
            seen += 1;
        }
        assert_eq!(seen, DEMO_SYSCALLS.len());
        assert_eq!(
            GuestKernel::Demo(None).syscall_name(99, &Symbols::empty(), &|_, _| false),
            None
        );
        assert_eq!(
            GuestKernel::Unknown.syscall_name(0, &Symbols::empty(), &|_, _| false),
            None
        );
    }
}
