//! The box's own health for telemetry (`system`): the CPU's busy share since the last sample
//! (`/proc/stat`), memory in use (`/proc/meminfo`), the 1-minute load average
//! (`/proc/loadavg`), and the temperatures of the kernel's thermal zones
//! (`/sys/class/thermal/thermal_zone*/{type,temp}`; on a Jetson they include `CPU-therm` and
//! `GPU-therm`). Read once per telemetry interval, off the frame path; a file that is absent
//! or unreadable leaves its field out (containers, other kernels).

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Most thermal zones reported.
pub const MAX_ZONES: usize = 16;
/// Most bytes of a zone's name.
const MAX_ZONE_NAME: usize = 32;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SystemTelemetry {
    /// Share of all cores busy since the previous sample, percent (absent on the first one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_used_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load1: Option<f64>,
    /// Degrees Celsius by thermal zone type (`CPU-therm`, `GPU-therm`, `x86_pkg_temp`, …; a
    /// type seen twice gets `-2`, `-3`…).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub temps_c: BTreeMap<String, f64>,
}

/// Samples [`SystemTelemetry`]; keeps the previous CPU counters.
#[derive(Debug)]
pub struct Sampler {
    proc: PathBuf,
    thermal: PathBuf,
    prev: Option<(u64, u64)>,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::at(Path::new("/proc"), Path::new("/sys/class/thermal"))
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// (busy, total) jiffies of the `cpu` line of `/proc/stat`.
pub fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    Some((total - idle, total))
}

/// Percent of memory in use from `/proc/meminfo` (MemTotal − MemAvailable).
pub fn mem_used_pct(meminfo: &str) -> Option<f64> {
    let field = |name: &str| -> Option<f64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let (total, avail) = (field("MemTotal:")?, field("MemAvailable:")?);
    (total > 0.0).then(|| round1(100.0 * (total - avail) / total))
}

impl Sampler {
    /// Reading `proc` and `thermal` instead of `/proc` and `/sys/class/thermal` (tests).
    pub fn at(proc: &Path, thermal: &Path) -> Self {
        Sampler {
            proc: proc.to_path_buf(),
            thermal: thermal.to_path_buf(),
            prev: None,
        }
    }

    pub fn sample(&mut self) -> SystemTelemetry {
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        let now = read(self.proc.join("stat")).and_then(|s| cpu_times(&s));
        let cpu_pct = match (self.prev, now) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => Some(round1(
                100.0 * (b1.saturating_sub(b0)) as f64 / (t1 - t0) as f64,
            )),
            _ => None,
        };
        self.prev = now;
        SystemTelemetry {
            cpu_pct,
            mem_used_pct: read(self.proc.join("meminfo")).and_then(|m| mem_used_pct(&m)),
            load1: read(self.proc.join("loadavg"))
                .and_then(|l| l.split_whitespace().next()?.parse().ok()),
            temps_c: self.temps(),
        }
    }

    fn temps(&self) -> BTreeMap<String, f64> {
        let mut zones: Vec<PathBuf> = match std::fs::read_dir(&self.thermal) {
            Ok(d) => d
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
                .map(|e| e.path())
                .collect(),
            Err(_) => return BTreeMap::new(),
        };
        zones.sort();
        let mut out = BTreeMap::new();
        for z in zones.into_iter().take(MAX_ZONES) {
            let Some(milli) = std::fs::read_to_string(z.join("temp"))
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
            else {
                continue;
            };
            let kind = std::fs::read_to_string(z.join("type")).unwrap_or_default();
            let mut name: String = kind
                .trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .take(MAX_ZONE_NAME)
                .collect();
            if name.is_empty() {
                name = "zone".into();
            }
            let mut unique = name.clone();
            let mut n = 1;
            while out.contains_key(&unique) {
                n += 1;
                unique = format!("{name}-{n}");
            }
            out.insert(unique, round1(milli as f64 / 1000.0));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        assert_eq!(
            cpu_times("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8\n"),
            Some((150, 1000))
        );
        assert_eq!(cpu_times("intr 1 2\n"), None);
        let meminfo = "MemTotal:       16000000 kB\nMemFree:  1 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(mem_used_pct(meminfo), Some(25.0));
        assert_eq!(mem_used_pct("MemTotal: 0 kB\n"), None);
    }

    /// A fake `/proc` and `/sys/class/thermal` laid out as the kernel does (named as fakes:
    /// the test must not depend on this machine's sensors).
    #[test]
    fn cpu_share_between_samples_and_thermal_zones_by_type() {
        let dir = std::env::temp_dir().join(format!("vigil-system-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (proc, thermal) = (dir.join("fake-proc"), dir.join("fake-thermal"));
        std::fs::create_dir_all(&proc).unwrap();
        for (i, (kind, temp)) in [
            ("CPU-therm", "45500"),
            ("GPU-therm", "51250"),
            ("acpitz", "40000"),
            ("acpitz", "41000"),
            ("bad zone!", "not a number"),
        ]
        .iter()
        .enumerate()
        {
            let z = thermal.join(format!("thermal_zone{i}"));
            std::fs::create_dir_all(&z).unwrap();
            std::fs::write(z.join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(z.join("temp"), format!("{temp}\n")).unwrap();
        }
        std::fs::write(proc.join("stat"), "cpu  100 0 100 800 0 0 0 0\n").unwrap();
        std::fs::write(proc.join("loadavg"), "0.52 0.40 0.30 1/100 42\n").unwrap();
        let mut s = Sampler::at(&proc, &thermal);
        let first = s.sample();
        assert_eq!(first.cpu_pct, None, "no share before a second sample");
        assert_eq!(first.load1, Some(0.52));
        assert_eq!(first.mem_used_pct, None, "no meminfo here");
        assert_eq!(
            first.temps_c.into_iter().collect::<Vec<_>>(),
            vec![
                ("CPU-therm".to_string(), 45.5),
                ("GPU-therm".to_string(), 51.3),
                ("acpitz".to_string(), 40.0),
                ("acpitz-2".to_string(), 41.0),
            ]
        );
        std::fs::write(proc.join("stat"), "cpu  400 0 200 1100 100 0 0 0\n").unwrap();
        // busy 200 → 600 (+400) of total 1000 → 1800 (+800).
        assert_eq!(s.sample().cpu_pct, Some(50.0));
        let none = Sampler::at(&dir.join("none"), &dir.join("none")).sample();
        assert_eq!(none, SystemTelemetry::default());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
