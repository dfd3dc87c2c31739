//! `vigil`: the command line. Errors are reported here (anyhow); the library returns typed ones.

#![forbid(unsafe_code)]

mod bench;
mod bench_gpu;
mod bench_pictures;
mod detect;
mod engines_cli;
mod eval;
mod eval_score;
mod gpu_check;
mod ota_cli;
mod token;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vigil_dataplane::facts::ThisBox;
use vigil_dataplane::media::rtsp_server;

#[derive(Parser)]
#[command(
    name = "vigil",
    version = vigil_core::version::version(),
    about = "GPU edge video-analytics appliance service"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the service on a config file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0, or exit 2 with every error as FILE:LINE:COL: field: message.
    CheckConfig { file: PathBuf },
    /// Detect objects in pictures or clip frames and print them (one line per detection).
    Detect {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 0.35)]
        min_score: f32,
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// The network input's long side, or "native" (each picture's own, rounded up to a
        /// multiple of 32, at most 2048): `input_size` of `[models.<name>]`.
        #[arg(long, default_value = "416", value_parser = crate::detect::parse_input_size)]
        input_size: vigil_core::config::InputSize,
        /// Detect on COLSxROWS overlapping tiles and the whole picture, boxes merged (e.g.
        /// 2x1): `[models.<name>.tiles]`.
        #[arg(long, value_name = "COLSxROWS", value_parser = crate::detect::parse_grid)]
        tiles: Option<[u32; 2]>,
        /// Share of a tile its neighbour also covers (with --tiles).
        #[arg(long, default_value_t = 0.2, requires = "tiles")]
        tile_overlap: f32,
        files: Vec<PathBuf>,
    },
    /// Serve an H.264 MP4 file as an RTSP camera on 127.0.0.1 (demo and tests).
    RtspServe {
        #[arg(long, required_unless_present = "launch")]
        file: Option<PathBuf>,
        /// Serve a GStreamer launch description instead of a file (payloaders named pay0,
        /// pay1, …): e.g. a camera of another codec, with audio.
        #[arg(long, conflicts_with_all = ["file", "looped"])]
        launch: Option<String>,
        #[arg(long, default_value_t = 8554)]
        port: u16,
        #[arg(long, default_value = "/cam")]
        mount: String,
        /// The address to listen on (e.g. 0.0.0.0 inside a test's network namespace).
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
        /// Play the clip without end, as a live camera (the file's H.264 is sent again and
        /// again with its times moved on; it is read into memory once).
        #[arg(long = "loop")]
        looped: bool,
        /// The RTP transports clients may ask for.
        #[arg(long, default_value = "any", value_parser = ["any", "tcp", "udp"])]
        transport: String,
    },
    /// Probe the GPU and check the fused preprocessing kernel against the CPU reference; with
    /// `--model`, also the GPU path's detections against the CPU path's on the same frames.
    GpuCheck {
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, default_value = ".cache/media/astronaut.png")]
        picture: PathBuf,
        #[arg(long, default_value = ".cache/media/vtest.mp4")]
        clip: PathBuf,
        #[arg(long, default_value_t = 40)]
        frames: usize,
        /// Check the GPU renderer and nvJPEG against the CPU renderer and encoder (frames of
        /// `--clip`), and time them.
        #[arg(long)]
        pictures: bool,
        /// With --model: both paths with this `input_size` (a side, or "native").
        #[arg(long, default_value = "416", value_parser = crate::detect::parse_input_size)]
        input_size: vigil_core::config::InputSize,
        /// With --model: both paths on COLSxROWS overlapping tiles (`[models.<name>.tiles]`,
        /// overlap 0.2).
        #[arg(long, value_name = "COLSxROWS", value_parser = crate::detect::parse_grid)]
        tiles: Option<[u32; 2]>,
        /// With --tiles: the tiles alone, without the whole frame (`full_frame = false`).
        #[arg(long, requires = "tiles")]
        tiles_only: bool,
    },
    /// Measure the CPU analysis path against the Python baseline; see benches/RESULTS.md.
    Bench(crate::bench::BenchArgs),
    /// Score clips with ground truth (tests/data/eval) through the production path: per rule
    /// hits, misses, direction errors, duplicates, false positives, id switches.
    Eval(crate::eval::EvalArgs),
    /// Signed OTA bundles of models and config: keygen, pack, verify (see ota/README.md).
    #[command(subcommand)]
    Ota(crate::ota_cli::OtaCmd),
    /// Bearer tokens of the HTTP API: `token new --scope read|admin` (see docs/http.md).
    #[command(subcommand)]
    Token(crate::token::TokenCmd),
    /// The TensorRT engine cache: list, build, prune (see docs/tensorrt.md).
    #[command(subcommand)]
    Engines(crate::engines_cli::EnginesCmd),
}

/// Human text on a terminal; journald (structured fields) when systemd started us.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let filter = || EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let under_systemd =
        std::env::var_os("INVOCATION_ID").is_some() || std::env::var_os("JOURNAL_STREAM").is_some();
    if under_systemd && let Ok(journald) = tracing_journald::layer() {
        tracing_subscriber::registry()
            .with(journald.with_filter(filter()))
            .init();
        return;
    }
    // Colours only on a terminal: logs piped to a file or another program stay plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// `vigil check-config`: exit 2 with every error, or 0 with the warnings (both located as
/// `FILE:LINE:COL: field: …`, on stderr).
fn check_config(file: &std::path::Path) -> ExitCode {
    let (cfg, warnings) = match vigil_core::config::load_with_warnings(file, &ThisBox) {
        Ok(v) => v,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    // The MQTT link's TLS set-up as it will be made (the key goes with the certificate).
    if let Err(issues) = vigil_control::mqtt::tls::check(&cfg.mqtt) {
        for i in issues {
            eprintln!("{}", vigil_core::config::locate(file, i.field, i.message));
        }
        return ExitCode::from(2);
    }
    for w in &warnings {
        eprintln!("{w}");
    }
    println!(
        "{}: ok (device {}, {} camera(s), {} model(s))",
        file.display(),
        cfg.device.id,
        cfg.cameras.len(),
        cfg.models.len()
    );
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    // A crash in a native library (GStreamer, CUDA, ONNX Runtime) leaves a backtrace naming it on
    // the standard error (the journal) before the process dies as it would have.
    vigil_dataplane::ffi::crash::install();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { file } => check_config(&file),
        Cmd::Run { config } => {
            init_logging();
            // The device's config with the active OTA set's overlay, if any.
            let cfg = match vigil_ota::load_effective(&config, &ThisBox) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!("vigil: not started: {} has errors", config.display());
                    return ExitCode::from(2);
                }
            };
            // A client certificate not valid by this box's clock does not stop the box (its
            // clock may be wrong at boot; a renewal may be late): said here, and by the link.
            if let Ok(Some(files)) = vigil_core::config::TlsFiles::read(
                &cfg.mqtt,
                std::time::SystemTime::now(),
                vigil_core::config::Validity::Warn,
            ) && let Some(v) = files.validity
            {
                tracing::warn!(
                    "{v}; starting anyway: the link connects once the clock is right or renewed files are in place"
                );
            }
            report(run_service(cfg, config))
        }
        Cmd::Detect {
            model,
            min_score,
            threads,
            input_size,
            tiles,
            tile_overlap,
            files,
        } => report(crate::detect::detect_files(
            &model,
            min_score,
            threads,
            input_size,
            tiles.map(|grid| vigil_core::config::TilesConfig {
                grid,
                overlap: tile_overlap,
                full_frame: true,
            }),
            &files,
        )),
        Cmd::GpuCheck {
            model,
            picture,
            clip,
            frames,
            pictures,
            input_size,
            tiles,
            tiles_only,
        } => report(crate::gpu_check::run().and_then(|gpu| {
            if gpu && pictures {
                crate::gpu_check::pictures::run(&clip, frames)?;
            }
            let sizing = crate::gpu_check::equality::Sizing {
                input_size,
                tiles: tiles.map(|grid| vigil_core::config::TilesConfig {
                    grid,
                    overlap: 0.2,
                    full_frame: !tiles_only,
                }),
            };
            match (gpu, model) {
                (true, Some(m)) => {
                    crate::gpu_check::equality::run(&m, &picture, &clip, frames, sizing)
                }
                _ => Ok(()),
            }
        })),
        Cmd::Bench(args) => {
            init_logging();
            report(crate::bench::run(args))
        }
        Cmd::Eval(args) => {
            init_logging();
            report(crate::eval::run(args))
        }
        Cmd::Ota(cmd) => report(crate::ota_cli::run(cmd)),
        Cmd::Token(cmd) => report(crate::token::run(cmd)),
        Cmd::Engines(cmd) => report(crate::engines_cli::run(cmd)),
        Cmd::RtspServe {
            file,
            launch,
            port,
            mount,
            address,
            looped,
            transport,
        } => report(
            rtsp_server::serve_forever(
                match (&launch, &file) {
                    (Some(l), _) => rtsp_server::Source::Launch(l),
                    (None, Some(path)) => rtsp_server::Source::File { path, looped },
                    (None, None) => return report(Err(anyhow::anyhow!("give --file or --launch"))),
                },
                address,
                port,
                &mount,
                match transport.as_str() {
                    "tcp" => vigil_core::config::RtspTransport::Tcp,
                    "udp" => vigil_core::config::RtspTransport::Udp,
                    _ => vigil_core::config::RtspTransport::Auto,
                },
            )
            .map_err(anyhow::Error::from),
        ),
    }
}

fn run_service(cfg: vigil_core::config::Config, path: PathBuf) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(vigil_control::supervisor::run(
        cfg,
        path,
        std::sync::Arc::new(ThisBox),
    ))
    .map_err(|e| anyhow::anyhow!(vigil_core::error::chain(&e)))
}

fn report(r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil: {e:#}");
            ExitCode::FAILURE
        }
    }
}
