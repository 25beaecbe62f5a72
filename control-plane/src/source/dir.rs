//! `--source dir:PATH`: a folder of Kubernetes manifests, watched. Every YAML
//! file is read; a folder that does not parse as a whole is refused and the last
//! good model keeps being served.

use super::manifests::{read_file, ManifestError, Objects};
use crate::model::MeshModel;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every manifest file under `root`, sorted, so errors come in a stable order.
fn manifest_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue; // editors' swap files, Kubernetes' ..data symlink dirs are handled via their targets
            }
            if path.is_dir() {
                stack.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A folder's manifest files and their bytes, to notice any change.
pub type FolderSnapshot = Vec<(PathBuf, Vec<u8>)>;

/// The folder's contents: file names and bytes, to notice any change.
pub fn snapshot(root: &Path) -> std::io::Result<FolderSnapshot> {
    manifest_files(root)?.into_iter().map(|p| std::fs::read(&p).map(|b| (p, b))).collect()
}

/// Parses a folder snapshot into a model, or every error found.
pub fn parse_snapshot(root: &Path, files: &[(PathBuf, Vec<u8>)]) -> Result<MeshModel, Vec<ManifestError>> {
    let mut objects = Objects::default();
    let mut errors = Vec::new();
    for (path, bytes) in files {
        let name = path.strip_prefix(root).unwrap_or(path).display().to_string();
        let text = String::from_utf8_lossy(bytes);
        if let Err(e) = read_file(&name, &text, &mut objects) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(objects.into_model())
    } else {
        Err(errors)
    }
}

pub fn load(root: &Path) -> anyhow::Result<(MeshModel, FolderSnapshot)> {
    let files = snapshot(root).map_err(|e| anyhow::anyhow!("reading {}: {e}", root.display()))?;
    let model = parse_snapshot(root, &files).map_err(|errors| {
        anyhow::anyhow!("{} has invalid manifests:\n{}", root.display(), errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))
    })?;
    Ok((model, files))
}

/// Polls the folder; publishes each new valid model; logs and counts refusals.
pub async fn watch(root: PathBuf, mut last: FolderSnapshot, interval: Duration, publish: impl Fn(MeshModel), on_refused: impl Fn(&[ManifestError])) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let files = match snapshot(&root) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(dir = %root.display(), error = %e, "cannot read the manifest folder; serving the last good config");
                continue;
            }
        };
        if files == last {
            continue;
        }
        match parse_snapshot(&root, &files) {
            Ok(model) => {
                tracing::info!(dir = %root.display(), services = model.services.len(), routes = model.routes.len(), "manifests reloaded");
                publish(model);
            }
            Err(errors) => {
                for e in &errors {
                    tracing::error!(error = %e, "manifest refused; the last good config keeps being served");
                }
                on_refused(&errors);
            }
        }
        last = files;
    }
}
