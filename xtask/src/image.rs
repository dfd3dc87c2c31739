//! `cargo xtask image`: the appliance image, `target/image/vigil-<version>-<arch>.img` (+ `.bmap`,
//! `.sha256`) and the RAUC bundle that updates a box to it (`.raucb`).
//!
//! The disk (GPT): an EFI system partition (GRUB, its environment with RAUC's slot variables, and
//! the user's provisioning folder `vigil/`), two root slots A and B (ext4, mounted read-only), and
//! a data partition (`/data`: Vigil's state directory, the journal, RAUC's status, SSH keys) that
//! updates never touch. The root file system is Debian 12 minimal with systemd, Vigil's own
//! Debian package (xtask/src/deb.rs), RAUC and GRUB's tools; it is made by `mmdebstrap` and
//! written into the slot with `mke2fs -d`, so nothing here needs loop devices or a VM.
//!
//! `--arch arm64` builds the same image for arm64: Vigil cross-built (xtask/src/cross.rs), the
//! Debian tree configured under qemu-user, GRUB's arm64 EFI loader; booted by `cargo xtask
//! image-boot --arch arm64` under qemu-system-aarch64 with AAVMF (xtask/src/image_boot.rs).
//!
//! Booting: UEFI firmware → `EFI/BOOT/BOOTX64.EFI` (`BOOTAA64.EFI`; GRUB built by `grub-mkimage`) →
//! `EFI/BOOT/grub.cfg`, which picks the first slot of `ORDER` that is good (`X_OK=1`) and not
//! already tried (`X_TRY=0`), marks it tried and boots it with `rauc.slot=X`; a slot that never
//! gets marked good (by RAUC's `mark-good` after Vigil's probation) is passed over at the next
//! boot: that is the boot-attempt counter. Partitions are found by their GPT GUIDs (fixed here,
//! so the RAUC config can name them), never by disk order.
//!
//! Provisioning: a user writes the image, mounts its small FAT partition (any OS can) and drops a
//! `vigil/` folder on it: `vigil.toml` (the box's config: device id, broker, cameras, with any
//! certificate or key files beside it) and optionally `authorized_keys`. At boot
//! `vigil-provision.service` checks the config with `vigil check-config` and installs it as the
//! live config; errors go to `vigil/ERRORS.txt` on the same partition and the running config
//! stays. There is no password for any account and no getty: without an SSH key, no login.

use crate::cross::Arch;
use crate::{run, step};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Partition sizes, MiB.
const ESP_MIB: u64 = 64;
const SLOT_MIB: u64 = 1536;
const DATA_MIB: u64 = 1536;

/// GPT partition GUIDs: fixed, so the kernel command line and RAUC's slot config name them.
pub const ESP_GUID: &str = "6A1D5C2E-5F0B-4E0B-9B7E-76F1D0E0E501";
pub const SLOT_A_GUID: &str = "6A1D5C2E-5F0B-4E0B-9B7E-76F1D0E0E50A";
pub const SLOT_B_GUID: &str = "6A1D5C2E-5F0B-4E0B-9B7E-76F1D0E0E50B";
pub const DATA_GUID: &str = "6A1D5C2E-5F0B-4E0B-9B7E-76F1D0E0E5DA";

/// Debian packages of the root file system besides Vigil's (which brings its own `Depends`).
const ROOTFS_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "systemd-resolved",
    "systemd-timesyncd",
    "udev",
    "dbus",
    "initramfs-tools",
    "zstd",
    "rauc",
    "rauc-service",
    "grub-common",
    "e2fsprogs",
    "dosfstools",
    "openssh-server",
    "iproute2",
    "ca-certificates",
    "procps",
];

/// Host tools (Debian packages) the image build needs.
pub const HOST_PACKAGES: &[&str] = &[
    "mmdebstrap",
    "grub-efi-amd64-bin",
    "mtools",
    "dosfstools",
    "gdisk",
    "bmap-tools",
    "rauc",
    "squashfs-tools",
    "e2fsprogs",
    "openssl",
    "qemu-system-x86",
    "ovmf",
    "qemu-utils",
];

/// More host tools for an arm64 image: its root file system is configured under qemu-user
/// (binfmt_misc), and `cargo xtask image-boot --arch arm64` boots it with AAVMF.
const HOST_PACKAGES_ARM64: &[&str] = &[
    "qemu-user-static",
    "arch-test",
    "qemu-efi-aarch64",
    "qemu-system-arm",
];

/// The packages of the root file system that depend on the architecture: the kernel, and on
/// arm64 GRUB's EFI modules (the host's `grub-mkimage` builds the arm64 loader from them; Debian
/// has no amd64 build of `grub-efi-arm64-bin`).
fn arch_packages(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Amd64 => &["linux-image-amd64"],
        Arch::Arm64 => &["linux-image-arm64", "grub-efi-arm64-bin"],
    }
}

/// The firmware's default loader path, GRUB's platform and the kernel's serial console.
fn boot_names(arch: Arch) -> (&'static str, &'static str, &'static str) {
    match arch {
        Arch::Amd64 => ("BOOTX64.EFI", "x86_64-efi", "ttyS0,115200"),
        Arch::Arm64 => ("BOOTAA64.EFI", "arm64-efi", "ttyAMA0,115200"),
    }
}

/// What `cargo xtask image` made.
pub struct Built {
    pub image: PathBuf,
    pub bundle: Option<PathBuf>,
}

/// `cargo xtask image [--vigil BIN] [--version V] [--out DIR] [--no-bundle | --bundle-version V2]`.
/// `--bundle-version`: the update bundle holds the same build released as `V2` (its package,
/// `vigil --version` and the image version say `V2`), so that an update visibly changes the
/// version without a second build.
pub fn image(root: &Path, args: &[String]) -> Result<()> {
    let a = crate::deb::PackArgs::parse(
        root,
        args,
        "target/image",
        &["--no-bundle", "--bundle-version"],
    )?;
    let bundle = match (a.flags.iter().any(|f| f == "--no-bundle"), a.bundle_version) {
        (true, Some(_)) => bail!("--no-bundle and --bundle-version: choose one"),
        (true, None) => None,
        (false, v) => Some(v.unwrap_or_else(|| a.version.clone())),
    };
    let (vigil, version, out) = (a.vigil, a.version, a.out);
    let built = build(root, a.arch, vigil, &version, &out, bundle.as_deref())?;
    println!("{}", built.image.display());
    if let Some(b) = &built.bundle {
        println!("{}", b.display());
    }
    Ok(())
}

pub fn build(
    root: &Path,
    arch: Arch,
    vigil: Option<PathBuf>,
    version: &str,
    out: &Path,
    bundle: Option<&str>,
) -> Result<Built> {
    let t0 = std::time::Instant::now();
    crate::assets::apt_install(HOST_PACKAGES)?;
    std::fs::create_dir_all(out)?;
    let (vigil, onnxruntime) = match arch {
        Arch::Amd64 => (
            crate::deb::vigil_binary(root, vigil)?,
            crate::assets::onnxruntime_lib(root),
        ),
        Arch::Arm64 => {
            crate::assets::apt_install(HOST_PACKAGES_ARM64)?;
            binfmt_aarch64()?;
            crate::cross::setup_arm64(root)?;
            let v = match vigil {
                Some(v) => v,
                None => crate::cross::build(root, Arch::Arm64)?,
            };
            (v, crate::cross::ort_lib(root, Arch::Arm64)?)
        }
    };
    let (model, cpu_model) = crate::deb::models(root);
    let deb_of = |version: &str| {
        crate::deb::build(
            root,
            &crate::deb::DebInputs {
                arch,
                vigil: vigil.clone(),
                onnxruntime: onnxruntime.clone(),
                model: model.clone(),
                cpu_model: cpu_model.clone(),
                version: version.to_string(),
            },
            out,
        )
    };
    let deb = deb_of(version)?;
    let keys = dev_keys(root)?;
    let work = out.join(format!("work-{}", arch.debian()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let rootfs = work.join("rootfs");

    step("root file system (mmdebstrap: Debian 12, systemd, kernel, RAUC, Vigil's package)");
    // The package's own dependencies come from the archive with the rest; the package itself
    // is installed with dpkg inside the tree (mmdebstrap's `copy-in` hook).
    let mut include: Vec<String> = ROOTFS_PACKAGES
        .iter()
        .chain(arch_packages(arch))
        .map(|p| p.to_string())
        .collect();
    include.extend(deb_relations(&deb)?);
    let deb_name = deb.file_name().unwrap().to_string_lossy().into_owned();
    run(Command::new("mmdebstrap")
        .arg(format!("--architectures={}", arch.debian()))
        .arg("--variant=minbase")
        .arg(format!("--include={}", include.join(",")))
        // Kernel and initramfs hooks run in the chroot; keep the docs out (smaller slots).
        .args([
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-include=/usr/share/doc/vigil/*",
        ])
        // The initramfs settings before the kernel's package makes its initramfs (once).
        .arg(
            "--essential-hook=mkdir -p \"$1/etc/initramfs-tools/conf.d\" && \
             printf 'MODULES=most\\nCOMPRESS=zstd\\n' > \"$1/etc/initramfs-tools/conf.d/vigil.conf\"",
        )
        .arg(format!("--customize-hook=copy-in {} /tmp", deb.display()))
        .arg(format!("--customize-hook=chroot \"$1\" dpkg -i /tmp/{deb_name}"))
        .arg(format!("--customize-hook=rm \"$1\"/tmp/{deb_name}"))
        .arg("bookworm")
        .arg(&rootfs))?;
    customize(root, &rootfs, arch, version, &keys)?;

    step("partitions: EFI system partition, slot A, data");
    let esp = work.join("esp.vfat");
    make_esp(&esp, arch, &rootfs)?;
    let slot_a = work.join("rootfs.ext4");
    mke2fs(&slot_a, &rootfs, "rootfs", SLOT_MIB)?;
    let data = work.join("data.ext4");
    let data_dir = work.join("data");
    for d in ["vigil", "journal", "rauc", "ssh", "system-update"] {
        std::fs::create_dir_all(data_dir.join(d))?;
    }
    mke2fs(&data, &data_dir, "data", DATA_MIB)?;

    let name = format!("vigil-{version}-{}", arch.debian());
    let img = out.join(format!("{name}.img"));
    step(&format!("disk image {}", img.display()));
    assemble(&img, &esp, &slot_a, &data)?;
    let bmap = out.join(format!("{name}.bmap"));
    run(Command::new("bmaptool")
        .args(["create", "-o"])
        .arg(&bmap)
        .arg(&img))?;
    sha256_file(&img)?;

    let bundle = if let Some(bv) = bundle {
        if bv != version {
            // The same build released as `bv`: its package installed over the first one.
            step(&format!("the root file system as release {bv}"));
            let deb = deb_of(bv)?;
            let deb_name = deb.file_name().unwrap().to_string_lossy().into_owned();
            std::fs::copy(&deb, rootfs.join("tmp").join(&deb_name))?;
            run(Command::new("chroot").arg(&rootfs).args([
                "dpkg",
                "-i",
                &format!("/tmp/{deb_name}"),
            ]))?;
            std::fs::remove_file(rootfs.join("tmp").join(&deb_name))?;
            set_version(&rootfs, bv)?;
        }
        step("RAUC bundle (the root file system, signed)");
        let b = out.join(format!("vigil-{bv}-{}.raucb", arch.debian()));
        // The bundle's file system is only as large as its contents; RAUC grows it to the slot
        // (`resize=true` in system.conf).
        let small = work.join("bundle-rootfs.ext4");
        // At most the slot: RAUC writes the image into the slot before it grows it.
        let used = du_mib(&rootfs)?;
        let mib = (used * 12 / 10 + 64).min(SLOT_MIB);
        if used + 64 > mib {
            bail!("the root file system ({used} MiB) does not fit a {SLOT_MIB} MiB slot");
        }
        mke2fs(&small, &rootfs, "rootfs", mib)?;
        make_bundle(&work, &small, arch, bv, &keys, &b)?;
        sha256_file(&b)?;
        Some(b)
    } else {
        None
    };
    std::fs::remove_dir_all(&work)?;
    step(&format!(
        "image built in {:.0}s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(Built { image: img, bundle })
}

/// The signing key pair of RAUC bundles and the keyring the image trusts.
pub struct Keys {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub keyring: PathBuf,
}

/// Development keys (`.cache/image-keys`), made once: a self-signed CA that is the image's
/// keyring, and a signing certificate it issued. A fleet uses its own: set
/// `VIGIL_RAUC_CERT`, `VIGIL_RAUC_KEY` and `VIGIL_RAUC_KEYRING`.
pub fn dev_keys(root: &Path) -> Result<Keys> {
    if let (Some(cert), Some(key), Some(keyring)) = (
        std::env::var_os("VIGIL_RAUC_CERT"),
        std::env::var_os("VIGIL_RAUC_KEY"),
        std::env::var_os("VIGIL_RAUC_KEYRING"),
    ) {
        return Ok(Keys {
            cert: cert.into(),
            key: key.into(),
            keyring: keyring.into(),
        });
    }
    let dir = root.join(".cache/image-keys");
    let keys = Keys {
        cert: dir.join("signing.cert.pem"),
        key: dir.join("signing.key.pem"),
        keyring: dir.join("ca.cert.pem"),
    };
    if keys.cert.exists() && keys.key.exists() && keys.keyring.exists() {
        return Ok(keys);
    }
    step("development RAUC keys (.cache/image-keys: not for a real fleet)");
    std::fs::create_dir_all(&dir)?;
    let ossl = |args: &[&str]| run(Command::new("openssl").current_dir(&dir).args(args));
    ossl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:3072",
        "-nodes",
        "-keyout",
        "ca.key.pem",
        "-out",
        "ca.cert.pem",
        "-days",
        "3650",
        "-subj",
        "/CN=Vigil development CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ])?;
    ossl(&[
        "req",
        "-newkey",
        "rsa:3072",
        "-nodes",
        "-keyout",
        "signing.key.pem",
        "-out",
        "signing.csr",
        "-subj",
        "/CN=Vigil development bundle signing",
    ])?;
    std::fs::write(
        dir.join("signing.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n",
    )?;
    ossl(&[
        "x509",
        "-req",
        "-in",
        "signing.csr",
        "-CA",
        "ca.cert.pem",
        "-CAkey",
        "ca.key.pem",
        "-CAcreateserial",
        "-out",
        "signing.cert.pem",
        "-days",
        "3650",
        "-extfile",
        "signing.ext",
    ])?;
    Ok(keys)
}

/// The package names of a .deb's `Depends` and `Recommends` (versions dropped; alternatives
/// take the first).
fn deb_relations(deb: &Path) -> Result<Vec<String>> {
    let out = Command::new("dpkg-deb")
        .arg("--field")
        .arg(deb)
        .args(["Depends", "Recommends"])
        .output()?;
    if !out.status.success() {
        bail!("dpkg-deb --field {}", deb.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':').map(|(_, v)| v.to_string()))
        .flat_map(|v| {
            v.split(',')
                .filter_map(|d| {
                    d.split('|')
                        .next()?
                        .split_whitespace()
                        .next()
                        .map(str::to_string)
                })
                .collect::<Vec<_>>()
        })
        .collect())
}

fn write(root: &Path, rel: &str, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap())?;
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn chroot(rootfs: &Path, args: &[&str]) -> Result<()> {
    run(Command::new("chroot").arg(rootfs).args(args))
}

/// Lets this host run arm64 programs (mmdebstrap configures the arm64 tree by running its
/// maintainer scripts): qemu-user's binfmt_misc entry from Debian's `qemu-user-static`,
/// registered (binfmt_misc mounted first) where it is not. Needs root, as the image build does.
fn binfmt_aarch64() -> Result<()> {
    let dir = Path::new("/proc/sys/fs/binfmt_misc");
    if !dir.join("register").exists() {
        run(Command::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc"])
            .arg(dir))?;
    }
    if dir.join("qemu-aarch64").exists() {
        return Ok(());
    }
    let conf = "/usr/lib/binfmt.d/qemu-aarch64.conf";
    let text = std::fs::read_to_string(conf)
        .with_context(|| format!("{conf} (Debian package qemu-user-static)"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(":qemu-aarch64:"))
        .with_context(|| format!("{conf} has no qemu-aarch64 entry"))?;
    std::fs::write(dir.join("register"), line)
        .context("registering qemu-aarch64 with binfmt_misc")?;
    step("binfmt_misc: arm64 programs run under qemu-user");
    Ok(())
}

/// The image's version files.
fn set_version(r: &Path, version: &str) -> Result<()> {
    write(
        r,
        "etc/os-release.d/vigil",
        &format!("VIGIL_IMAGE_VERSION={version}\n"),
        0o644,
    )?;
    write(r, "etc/vigil-image-version", &format!("{version}\n"), 0o644)
}

/// Everything that makes the Debian tree the appliance: mounts, the read-only root, RAUC, GRUB's
/// environment tool, provisioning, networking, SSH only with a provisioned key, no logins.
fn customize(repo: &Path, r: &Path, arch: Arch, version: &str, keys: &Keys) -> Result<()> {
    step("customizing the root file system");
    write(
        r,
        "etc/fstab",
        &format!(
            "# The root slot is mounted read-only (kernel command line `ro`); what must survive an\n\
             # update lives on the data partition.\n\
             PARTUUID={esp} /boot/efi vfat umask=0077,noatime,nofail 0 2\n\
             PARTUUID={data} /data ext4 noatime 0 2\n\
             /data/vigil /var/lib/private/vigil none bind,x-systemd.requires-mounts-for=/data 0 0\n\
             /data/journal /var/log/journal none bind,x-systemd.requires-mounts-for=/data 0 0\n\
             tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0\n\
             tmpfs /var/tmp tmpfs mode=1777,nosuid,nodev 0 0\n\
             tmpfs /var/lib/systemd tmpfs mode=0755 0 0\n\
             tmpfs /var/cache tmpfs mode=0755 0 0\n",
            // udev names /dev/disk/by-partuuid/ in lower case.
            esp = ESP_GUID.to_lowercase(),
            data = DATA_GUID.to_lowercase(),
        ),
        0o644,
    )?;
    for d in [
        "boot/efi",
        "data",
        "var/lib/private/vigil",
        "var/log/journal",
    ] {
        std::fs::create_dir_all(r.join(d))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        r.join("var/lib/private"),
        std::fs::Permissions::from_mode(0o700),
    )?;
    let _ = std::fs::remove_file(r.join("var/lib/vigil"));
    std::os::unix::fs::symlink("private/vigil", r.join("var/lib/vigil"))?;
    // machine-id: empty, so that systemd makes a transient one on the read-only root.
    write(r, "etc/machine-id", "", 0o444)?;
    let _ = std::fs::remove_file(r.join("var/lib/dbus/machine-id"));
    write(r, "etc/hostname", "vigil\n", 0o644)?;
    set_version(r, version)?;

    // Networking: DHCP on every wired interface, DNS by resolved.
    write(
        r,
        "etc/systemd/network/80-wired.network",
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n",
        0o644,
    )?;
    // resolved: the DNS stub on loopback only (no LLMNR or mDNS responder on the network).
    write(
        r,
        "etc/systemd/resolved.conf.d/vigil.conf",
        "[Resolve]\nLLMNR=no\nMulticastDNS=no\n",
        0o644,
    )?;
    write(
        r,
        "etc/systemd/journald.conf.d/vigil.conf",
        "[Journal]\nStorage=persistent\nSystemMaxUse=64M\n",
        0o644,
    )?;

    // RAUC: two slots found by their GPT GUIDs, GRUB's environment on the ESP, status on /data.
    write(
        r,
        "etc/rauc/system.conf",
        &format!(
            "[system]\n\
             compatible=vigil-{arch}\n\
             bootloader=grub\n\
             grubenv=/boot/efi/EFI/BOOT/grubenv\n\
             statusfile=/data/rauc/status\n\
             \n\
             [keyring]\n\
             path=/etc/rauc/keyring.pem\n\
             \n\
             [slot.rootfs.0]\n\
             device=/dev/disk/by-partuuid/{a}\n\
             type=ext4\n\
             bootname=A\n\
             resize=true\n\
             \n\
             [slot.rootfs.1]\n\
             device=/dev/disk/by-partuuid/{b}\n\
             type=ext4\n\
             bootname=B\n\
             resize=true\n",
            a = SLOT_A_GUID.to_lowercase(),
            b = SLOT_B_GUID.to_lowercase(),
            arch = arch.debian(),
        ),
        0o644,
    )?;
    std::fs::copy(&keys.keyring, r.join("etc/rauc/keyring.pem"))?;

    // Provisioning from the ESP.
    write(r, "usr/lib/vigil/provision", PROVISION_SH, 0o755)?;
    write(
        r,
        "etc/systemd/system/vigil-provision.service",
        "[Unit]\n\
         Description=Vigil provisioning from the boot partition (vigil/ on the EFI system partition)\n\
         Before=vigil.service ssh.service\n\
         RequiresMountsFor=/boot/efi /data /var/lib/private/vigil\n\
         ConditionPathIsDirectory=/boot/efi/vigil\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart=/usr/lib/vigil/provision\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        0o644,
    )?;
    // The slot gate: confirms the booted slot with RAUC (see SLOT_COMMIT_SH).
    write(r, "usr/lib/vigil/slot-commit", SLOT_COMMIT_SH, 0o755)?;
    write(
        r,
        "etc/systemd/system/vigil-slot-commit.service",
        "[Unit]\n\
         Description=Confirm the booted A/B slot (RAUC mark-good), gated on Vigil's health after an update\n\
         After=vigil.service\n\
         RequiresMountsFor=/data /var/lib/private/vigil /boot/efi\n\
         \n\
         [Service]\n\
         # simple, not oneshot: a probation of minutes does not hold up multi-user.target.\n\
         Type=simple\n\
         ExecStart=/usr/lib/vigil/slot-commit\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        0o644,
    )?;
    // Whole-system updates, the root side: Vigil downloads and checks the bundle, then asks
    // (see SYSTEM_UPDATE_SH and crates/vigil-control/src/system_update.rs).
    write(r, "usr/lib/vigil/system-update", SYSTEM_UPDATE_SH, 0o755)?;
    write(
        r,
        "etc/systemd/system/vigil-system-update.path",
        "[Unit]\n\
         Description=Vigil's request for a whole-system update\n\
         \n\
         [Path]\n\
         PathExists=/var/lib/private/vigil/system/update/request\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        0o644,
    )?;
    write(
        r,
        "etc/systemd/system/vigil-system-update.service",
        "[Unit]\n\
         Description=Install the whole-system update Vigil downloaded (RAUC), then reboot into it\n\
         RequiresMountsFor=/data /var/lib/private/vigil\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart=/usr/lib/vigil/system-update\n",
        0o644,
    )?;
    // Vigil after provisioning and its mounts.
    write(
        r,
        "etc/systemd/system/vigil.service.d/image.conf",
        "[Unit]\nAfter=vigil-provision.service\nRequiresMountsFor=/var/lib/private/vigil\n\n\
         [Service]\n\
         # The slot gate (vigil-slot-commit.service): Vigil writes this boot's id once healthy.\n\
         Environment=VIGIL_SLOT_BOOT_ID=%b\n\
         # cmd/system/update: this image has the installer (vigil-system-update.path).\n\
         Environment=VIGIL_SYSTEM_UPDATES=1\n",
        0o644,
    )?;

    // SSH: only with a provisioned key; host keys made on the box, kept on /data.
    write(
        r,
        "etc/ssh/sshd_config.d/vigil.conf",
        "HostKey /data/ssh/ssh_host_ed25519_key\n\
         AuthorizedKeysFile /data/ssh/authorized_keys\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n",
        0o644,
    )?;
    write(
        r,
        "etc/systemd/system/ssh.service.d/vigil.conf",
        "[Unit]\nConditionPathExists=/data/ssh/authorized_keys\nRequiresMountsFor=/data\n\n\
         [Service]\n\
         # The host key first (sshd -t, Debian's check, fails without it).\n\
         ExecStartPre=\n\
         ExecStartPre=/bin/sh -c 'test -e /data/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N \"\" -f /data/ssh/ssh_host_ed25519_key'\n\
         ExecStartPre=/usr/sbin/sshd -t\n",
        0o644,
    )?;
    for f in std::fs::read_dir(r.join("etc/ssh"))? {
        let p = f?.path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("ssh_host_"))
        {
            std::fs::remove_file(p)?;
        }
    }

    chroot(
        r,
        &[
            "systemctl",
            "enable",
            "systemd-networkd",
            "systemd-resolved",
            "vigil.service",
            "vigil-provision.service",
            "vigil-slot-commit.service",
            "vigil-system-update.path",
        ],
    )?;
    // No logins on consoles: no account has a password; mask the gettys so none is offered.
    chroot(
        r,
        &[
            "systemctl",
            "mask",
            "getty@.service",
            "serial-getty@.service",
            "console-getty.service",
            "apt-daily.timer",
            "apt-daily-upgrade.timer",
            "systemd-networkd-wait-online.service",
        ],
    )?;
    chroot(r, &["passwd", "--lock", "root"])?;
    let _ = repo;
    Ok(())
}

/// Run at boot by vigil-slot-commit.service (root).
const SLOT_COMMIT_SH: &str = r#"#!/bin/sh
# Confirms the booted A/B slot. GRUB marks a slot "tried" when it boots it; RAUC's mark-good
# makes it good again for the next boot. A normal boot is confirmed once the system is up. A
# slot on probation after an update (/data/system-update/pending names it) is confirmed only
# when Vigil says this boot is good (<state>/system/healthy holds this boot's id: every stage
# beating, MQTT connected, cameras live, for 20 s); past the deadline it is marked bad and the
# box reboots into the other slot, which GRUB still holds good. Booted on the other slot while
# an update is pending: the new one did not come up (GRUB's counter returned here). Each outcome
# goes to /data/system-update/result and to Vigil's state (system/update/result), which Vigil
# publishes on system/status.
set -u
state=/var/lib/private/vigil/system
pending=/data/system-update/pending
# systemd's %b (what Vigil's unit passes it) is the boot id without dashes.
boot=$(tr -d '-' < /proc/sys/kernel/random/boot_id)
slot=$(sed -n 's/.*rauc\.slot=\([A-Za-z0-9]*\).*/\1/p' /proc/cmdline)
deadline=${VIGIL_SLOT_DEADLINE_S:-600}
result() {
    echo "$*" > /data/system-update/result
    mkdir -p "$state/update" && echo "$*" > "$state/update/result.tmp" && mv -f "$state/update/result.tmp" "$state/update/result"
}
if [ ! -e "$pending" ]; then
    rauc status mark-good booted && echo "slot $slot: confirmed (no update on probation)"
    exit 0
fi
target=$(cut -d' ' -f1 "$pending")
if [ -n "$target" ] && [ "$target" != "$slot" ]; then
    result "bad $target $(date -u +%FT%TZ) slot $target did not come up; the box booted $slot again"
    rm -f "$pending"
    rauc status mark-good booted
    echo "slot $slot: the update to slot $target did not boot; back on $slot, confirmed"
    exit 0
fi
waited=0
while [ "$waited" -lt "$deadline" ]; do
    if [ "$(cat "$state/healthy" 2>/dev/null)" = "$boot" ]; then
        rauc status mark-good booted
        result "good $slot $(date -u +%FT%TZ)"
        rm -f "$pending"
        echo "slot $slot: Vigil healthy after the update: confirmed"
        exit 0
    fi
    sleep 5
    waited=$((waited + 5))
done
result "bad $slot $(date -u +%FT%TZ) Vigil was not healthy within ${deadline}s"
rm -f "$pending"
echo "slot $slot: Vigil was not healthy within ${deadline}s: marking it bad, back to the other slot"
rauc status mark-bad booted
systemctl reboot
"#;

/// Run by vigil-system-update.service (root) when Vigil asks for a whole-system update.
const SYSTEM_UPDATE_SH: &str = r#"#!/bin/sh
# Whole-system updates, the root side. Vigil (unprivileged) has downloaded the bundle into its
# state directory, checked its sha256 and written the sha256 to system/update/request. This
# installs that bundle into the other slot with RAUC, which checks the bundle's signature against
# /etc/rauc/keyring.pem before writing anything, marks the update pending for
# vigil-slot-commit and reboots into it. Vigil reads the status file: "installing [percent]",
# "rebooting" or "failed <reason>".
set -u
dir=/var/lib/private/vigil/system/update
req=$dir/request
[ -f "$req" ] || exit 0
sha=$(head -c 64 "$req")
rm -f "$req"
say() { printf '%s\n' "$*" > "$dir/status.tmp" && mv -f "$dir/status.tmp" "$dir/status"; }
case "$sha" in
    *[!0-9a-f]*) say "failed the request is not a sha256"; exit 0 ;;
esac
if [ "${#sha}" -ne 64 ]; then say "failed the request is not a sha256"; exit 0; fi
bundle=$dir/download/$sha.bundle
if [ ! -f "$bundle" ]; then say "failed no downloaded bundle $sha.bundle"; exit 0; fi
booted=$(sed -n 's/.*rauc\.slot=\([A-Za-z0-9]*\).*/\1/p' /proc/cmdline)
case "$booted" in
    A) target=B ;;
    B) target=A ;;
    *) say "failed the booted slot is unknown (no rauc.slot= on the kernel command line)"; exit 0 ;;
esac
say "installing 0"
log=/run/vigil-system-update.log
rauc install "$bundle" > "$log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
    pct=$(grep -o '[0-9]\{1,3\}%' "$log" | tail -n 1 | tr -d '%')
    [ -n "$pct" ] && say "installing $pct"
    sleep 1
done
wait "$pid"
rc=$?
rm -f "$bundle"
if [ "$rc" -ne 0 ]; then
    say "failed rauc install: $(tail -n 3 "$log" | tr '\n' ' ' | cut -c1-900)"
    exit 0
fi
echo "$target $(date -u +%FT%TZ)" > /data/system-update/pending
sync
say "rebooting"
sleep 2
systemctl reboot
"#;

/// Run at boot by vigil-provision.service: installs `/boot/efi/vigil/` once per change.
const PROVISION_SH: &str = r#"#!/bin/sh
# Vigil's provisioning from the boot partition. The folder vigil/ on the EFI system partition
# (FAT: writable from any computer) may hold:
#   vigil.toml       the box's config (device id, broker, cameras...); files it names by a
#                    relative path (certificates, keys, secrets) are copied beside it
#   authorized_keys  SSH public keys for root (no key: SSH stays off, and no login exists)
# It is applied when it changed since the last time (its sha256 is kept on /data). A config that
# `vigil check-config` refuses is not installed: the errors are written to vigil/ERRORS.txt and
# the box keeps the config it has.
set -u
src=/boot/efi/vigil
state=/var/lib/private/vigil
stamp=/data/provisioned.sha256
sum=$(cd "$src" && find . -type f ! -name ERRORS.txt -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ -e "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
    echo "provisioning: $src unchanged since it was applied"
    exit 0
fi
rm -f "$src/ERRORS.txt"
if [ -e "$src/authorized_keys" ]; then
    install -m 0600 "$src/authorized_keys" /data/ssh/authorized_keys
    echo "provisioning: SSH keys installed"
fi
if [ -e "$src/vigil.toml" ]; then
    stage=$(mktemp -d /tmp/provision.XXXXXX)
    cp -r "$src"/. "$stage"/
    rm -f "$stage/authorized_keys"
    if ! vigil check-config "$stage/vigil.toml" > "$stage/check.txt" 2>&1; then
        { echo "vigil/vigil.toml was not installed: vigil check-config said:"; cat "$stage/check.txt"; } > "$src/ERRORS.txt"
        cat "$src/ERRORS.txt"
        rm -rf "$stage"
        exit 1
    fi
    rm -f "$stage/check.txt"
    cp -r "$stage"/. "$state"/
    chown -R --reference="$state" "$state"
    rm -rf "$stage"
    echo "provisioning: vigil.toml installed as the live config"
fi
echo "$sum" > "$stamp"
"#;

fn make_esp(esp: &Path, arch: Arch, rootfs: &Path) -> Result<()> {
    let (loader, platform, console) = boot_names(arch);
    let _ = std::fs::remove_file(esp);
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "VIGIL-BOOT", "-C"])
        .arg(esp)
        .arg((ESP_MIB * 1024).to_string()))?;
    let dir = esp.with_extension("d");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let efi = dir.join(loader);
    let mut mkimage = Command::new("grub-mkimage");
    if arch == Arch::Arm64 {
        // The arm64 modules from the root file system (see arch_packages).
        mkimage
            .arg("-d")
            .arg(rootfs.join("usr/lib/grub").join(platform));
    }
    run(mkimage
        .args(["-O", platform, "-p", "/EFI/BOOT", "-o"])
        .arg(&efi)
        .args([
            "part_gpt",
            "fat",
            "ext2",
            "normal",
            "linux",
            "configfile",
            "search",
            "search_fs_uuid",
            "search_label",
            "loadenv",
            "test",
            "echo",
            "regexp",
            "reboot",
            "halt",
            "gzio",
            "zstd",
            "efi_gop",
            "all_video",
            "sleep",
        ]))?;
    std::fs::write(
        dir.join("grub.cfg"),
        GRUB_CFG
            .replace("@A@", &SLOT_A_GUID.to_lowercase())
            .replace("@B@", &SLOT_B_GUID.to_lowercase())
            .replace("@CONSOLE@", console),
    )?;
    let env = dir.join("grubenv");
    run(Command::new("grub-editenv").arg(&env).arg("create"))?;
    run(Command::new("grub-editenv").arg(&env).args([
        "set",
        "ORDER=A B",
        "A_OK=1",
        "A_TRY=0",
        "B_OK=0",
        "B_TRY=0",
    ]))?;
    std::fs::write(dir.join("README.txt"), ESP_README)?;
    let mt = |args: &[&str]| {
        run(Command::new(args[0])
            .args(&args[1..])
            .env("MTOOLS_SKIP_CHECK", "1"))
    };
    let img = esp.display().to_string();
    mt(&["mmd", "-i", &img, "::EFI", "::EFI/BOOT"])?;
    for f in [loader, "grub.cfg", "grubenv"] {
        mt(&[
            "mcopy",
            "-i",
            &img,
            &dir.join(f).display().to_string(),
            &format!("::EFI/BOOT/{f}"),
        ])?;
    }
    mt(&[
        "mcopy",
        "-i",
        &img,
        &dir.join("README.txt").display().to_string(),
        "::VIGIL-README.txt",
    ])?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// GRUB's slot choice (RAUC's GRUB integration: ORDER, X_OK, X_TRY in EFI/BOOT/grubenv).
const GRUB_CFG: &str = r#"# Vigil's A/B boot: the first slot of ORDER that is good (X_OK=1) and not yet tried
# (X_TRY=0) is marked tried and booted; Vigil's health check (RAUC mark-good) resets X_TRY.
# A slot that does not come up good is passed over at the next boot.
set timeout=1
set ORDER="A B"
set A_OK=0
set B_OK=0
set A_TRY=0
set B_TRY=0
load_env --file ($root)/EFI/BOOT/grubenv
regexp --set 1:disk '^\(([^,]+),' "$cmdpath"
set slot=
for s in $ORDER; do
    if [ "$s" = A -a "$A_OK" = 1 -a "$A_TRY" = 0 ]; then set slot=A; set A_TRY=1; break; fi
    if [ "$s" = B -a "$B_OK" = 1 -a "$B_TRY" = 0 ]; then set slot=B; set B_TRY=1; break; fi
done
if [ -z "$slot" ]; then
    # Every good slot was tried without being confirmed: start over from the first good one.
    echo "vigil: no untried good slot; retrying"
    set A_TRY=0
    set B_TRY=0
    for s in $ORDER; do
        if [ "$s" = A -a "$A_OK" = 1 ]; then set slot=A; set A_TRY=1; break; fi
        if [ "$s" = B -a "$B_OK" = 1 ]; then set slot=B; set B_TRY=1; break; fi
    done
fi
if [ -z "$slot" ]; then
    # No slot is good at all: the factory slot, rather than nothing.
    set slot=A
fi
save_env --file ($root)/EFI/BOOT/grubenv A_TRY B_TRY
if [ "$slot" = A ]; then
    set part=gpt2
    set uuid=@A@
else
    set part=gpt3
    set uuid=@B@
fi
menuentry "Vigil slot $slot" {
    linux ($disk,$part)/vmlinuz root=PARTUUID=$uuid ro rauc.slot=$slot console=tty0 console=@CONSOLE@ panic=10
    initrd ($disk,$part)/initrd.img
}
"#;

const ESP_README: &str = "Vigil appliance: boot partition.\r\n\r\n\
Provisioning: create a folder named vigil here with\r\n\
  vigil.toml       this box's config (device id, broker, cameras); see\r\n\
                   /usr/share/doc/vigil/configs/README.md or docs/flashing.md\r\n\
  authorized_keys  SSH public keys for root (without one, SSH stays off)\r\n\
At the next boot the box checks and installs them; a config it refuses is\r\n\
not installed, and the errors are written to vigil/ERRORS.txt.\r\n\
EFI/BOOT holds the boot loader and the A/B slot state: do not change it.\r\n";

fn mke2fs(out: &Path, dir: &Path, label: &str, mib: u64) -> Result<()> {
    let _ = std::fs::remove_file(out);
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", label, "-d"])
        .arg(dir)
        .arg(out)
        .arg(format!("{mib}M")))
}

fn du_mib(dir: &Path) -> Result<u64> {
    let out = Command::new("du").args(["-sxm"]).arg(dir).output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .context("du")
}

/// The GPT disk: ESP, slot A (written), slot B (empty), data.
fn assemble(img: &Path, esp: &Path, slot_a: &Path, data: &Path) -> Result<()> {
    let _ = std::fs::remove_file(img);
    let total = 1 + ESP_MIB + 2 * SLOT_MIB + DATA_MIB + 1;
    run(Command::new("truncate")
        .arg("-s")
        .arg(format!("{total}M"))
        .arg(img))?;
    let mut start = 1u64; // MiB
    let mut sg = Command::new("sgdisk");
    sg.arg("-Z");
    let parts = [
        (1, ESP_MIB, "ef00", "esp", ESP_GUID),
        (2, SLOT_MIB, "8304", "rootfs-a", SLOT_A_GUID),
        (3, SLOT_MIB, "8304", "rootfs-b", SLOT_B_GUID),
        (4, DATA_MIB, "8300", "data", DATA_GUID),
    ];
    let mut starts = Vec::new();
    for (n, mib, ty, label, guid) in parts {
        sg.arg(format!(
            "-n{n}:{}:{}",
            start * 2048,
            (start + mib) * 2048 - 1
        ))
        .arg(format!("-t{n}:{ty}"))
        .arg(format!("-c{n}:{label}"))
        .arg(format!("-u{n}:{guid}"));
        starts.push(start);
        start += mib;
    }
    run(sg.arg(img))?;
    for (file, at) in [(esp, starts[0]), (slot_a, starts[1]), (data, starts[3])] {
        run(Command::new("dd")
            .arg(format!("if={}", file.display()))
            .arg(format!("of={}", img.display()))
            .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
            .arg(format!("seek={at}")))?;
    }
    Ok(())
}

fn make_bundle(
    work: &Path,
    rootfs: &Path,
    arch: Arch,
    version: &str,
    keys: &Keys,
    out: &Path,
) -> Result<()> {
    let dir = work.join("bundle");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::rename(rootfs, dir.join("rootfs.ext4"))?;
    std::fs::write(
        dir.join("manifest.raucm"),
        format!(
            "[update]\ncompatible=vigil-{arch}\nversion={version}\n\n[bundle]\nformat=verity\n\n\
             [image.rootfs]\nfilename=rootfs.ext4\n",
            arch = arch.debian()
        ),
    )?;
    let _ = std::fs::remove_file(out);
    run(Command::new("rauc")
        .arg("bundle")
        .arg(format!("--cert={}", keys.cert.display()))
        .arg(format!("--key={}", keys.key.display()))
        .arg(&dir)
        .arg(out))?;
    run(Command::new("rauc")
        .arg("info")
        .arg(format!("--keyring={}", keys.keyring.display()))
        .arg(out)
        .stdout(std::process::Stdio::null()))?;
    Ok(())
}

fn sha256_file(p: &Path) -> Result<()> {
    let out = Command::new("sha256sum")
        .current_dir(p.parent().unwrap())
        .arg(p.file_name().unwrap())
        .output()?;
    if !out.status.success() {
        bail!("sha256sum {}", p.display());
    }
    std::fs::write(
        p.with_extension(format!(
            "{}.sha256",
            p.extension().unwrap().to_string_lossy()
        )),
        out.stdout,
    )?;
    Ok(())
}
