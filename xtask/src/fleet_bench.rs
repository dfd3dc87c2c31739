//! `cargo xtask fleet-bench`: the fleet console under simulated fleets (`vigil-fleet
//! simulate`), with SQLite and with PostgreSQL, on this machine: a real mosquitto, a real
//! PostgreSQL (Debian's server binaries, a cluster of its own), the release binaries. Per store
//! and fleet size: events stored per second against events sent, ingest lag p50/p99 (the
//! console's clock at storage minus the event's time), the Fleet and Review pages' render time
//! p50/p99 (sampled every second while the fleet runs), the console's peak RSS.
//!
//! `--runs 100x50,1000x200,5000x1000` (boxes x fleet events per second), `--seconds 30`,
//! `--stores sqlite,postgres`; writes `benches/results/fleet-scale.json`.

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kid(Child);
impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A PostgreSQL server (a grandchild under `runuser`): stopped through its pid file, then its
/// wrapper (the `Kid`, dropped after).
struct Pg {
    _wrapper: Kid,
    data: std::path::PathBuf,
}
impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
        {
            let _ = Command::new("kill")
                .args(["-QUIT", &pid.to_string()])
                .status();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16) -> Result<()> {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("nothing listens on {port} after 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// `cmd` with a raised descriptor limit (thousands of MQTT connections).
fn many_fds(cmd: &str, args: &[String]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("ulimit -n 65536 2>/dev/null || ulimit -n 16384; exec \"$0\" \"$@\"")
        .arg(cmd)
        .args(args);
    c
}

pub(crate) fn http(port: u16, req: &str) -> Result<(u16, String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, head.to_string(), body.to_string()))
}

/// Logs in to a console; the session cookie.
pub(crate) fn login(port: u16, name: &str, password: &str) -> Result<String> {
    let form = format!("name={name}&password={password}");
    let (_, head, _) = http(
        port,
        &format!(
            "POST /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
    )?;
    Ok(head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            k.eq_ignore_ascii_case("set-cookie").then_some(v)
        })
        .and_then(|c| c.split(';').next())
        .context("login: no session cookie")?
        .to_string())
}

/// A form POST with a session cookie: (status, head, body).
pub(crate) fn post(
    port: u16,
    path: &str,
    cookie: &str,
    form: &str,
) -> Result<(u16, String, String)> {
    http(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
    )
}

pub(crate) fn get(port: u16, path: &str, cookie: &str) -> Result<(u16, String)> {
    let (code, _, body) = http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {cookie}\r\n\r\n"),
    )?;
    Ok((code, body))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// The console's lag buckets (`lag_ms_buckets`: bucket k up to 2^(k/4) ms, rounded).
fn lag_quantile(b: &[u64], q: f64) -> f64 {
    let total: u64 = b.iter().sum();
    if total == 0 {
        return f64::NAN;
    }
    let want = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (k, n) in b.iter().enumerate() {
        seen += n;
        if seen >= want {
            return 2f64.powf(k as f64 / 4.0).round();
        }
    }
    f64::NAN
}

fn stats(port: u16) -> Result<serde_json::Value> {
    let (_, _, body) = http(
        port,
        "GET /api/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )?;
    Ok(serde_json::from_str(&body)?)
}

fn buckets(v: &serde_json::Value) -> Vec<u64> {
    v["lag_ms_buckets"]
        .as_array()
        .map(|a| a.iter().map(|x| x.as_u64().unwrap_or(0)).collect())
        .unwrap_or_default()
}

/// A PostgreSQL server of its own in `dir` on `port` (as the `postgres` user when root).
fn postgres(dir: &Path, port: u16) -> Result<Pg> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (cargo xtask setup installs it)")?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .max()
        .context("no initdb under /usr/lib/postgresql")?;
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let run = |exe: &str| {
        let mut c = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join(exe));
            c
        } else {
            Command::new(bin.join(exe))
        };
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c
    };
    std::fs::create_dir_all(dir)?;
    if root {
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()?;
    }
    let data = dir.join("data");
    if !run("initdb")
        .args([
            "-D",
            &data.display().to_string(),
            "-A",
            "trust",
            "-U",
            "vigil",
            "--no-sync",
        ])
        .status()?
        .success()
    {
        bail!("initdb failed");
    }
    let child = run("postgres")
        .args([
            "-D",
            &data.display().to_string(),
            "-p",
            &port.to_string(),
            "-k",
            &dir.display().to_string(),
        ])
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=50",
        ])
        .spawn()?;
    let pg = Pg {
        _wrapper: Kid(child),
        data,
    };
    wait_port(port)?;
    std::thread::sleep(Duration::from_secs(1));
    Ok(pg)
}

pub fn fleet_bench(root: &Path, args: &[String]) -> Result<()> {
    let mut runs = vec![(100usize, 50.0f64), (1000, 200.0), (5000, 1000.0)];
    let mut seconds = 30.0f64;
    let mut stores = vec!["sqlite".to_string(), "postgres".to_string()];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--runs" => {
                runs = v
                    .split(',')
                    .map(|r| {
                        let (n, e) = r.split_once('x').context("--runs NxR,…")?;
                        Ok((n.parse()?, e.parse()?))
                    })
                    .collect::<Result<_>>()?;
            }
            "--seconds" => seconds = v.parse()?,
            "--stores" => stores = v.split(',').map(String::from).collect(),
            _ => bail!(
                "usage: cargo xtask fleet-bench [--runs 100x50,…] [--seconds 30] [--stores sqlite,postgres]"
            ),
        }
    }
    crate::run(
        crate::cargo()
            .current_dir(root)
            .args(["build", "--release", "-p", "vigil-fleet"]),
    )?;
    let fleet = root.join("target/release/vigil-fleet");
    let work = std::env::temp_dir().join(format!("vigil-fleet-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mqtt = free_port()?;
    let conf = work.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {mqtt} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n"
        ),
    )?;
    let _broker = Kid(many_fds(
        &crate::assets::mosquitto_bin().display().to_string(),
        &["-c".into(), conf.display().to_string()],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()?);
    wait_port(mqtt)?;
    let mut rows = Vec::new();
    for store in &stores {
        let (db, _pg): (String, Option<Pg>) = match store.as_str() {
            "sqlite" => (
                work.join(format!("fleet-{}.db", rows.len()))
                    .display()
                    .to_string(),
                None,
            ),
            "postgres" => {
                let port = free_port()?;
                let pg = postgres(&work.join("pg"), port)?;
                (
                    format!("postgres://vigil@127.0.0.1:{port}/postgres"),
                    Some(pg),
                )
            }
            other => bail!("--stores: {other:?} (sqlite or postgres)"),
        };
        let mut add = Command::new(&fleet)
            .args(["user", "add", "bench", "--role", "admin", "--db", &db])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        writeln!(add.stdin.take().context("stdin")?, "bench-password")?;
        if !add.wait()?.success() {
            bail!("user add failed");
        }
        let web = free_port()?;
        let console = Kid(many_fds(
            &fleet.display().to_string(),
            &[
                "serve".into(),
                "--broker".into(),
                format!("127.0.0.1:{mqtt}"),
                "--db".into(),
                db.clone(),
                "--listen".into(),
                format!("127.0.0.1:{web}"),
                "--client-id".into(),
                format!("bench-{store}"),
            ],
        )
        .env("VIGIL_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?);
        wait_port(web)?;
        let cookie = login(web, "bench", "bench-password")?;
        let pid = console.0.id();
        for &(n, rate) in &runs {
            let s0 = stats(web)?;
            let sim = Kid(many_fds(
                &fleet.display().to_string(),
                &[
                    "simulate".into(),
                    "--broker".into(),
                    format!("127.0.0.1:{mqtt}"),
                    "--devices".into(),
                    n.to_string(),
                    "--events-per-s".into(),
                    rate.to_string(),
                    "--seconds".into(),
                    seconds.to_string(),
                    "--ids".into(),
                    format!("r{}-", rows.len()),
                ],
            )
            .stdout(Stdio::null())
            .spawn()?);
            let t0 = Instant::now();
            let (mut fleet_ms, mut review_ms, mut rss) = (Vec::new(), Vec::new(), 0u64);
            let mut sim = sim;
            while sim.0.try_wait()?.is_none() {
                std::thread::sleep(Duration::from_secs(1));
                for (path, v) in [
                    ("/fragments/fleet", &mut fleet_ms),
                    ("/review", &mut review_ms),
                ] {
                    let t = Instant::now();
                    let (code, _) = get(web, path, &cookie)?;
                    if code == 200 {
                        v.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                rss = rss.max(rss_kib(pid));
            }
            let ran = t0.elapsed().as_secs_f64();
            // Let the console drain what is queued (up to 60 s), then count.
            let mut last = stats(web)?["events"].as_u64().unwrap_or(0);
            let drain0 = Instant::now();
            loop {
                std::thread::sleep(Duration::from_secs(2));
                let now = stats(web)?["events"].as_u64().unwrap_or(0);
                if now == last || drain0.elapsed() > Duration::from_secs(60) {
                    break;
                }
                last = now;
            }
            let s1 = stats(web)?;
            let stored = s1["events"].as_u64().unwrap_or(0) - s0["events"].as_u64().unwrap_or(0);
            let lag: Vec<u64> = buckets(&s1)
                .iter()
                .zip(buckets(&s0))
                .map(|(a, b)| a - b)
                .collect();
            let sent = (rate * seconds).round();
            let row = serde_json::json!({
                "store": store, "boxes": n, "events_per_s_sent": rate, "seconds": seconds,
                "events_sent_about": sent, "events_stored": stored,
                "stored_per_s": stored as f64 / ran,
                "lag_p50_ms_le": lag_quantile(&lag, 0.5), "lag_p99_ms_le": lag_quantile(&lag, 0.99),
                "fleet_page_p50_ms": quantile(&mut fleet_ms.clone(), 0.5), "fleet_page_p99_ms": quantile(&mut fleet_ms, 0.99),
                "review_page_p50_ms": quantile(&mut review_ms.clone(), 0.5), "review_page_p99_ms": quantile(&mut review_ms, 0.99),
                "console_peak_rss_mib": rss as f64 / 1024.0,
                "duplicates": s1["duplicates"].as_u64().unwrap_or(0) - s0["duplicates"].as_u64().unwrap_or(0),
                "refused": s1["refused"].as_u64().unwrap_or(0) - s0["refused"].as_u64().unwrap_or(0),
            });
            println!("{row}");
            rows.push(row);
        }
        drop(console);
    }
    let out = root.join("benches/results/fleet-scale.json");
    std::fs::write(&out, serde_json::to_string_pretty(&rows)?)?;
    println!("written: {}", out.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
