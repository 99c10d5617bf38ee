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

    /// The name of system call `nr`, where known.
    pub fn syscall_name(self, nr: u64) -> Option<&'static str> {
        match self {
            GuestKernel::Demo(_) => DEMO_SYSCALLS.get(usize::try_from(nr).ok()?).copied(),
            GuestKernel::Linux(_) | GuestKernel::Unknown => None,
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
                let u64_at = |a: u64| {
                    let mut b = [0u8; 8];
                    read(a, &mut b).then(|| u64::from_le_bytes(b))
                };
                let cur = u64_at(cur)?;
                if cur == 0 {
                    return None;
                }
                let mut b = vec![0u8; pid.size.min(8) as usize];
                if !read(cur.wrapping_add(pid.offset), &mut b) {
                    return None;
                }
                b.resize(8, 0);
                let pid = u64::from_le_bytes(b.try_into().ok()?);
                let name_ptr = u64_at(cur.wrapping_add(name.offset))?;
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
                let u64_at = |a: u64| {
                    let mut b = [0u8; 8];
                    read(a, &mut b).then(|| u64::from_le_bytes(b))
                };
                let base = match per_cpu_offset {
                    Some(table) => u64_at(table)?,
                    None => 0,
                };
                let task = u64_at(base.wrapping_add(current_task))?;
                if task == 0 {
                    return None;
                }
                let mut b = vec![0u8; pid.size.min(8) as usize];
                if !read(task.wrapping_add(pid.offset), &mut b) {
                    return None;
                }
                b.resize(8, 0);
                let pid = u64::from_le_bytes(b.try_into().ok()?);
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
                GuestKernel::Demo(None).syscall_name(nr),
                Some(name.to_lowercase().as_str()),
                "SYS_{name}"
            );
            seen += 1;
        }
        assert_eq!(seen, DEMO_SYSCALLS.len());
        assert_eq!(GuestKernel::Demo(None).syscall_name(99), None);
        assert_eq!(GuestKernel::Unknown.syscall_name(0), None);
    }
}
