//! rollouts.yml lives in a Git working tree: every upgrade step is one
//! reviewable change to it. This shells out to `git`, which users have.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Repo {
    dir: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().context("running git (is it installed?)")?;
    if !out.status.success() {
        bail!("git {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Repo {
    /// The repository holding `file`; an error when it is not in one.
    pub fn of(file: &Path) -> Result<Repo> {
        let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        git(&dir, &["rev-parse", "--show-toplevel"]).with_context(|| format!("{} is not inside a Git working tree; rollouts.yml is kept in Git so each step can be reviewed and reverted", file.display()))?;
        Ok(Repo { dir })
    }

    /// Refuses a tree with uncommitted changes, so that a step is its own commit
    /// and nobody's unfinished edit is swept into it.
    pub fn ensure_clean(&self) -> Result<()> {
        let status = git(&self.dir, &["status", "--porcelain", "--untracked-files=no"])?;
        if !status.trim().is_empty() {
            bail!("the Git working tree has uncommitted changes:\n{}\ncommit or stash them first; rollouts.yml was not changed", status.trim_end());
        }
        Ok(())
    }

    pub fn diff(&self, file: &Path) -> Result<String> {
        git(&self.dir, &["--no-pager", "diff", "--no-color", "--", &file_name(file)?])
    }

    pub fn commit(&self, file: &Path, message: &str) -> Result<String> {
        let name = file_name(file)?;
        git(&self.dir, &["add", "--", &name])?;
        git(&self.dir, &["commit", "-q", "-m", message, "--", &name])?;
        Ok(git(&self.dir, &["rev-parse", "--short", "HEAD"])?.trim().to_string())
    }
}

fn file_name(file: &Path) -> Result<String> {
    Ok(file.file_name().context("the rollouts path names no file")?.to_string_lossy().into_owned())
}
