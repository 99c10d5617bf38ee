//! Stopping a running vCPU from another thread: a real-time signal whose handler sets
//! `kvm_run.immediate_exit` of the vCPU registered on the signalled thread, so KVM_RUN
//! returns EINTR whether the signal arrives during the ioctl or just before it (no lost
//! wake-ups). [`Vm::accept_kicks`](crate::Vm::accept_kicks) registers a vCPU and returns
//! its [`Kicker`]; [`TimeLimit`] kicks once a duration has passed.

use kvm_bindings::kvm_run;
use std::cell::Cell;
use std::sync::Once;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

thread_local! {
    /// The kvm_run structure of the vCPU that runs on this thread, if any.
    static RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

extern "C" fn on_kick(_: libc::c_int) {
    // A const-initialised thread-local without a destructor: safe to touch here.
    let run = RUN.with(|r| r.get());
    if !run.is_null() {
        // SAFETY: `run` points to the mmap'ed kvm_run of a vCPU registered on this
        // thread by `register`; `Vm` unregisters it before unmapping it (or never
        // unmaps it, when dropped on another thread).
        unsafe { std::ptr::write_volatile(&raw mut (*run).immediate_exit, 1) };
    }
}

/// Installs the kick handler once per process.
fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a plain sigaction with a handler that only does an atomic-sized store
        // (no SA_RESTART: an interrupted KVM_RUN returns EINTR).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// Registers `run` as the calling thread's vCPU and returns a kicker for this thread.
/// The caller keeps the mapping alive until [`unregister`] on this thread.
pub(crate) fn register(run: *mut kvm_run) -> Kicker {
    install_handler();
    RUN.with(|r| r.set(run));
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    Kicker { tid }
}

/// Forgets `run` if it is the calling thread's registered vCPU.
pub(crate) fn unregister(run: *mut kvm_run) {
    RUN.with(|r| {
        if r.get() == run {
            r.set(std::ptr::null_mut());
        }
    });
}

/// A handle to kick the vCPU of one thread from elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct Kicker {
    tid: libc::pid_t,
}

impl Kicker {
    /// Stops the thread's vCPU: its KVM_RUN returns EINTR now or at its next call, until
    /// [`Vm::clear_kick`](crate::Vm::clear_kick). Harmless if the thread has no vCPU
    /// registered or has exited.
    pub fn kick(&self) {
        // SAFETY: tgkill sends a signal to one thread of this process (or fails with
        // ESRCH if it is gone); the handler is installed (a Kicker comes from `register`)
        // and only touches that thread's own registration.
        unsafe {
            libc::syscall(libc::SYS_tgkill, libc::getpid(), self.tid, kick_signal());
        }
    }
}

/// Kicks a vCPU once a time limit has passed, unless dropped before.
#[derive(Debug)]
pub struct TimeLimit {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TimeLimit {
    pub fn start(kicker: Kicker, limit: Duration) -> TimeLimit {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if stopped.recv_timeout(limit) == Err(RecvTimeoutError::Timeout) {
                kicker.kick();
            }
        });
        TimeLimit {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for TimeLimit {
    fn drop(&mut self) {
        // Disconnecting the channel wakes the thread.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
