//! The real binaries as child processes: reading what they print when
//! they are up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

/// Waits (30 s at most) for an `edge-agent` child, started with its stdout
/// piped, to print `edge-agent listening http=.. [lan=..]`; returns both
/// addresses and keeps draining its stdout.
pub async fn edge_listening(
    child: &mut tokio::process::Child,
) -> anyhow::Result<(SocketAddr, Option<SocketAddr>)> {
    edge_listening_logged(child, None).await
}

/// Like [`edge_listening`], every line it prints (its log) appended to `log`.
pub async fn edge_listening_logged(
    child: &mut tokio::process::Child,
    log: Option<&Path>,
) -> anyhow::Result<(SocketAddr, Option<SocketAddr>)> {
    let rest = listening(
        child,
        "edge-agent",
        "edge-agent listening http=",
        Duration::from_secs(30),
        log,
    )
    .await?;
    let mut parts = rest.split_whitespace();
    let http: SocketAddr = parts.next().unwrap_or_default().parse()?;
    let lan = match parts.next().and_then(|p| p.strip_prefix("lan=")) {
        Some(a) => Some(a.parse::<SocketAddr>()?),
        None => None,
    };
    Ok((http, lan))
}

/// Waits (60 s at most) for a `hub` child, started with its stdout piped,
/// to print `hub listening api=.. broker=..`; returns both addresses and
/// keeps draining its stdout.
pub async fn hub_listening(child: &mut tokio::process::Child) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    hub_listening_logged(child, None).await
}

/// Like [`hub_listening`], every line it prints (its log) appended to `log`.
pub async fn hub_listening_logged(
    child: &mut tokio::process::Child,
    log: Option<&Path>,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let rest = listening(child, "hub", "hub listening api=", Duration::from_secs(60), log).await?;
    let (api, rest) = rest.split_once(" broker=").context("no broker address")?;
    // `broker=ADDR [tls=ADDR]`
    let broker = rest.split_whitespace().next().unwrap_or_default();
    Ok((api.parse()?, broker.parse()?))
}

/// Reads `child`'s stdout until a line starting `prefix` (returns the rest
/// of it), then keeps draining it; every line goes to `log` if given.
async fn listening(
    child: &mut tokio::process::Child,
    name: &str,
    prefix: &str,
    wait: Duration,
    log: Option<&Path>,
) -> anyhow::Result<String> {
    use tokio::io::AsyncWriteExt;
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("{name} stdout is not piped"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut file = match log {
        Some(p) => Some(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .await?,
        ),
        None => None,
    };
    let found = tokio::time::timeout(wait, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(f) = file.as_mut() {
                f.write_all(format!("{line}\n").as_bytes()).await?;
            }
            if let Some(rest) = line.strip_prefix(prefix) {
                return anyhow::Ok(rest.to_owned());
            }
        }
        anyhow::bail!("{name} exited before listening")
    })
    .await
    .with_context(|| format!("{name} did not start in {} s", wait.as_secs()))??;
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(format!("{line}\n").as_bytes()).await;
            }
        }
    });
    Ok(found)
}

/// A Mosquitto broker run as a child process on a free port, so that it can
/// be killed and restarted (the hub's embedded broker lives and dies with
/// the hub). No persistence: a kill loses every session and queued message,
/// the harshest restart a broker can have.
#[derive(Debug)]
pub struct Mosquitto {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its config file.
    conf: PathBuf,
    /// The process, while running.
    child: Option<Child>,
}

impl Mosquitto {
    /// The Mosquitto binary, if installed.
    pub fn binary() -> Option<PathBuf> {
        [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    }

    /// Starts Mosquitto on a free port with its config in `dir`.
    pub async fn start(dir: &Path) -> anyhow::Result<Mosquitto> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 100000\nmessage_size_limit 0\nmax_connections -1\nlog_dest none\n"
            ),
        )
        .with_context(|| format!("write {}", conf.display()))?;
        let mut m = Mosquitto {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            conf,
            child: None,
        };
        m.restart().await?;
        Ok(m)
    }

    /// Starts Mosquitto with storegate's shipped production configuration
    /// (`broker-config/mosquitto.conf`), unchanged but for where things
    /// are: its files (`ca.pem`, `broker.pem`, `broker.key`, `crl.pem`,
    /// `acl`) are read from `dir`, its persistence goes to `dir/data`, and
    /// it listens on a free loopback port. Started as root, Mosquitto would
    /// drop to the `mosquitto` user, who cannot read a test's private
    /// directory; `user root` keeps it as it is (ignored when not root).
    pub async fn start_shipped(dir: &Path) -> anyhow::Result<Mosquitto> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let files = format!("{}/", dir.display());
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let text = storegate_broker::MOSQUITTO_CONF
            .replace(storegate_broker::MOSQUITTO_DIR, &files)
            .replace("/var/lib/mosquitto/storegate/", &format!("{}/", data.display()))
            .replace("listener 8883", &format!("listener {port} 127.0.0.1"));
        anyhow::ensure!(
            text.contains(&format!("listener {port} 127.0.0.1")),
            "the shipped mosquitto.conf has no `listener 8883` line to move"
        );
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "{text}
user root
log_dest none
"
            ),
        )
        .with_context(|| format!("write {}", conf.display()))?;
        let mut m = Mosquitto {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            conf,
            child: None,
        };
        m.restart().await?;
        Ok(m)
    }

    /// Asks it to reload its configuration (SIGHUP): a new CRL, a new ACL.
    pub fn reload(&self) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(tokio::process::Child::id)
            .context("mosquitto is not running")?;
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()?
            .success();
        anyhow::ensure!(ok, "kill -HUP {pid} failed");
        Ok(())
    }

    /// Kills the broker (SIGKILL): every session and queued message is lost.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts it again on the same port (killing it first if it runs).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        let bin = Self::binary().context("mosquitto is not installed (Debian: apt-get install mosquitto)")?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawn mosquitto")?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not listen on {} in 10 s",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}
