//! The real binaries as processes: a clean environment, and every process killed when
//! the stack that started it is dropped.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::process::{Child, Command, ExitStatus, Stdio};

/// A command for the binary at `path` with a clean environment (`PATH` only), run from
/// the system temp directory with its standard output discarded.
pub fn binary(path: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(path);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null());
    command
}

/// Runs `command` to its end, asserts it refused to start (exit code 2), and answers
/// its standard error.
pub fn refused(command: &mut Command) -> String {
    let output = command
        .stdout(Stdio::piped())
        .output()
        .expect("running the binary");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    String::from_utf8(output.stderr).expect("text on stderr")
}

/// `consumer --topic stripe` against a test stack's database, server and Stripe.
pub fn consumer(
    path: impl AsRef<OsStr>,
    database_url: &str,
    zmq: &str,
    stripe_base: &str,
) -> Command {
    let mut command = binary(path);
    command
        .args(["--topic", "stripe"])
        .env("DATABASE_URL", database_url)
        .env("ZMQ_PUB_ENDPOINT", zmq)
        .env("STRIPE_API_KEY", super::settings::STRIPE_KEY)
        .env("STRIPE_API_BASE", stripe_base);
    command
}

/// Running processes by name, killed (SIGKILL) when this value is dropped, even when a
/// test or a benchmark ends in a panic or an error.
#[derive(Default)]
pub struct Processes {
    children: Vec<(String, Child)>,
}

impl Processes {
    /// Starts `command` as `name`; answers its index for [`Processes::kill`].
    pub fn spawn(&mut self, name: &str, command: &mut Command) -> std::io::Result<usize> {
        self.children.push((name.to_owned(), command.spawn()?));
        Ok(self.children.len() - 1)
    }

    /// SIGKILLs process `index` (no chance to release anything) and reaps it.
    pub fn kill(&mut self, index: usize) {
        let (_, child) = &mut self.children[index];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// How process `index` ended, once it has; `None` while it runs.
    pub fn exit_status(&mut self, index: usize) -> Option<ExitStatus> {
        self.children[index].1.try_wait().ok().flatten()
    }

    /// Peak resident memory (VmHWM) of each running process so far, by name.
    pub fn peak_memory_kib(&self) -> BTreeMap<String, u64> {
        self.children
            .iter()
            .filter_map(|(name, child)| {
                let status =
                    std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
                let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
                let kib = line.split_whitespace().nth(1)?.parse().ok()?;
                Some((name.clone(), kib))
            })
            .collect()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
