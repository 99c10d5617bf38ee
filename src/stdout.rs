//! Standard output that may be closed: `krr-tui info FILE | head -1` is a normal end.
//! [`outln!`] writes a line and returns the error instead of panicking as `println!`
//! does; `main` ends quietly (status 0) when the error is a broken pipe.

/// `println!` returning an [`std::io::Result`].
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}
pub(crate) use outln;

/// Whether `e` (or any error in its chain) is a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
