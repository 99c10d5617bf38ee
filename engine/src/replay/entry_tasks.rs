//! The task that entered the kernel at each entry from user mode, as replay applies the
//! entries: the debugger's knowledge of the guest kernel ([`crate::guest_kernel`]) reads
//! it at that moment, so an event shows the task that made it even after the task
//! exited or exec'd. Shared by every copy of a replay, like where events were applied.

use crate::guest_kernel::Process;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Reads the current task through guest virtual memory (false where unmapped).
pub type TaskReader = Arc<dyn Fn(&dyn Fn(u64, &mut [u8]) -> bool) -> Option<Process> + Send + Sync>;

/// Most entries remembered: past this, later entries are not (a bound on memory for
/// recordings of millions of system calls; each costs a few dozen bytes).
pub const MAX_ENTRY_TASKS: usize = 1 << 20;

/// Event number -> task, with the distinct tasks held once.
#[derive(Default)]
pub struct EntryTasks {
    inner: Mutex<Tasks>,
}

#[derive(Default)]
struct Tasks {
    by_event: BTreeMap<u64, u32>,
    distinct: Vec<Process>,
    index: BTreeMap<(u64, String), u32>,
}

impl EntryTasks {
    pub fn new() -> Arc<EntryTasks> {
        Arc::new(EntryTasks::default())
    }

    /// Notes that event `n` was an entry made by `task`.
    pub fn note(&self, n: u64, task: Process) {
        let Ok(mut t) = self.inner.lock() else {
            return;
        };
        if t.by_event.len() >= MAX_ENTRY_TASKS && !t.by_event.contains_key(&n) {
            return;
        }
        let key = (task.pid, task.name.clone());
        let i = match t.index.get(&key) {
            Some(&i) => i,
            None => {
                let i = t.distinct.len() as u32;
                t.distinct.push(task);
                t.index.insert(key, i);
                i
            }
        };
        t.by_event.insert(n, i);
    }

    /// The task that made entry event `n`, where replay has applied it.
    pub fn task(&self, n: u64) -> Option<Process> {
        let t = self.inner.lock().ok()?;
        let i = *t.by_event.get(&n)?;
        t.distinct.get(i as usize).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_kept_per_event_and_held_once() {
        let t = EntryTasks::new();
        let init = Process {
            pid: 1,
            name: "init".into(),
        };
        t.note(5, init.clone());
        t.note(9, init.clone());
        t.note(
            12,
            Process {
                pid: 20,
                name: "cat".into(),
            },
        );
        assert_eq!(t.task(5), Some(init.clone()));
        assert_eq!(t.task(9), Some(init));
        assert_eq!(t.task(12).map(|p| p.pid), Some(20));
        assert_eq!(t.task(6), None);
        assert_eq!(t.inner.lock().unwrap().distinct.len(), 2);
    }
}
