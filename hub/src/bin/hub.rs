//! `hub`: runs the storegate hub (or administers it).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use storegate_hub::Settings;
use storegate_hub::auth::{self, Role};
use storegate_hub::{credentials, pki};
use storegate_protocol::StoreId;
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
    /// Use this broker (mqtts://host:port, or mqtt:// on loopback) instead of the embedded one.
    #[arg(long)]
    broker: Option<String>,
    /// Embedded broker listen address (plain MQTT; loopback).
    #[arg(long)]
    broker_listen: Option<String>,
    /// Embedded broker TLS listen address for stores (client certificates required).
    #[arg(long)]
    broker_tls_listen: Option<String>,
    /// PKI directory (chain CA, hub keys); default {data_dir}/pki.
    #[arg(long, global = true)]
    pki_dir: Option<PathBuf>,
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
    /// The chain certificate authority and the hub's own keys.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Store credentials: provision, list, rotate, revoke.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// The keys that sign access tokens: list, rotate, retire.
    TokenKeys {
        #[command(subcommand)]
        command: TokenKeyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenKeyCommand {
    /// Lists the key ids, oldest first (the last one signs).
    List,
    /// Adds a new signing key; tokens signed with older keys stay valid
    /// until those are retired.
    Rotate,
    /// Retires a key: tokens signed with it are refused on every hub
    /// within 30 s.
    Retire {
        /// The key id (`hub token-keys list`).
        kid: String,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Creates the chain CA, the hub's message signing key, the embedded
    /// broker's TLS certificate and the hub's client certificate in the
    /// PKI directory. Keep ca.key offline once stores are provisioned.
    Init {
        /// The chain's name (the CA certificate's organisation).
        #[arg(long, default_value = "storegate")]
        chain: String,
        /// DNS names and IPs stores use to reach the hub's TLS listener
        /// (repeatable); localhost and 127.0.0.1 are always included.
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Common name of the hub's client certificate (its identity at an
        /// external broker; matches `broker.client_id`; starts with "hub").
        #[arg(long, default_value = "hub-1")]
        hub_name: String,
    },
    /// Issues a client certificate for another hub replica (its identity
    /// at an external broker; list it in the broker's ACL).
    HubCert {
        /// Its common name, e.g. hub-2 (starts with "hub"; use it as that
        /// replica's `broker.client_id`).
        #[arg(long)]
        name: String,
        /// Where to write NAME.pem and NAME.key.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
    /// Issues a TLS server certificate for an external broker (Mosquitto,
    /// EMQX) that stores reach at these names.
    ServerCert {
        /// DNS names and IPs (repeatable); the first is the file name.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Where to write NAME.pem and NAME.key.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
    /// Writes a certificate revocation list of every revoked store
    /// certificate, for an external broker's `crlfile`.
    Crl {
        /// Output file.
        #[arg(long, default_value = "crl.pem")]
        out: PathBuf,
        /// Days until the CRL's next update. A broker refuses every client
        /// once its CRL is past this date: regenerate well before.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Issues a credential for a store and writes its bundle (certificate,
    /// keys, CA, the hub's key, broker address) for its edge agent.
    Provision {
        /// The store id.
        store: String,
        /// The broker address the store's edge connects to (mqtts://host:8883).
        #[arg(long)]
        broker: String,
        /// Bundle file to write (default STORE.bundle.toml); never overwritten.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 730)]
        days: i64,
    },
    /// Lists store credentials.
    List {
        /// Only this store's.
        store: Option<String>,
    },
    /// Issues a new credential for a store, keeping the old ones valid
    /// until they are revoked (install the new bundle, then revoke).
    Rotate {
        /// The store id.
        store: String,
        /// The broker address the store's edge connects to.
        #[arg(long)]
        broker: String,
        /// Bundle file to write (default STORE.bundle.toml); never overwritten.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 730)]
        days: i64,
    },
    /// Revokes a store's credentials (all, or one). Running hubs refuse its
    /// messages and close its connections within `wan.refresh_secs`.
    Revoke {
        /// The store id.
        store: String,
        /// Only this credential (key id from `hub store list`).
        #[arg(long)]
        credential: Option<String>,
        /// Why (kept with the credential).
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{}", Settings::default_toml());
        return Ok(());
    }
    storegate_broker::process::init_logging("info,rumqttd=off,rumqttc=warn,sqlx=warn");
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
    if let Some(l) = cli.broker_tls_listen {
        settings.broker.tls_listen = Some(l);
    }
    if let Some(d) = cli.pki_dir {
        settings.wan.pki_dir = Some(d);
    }
    if let Some(l) = cli.api_listen {
        settings.api.listen = l;
    }
    if let Some(d) = cli.data_dir {
        settings.data_dir = d;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Some(Command::CreateUser {
                email,
                password,
                role,
                name,
            }) => {
                let db = admin_db(&settings).await?;
                let role: Role = role.parse().map_err(anyhow::Error::msg)?;
                let user = auth::create_user(&db, &email, &name, &password, role).await?;
                println!("created {} {} ({})", user.role, user.email, user.id);
                return anyhow::Ok(());
            }
            Some(Command::Ca { command }) => return ca_command(&settings, command).await,
            Some(Command::Store { command }) => return store_command(&settings, command).await,
            Some(Command::TokenKeys { command }) => return token_key_command(&settings, command).await,
            None => {}
        }
        let shutdown = CancellationToken::new();
        let hub = storegate_hub::start(settings, shutdown.clone()).await?;
        // Machine-readable line for supervisors and tests that bind port 0.
        match hub.tls_addr {
            Some(tls) => println!(
                "hub listening api={} broker={} tls={tls}",
                hub.api_addr, hub.broker_addr
            ),
            None => println!("hub listening api={} broker={}", hub.api_addr, hub.broker_addr),
        }
        println!("REST API docs: http://{}/api/docs", hub.api_addr);
        tokio::spawn(storegate_broker::process::stop_on_signal(shutdown));
        hub.stopped().await;
        anyhow::Ok(())
    })
}

async fn token_key_command(settings: &Settings, command: TokenKeyCommand) -> anyhow::Result<()> {
    if !settings.auth.jwt_secret.is_empty() {
        anyhow::bail!(
            "auth.jwt_secret is set: tokens are signed with that one static secret, which has no rotation"
        );
    }
    let db = admin_db(settings).await?;
    // The first key is created by the first start; make sure there is one.
    storegate_hub::auth::Auth::init(&db, &settings.auth).await?;
    match command {
        TokenKeyCommand::List => {
            for kid in auth::key_ids(&db).await? {
                println!("{kid}");
            }
        }
        TokenKeyCommand::Rotate => {
            let kid = auth::rotate_key(&db).await?;
            println!(
                "added {kid}; every hub signs with it within 30 s; retire the old key once its tokens expired"
            );
        }
        TokenKeyCommand::Retire { kid } => match auth::retire_key(&db, &kid).await? {
            Ok(()) => println!("retired {kid}; its tokens are refused on every hub within 30 s"),
            Err(why) => anyhow::bail!(why),
        },
    }
    Ok(())
}

async fn admin_db(settings: &Settings) -> anyhow::Result<storegate_hub::db::Db> {
    let v = settings.validate()?;
    let db = storegate_hub::db::Db::connect(&v.database_url, 2).await?;
    db.migrate().await?;
    Ok(db)
}

fn pki_dir(settings: &Settings) -> anyhow::Result<pki::PkiDir> {
    Ok(pki::PkiDir(settings.validate()?.pki_dir))
}

fn write_pair(out_dir: &std::path::Path, name: &str, issued: &pki::Issued) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    let cert = out_dir.join(format!("{name}.pem"));
    let key = out_dir.join(format!("{name}.key"));
    pki::write_secret(&key, &issued.key_pem)?;
    std::fs::write(&cert, &issued.cert_pem)?;
    println!(
        "wrote {} and {} (sha256 {})",
        cert.display(),
        key.display(),
        issued.sha256
    );
    Ok(())
}

async fn ca_command(settings: &Settings, command: CaCommand) -> anyhow::Result<()> {
    let dir = pki_dir(settings)?;
    match command {
        CaCommand::Init {
            chain,
            mut server_names,
            hub_name,
        } => {
            for n in ["localhost", "127.0.0.1", "::1"] {
                if !server_names.iter().any(|s| s == n) {
                    server_names.push(n.to_owned());
                }
            }
            let report = pki::init(&dir, &chain, &server_names, &hub_name)?;
            println!("created the chain CA for {chain:?} in {}", report.dir.display());
            println!("hub signing key {}", report.hub_key);
            println!("hub replicas' shared-subscription group {}", report.share_group);
            println!("hub TLS listener certificate for {}", server_names.join(", "));
            println!("hub client certificate {hub_name:?} (its identity at an external broker)");
            println!(
                "keep {} offline once stores are provisioned",
                dir.ca_key().display()
            );
        }
        CaCommand::HubCert { name, out_dir } => {
            pki::check_hub_name(&name)?;
            let ca = pki::Ca::load(&dir)?;
            let issued = ca.issue(&name, &[], pki::Usage::Client, 825)?;
            write_pair(&out_dir, &name, &issued)?;
        }
        CaCommand::ServerCert { names, out_dir } => {
            let ca = pki::Ca::load(&dir)?;
            let issued = ca.issue(&names[0], &names, pki::Usage::Server, 825)?;
            write_pair(&out_dir, &names[0], &issued)?;
        }
        CaCommand::Crl { out, days } => {
            let ca = pki::Ca::load(&dir)?;
            let db = admin_db(settings).await?;
            let revoked: Vec<(String, i64)> = credentials::list(&db, None)
                .await?
                .into_iter()
                .filter_map(|c| c.revoked_ms.map(|at| (c.cert_serial, at)))
                .collect();
            let number = u64::try_from(storegate_hub::db::now_ms()).unwrap_or(0);
            std::fs::write(&out, ca.crl(&revoked, number, days)?)?;
            println!("wrote {} ({} revoked certificates)", out.display(), revoked.len());
        }
    }
    Ok(())
}

async fn store_command(settings: &Settings, command: StoreCommand) -> anyhow::Result<()> {
    let dir = pki_dir(settings)?;
    let db = admin_db(settings).await?;
    match command {
        StoreCommand::Provision {
            store,
            broker,
            out,
            days,
        }
        | StoreCommand::Rotate {
            store,
            broker,
            out,
            days,
        } => {
            let store = StoreId::parse(&store)?;
            let before = credentials::list(&db, Some(&store)).await?;
            let ca = pki::Ca::load(&dir)?;
            let hub_key = pki::load_hub_public_key(&dir, settings.wan.signing_key.as_deref())?;
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{store}.bundle.toml")));
            if out.exists() {
                anyhow::bail!(
                    "{} exists; not overwriting a bundle (choose --out)",
                    out.display()
                );
            }
            let (bundle, credential) =
                credentials::provision(&db, &ca, &[hub_key], &store, &broker, days).await?;
            pki::write_secret(&out, &credentials::bundle_text(&bundle))?;
            println!(
                "store {store}: credential {} (certificate sha256 {}), bundle {}",
                credential.kid,
                credential.cert_sha256,
                out.display()
            );
            let valid: Vec<_> = before
                .iter()
                .filter(|c| c.valid_at(storegate_hub::db::now_ms()))
                .collect();
            for c in valid {
                println!(
                    "  still valid: {}; once the edge runs the new bundle, run `hub store revoke {store} --credential {}`",
                    c.kid, c.kid
                );
            }
        }
        StoreCommand::List { store } => {
            let store = store.map(StoreId::parse).transpose()?;
            let now = storegate_hub::db::now_ms();
            println!(
                "{:<24} {:<16} {:<8} {:<10} certificate sha256",
                "store", "credential", "status", "expires"
            );
            for c in credentials::list(&db, store.as_ref()).await? {
                let status = if c.revoked_ms.is_some() {
                    "revoked"
                } else if c.not_after_ms <= now {
                    "expired"
                } else {
                    "valid"
                };
                let days = (c.not_after_ms - now) / 86_400_000;
                println!(
                    "{:<24} {:<16} {:<8} {:<10} {}",
                    c.store.as_str(),
                    c.kid.to_string(),
                    status,
                    format!("{days}d"),
                    c.cert_sha256
                );
            }
        }
        StoreCommand::Revoke {
            store,
            credential,
            reason,
        } => {
            let store = StoreId::parse(&store)?;
            let kid = credential
                .as_deref()
                .map(storegate_protocol::seal::KeyId::parse)
                .transpose()?;
            let n = credentials::revoke(&db, &store, kid, &reason).await?;
            if n == 0 {
                anyhow::bail!(
                    "no valid credential of {store} matched; nothing revoked (see `hub store list {store}`)"
                );
            }
            println!(
                "revoked {n} credential(s) of {store}; running hubs refuse it within wan.refresh_secs ({} s). \
                 For an external broker also run `hub ca crl` and reload it.",
                settings.wan.refresh_secs
            );
        }
    }
    Ok(())
}
