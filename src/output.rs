//! Where `record` writes: `FILE.partial`, locked for as long as the recording runs and
//! renamed to `FILE` when it ends (power-off, guest error, Ctrl-C, SIGTERM), so that a
//! reader never sees a half-written file under the final name. After a kill -9 the
//! `.partial` file stays, and `info` and `replay` read what it kept. An existing `FILE`,
//! a `.partial` that another recording is writing, or one left by a recording that was
//! cut short, is never replaced without `--force`.

use anyhow::{Context, Result, bail};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// The file a recording is being written to, and the name it gets when it ends.
pub struct RecordingOutput {
    final_path: PathBuf,
    partial_path: PathBuf,
    /// Holds the exclusive lock while the recording runs.
    file: File,
    committed: bool,
}

/// `FILE.partial`, beside `FILE`.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

impl RecordingOutput {
    /// Claims `path` for a new recording: creates and locks `path.partial`. Fails while
    /// `path` exists or another recording holds the lock, and, without `force`, where a
    /// cut-short recording left its `.partial` (with `force` both are replaced).
    pub fn create(path: &Path, force: bool) -> Result<RecordingOutput> {
        let shown = path.display();
        if path.is_dir() {
            bail!("{shown} is a directory");
        }
        if path.exists() && !force {
            bail!("{shown} exists (use --force to replace it)");
        }
        let partial_path = partial_path(path);
        let partial = partial_path.display();
        let file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial_path)
        {
            Ok(f) => {
                lock(&f).with_context(|| format!("{shown}: another recording took it"))?;
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&partial_path)
                    .with_context(|| format!("opening {partial}"))?;
                lock(&f).with_context(|| {
                    format!("another recording is writing {shown} ({partial} is locked)")
                })?;
                if !force {
                    bail!(
                        "{partial} was left by a recording to {shown} that was cut short \
                         (`krr-tui info {partial}` shows what it kept): remove it or use \
                         --force"
                    );
                }
                f.set_len(0)
                    .with_context(|| format!("truncating {partial}"))?;
                f
            }
            Err(e) => return Err(e).with_context(|| format!("creating {partial}")),
        };
        Ok(RecordingOutput {
            final_path: path.to_path_buf(),
            partial_path,
            file,
            committed: false,
        })
    }

    /// A handle on the locked file to write the recording through.
    pub fn file(&self) -> Result<File> {
        self.file
            .try_clone()
            .with_context(|| format!("{}", self.partial_path.display()))
    }

    /// Gives the finished recording its final name.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.partial_path, &self.final_path).with_context(|| {
            format!(
                "renaming {} to {}",
                self.partial_path.display(),
                self.final_path.display()
            )
        })?;
        self.committed = true;
        Ok(())
    }

    /// Removes the `.partial` file of a recording that never started.
    pub fn abandon(mut self) {
        let _ = std::fs::remove_file(&self.partial_path);
        self.committed = true;
    }
}

impl Drop for RecordingOutput {
    fn drop(&mut self) {
        if !self.committed {
            // An error between writing the first bytes and the end: keep what was
            // written under the clear `.partial` name.
            tracing::warn!(
                "the recording stays in {} (it did not end normally)",
                self.partial_path.display()
            );
        }
    }
}

fn lock(f: &File) -> Result<()> {
    match f.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => bail!("the file is locked by another process"),
        Err(TryLockError::Error(e)) => Err(e).context("locking the file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_file_is_kept_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.krr");
        std::fs::write(&path, b"keep me").unwrap();
        let err = RecordingOutput::create(&path, false).err().unwrap();
        assert!(err.to_string().contains("exists"), "{err:#}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        let out = RecordingOutput::create(&path, true).unwrap();
        use std::io::Write;
        out.file().unwrap().write_all(b"new").unwrap();
        // Until the recording ends, FILE is the old file.
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        out.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!partial_path(&path).exists());
    }

    #[test]
    fn one_writer_per_path_and_a_cut_short_partial_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.krr");
        let first = RecordingOutput::create(&path, false).unwrap();
        for force in [false, true] {
            let err = RecordingOutput::create(&path, force).err().unwrap();
            assert!(err.to_string().contains("another recording"), "{err:#}");
        }
        // The first writer ends without committing (as if killed): its partial file
        // stays, unlocked.
        drop(first);
        assert!(partial_path(&path).exists());
        let err = RecordingOutput::create(&path, false).err().unwrap();
        assert!(err.to_string().contains("cut short"), "{err:#}");
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = RecordingOutput::create(dir.path(), true).err().unwrap();
        assert!(err.to_string().contains("directory"), "{err:#}");
    }
}
