//! A private PostgreSQL cluster started from the installed binaries, for machines where
//! no server answers: used by `cargo run` (under `./.data/`) and by the test harness.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

/// Whether something accepts TCP connections at `addr` within a short timeout.
pub fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// The directory holding `initdb` and `pg_ctl`: the newest `/usr/lib/postgresql/*/bin`, else `PATH`.
pub fn find_bindir() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    if let Some((_, bin)) = candidates.pop() {
        return Ok(bin);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    bail!(
        "no PostgreSQL server answers and no PostgreSQL binaries (initdb, pg_ctl) were found; \
         install PostgreSQL 15+ (e.g. apt-get install postgresql) or set DATABASE_URL"
    )
}

/// A private cluster in `dir`, listening on 127.0.0.1:`port` with trust auth for user `postgres`.
pub struct LocalCluster {
    /// The directory holding `data/`, the socket and the log.
    pub dir: PathBuf,
    /// The TCP port.
    pub port: u16,
}

impl LocalCluster {
    /// The URL of `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Initialises the cluster if needed and starts it unless it is already running.
    /// Returns whether this call started it.
    pub fn start(&self) -> anyhow::Result<bool> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let _lock = lock(&self.dir.join("cluster.lock"))?;
        let data = self.dir.join("data");
        let bindir = find_bindir()?;
        let as_root = is_root();
        if as_root {
            // PostgreSQL refuses to run as root: the cluster belongs to `postgres`.
            run(Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&self.dir))?;
        }
        if !data.join("PG_VERSION").exists() {
            let mut initdb = self.command(&bindir.join("initdb"), as_root);
            initdb.arg("-D").arg(&data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ]);
            run(&mut initdb).context("initdb")?;
        }
        if self.is_running(&bindir, as_root) && answers(addr) {
            return Ok(false);
        }
        if answers(addr) {
            bail!(
                "port {} is in use by another program; free it or set DATABASE_URL",
                self.port
            );
        }
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            self.port,
            self.dir.display()
        );
        let mut pg_ctl = self.command(&bindir.join("pg_ctl"), as_root);
        pg_ctl
            .arg("start")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options]);
        run(&mut pg_ctl).with_context(|| {
            format!(
                "starting PostgreSQL (see {})",
                self.dir.join("postgres.log").display()
            )
        })?;
        Ok(true)
    }

    /// Stops the cluster (fast shutdown).
    pub fn stop(&self) -> anyhow::Result<()> {
        let bindir = find_bindir()?;
        let mut pg_ctl = self.command(&bindir.join("pg_ctl"), is_root());
        pg_ctl
            .arg("stop")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w"]);
        run(&mut pg_ctl)
    }

    fn is_running(&self, bindir: &Path, as_root: bool) -> bool {
        let mut status = self.command(&bindir.join("pg_ctl"), as_root);
        status.arg("status").arg("-D").arg(self.dir.join("data"));
        status
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false)
    }

    fn command(&self, program: &Path, as_root: bool) -> Command {
        if as_root {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{:?} failed: {}{}",
            command.get_program(),
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn lock(path: &Path) -> anyhow::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// Whether the PostgreSQL server named in `url` accepts TCP connections.
pub fn url_answers(url: &str) -> bool {
    use std::net::ToSocketAddrs;
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    host_port
        .to_socket_addrs()
        .map(|mut addrs| addrs.any(answers))
        .unwrap_or(false)
}
