//! Stopping a running vCPU from another thread: a real-time signal whose handler sets
//! `kvm_run.immediate_exit`, so KVM_RUN returns EINTR whether the signal arrives during
//! the ioctl or just before it (no lost wake-ups).

use kvm_bindings::kvm_run;
use std::cell::Cell;
use std::sync::Once;

thread_local! {
    /// The kvm_run structure of the vCPU that runs on this thread, if any.
    static RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

extern "C" fn on_kick(_: libc::c_int) {
    // A const-initialised thread-local without a destructor: safe to touch here.
    let run = RUN.with(|r| r.get());
    if !run.is_null() {
        // SAFETY: `run` points to the mmap'ed kvm_run of the vCPU owned by this thread,
        // registered by `VcpuThreadGuard` and cleared before it is unmapped.
        unsafe { std::ptr::write_volatile(&raw mut (*run).immediate_exit, 1) };
    }
}

/// Installs the kick handler once per process.
pub fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a plain sigaction with a handler that only does an atomic-sized store.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// Registers the calling thread's vCPU for kicks while it lives.
pub struct VcpuThreadGuard;

impl VcpuThreadGuard {
    pub fn new(run: *mut kvm_run) -> Self {
        install_handler();
        RUN.with(|r| r.set(run));
        VcpuThreadGuard
    }
}

impl Drop for VcpuThreadGuard {
    fn drop(&mut self) {
        RUN.with(|r| r.set(std::ptr::null_mut()));
    }
}

/// A handle to kick the vCPU thread from elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct Kicker {
    thread: libc::pthread_t,
}

// SAFETY: pthread_t is an opaque identifier; sending it between threads is fine.
unsafe impl Send for Kicker {}

impl Kicker {
    /// A kicker for the calling thread.
    pub fn for_current_thread() -> Self {
        // SAFETY: pthread_self has no preconditions.
        Kicker {
            thread: unsafe { libc::pthread_self() },
        }
    }

    pub fn kick(&self) {
        // SAFETY: the thread outlives every kicker (the timer thread is joined before the
        // vCPU thread returns), and the handler is installed.
        unsafe {
            libc::pthread_kill(self.thread, kick_signal());
        }
    }
}
