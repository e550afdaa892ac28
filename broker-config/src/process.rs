//! Process plumbing the `hub` and `edge-agent` binaries (and the libraries
//! behind them) share: settings loading, logging, the Prometheus recorder,
//! and stopping on a signal.

use std::path::Path;
use std::sync::OnceLock;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// Settings: `defaults`, overridden by the TOML `file` (if given), then by
/// environment variables `{prefix}SECTION__KEY` (`__` separates sections).
pub fn load_settings<T: Serialize + DeserializeOwned>(
    defaults: &T,
    file: Option<&Path>,
    prefix: &str,
) -> Result<T, Box<figment::Error>> {
    let mut fig = Figment::from(Serialized::defaults(defaults));
    if let Some(f) = file {
        fig = fig.merge(Toml::file_exact(f));
    }
    fig.merge(Env::prefixed(prefix).split("__"))
        .extract()
        .map_err(Box::new)
}

/// Settings as TOML, for `--print-default-config`.
pub fn settings_toml<T: Serialize>(settings: &T) -> String {
    toml::to_string_pretty(settings).unwrap_or_default()
}

/// Logs to stderr, filtered by `RUST_LOG` or else `default_filter`.
pub fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .init();
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Renders metrics from `handle`, a recorder the host process installed,
/// instead of installing one (a process running a hub and edge agents
/// together installs one recorder and gives it to all). Call before
/// starting anything; false if a handle was already chosen.
pub fn use_metrics(handle: PrometheusHandle) -> bool {
    METRICS.set(handle).is_ok()
}

/// The process-wide Prometheus recorder: installed on first use, unless the
/// host gave one with [`use_metrics`].
pub fn metrics_handle() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if the host installed a recorder of its own; then
            // this handle renders nothing, which is the host's choice.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
pub async fn stop_on_signal(shutdown: CancellationToken) {
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
