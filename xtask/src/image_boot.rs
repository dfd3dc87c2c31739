//! `cargo xtask image-boot [--arch amd64|arm64] [--image IMG] [--minutes N]`: boots an appliance
//! image (built here unless given) under QEMU with software emulation and UEFI firmware (OVMF on
//! amd64, AAVMF on arm64 `virt`), provisioned as a user would (a `vigil/` folder on its boot
//! partition: a config, a clip as the camera, an SSH key), and reports how long it took to reach
//! SSH, Vigil's READY (its unit is `Type=notify`: active means READY=1 was sent) and Vigil's
//! `online` on a broker on this host. It fails unless Vigil reaches READY and online on the
//! architecture asked for. The arm64 boot is this task's reason to exist: the test suite boots
//! amd64 (tests/it/image_boot.rs); an arm64 boot under TCG takes too long for CI.

use crate::cross::Arch;
use crate::{run, step};
use anyhow::{Context, Result, bail, ensure};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The EFI system partition starts at 1 MiB (xtask/src/image.rs `assemble`).
const ESP_OFFSET: u64 = 1024 * 1024;
const DEVICE: &str = "bootcheck";

struct Args {
    arch: Arch,
    image: Option<PathBuf>,
    minutes: u64,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args {
        arch: Arch::Amd64,
        image: None,
        minutes: 40,
    };
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{k} needs a value"))
        };
        match k.as_str() {
            "--arch" => a.arch = Arch::parse(&val()?)?,
            "--image" => a.image = Some(PathBuf::from(val()?)),
            "--minutes" => a.minutes = val()?.parse().context("--minutes N")?,
            _ => bail!(
                "unknown argument {k:?} (expected --arch amd64|arm64, --image IMG, --minutes N)"
            ),
        }
    }
    Ok(a)
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn image_boot(root: &Path, args: &[String]) -> Result<()> {
    let a = parse(args)?;
    let arch = a.arch;
    let clip = root.join(".cache/media/vtest-30s.mp4");
    ensure!(
        clip.exists(),
        "{} is missing: run `cargo xtask setup` first",
        clip.display()
    );
    // The image built here goes to `out/` (kept: `--image` may boot it again), the boot's files
    // to `run/` (made afresh).
    let top = root.join(format!("target/image-boot-{}", arch.debian()));
    let dir = top.join("run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let t_all = Instant::now();
    let image = match a.image {
        Some(i) => std::path::absolute(i)?,
        None => {
            let version = crate::deb::workspace_version(root)?;
            crate::image::build(root, arch, None, &version, &top.join("out"), None)?.image
        }
    };
    let built_s = t_all.elapsed().as_secs_f64();
    let (qemu, firmware) = match arch {
        Arch::Amd64 => (
            "qemu-system-x86_64",
            (
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
            ),
        ),
        Arch::Arm64 => (
            "qemu-system-aarch64",
            (
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "/usr/share/AAVMF/AAVMF_VARS.fd",
            ),
        ),
    };
    crate::assets::apt_install(match arch {
        Arch::Amd64 => &["qemu-system-x86", "ovmf", "mtools", "mosquitto-clients"],
        Arch::Arm64 => &[
            "qemu-system-arm",
            "qemu-efi-aarch64",
            "mtools",
            "mosquitto-clients",
        ],
    })?;

    // The disk: a sparse copy of the image, provisioned on its FAT partition.
    let disk = dir.join("disk.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&image)
        .arg(&disk))?;
    let key = dir.join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key))?;
    let mqtt = free_port()?;
    let ssh_port = free_port()?;
    let prov = dir.join("vigil");
    std::fs::create_dir_all(&prov)?;
    std::fs::write(prov.join("vigil.toml"), config(mqtt))?;
    std::fs::copy(&clip, prov.join("clip.mp4"))?;
    std::fs::copy(key.with_extension("pub"), prov.join("authorized_keys"))?;
    let esp = format!("{}@@{ESP_OFFSET}", disk.display());
    run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-s", "-o", "-i", &esp])
        .arg(&prov)
        .arg("::"))?;

    // The broker the box reports to (QEMU's gateway 10.0.2.2 is this host's loopback).
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {mqtt} 127.0.0.1\nallow_anonymous true\n"),
    )?;
    let _broker = Killed(crate::soak::broker(
        &crate::assets::mosquitto_bin(),
        &conf,
        mqtt,
    )?);
    let statuses = dir.join("status.txt");
    let _sub = Killed(
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &mqtt.to_string(), "-v", "-t"])
            .arg(format!("vigil/{DEVICE}/status"))
            .stdout(std::fs::File::create(&statuses)?)
            .spawn()
            .context("mosquitto_sub (Debian package mosquitto-clients)")?,
    );

    let vars = dir.join("vars.fd");
    std::fs::copy(firmware.1, &vars).with_context(|| format!("{} (UEFI firmware)", firmware.1))?;
    let serial = dir.join("serial.log");
    let mut cmd = Command::new(qemu);
    if arch == Arch::Arm64 {
        cmd.args(["-machine", "virt"]);
    }
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args(["-display", "none", "-no-reboot"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,readonly=on,file={}",
            firmware.0
        ))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .arg("-nic")
        .arg(format!(
            "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
        ))
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdout(Stdio::null());
    step(&format!(
        "booting {} under {qemu} (software emulation)",
        image.display()
    ));
    let t0 = Instant::now();
    let mut vm = Killed(
        cmd.spawn()
            .with_context(|| format!("cannot start {qemu}"))?,
    );
    let deadline = Duration::from_secs(a.minutes * 60);
    let ssh = |c: &str| ssh(&key, ssh_port, c);
    let wait = |what: &str, vm: &mut Killed, f: &dyn Fn() -> bool| -> Result<f64> {
        while t0.elapsed() < deadline {
            if let Ok(Some(s)) = vm.0.try_wait() {
                bail!(
                    "QEMU ended ({s}) before {what}; the serial console:\n{}",
                    tail(&serial, 60)
                );
            }
            if f() {
                let s = t0.elapsed().as_secs_f64();
                step(&format!("{what} after {s:.0} s"));
                return Ok(s);
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        bail!(
            "no {what} within {} minutes; the serial console:\n{}",
            a.minutes,
            tail(&serial, 60)
        )
    };
    let ssh_s = wait("SSH", &mut vm, &|| ssh("true").0 == 0)?;
    let ready = wait("Vigil READY (its unit active)", &mut vm, &|| {
        ssh("systemctl is-active vigil").1.trim() == "active"
    });
    let ready_s = match ready {
        Ok(s) => s,
        Err(e) => {
            let j = ssh("journalctl -b -u vigil -u vigil-provision --no-pager | tail -n 40").1;
            bail!("{e:#}\nVigil's journal:\n{j}");
        }
    };
    let online_s = wait("Vigil online on the host's broker", &mut vm, &|| {
        std::fs::read_to_string(&statuses).is_ok_and(|s| s.contains("\"online\""))
    })?;
    // The booted slot confirmed by the image's slot gate (RAUC mark-good: GRUB's counter reset).
    let good_s = wait("slot A confirmed good (RAUC)", &mut vm, &|| {
        ssh("rauc status --detailed --output-format=json 2>/dev/null")
            .1
            .contains("\"boot_status\":\"good\"")
    })?;
    let facts = ssh("uname -m; vigil --version; cat /etc/vigil-image-version; \
         sed -n 's/.*rauc\\.slot=\\([A-Z]\\).*/slot \\1/p' /proc/cmdline; \
         systemd-analyze | head -n 1; systemctl is-system-running; \
         rauc status --output-format=shell | grep -E '^RAUC_(SYSTEM_COMPATIBLE|SYSTEM_BOOTED_BOOTNAME)='")
    .1;
    let machine = facts.lines().next().unwrap_or("").trim().to_string();
    let want = match arch {
        Arch::Amd64 => "x86_64",
        Arch::Arm64 => "aarch64",
    };
    ensure!(
        machine == want,
        "the VM says it is {machine:?}, not {want}:\n{facts}"
    );
    let _ = ssh("systemctl poweroff");
    let t_off = Instant::now();
    while t_off.elapsed() < Duration::from_secs(120) && vm.0.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_millis(500));
    }
    let summary = format!(
        "image-boot {arch}: {image}\n\
         built in {built_s:.0} s (0 when given)\n\
         boot to SSH {ssh_s:.0} s, to Vigil READY {ready_s:.0} s, to Vigil online {online_s:.0} s, \
         slot confirmed {good_s:.0} s (QEMU TCG, -smp 2, on {cores} host cores)\n{facts}",
        arch = arch.debian(),
        image = image.display(),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    std::fs::write(dir.join("result.txt"), &summary)?;
    println!("{summary}");
    Ok(())
}

/// The box's config: the clip on the boot partition as its camera (provisioning copies the
/// folder into Vigil's state directory), the host's broker, the CPU backend.
fn config(mqtt: u16) -> String {
    format!(
        r#"[device]
id = "{DEVICE}"

[mqtt]
host = "10.0.2.2"
port = {mqtt}

[models.nanodet]
path = "/usr/share/vigil/models/nanodet.onnx"
kind = "nanodet"
backend = "cpu"
threads = 2

[[cameras]]
name = "clip"
url = "file:///var/lib/vigil/clip.mp4"
model = "nanodet"
fps = 1
"#
    )
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs `cmd` in the VM as root; (exit code, stdout + stderr).
fn ssh(key: &Path, port: u16, cmd: &str) -> (i32, String) {
    let out = Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "BatchMode=yes",
            "-p",
            &port.to_string(),
            "root@127.0.0.1",
            cmd,
        ])
        .output();
    match out {
        Ok(o) => (
            o.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (-1, format!("ssh: {e}")),
    }
}

fn tail(p: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
