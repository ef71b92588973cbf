//! Python tools a test needs (an SDK, a checker from PyPI), installed on first use into a
//! venv of their own under the target directory, pinned so that a new release cannot change
//! what a test means.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The python of a venv at `venv` holding `requirements`, made once and reused while
/// `ready` (a `python -c` program) exits 0. Panics with what to do when it cannot be made.
pub fn venv(venv: &Path, requirements: &[&str], ready: &str) -> PathBuf {
    let python = venv.join("bin").join("python");
    let is_ready = |python: &Path| {
        Command::new(python)
            .args(["-c", ready])
            .status()
            .is_ok_and(|s| s.success())
    };
    if is_ready(&python) {
        return python;
    }
    let wanted = requirements.join(" ");
    // Whatever is there is broken or another version.
    let _ = std::fs::remove_dir_all(venv);
    // Made aside and renamed into place, so test binaries running at once cannot see a
    // half-made venv (a venv run by its own bin/python may move).
    let aside = venv.with_extension(format!("{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&aside);
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&aside)
        .output();
    match created {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "{wanted} could not be installed: python3 -m venv failed (on Debian: apt-get \
             install python3-venv): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("{wanted} could not be installed: no python3 ({e})"),
    }
    let pip = Command::new(aside.join("bin").join("python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(requirements)
        .output()
        .expect("running pip");
    if pip.status.success() {
        // Another process may have won the race: its venv is as good as ours.
        if std::fs::rename(&aside, venv).is_err() {
            let _ = std::fs::remove_dir_all(&aside);
        }
    }
    assert!(
        pip.status.success() && is_ready(&python),
        "{wanted} could not be installed (pip install {wanted}; PyPI must be reachable): {}",
        String::from_utf8_lossy(&pip.stderr)
    );
    python
}
