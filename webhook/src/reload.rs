//! Watching mounted files. Kubernetes updates ConfigMap and Secret volumes by
//! swapping a symlink, which inotify-style watchers often miss, so the files
//! are polled and compared by content: cheap at one read per second.

use crate::metrics::Metrics;
use crate::tls::{self, ReloadingCert};
use rollouts::Rollouts;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The rollouts in force, shared with the request handlers.
pub type SharedRollouts = Arc<RwLock<Arc<Rollouts>>>;

/// Loads rollouts.yml at start-up: with no last good file, a bad one is fatal.
pub fn load_rollouts(path: &std::path::Path) -> anyhow::Result<(Rollouts, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading rollouts file {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let parsed = rollouts::parse(&text).map_err(|e| anyhow::anyhow!("{} is invalid:\n{}", path.display(), e.render_with_file(&path.display().to_string())))?;
    Ok((parsed, bytes))
}

/// Re-reads rollouts.yml every `interval`; a changed, valid file replaces the one
/// in force; a changed, invalid one is logged, counted and ignored.
pub async fn watch_rollouts(path: PathBuf, mut last_seen: Vec<u8>, shared: SharedRollouts, metrics: Arc<Metrics>, interval: Duration) {
    let file_name = path.display().to_string();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(file = %file_name, error = %e, "cannot read rollouts file; keeping the rollouts in force");
                continue;
            }
        };
        if bytes == last_seen {
            continue;
        }
        last_seen = bytes;
        match rollouts::parse(&String::from_utf8_lossy(&last_seen)) {
            Ok(next) => {
                if let Ok(mut guard) = shared.write() {
                    *guard = Arc::new(next);
                }
                metrics.file_reloaded("rollouts", true);
                tracing::info!(file = %file_name, "rollouts.yml reloaded");
            }
            Err(e) => {
                metrics.file_reloaded("rollouts", false);
                tracing::error!(
                    file = %file_name,
                    problems = %e.render_with_file(&file_name),
                    "new rollouts.yml is invalid; the last good one stays in force"
                );
            }
        }
    }
}

/// Re-reads the serving certificate and key every `interval`.
pub async fn watch_tls(cert: PathBuf, key: PathBuf, mut last_seen: (Vec<u8>, Vec<u8>), resolver: Arc<ReloadingCert>, metrics: Arc<Metrics>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let pair = match tls::read_pair(&cert, &key) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the serving certificate; keeping the one in use");
                continue;
            }
        };
        if pair == last_seen {
            continue;
        }
        // A writer may have replaced one file and not yet the other: the pair is
        // refused now and read again when the second file changes.
        match tls::load_pair(&pair.0, &pair.1, &cert, &key) {
            Ok(loaded) => {
                resolver.replace(loaded);
                metrics.file_reloaded("tls", true);
                tracing::info!(cert = %cert.display(), "serving certificate reloaded");
                last_seen = pair;
            }
            Err(e) => {
                metrics.file_reloaded("tls", false);
                tracing::error!(error = %e, "new serving certificate refused; keeping the one in use");
                last_seen = pair;
            }
        }
    }
}
