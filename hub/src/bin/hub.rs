//! `hub`: runs the storegate hub (or administers it).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use storegate_hub::Settings;
use storegate_hub::auth::{self, Role};
use tokio_util::sync::CancellationToken;

/// storegate hub: one truth for orders, payments and stock.
///
/// With no arguments it runs with the embedded defaults: rumqttd in-process
/// on 127.0.0.1:1884, SQLite in data/hub, the REST API on 127.0.0.1:8080.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// TOML settings file (see --print-default-config); SG_HUB_* variables override it.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Print the default settings as TOML and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Database URL: sqlite://path or postgres://user@host/db.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Use this broker (mqtt://host:port) instead of the embedded one.
    #[arg(long)]
    broker: Option<String>,
    /// Embedded broker listen address.
    #[arg(long)]
    broker_listen: Option<String>,
    /// REST API listen address.
    #[arg(long)]
    api_listen: Option<String>,
    /// Data directory for the default SQLite database.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates a user (for example the first admin) and exits.
    CreateUser {
        /// Email (login name).
        #[arg(long)]
        email: String,
        /// Password; if absent, read from SG_HUB_NEW_PASSWORD.
        #[arg(long, env = "SG_HUB_NEW_PASSWORD")]
        password: String,
        /// admin, operator or client.
        #[arg(long, default_value = "admin")]
        role: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{}", Settings::default_toml());
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // rumqttd logs every client disconnect at ERROR; RUST_LOG=rumqttd=info shows it.
                .unwrap_or_else(|_| "info,rumqttd=off,rumqttc=warn,sqlx=warn".into()),
        )
        .init();
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(u) = cli.database_url {
        settings.database.url = u;
    }
    if let Some(b) = cli.broker {
        settings.broker.url = b;
    }
    if let Some(l) = cli.broker_listen {
        settings.broker.listen = l;
    }
    if let Some(l) = cli.api_listen {
        settings.api.listen = l;
    }
    if let Some(d) = cli.data_dir {
        settings.data_dir = d;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        if let Some(Command::CreateUser {
            email,
            password,
            role,
            name,
        }) = cli.command
        {
            let v = settings.validate()?;
            let db = storegate_hub::db::Db::connect(&v.database_url, 2).await?;
            db.migrate().await?;
            let role: Role = role.parse().map_err(anyhow::Error::msg)?;
            let user = auth::create_user(&db, &email, &name, &password, role).await?;
            println!("created {} {} ({})", user.role, user.email, user.id);
            return anyhow::Ok(());
        }
        let shutdown = CancellationToken::new();
        let hub = storegate_hub::start(settings, shutdown.clone()).await?;
        // Machine-readable line for supervisors and tests that bind port 0.
        println!("hub listening api={} broker={}", hub.api_addr, hub.broker_addr);
        println!("REST API docs: http://{}/api/docs", hub.api_addr);
        tokio::spawn(stop_on_signal(shutdown));
        hub.stopped().await;
        anyhow::Ok(())
    })
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
