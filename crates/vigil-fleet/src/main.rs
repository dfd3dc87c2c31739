//! `vigil-fleet serve`: the console. See `lib.rs` and `docs/fleet.md`.

#![forbid(unsafe_code)]

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use vigil_fleet::ingest::{self, Counters, IngestConfig};
use vigil_fleet::store::Store;
use vigil_fleet::store::postgres::PgStore;
use vigil_fleet::store::sqlite::SqliteStore;
use vigil_fleet::web::{self, App};

#[derive(Parser)]
#[command(name = "vigil-fleet", version, about = "Vigil's fleet console")]
enum Cli {
    /// Read the broker into the store and serve the pages.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The MQTT broker, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// The boxes' `[mqtt] topic_prefix`.
    #[arg(long, default_value = "vigil")]
    prefix: String,
    /// Where events are kept: a SQLite file, or a `postgres://` URL.
    #[arg(long, default_value = "fleet.db")]
    db: String,
    /// Where the pages are served.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// The console has no login yet: it serves only on loopback unless this is given.
    #[arg(long)]
    allow_remote_without_login: bool,
    /// Seconds a sequence gap waits before the box is asked to replay it.
    #[arg(long, default_value_t = 10.0)]
    gap_grace_s: f64,
    /// Seconds between replay requests for a gap still open.
    #[arg(long, default_value_t = 30.0)]
    gap_retry_s: f64,
    /// Event pictures kept, in MiB.
    #[arg(long, default_value_t = 1024)]
    picture_mib: i64,
    /// The MQTT client id (unique per console).
    #[arg(long, default_value = "vigil-fleet")]
    client_id: String,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Cli::Serve(args) = Cli::parse();
    if let Err(e) = serve(args).await {
        eprintln!("vigil-fleet: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(a: ServeArgs) -> Result<()> {
    if !a.listen.ip().is_loopback() && !a.allow_remote_without_login {
        bail!(
            "--listen {}: the console has no login yet, so it serves only on loopback \
             (127.0.0.1 or ::1); put it behind an authenticating proxy and pass \
             --allow-remote-without-login to serve elsewhere",
            a.listen
        );
    }
    let (host, port) = a
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .with_context(|| format!("--broker {:?}: expected host:port", a.broker))?;
    if a.gap_grace_s < 0.0 || a.gap_retry_s <= 0.0 || a.picture_mib < 1 {
        bail!("--gap-grace-s ≥ 0, --gap-retry-s > 0 and --picture-mib ≥ 1 expected");
    }
    let cfg = IngestConfig {
        host,
        port,
        prefix: a.prefix.trim_end_matches('/').to_string(),
        client_id: a.client_id.clone(),
        grace: Duration::from_secs_f64(a.gap_grace_s),
        retry: Duration::from_secs_f64(a.gap_retry_s),
        max_picture_bytes: a.picture_mib << 20,
    };
    if a.db.starts_with("postgres://") || a.db.starts_with("postgresql://") {
        let store = PgStore::connect(&a.db)
            .await
            .context("connecting to PostgreSQL")?;
        run(store, cfg, a.listen).await
    } else {
        let store = SqliteStore::open(std::path::Path::new(&a.db))
            .with_context(|| format!("opening {}", a.db))?;
        run(store, cfg, a.listen).await
    }
}

async fn run<S: Store + Clone>(store: S, cfg: IngestConfig, listen: SocketAddr) -> Result<()> {
    store.migrate().await.context("creating the tables")?;
    let counters = Arc::new(Counters::default());
    let (changed, _) = tokio::sync::broadcast::channel(64);
    tokio::spawn(ingest::run(
        store.clone(),
        cfg,
        counters.clone(),
        changed.clone(),
    ));
    let app = Arc::new(App {
        store,
        counters,
        changed,
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    tracing::info!("fleet console on http://{}", listener.local_addr()?);
    axum::serve(listener, web::router(app))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
