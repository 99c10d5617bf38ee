//! Why the vCPU stopped: [`Exit`], what [`Vm::run`](crate::Vm::run) returns. It owns what
//! the exit carries, so the VM can be used (its memory read, its registers synced) while
//! the exit is handled; an input is completed afterwards with
//! [`Vm::complete_io_in`](crate::Vm::complete_io_in) or
//! [`Vm::complete_mmio_read`](crate::Vm::complete_mmio_read), before the next run.

/// One VM exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// An `out` to `port`: the bytes written (the access size times the repeat count).
    IoOut { port: u16, data: Vec<u8> },
    /// An `in` from `port` of `len` bytes: `len / size` elements of `size` bytes (one
    /// for `in`, a chunk of a string input `ins`/`rep ins`), to be completed with
    /// [`Vm::complete_io_in`](crate::Vm::complete_io_in).
    IoIn { port: u16, size: usize, len: usize },
    /// A read of `len` bytes at guest-physical `gpa` outside guest memory, to be
    /// completed with [`Vm::complete_mmio_read`](crate::Vm::complete_mmio_read).
    MmioRead { gpa: u64, len: usize },
    /// A write at guest-physical `gpa` outside guest memory.
    MmioWrite { gpa: u64, data: Vec<u8> },
    /// `hlt` (there is no in-kernel interrupt controller, so every `hlt` exits).
    Hlt,
    /// The guest can take an interrupt now (asked for with
    /// [`Vm::request_interrupt_window`](crate::Vm::request_interrupt_window)).
    IrqWindowOpen,
    /// A signal stopped the vCPU, a kick or another (KVM_EXIT_INTR, or KVM_RUN returned
    /// EINTR): the guest stopped at an arbitrary instruction.
    Interrupted,
    /// A triple fault.
    Shutdown,
    /// KVM could not go on (KVM_EXIT_INTERNAL_ERROR), for example at an instruction it
    /// cannot emulate: its sub-error code and data words.
    InternalError { suberror: u32, data: Vec<u64> },
    /// Any other exit, named as kvm-ioctls names it.
    Other(String),
}
