//! gdb against `krr-tui replay --gdb`: the server on a free port, and Debian's gdb in
//! batch mode on a script (the gdb end-to-end tests).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The checked-in demo recording.
pub fn demo_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demo.krr")
}

pub fn gdb_available() -> bool {
    match Command::new("gdb").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            println!("skipped: gdb is not installed");
            false
        }
    }
}

/// A `krr-tui replay --gdb` server on a free port, killed if the test fails.
pub struct Server {
    pub child: Child,
    pub addr: String,
    /// The gdb command file the server announced (`gdb -x FILE`).
    pub commands: Option<PathBuf>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_on(&demo_fixture())
    }

    pub fn start_on(recording: &Path) -> Server {
        Server::start_with(recording, &[])
    }

    pub fn start_with(recording: &Path, args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_krr-tui"))
            .arg("replay")
            .arg(recording)
            .args(["--gdb", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("krr-tui starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut commands = None;
        let addr = loop {
            let line = lines
                .next()
                .expect("the server announces its address")
                .expect("stdout is text");
            if let Some((_, file)) = line.split_once("gdb -x ") {
                commands = Some(PathBuf::from(file.trim()));
            }
            if let Some(rest) = line.strip_prefix("gdb: listening on ") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            addr,
            commands,
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The server must exit, successfully, within 10 s of the client's detach.
    pub fn assert_exits_after_detach(&mut self) {
        let status = self
            .wait(Duration::from_secs(10))
            .expect("the server exits after detach");
        assert!(status.success(), "{status:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs gdb in batch mode on `script`, with a time limit. Without `elf`, gdb takes the
/// executable the server offers.
pub fn run_gdb(elf: Option<&Path>, script: &str, dir: &Path) -> String {
    let script_path = dir.join("script.gdb");
    std::fs::write(&script_path, script).unwrap();
    let (out, err) = run_gdb_file(elf, &script_path, Duration::from_secs(300));
    out + &err
}

/// Runs gdb in batch mode on the script file `script_path` (gdb commands, or Python
/// for a `.py`), failing the test if it takes longer than `limit`; its stdout and
/// stderr.
pub fn run_gdb_file(elf: Option<&Path>, script_path: &Path, limit: Duration) -> (String, String) {
    let mut cmd = Command::new("gdb");
    cmd.args([
        "-batch",
        "-nx",
        "-ex",
        "set pagination off",
        "-ex",
        "set confirm off",
    ]);
    if let Some(elf) = elf {
        cmd.arg("-ex").arg(format!("file {}", elf.display()));
    }
    let mut child = cmd
        .arg("-x")
        .arg(script_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gdb starts");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        (s, e)
    });
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("gdb did not finish {} in {limit:?}", script_path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}
