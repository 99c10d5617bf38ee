//! The Linux guest's patch (`linux/krr-linux-6.1.patch`) against the agent ABI, without
//! building Linux: the ring layout stays defined once (the patch includes
//! `krr_agent_abi.h` and redefines none of it), and the hooks carry the demo agent's
//! names, which replay, the UI and the tests look up.

const PATCH: &str = include_str!("../linux/krr-linux-6.1.patch");
const DEMO_AGENT: &str = include_str!("../agent/krr_agent.h");

/// The lines the patch adds, without their `+`.
fn added() -> impl Iterator<Item = &'static str> {
    PATCH
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .map(|l| &l[1..])
}

/// The names the ABI header defines: its structs, enums' constants and macros.
fn abi_names() -> Vec<String> {
    let mut names = Vec::new();
    for line in krr_guest::ABI_HEADER.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("#define ") {
            names.push(rest.split_whitespace().next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("struct ")
            && rest.ends_with('{')
        {
            names.push(format!("struct {}", rest.trim_end_matches('{').trim()));
        } else if line.starts_with("KRR_") && line.contains('=') {
            names.push(line.split_whitespace().next().unwrap().to_string());
        }
    }
    names
}

#[test]
fn the_ring_layout_comes_from_the_abi_header() {
    assert!(
        added().any(|l| l.trim() == "#include <krr_agent_abi.h>"),
        "the Linux agent includes the ABI header"
    );
    let names = abi_names();
    assert!(names.len() > 30, "{names:?}");
    for name in names.iter().filter(|n| *n != "KRR_AGENT_ABI_H") {
        for line in added() {
            let l = line.trim();
            assert!(
                !(l.starts_with(&format!("#define {name} "))
                    || l.starts_with(&format!("{name} {{"))
                    || l.starts_with(&format!("{name} ="))),
                "the patch redefines {name} from krr_agent_abi.h: {line}"
            );
        }
    }
}

#[test]
fn hooks_have_the_demo_agents_names() {
    for hook in ["krr_agent_rdtsc", "krr_agent_rdrand", "krr_agent_rdseed"] {
        assert!(
            DEMO_AGENT.contains(&format!(" {hook}(")),
            "{hook} in the demo"
        );
        assert!(
            added().any(|l| l.starts_with("noinstr ") && l.contains(&format!(" {hook}("))),
            "{hook} defined out of line in the Linux agent"
        );
    }
}

#[test]
fn build_script_and_readme_name_one_kernel_version() {
    let build = include_str!("../linux/build.sh");
    let readme = include_str!("../linux/README.md");
    let version = build
        .lines()
        .find_map(|l| l.strip_prefix("LINUX_VERSION="))
        .expect("LINUX_VERSION= in build.sh");
    assert!(version.starts_with("6.1."), "{version}");
    assert!(readme.contains(&format!("Linux {version}")), "{version}");
}

/// One file of the patch: its path (without `a/`) and whether the patch creates it.
struct FilePatch {
    path: String,
    created: bool,
}

/// Parses the patch as `diff -ruN` writes it and checks every hunk's line counts
/// against its header, so that a hand edit that breaks the patch fails here rather
/// than in `build.sh`. Returns its files in order.
fn parse_patch(patch: &str) -> Result<Vec<FilePatch>, String> {
    let lines: Vec<&str> = patch.lines().collect();
    let mut files = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("diff ") {
            i += 1;
            continue;
        }
        let old = line
            .strip_prefix("--- a/")
            .ok_or_else(|| format!("line {}: expected '--- a/PATH', found {line:?}", i + 1))?;
        let new = lines
            .get(i + 1)
            .and_then(|l| l.strip_prefix("+++ b/"))
            .ok_or_else(|| format!("line {}: expected '+++ b/PATH'", i + 2))?;
        let path = old.split_whitespace().next().unwrap_or("").to_string();
        if new.split_whitespace().next() != Some(path.as_str()) {
            return Err(format!("line {}: {old:?} and {new:?} differ", i + 1));
        }
        i += 2;
        let mut created = false;
        let mut hunks = 0;
        while let Some(header) = lines.get(i).and_then(|l| l.strip_prefix("@@ -")) {
            let counts = |s: &str| -> Result<(u64, u64), String> {
                let (start, len) = s.split_once(',').unwrap_or((s, "1"));
                let parse = |v: &str| v.parse::<u64>().map_err(|e| format!("{header:?}: {e}"));
                Ok((parse(start)?, parse(len)?))
            };
            let (old_range, rest) = header
                .split_once(" +")
                .ok_or_else(|| format!("line {}: bad hunk header", i + 1))?;
            let new_range = rest
                .split_once(" @@")
                .ok_or_else(|| format!("line {}: bad hunk header", i + 1))?
                .0;
            let ((old_start, mut old_left), (_, mut new_left)) =
                (counts(old_range)?, counts(new_range)?);
            created |= hunks == 0 && old_start == 0 && old_left == 0;
            hunks += 1;
            i += 1;
            while old_left + new_left > 0 {
                let body = lines
                    .get(i)
                    .ok_or_else(|| format!("{path}: the patch ends inside a hunk"))?;
                match body.as_bytes().first() {
                    Some(b' ') | None => {
                        old_left = old_left.checked_sub(1).ok_or("context")?;
                        new_left = new_left.checked_sub(1).ok_or("context")?;
                    }
                    Some(b'-') => old_left = old_left.checked_sub(1).ok_or("removed")?,
                    Some(b'+') => new_left = new_left.checked_sub(1).ok_or("added")?,
                    Some(b'\\') => {}
                    _ => return Err(format!("line {}: not a hunk line: {body:?}", i + 1)),
                }
                i += 1;
            }
            if lines.get(i).is_some_and(|l| l.starts_with('\\')) {
                i += 1;
            }
        }
        if hunks == 0 {
            return Err(format!("{path}: no hunks"));
        }
        files.push(FilePatch { path, created });
    }
    Ok(files)
}

#[test]
fn every_hunk_matches_its_header_and_the_readme_names_every_file() {
    let files = parse_patch(PATCH).unwrap_or_else(|e| panic!("krr-linux-6.1.patch: {e}"));
    assert!(files.len() >= 10, "{} files", files.len());
    for new in ["arch/x86/kernel/krr.c", "arch/x86/include/asm/krr.h"] {
        assert!(
            files.iter().any(|f| f.path == new && f.created),
            "{new} is created by the patch"
        );
    }
    let readme = include_str!("../linux/README.md");
    for f in &files {
        let name = f.path.rsplit('/').next().unwrap();
        assert!(
            readme.contains(&format!("`{}`", f.path)) || readme.contains(&format!("`{name}`")),
            "linux/README.md does not say what the patch does to {}",
            f.path
        );
    }
    // The parser itself rejects a hunk whose body is one line short.
    let damaged = PATCH.replacen("\n \n", "\n", 1);
    assert!(parse_patch(&damaged).is_err(), "a damaged patch parses");
}

/// Applies the patch (`patch --dry-run`) to the files it touches, unpacked from
/// Debian's `linux-source-6.1` when that package is installed at the version
/// `build.sh` names (CI installs it to build the kernel); skipped otherwise.
#[test]
fn the_patch_applies_to_debians_linux_source() {
    use std::process::Command;
    const TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
    let version = include_str!("../linux/build.sh")
        .lines()
        .find_map(|l| l.strip_prefix("LINUX_VERSION="))
        .expect("LINUX_VERSION= in build.sh");
    if !std::path::Path::new(TARBALL).is_file() {
        println!("skipped: {TARBALL} absent (apt-get install linux-source-6.1)");
        return;
    }
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "linux-source-6.1"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if installed.split('-').next() != Some(version) {
        println!("skipped: linux-source-6.1 is {installed:?}, the patch is for {version}");
        return;
    }
    let files = parse_patch(PATCH).expect("the patch parses");
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Command::new("tar")
        .arg("-xJf")
        .arg(TARBALL)
        .arg("-C")
        .arg(dir.path())
        .args(
            files
                .iter()
                .filter(|f| !f.created)
                .map(|f| format!("linux-source-6.1/{}", f.path)),
        )
        .status()
        .expect("run tar");
    assert!(status.success(), "tar could not unpack the patched files");
    let tree = dir.path().join("linux-source-6.1");
    let patch_file = dir.path().join("krr.patch");
    std::fs::write(&patch_file, PATCH).unwrap();
    let out = Command::new("patch")
        .args(["-p1", "--dry-run", "-f", "-d"])
        .arg(&tree)
        .arg("-i")
        .arg(&patch_file)
        .output()
        .expect("run patch");
    assert!(
        out.status.success(),
        "the patch does not apply to linux-source-6.1 {installed}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        !report.contains("offset") && !report.contains("fuzz"),
        "the patch applies only with offsets or fuzz (regenerate it):\n{report}"
    );
}
