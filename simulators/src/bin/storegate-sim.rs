//! `storegate-sim`: simulators, load generator and benchmarks.

use clap::{Parser, Subcommand};

/// storegate simulators and benchmarks.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmarks that print figures against this machine's own ceilings.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Edge: durable sale commits at 1/10/50 lanes vs raw SQLite; outbox drain vs raw broker publishes.
    Edge(storegate_sim::bench::edge::EdgeBenchArgs),
    /// Hub: ingest from many stores into PostgreSQL and SQLite vs a raw batch insert.
    Hub(storegate_sim::bench::hub::HubBenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rumqttd=off".into()),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Bench { which } => match which {
                Bench::Edge(args) => storegate_sim::bench::edge::run(args).await,
                Bench::Hub(args) => storegate_sim::bench::hub::run(args).await,
            },
        }
    })
}
