//! `vigil ota keygen | pack | verify`: the operator's tools.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use vigil_dataplane::facts::ThisBox;
use vigil_ota::bundle::{PackInfo, file_sha256, pack, read_bundle};
use vigil_ota::manifest::{DeviceFacts, Target, encode_key, parse_public_key, parse_secret_key};

#[derive(clap::Subcommand)]
pub enum OtaCmd {
    /// Make a signing key pair: OUT (secret, mode 0600) and OUT.pub; prints the public key for
    /// `[ota] trusted_keys`.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign and pack every file under DIR (`models/…`, optional `config.toml` overlay) into
    /// one bundle.
    Pack {
        /// Secret key file from `vigil ota keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Monotonic sequence number (higher than every bundle before it).
        #[arg(long)]
        sequence: u64,
        #[arg(long)]
        version: String,
        /// How long the bundle may be installed, e.g. "30d".
        #[arg(long, default_value = "30days")]
        valid_for: humantime::Duration,
        #[arg(long)]
        device_class: Option<String>,
        #[arg(long)]
        min_vigil_version: Option<String>,
        /// "none" or "nvidia".
        #[arg(long)]
        gpu: Option<String>,
        #[arg(long)]
        ort_version: Option<String>,
        /// Prebuilt TensorRT engines in the bundle (`engines/`): the TensorRT version prefix
        /// they were built with, e.g. 10.3.
        #[arg(long)]
        tensorrt_version: Option<String>,
        /// And the GPU compute capability, e.g. 8.7.
        #[arg(long)]
        compute_capability: Option<String>,
        /// The bundle file to write.
        #[arg(long, short)]
        out: PathBuf,
        dir: PathBuf,
    },
    /// Check a bundle as a box would: signature, manifest (paths, dates, sequence), every
    /// file's size and digest; with --config also everything the box checks against its own
    /// state (target, sequence, the config overlay merged over that config, the key floor).
    /// The files are staged into a scratch directory under $TMPDIR, removed at the end.
    /// Prints the manifest and the verdict; exit 1 if refused.
    Verify {
        bundle: PathBuf,
        /// A device config: its trusted keys, device class and active sequence.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A trusted public key (base64, or a .pub file); may be repeated.
        #[arg(long)]
        key: Vec<String>,
    },
}

pub fn run(cmd: OtaCmd) -> Result<()> {
    match cmd {
        OtaCmd::Keygen { out } => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let public = encode_key(key.verifying_key().as_bytes());
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| {
                    format!("{} (an existing key is never overwritten)", out.display())
                })?;
            writeln!(f, "{}", encode_key(&seed))?;
            let pub_path = PathBuf::from(format!("{}.pub", out.display()));
            std::fs::write(&pub_path, format!("{public}\n"))?;
            println!("{public}");
            eprintln!(
                "secret key: {} (keep it off the devices); public key: {} (add it to [ota] trusted_keys)",
                out.display(),
                pub_path.display()
            );
            Ok(())
        }
        OtaCmd::Pack {
            key,
            sequence,
            version,
            valid_for,
            device_class,
            min_vigil_version,
            gpu,
            ort_version,
            tensorrt_version,
            compute_capability,
            out,
            dir,
        } => {
            let text = std::fs::read_to_string(&key).with_context(|| key.display().to_string())?;
            let key =
                parse_secret_key(&text).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            let info = PackInfo {
                version,
                sequence,
                valid_for: valid_for.into(),
                target: Target {
                    device_class,
                    min_vigil_version,
                    gpu,
                    ort_version,
                    tensorrt_version,
                    compute_capability,
                },
            };
            let m = pack(&dir, &key, &info, &out)?;
            let (sha, size) = file_sha256(&out)?;
            println!(
                "{}: sequence {}, version {}, {} file(s), {size} bytes\nsha256 {sha}",
                out.display(),
                m.sequence,
                m.version,
                m.files.len()
            );
            Ok(())
        }
        OtaCmd::Verify {
            bundle,
            config,
            key,
        } => {
            let mut keys = Vec::new();
            for k in &key {
                let text = match std::fs::read_to_string(k) {
                    Ok(t) => t,
                    Err(_) => k.clone(),
                };
                keys.push(parse_public_key(&text).map_err(|e| anyhow::anyhow!("--key {k}: {e}"))?);
            }
            let cfg = match &config {
                Some(p) => Some(
                    vigil_ota::load_effective(p, &ThisBox).map_err(|e| anyhow::anyhow!("{e}"))?,
                ),
                None => None,
            };
            if let Some(c) = &cfg {
                keys.extend(vigil_ota::trusted_keys(c));
            }
            if keys.is_empty() {
                bail!("no trusted key: give --key or --config");
            }
            let state = match &cfg {
                Some(c) => vigil_ota::store::Store {
                    dir: vigil_ota::dir_of(c),
                }
                .read_state()?,
                None => Default::default(),
            };
            let f = std::fs::File::open(&bundle).with_context(|| bundle.display().to_string())?;
            // Staged as the box stages it (into a scratch directory removed at the end), so
            // that the box's checks of a staged set run on it too.
            let staging = Scratch(
                std::env::temp_dir().join(format!("vigil-ota-verify-{}", std::process::id())),
            );
            let _ = std::fs::remove_dir_all(&staging.0);
            let mut shown = false;
            let verdict = read_bundle(
                std::io::BufReader::new(f),
                &keys,
                cfg.as_ref().map_or(u64::MAX, |c| c.ota.max_bundle_bytes),
                |m| {
                    println!("{}", String::from_utf8_lossy(&m.to_bytes()));
                    shown = true;
                    match &cfg {
                        Some(c) => vigil_ota::check_policy(
                            m,
                            &DeviceFacts::of(&c.ota.device_class, &ThisBox),
                            state.active.as_ref(),
                            false,
                        ),
                        None => vigil_ota::check_manifest(m, std::time::SystemTime::now()),
                    }
                },
                Some(&staging.0),
                |_| {},
            )
            .and_then(|v| match (&config, &cfg) {
                (Some(path), Some(c)) => vigil_ota::check_staged(
                    path,
                    &staging.0,
                    &ThisBox,
                    v.manifest.sequence,
                    &c.ota.trusted_keys,
                    state.key_floor,
                )
                .map(|_| v),
                _ => Ok(v),
            });
            let (sha, _) = file_sha256(&bundle)?;
            match verdict {
                Ok(v) => {
                    println!(
                        "{}: ok (signed by trusted key {}, sha256 {sha}{})",
                        bundle.display(),
                        v.key_index,
                        if cfg.is_some() {
                            ", fits this device"
                        } else {
                            "; target, sequence and config overlay not checked: no --config"
                        }
                    );
                    Ok(())
                }
                Err(e) => bail!("{}: refused: {}", bundle.display(), e.reason()),
            }
        }
    }
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
