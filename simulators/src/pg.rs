//! Scratch PostgreSQL databases for tests and benchmarks: one fresh
//! database each, on the server in `STOREGATE_TEST_PG`, or on a cluster of
//! the benchmark's own ([`OwnCluster`]) with `pg_stat_statements` loaded,
//! so that a benchmark can count the statements its work took.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::Connection;

/// The server of an [`OwnCluster`], once one is started: it then replaces
/// `STOREGATE_TEST_PG` for the rest of the process.
static OWN: OnceLock<String> = OnceLock::new();

/// The server to use (a maintenance database on it).
pub fn server_url() -> String {
    if let Some(u) = OWN.get() {
        return u.clone();
    }
    std::env::var("STOREGATE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A PostgreSQL cluster of the benchmark's own: `initdb` in a temporary
/// directory, started on a free loopback port with `pg_stat_statements`
/// preloaded, stopped (and deleted) when dropped. Its settings are
/// PostgreSQL's defaults with the machine server's own changes here
/// (autovacuum off), so figures compare with those taken on that server.
#[derive(Debug)]
pub struct OwnCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    /// The maintenance database's URL.
    pub url: String,
}

/// Where PostgreSQL's server programs are: `PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/N/bin` (Debian), else `pg_config --bindir`.
fn bindir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("PG_BINDIR") {
        return Some(PathBuf::from(d));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, b)) = found.pop() {
        return Some(b);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let b = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    b.join("initdb").exists().then_some(b)
}

impl OwnCluster {
    /// Starts one. PostgreSQL refuses to run as root: as root, the cluster
    /// is made and run by the `postgres` user (`runuser`).
    pub async fn start() -> anyhow::Result<Self> {
        let bin = bindir().context("PostgreSQL's initdb not found (set PG_BINDIR)")?;
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let dir = tempfile::Builder::new().prefix("sg-bench-pg").tempdir()?;
        if as_postgres {
            run(Command::new("chown").arg("postgres").arg(dir.path()))?;
        }
        let data = dir.path().join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let me = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            bin,
            as_postgres,
        };
        run(me
            .command("initdb")
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "-D"])
            .arg(&data))
        .context("initdb")?;
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.max=20000 \
             -c pg_stat_statements.track_utility=on -c max_connections=200 -c autovacuum=off",
            me.dir.path().display()
        );
        run(me
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-l"])
            .arg(me.dir.path().join("log"))
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "start"]))
        .with_context(|| format!("pg_ctl start (log: {})", me.dir.path().join("log").display()))?;
        let mut conn = sqlx::PgConnection::connect(&me.url).await?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut conn)
            .await?;
        Ok(me)
    }

    /// Makes this cluster the server of [`fresh_database`] from now on.
    pub fn use_for_scratch(&self) {
        let _ = OWN.set(self.url.clone());
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-w", "-m", "fast", "-D"])
            .arg(&data)
            .arg("stop")
            .output();
    }
}

/// Starts an [`OwnCluster`] and makes it the scratch server, or says
/// loudly why statements will not be counted (the benchmark then runs on
/// `STOREGATE_TEST_PG`'s server).
pub async fn own_cluster_or_say() -> Option<OwnCluster> {
    match OwnCluster::start().await {
        Ok(c) => {
            println!(
                "PostgreSQL: a cluster of the benchmark's own at {} (pg_stat_statements loaded)",
                c.url
            );
            c.use_for_scratch();
            Some(c)
        }
        Err(e) => {
            println!(
                "WARNING: statements will not be counted; no cluster of the benchmark's own ({e:#}); using {}",
                server_url()
            );
            None
        }
    }
}

fn run(c: &mut Command) -> anyhow::Result<()> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Statements a database ran, counted by `pg_stat_statements` (on an
/// [`OwnCluster`] only).
#[derive(Debug, Clone, Copy, Default)]
pub struct Statements {
    /// Every statement, transaction control included.
    pub all: i64,
    /// Of which `BEGIN`, `COMMIT` and `ROLLBACK`.
    pub transaction: i64,
    /// Entries the extension evicted meanwhile (the counts are then low).
    pub evicted: i64,
}

impl Statements {
    /// Per `n` units of work, e.g. "12.3 statements (4.1 of them
    /// BEGIN/COMMIT)" (more decimals below one).
    pub fn per(&self, n: usize) -> String {
        let n = n.max(1) as f64;
        let (all, tx) = (self.all as f64 / n, self.transaction as f64 / n);
        let digits = if all < 1.0 { 3 } else { 1 };
        let mut s = format!("{all:.digits$} statements ({tx:.digits$} of them BEGIN/COMMIT)");
        if self.evicted > 0 {
            s.push_str(", undercounted: entries evicted");
        }
        s
    }
}

/// Zeroes the statement counts of the server `url` is on; `false` when it
/// does not count statements (not an [`OwnCluster`]).
pub async fn reset_statements(url: &str) -> bool {
    if OWN.get().is_none_or(|own| !same_server(own, url)) {
        return false;
    }
    let Ok(mut conn) = sqlx::PgConnection::connect(&server_url()).await else {
        return false;
    };
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&mut conn)
        .await
        .is_ok()
}

/// The statements the database of `url` ran since [`reset_statements`]
/// (`None` if it does not count them).
pub async fn statements(url: &str) -> Option<Statements> {
    let own = OWN.get()?;
    if !same_server(own, url) {
        return None;
    }
    let name = url.rsplit_once('/')?.1;
    let mut conn = sqlx::PgConnection::connect(own).await.ok()?;
    let (all, transaction): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT), \
         CAST(COALESCE(SUM(calls) FILTER (WHERE query ~* '^\\s*(begin|commit|rollback)'), 0) AS BIGINT) \
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1",
    )
    .bind(name)
    .fetch_one(&mut conn)
    .await
    .ok()?;
    let evicted: i64 = sqlx::query_scalar("SELECT dealloc FROM pg_stat_statements_info")
        .fetch_one(&mut conn)
        .await
        .ok()?;
    Some(Statements {
        all,
        transaction,
        evicted,
    })
}

/// The `n` statements the database of `url` ran most often since
/// [`reset_statements`]: calls and text (at most 160 characters).
pub async fn top_statements(url: &str, n: i64) -> Vec<(i64, String)> {
    let (Some(own), Some((_, name))) = (OWN.get(), url.rsplit_once('/')) else {
        return Vec::new();
    };
    let Ok(mut conn) = sqlx::PgConnection::connect(own).await else {
        return Vec::new();
    };
    sqlx::query_as(
        "SELECT CAST(SUM(calls) AS BIGINT) AS c, LEFT(regexp_replace(query, '\\s+', ' ', 'g'), 160) AS q \
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1 \
         GROUP BY 2 ORDER BY 1 DESC LIMIT $2",
    )
    .bind(name)
    .bind(n)
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default()
}

fn same_server(a: &str, b: &str) -> bool {
    let server = |u: &str| u.rsplit_once('/').map(|(s, _)| s.to_owned());
    server(a) == server(b)
}

/// Creates a fresh database and returns its URL.
pub async fn fresh_database(prefix: &str) -> anyhow::Result<String> {
    let admin = server_url();
    let mut conn = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&admin))
        .await
        .map_err(|_| anyhow::anyhow!("PostgreSQL at {admin}: connect timed out"))?
        .map_err(|e| anyhow::anyhow!("PostgreSQL at {admin}: {e}"))?;
    let id: u64 = rand::random();
    let name = format!("{prefix}_{id:016x}");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(b, _)| b)
        .to_owned();
    Ok(format!("{base}/{name}"))
}

/// Drops a database made by [`fresh_database`] (best effort).
pub async fn drop_database(url: &str) {
    let Some((_, name)) = url.rsplit_once('/') else {
        return;
    };
    if let Ok(mut conn) = sqlx::PgConnection::connect(&server_url()).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
}
