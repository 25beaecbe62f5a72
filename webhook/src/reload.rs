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
/// The check is `rollouts::validate_bytes`, the same one `meshctl rollouts
/// validate` runs.
pub fn load_rollouts(path: &std::path::Path) -> anyhow::Result<(Rollouts, Vec<u8>)> {
    rollouts::load_file(path).map_err(|e| anyhow::anyhow!("rollouts file {} was not loaded:\n{}", path.display(), e.render_with_file(&path.display().to_string())))
}

/// What the watcher last read, to tell a change from the same file again.
#[derive(Debug, Default)]
pub struct LastSeen {
    pub bytes: Vec<u8>,
    /// The size of a file refused as too large (its bytes are never kept).
    pub too_large: Option<u64>,
}

/// What one look at the rollouts file found.
#[derive(Debug)]
pub enum RolloutsCheck {
    /// Same bytes as last time.
    Unchanged,
    /// Changed and valid: now in force.
    Reloaded,
    /// Changed and invalid (problems rendered): the last good one stays.
    Refused(String),
    /// Could not be read: the last good one stays.
    Unreadable(String),
}

/// Re-reads `path` once: a changed, valid file replaces the rollouts in force;
/// a changed, invalid one is logged, counted and ignored. Reading and
/// validating run on a blocking thread: a large file never stalls admissions.
pub async fn check_rollouts(path: &std::path::Path, last_seen: &mut LastSeen, shared: &SharedRollouts, metrics: &Metrics) -> RolloutsCheck {
    let file_name = path.display().to_string();
    let owned = path.to_path_buf();
    let bytes = match tokio::task::spawn_blocking(move || rollouts::read_file(&owned)).await {
        Ok(Ok(b)) => b,
        Ok(Err(rollouts::FileError::TooLarge { size })) => {
            // Counted once per change of size, like any other refused change.
            let why = rollouts::FileError::TooLarge { size }.render_with_file(&file_name);
            if last_seen.too_large != Some(size) {
                last_seen.too_large = Some(size);
                metrics.file_reloaded("rollouts", false);
                tracing::error!(file = %file_name, problems = %why, "new rollouts.yml is invalid; the last good one stays in force");
            }
            return RolloutsCheck::Refused(why);
        }
        Ok(Err(e)) => {
            let why = e.render_with_file(&file_name);
            tracing::warn!(file = %file_name, error = %why, "cannot read rollouts file; keeping the rollouts in force");
            return RolloutsCheck::Unreadable(why);
        }
        Err(e) => {
            tracing::warn!(file = %file_name, error = %e, "reading the rollouts file failed; keeping the rollouts in force");
            return RolloutsCheck::Unreadable(e.to_string());
        }
    };
    last_seen.too_large = None;
    if bytes == last_seen.bytes {
        return RolloutsCheck::Unchanged;
    }
    last_seen.bytes = bytes.clone();
    let validated = tokio::task::spawn_blocking(move || rollouts::validate_bytes(&bytes)).await;
    match validated {
        Ok(Ok(next)) => {
            if let Ok(mut guard) = shared.write() {
                *guard = Arc::new(next);
            }
            metrics.file_reloaded("rollouts", true);
            tracing::info!(file = %file_name, "rollouts.yml reloaded");
            RolloutsCheck::Reloaded
        }
        Ok(Err(e)) => {
            let why = e.render_with_file(&file_name);
            metrics.file_reloaded("rollouts", false);
            tracing::error!(file = %file_name, problems = %why, "new rollouts.yml is invalid; the last good one stays in force");
            RolloutsCheck::Refused(why)
        }
        Err(e) => {
            // The validator panicked or was cancelled: a bug, but the last good
            // file stays and the process lives on.
            metrics.file_reloaded("rollouts", false);
            tracing::error!(file = %file_name, error = %e, "checking the new rollouts.yml failed; the last good one stays in force");
            RolloutsCheck::Refused(e.to_string())
        }
    }
}

/// Re-reads rollouts.yml every `interval` (see [`check_rollouts`]).
pub async fn watch_rollouts(path: PathBuf, loaded: Vec<u8>, shared: SharedRollouts, metrics: Arc<Metrics>, interval: Duration) {
    let mut last_seen = LastSeen { bytes: loaded, too_large: None };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        check_rollouts(&path, &mut last_seen, &shared, &metrics).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: revmesh.io/v1\nkind: Rollouts\nversions:\n  1-24-5: {proxyImage: img}\nrules:\n  - namespaces: [\"*\"]\n    distribution: {1-24-5: 100}\n";

    #[tokio::test]
    async fn hostile_files_are_refused_once_each_and_the_rollouts_in_force_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rollouts.yml");
        std::fs::write(&path, GOOD).expect("write");
        let (first, bytes) = load_rollouts(&path).expect("valid");
        let shared: SharedRollouts = Arc::new(RwLock::new(Arc::new(first.clone())));
        let metrics = Metrics::default();
        let mut seen = LastSeen { bytes, too_large: None };
        assert!(matches!(check_rollouts(&path, &mut seen, &shared, &metrics).await, RolloutsCheck::Unchanged));

        let deep = format!("rules: {}\n", "[".repeat(5000));
        std::fs::write(&path, &deep).expect("write");
        let RolloutsCheck::Refused(why) = check_rollouts(&path, &mut seen, &shared, &metrics).await else { panic!("refused") };
        assert!(why.contains("nest deeper than 32 levels") && why.lines().count() == 1, "{why}");
        assert!(matches!(check_rollouts(&path, &mut seen, &shared, &metrics).await, RolloutsCheck::Unchanged), "refused once, not every tick");

        std::fs::write(&path, vec![b'#'; rollouts::parse::MAX_FILE_BYTES + 10]).expect("write");
        let RolloutsCheck::Refused(why) = check_rollouts(&path, &mut seen, &shared, &metrics).await else { panic!("refused") };
        assert!(why.contains("at most 1048576 bytes") && !why.contains(":0:"), "{why}");

        std::fs::remove_file(&path).expect("remove");
        assert!(matches!(check_rollouts(&path, &mut seen, &shared, &metrics).await, RolloutsCheck::Unreadable(_)));
        let in_force = shared.read().map(|g| Arc::clone(&g)).expect("lock");
        assert_eq!(*in_force, first, "the first file is still in force");
        let failures = metrics.encode().lines().filter(|l| l.starts_with("revmesh_webhook_reload_failures_total")).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum::<u64>();
        assert_eq!(failures, 2);
    }
}

