//! `edge-agent`: runs storegate's in-store agent.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use storegate_edge::Settings;
use tokio_util::sync::CancellationToken;

/// storegate edge agent: the store keeps selling when the WAN is down.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// TOML settings file (see --print-default-config); SG_EDGE_* variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the default settings as TOML and exit.
    #[arg(long)]
    print_default_config: bool,
    /// This store's id (overrides the file).
    #[arg(long)]
    store_id: Option<String>,
    /// Where the journal lives (overrides the file).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Upstream broker, mqtts://host:port (overrides the bundle and the file).
    #[arg(long)]
    upstream: Option<String>,
    /// The store bundle from `hub store provision` (overrides the file).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Local HTTP endpoint address (overrides the file).
    #[arg(long)]
    http_listen: Option<String>,
    /// Device bus (LAN broker) address (overrides the file).
    #[arg(long)]
    lan_listen: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Store LAN devices.
    #[command(subcommand)]
    Device(DeviceCommand),
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Makes a device's credentials: prints the `[[devices]]` entry for the
    /// settings file, and the password to set on the device (shown once,
    /// kept nowhere).
    New {
        /// Device id (its MQTT username).
        id: String,
        /// till, scanner, scale, handheld, supervisor or other.
        #[arg(long, value_parser = parse_role)]
        role: storegate_edge::lan::access::DeviceRole,
        /// A lane it acts on (repeat for more).
        #[arg(long = "lane")]
        lanes: Vec<String>,
    },
}

fn parse_role(s: &str) -> Result<storegate_edge::lan::access::DeviceRole, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("{s:?}: one of till, scanner, scale, handheld, supervisor, other"))
}

fn new_device(
    id: &str,
    role: storegate_edge::lan::access::DeviceRole,
    lanes: &[String],
) -> anyhow::Result<()> {
    use storegate_edge::lan::access;
    storegate_protocol::DeviceId::parse(id)?;
    for l in lanes {
        storegate_protocol::LaneId::parse(l)?;
    }
    let password = access::new_password();
    let entry = storegate_edge::settings::DeviceSettings {
        id: id.to_owned(),
        role,
        password_sha256: access::hex(&access::password_hash(password.as_bytes())),
        lanes: lanes.to_vec(),
    };
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        devices: [&'a storegate_edge::settings::DeviceSettings; 1],
    }
    print!("{}", toml::to_string(&Entry { devices: [&entry] })?);
    eprintln!(
        "# device {id}: username {id}, password {password}\n# (set it on the device; it is not stored here)"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Device(DeviceCommand::New { id, role, lanes })) = &cli.command {
        return new_device(id, *role, lanes);
    }
    if cli.print_default_config {
        print!("{}", Settings::default_toml());
        return Ok(());
    }
    storegate_broker::process::init_logging("info,rumqttc=warn,sqlx=warn");
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(s) = cli.store_id {
        settings.store_id = s;
    }
    if let Some(d) = cli.data_dir {
        settings.data_dir = d;
    }
    if let Some(u) = cli.upstream {
        settings.upstream.url = u;
    }
    if let Some(b) = cli.bundle {
        settings.upstream.bundle = Some(b);
    }
    if let Some(h) = cli.http_listen {
        settings.http.listen = h;
    }
    if let Some(l) = cli.lan_listen {
        settings.lan.listen = l;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let edge = storegate_edge::start(settings, shutdown.clone()).await?;
        // Machine-readable line for supervisors and tests that bind port 0.
        match edge.lan_addr {
            Some(lan) => println!("edge-agent listening http={} lan={lan}", edge.http_addr),
            None => println!("edge-agent listening http={}", edge.http_addr),
        }
        tokio::spawn(storegate_broker::process::stop_on_signal(shutdown));
        edge.stopped().await;
        anyhow::Ok(())
    })
}
