//! `vigil-fleet serve`: the console. See `lib.rs` and `docs/fleet.md`.

#![forbid(unsafe_code)]

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use vigil_fleet::alerts::Rules;
use vigil_fleet::auth::Role;
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
    /// The console's users.
    #[command(subcommand)]
    User(UserCmd),
    /// Many simulated boxes against a broker (the scale bench; see benches/RESULTS.md).
    Simulate {
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        #[arg(long, default_value = "vigil")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        devices: usize,
        /// Events a second over the whole fleet.
        #[arg(long, default_value_t = 50.0)]
        events_per_s: f64,
        #[arg(long, default_value_t = 10.0)]
        telemetry_s: f64,
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// The boxes' ids start with this.
        #[arg(long, default_value = "sim")]
        ids: String,
    },
}

#[derive(clap::Subcommand)]
enum UserCmd {
    /// Add a user (or set an existing user's password and role); the password is read from
    /// the first line of standard input (at least 10 characters).
    Add {
        name: String,
        /// viewer (sees), operator (also sends commands, marks events reviewed) or admin
        /// (also reads the audit log).
        #[arg(long)]
        role: String,
        /// The console's store, as given to `serve --db`.
        #[arg(long, default_value = "fleet.db")]
        db: String,
    },
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
    /// The console speaks plain HTTP (passwords and cookies readable on the network): it
    /// serves only on loopback unless this is given (put it behind a TLS proxy).
    #[arg(long)]
    allow_remote_http: bool,
    /// Seconds a sequence gap waits before the box is asked to replay it.
    #[arg(long, default_value_t = 10.0)]
    gap_grace_s: f64,
    /// Seconds between replay requests for a gap still open.
    #[arg(long, default_value_t = 30.0)]
    gap_retry_s: f64,
    /// Event pictures kept, in MiB.
    #[arg(long, default_value_t = 1024)]
    picture_mib: i64,
    /// Alert rules (TOML, see `docs/fleet.md`); without: a box offline for 30 s, a camera down
    /// for 60 s.
    #[arg(long)]
    alerts: Option<std::path::PathBuf>,
    /// The MQTT client id (unique per console).
    #[arg(long, default_value = "vigil-fleet")]
    client_id: String,
    /// An OTA public key (base64, as in a box's `[ota] trusted_keys`; repeatable): releases
    /// must be signed by one of them before a rollout may send them.
    #[arg(long = "ota-key")]
    ota_keys: Vec<String>,
    /// Where a release's bundle is downloaded while it is checked (removed afterwards).
    #[arg(long, default_value = "fleet-downloads")]
    download_dir: std::path::PathBuf,
    /// Largest release bundle, in MiB.
    #[arg(long, default_value_t = 1024)]
    release_max_mib: u64,
    /// Share the boxes' messages with the other consoles of this group (same PostgreSQL
    /// store): an MQTT shared subscription, each message to one of them.
    #[arg(long)]
    share_group: Option<String>,
    /// This console does not drive rollouts (another console of the group does): its
    /// Rollouts pages are read-only.
    #[arg(long)]
    no_rollouts: bool,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let r = match Cli::parse() {
        Cli::Serve(args) => serve(args).await,
        Cli::User(UserCmd::Add { name, role, db }) => add_user(&name, &role, &db).await,
        Cli::Simulate {
            broker,
            prefix,
            devices,
            events_per_s,
            telemetry_s,
            seconds,
            ids,
        } => {
            simulate(
                broker,
                prefix,
                devices,
                events_per_s,
                telemetry_s,
                seconds,
                ids,
            )
            .await
        }
    };
    if let Err(e) = r {
        eprintln!("vigil-fleet: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(a: ServeArgs) -> Result<()> {
    if !a.listen.ip().is_loopback() && !a.allow_remote_http {
        bail!(
            "--listen {}: the console speaks plain HTTP, so it serves only on loopback \
             (127.0.0.1 or ::1); put it behind a TLS proxy and pass --allow-remote-http to \
             serve elsewhere",
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
    let mut ota_keys = Vec::new();
    for (i, k) in a.ota_keys.iter().enumerate() {
        ota_keys.push(
            vigil_core::keys::parse_public_key(k)
                .map_err(|e| anyhow::anyhow!("--ota-key #{}: {e}", i + 1))?,
        );
    }
    if a.release_max_mib == 0 || a.release_max_mib > 64 << 10 {
        bail!("--release-max-mib: 1 to 65536 expected");
    }
    if let Some(g) = &a.share_group
        && !vigil_core::wire::is_name(g)
    {
        bail!("--share-group {g:?}: expected 1 to 64 of A-Z a-z 0-9 _ -");
    }
    if a.share_group.is_some() && !a.db.starts_with("postgres") {
        bail!(
            "--share-group: consoles sharing the load must share a PostgreSQL store (--db postgres://…)"
        );
    }
    let (rollouts_tx, rollouts_rx) = tokio::sync::mpsc::channel(4096);
    let cfg = IngestConfig {
        host,
        port,
        prefix: a.prefix.trim_end_matches('/').to_string(),
        client_id: a.client_id.clone(),
        grace: Duration::from_secs_f64(a.gap_grace_s),
        retry: Duration::from_secs_f64(a.gap_retry_s),
        max_picture_bytes: a.picture_mib << 20,
        rollouts: Some(rollouts_tx),
        share: a.share_group.clone(),
    };
    let releases = web::Releases {
        drive: !a.no_rollouts,
        keys: ota_keys,
        download_dir: a.download_dir.clone(),
        max_bytes: a.release_max_mib << 20,
    };
    let rules = match &a.alerts {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
            Rules::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => Rules::defaults(),
    };
    match open(&a.db).await? {
        Db::Pg(s) => run(s, cfg, a.listen, rules, releases, rollouts_rx).await,
        Db::Lite(s) => run(s, cfg, a.listen, rules, releases, rollouts_rx).await,
    }
}

enum Db {
    Pg(PgStore),
    Lite(SqliteStore),
}

/// The store `--db` names: a `postgres://` URL or a SQLite file; its tables made.
async fn open(db: &str) -> Result<Db> {
    let d = if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        Db::Pg(
            PgStore::connect(db)
                .await
                .context("connecting to PostgreSQL")?,
        )
    } else {
        Db::Lite(
            SqliteStore::open(std::path::Path::new(db)).with_context(|| format!("opening {db}"))?,
        )
    };
    match &d {
        Db::Pg(s) => s.migrate().await,
        Db::Lite(s) => s.migrate().await,
    }
    .context("creating the tables")?;
    Ok(d)
}

#[allow(clippy::too_many_arguments)]
async fn simulate(
    broker: String,
    prefix: String,
    devices: usize,
    events_per_s: f64,
    telemetry_s: f64,
    seconds: f64,
    ids: String,
) -> Result<()> {
    if !vigil_core::wire::is_name(&format!("{ids}00000")) {
        bail!("--ids {ids:?}: the boxes' ids must be Vigil names");
    }
    let (host, port) = broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .with_context(|| format!("--broker {broker:?}: expected host:port"))?;
    if devices == 0 || devices > 100_000 || !(0.0..=1e6).contains(&events_per_s) {
        bail!("--devices 1..=100000 and --events-per-s 0..=1000000 expected");
    }
    let t0 = std::time::Instant::now();
    let sent = vigil_fleet::simulate::run(vigil_fleet::simulate::Sim {
        host,
        port,
        prefix,
        devices,
        events_per_s,
        telemetry_s: telemetry_s.max(0.1),
        seconds,
        ids,
    })
    .await;
    let o = std::sync::atomic::Ordering::Relaxed;
    println!(
        "simulated {devices} boxes for {:.1} s: {} events, {} telemetry messages",
        t0.elapsed().as_secs_f64(),
        sent.events.load(o),
        sent.telemetry.load(o)
    );
    Ok(())
}

async fn add_user(name: &str, role: &str, db: &str) -> Result<()> {
    if !vigil_core::wire::is_name(name) {
        bail!("user {name:?}: expected 1 to 64 of A-Z a-z 0-9 _ -");
    }
    let role = Role::parse(role)
        .with_context(|| format!("--role {role:?}: expected viewer, operator or admin"))?;
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.chars().count() < vigil_fleet::auth::MIN_PASSWORD {
        bail!(
            "the password (first line of standard input) has {} characters; at least {} expected",
            password.chars().count(),
            vigil_fleet::auth::MIN_PASSWORD
        );
    }
    let hash = vigil_fleet::auth::hash_password(password).map_err(anyhow::Error::msg)?;
    let now = ingest::now_ms();
    match open(db).await? {
        Db::Pg(s) => s.put_user(name, &hash, role.as_str(), now).await,
        Db::Lite(s) => s.put_user(name, &hash, role.as_str(), now).await,
    }?;
    println!("user {name} ({}) saved in {db}", role.as_str());
    Ok(())
}

async fn run<S: Store + Clone>(
    store: S,
    cfg: IngestConfig,
    listen: SocketAddr,
    rules: Rules,
    releases: web::Releases,
    rollouts_rx: tokio::sync::mpsc::Receiver<vigil_fleet::rollout::Msg>,
) -> Result<()> {
    let counters = Arc::new(Counters::default());
    let (changed, _) = tokio::sync::broadcast::channel(64);
    let (mqtt, eventloop) = ingest::client(&cfg);
    let prefix = cfg.prefix.clone();
    let rollouts = cfg.rollouts.clone().context("the rollout channel")?;
    if releases.drive {
        tokio::spawn(vigil_fleet::rollout::run(
            store.clone(),
            mqtt.clone(),
            prefix.clone(),
            rollouts_rx,
            changed.clone(),
        ));
    } else {
        // Another console drives the rollouts: what the ingest tells is dropped here.
        tokio::spawn(async move {
            let mut rx = rollouts_rx;
            while let Some(m) = rx.recv().await {
                if let vigil_fleet::rollout::Msg::Control { answer, .. }
                | vigil_fleet::rollout::Msg::Create { answer, .. } = m
                {
                    let _ = answer.send(Err(
                        "this console does not drive rollouts (--no-rollouts): use the one that does"
                            .into(),
                    ));
                }
            }
        });
    }
    tokio::spawn(ingest::run(
        store.clone(),
        cfg,
        (mqtt.clone(), eventloop),
        counters.clone(),
        changed.clone(),
    ));
    tokio::spawn(vigil_fleet::alerts::run(
        store.clone(),
        rules,
        counters.clone(),
        changed.clone(),
    ));
    let app = Arc::new(App {
        store,
        counters,
        changed,
        mqtt,
        prefix,
        rollouts,
        releases,
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
