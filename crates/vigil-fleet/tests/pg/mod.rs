//! A real PostgreSQL server (Debian's `postgresql` package) for the tests, on a free port,
//! stopped when dropped.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vigil-fleet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A PostgreSQL server of its own, stopped when dropped.
pub struct Postgres {
    child: Child,
    pub port: u16,
    _dir: PathBuf,
}

impl Drop for Postgres {
    /// The server may be a grandchild (under `runuser`): stopped by its own pid file
    /// (SIGQUIT: an immediate shutdown, its backends with it), then the wrapper.
    fn drop(&mut self) {
        stop_postmaster(&self._dir.join("data"));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stop_postmaster(data: &Path) {
    if let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
    {
        let _ = Command::new("kill")
            .args(["-QUIT", &pid.to_string()])
            .status();
    }
}

fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

/// `cmd` as the `postgres` user when this runs as root (initdb refuses root).
fn as_postgres(bin: &Path, args: &[&str]) -> Command {
    let root = running_as_root();
    let mut c = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    c.args(args);
    c
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

pub fn start_postgres() -> Option<Postgres> {
    let bin = pg_bin()?;
    let dir = temp_dir("pg");
    let data = dir.join("data");
    if running_as_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "chown of {} to postgres", dir.display());
    }
    let out = as_postgres(
        &bin.join("initdb"),
        &[
            "-D",
            data.to_str()?,
            "-A",
            "trust",
            "-U",
            "vigil",
            "--no-sync",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = as_postgres(
        &bin.join("postgres"),
        &[
            "-D",
            data.to_str()?,
            "-p",
            &port.to_string(),
            "-k",
            dir.to_str()?,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let pg = Postgres {
        child,
        port,
        _dir: dir,
    };
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "postgres did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(pg)
}
