//! What one instruction counts for: the single definition shared by the recorder's
//! counter sources and the replay CPU (DESIGN.md section 2).
//!
//! * Every ring-0 instruction that retires counts 1 when it completes.
//! * An instruction that raises an exception does not count; the exception delivery does
//!   not count either.
//! * An interrupt is taken after `icount` instructions have retired: the event's icount
//!   is the count before the first handler instruction.
//! * `hlt` counts 1 when it executes; the wait does not count.
//! * Ring-3 instructions never count (user mode is not replayed).
