//! Live reload (SPEC §6): SIGHUP, or a change of the configuration file, reloads it.
//!
//! A valid file is swapped in atomically (see `server::Control::reload`); an invalid one is
//! logged problem by problem, as `jwtgate check` prints them, counted in
//! `jwtgate_config_reloads_total{result="failure"}`, and the configuration in force stays.
//! File events are debounced: editors and deploy tools write a file in several steps, and a
//! half-written file that happens to be read is refused like any invalid one and retried on
//! the next event.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::server::Control;

/// Quiet period after the last file event before the file is read.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Watches `path` (and, with `hangup`, SIGHUP, whose listener the caller installs before the
/// gateway announces itself) and reloads it into `control` until the returned task is aborted.
///
/// # Errors
///
/// The file's folder cannot be watched.
pub fn spawn(
    path: PathBuf,
    control: Arc<Control>,
    mut hangup: Option<tokio::signal::unix::Signal>,
) -> std::io::Result<JoinHandle<()>> {
    let (tx, mut rx) = mpsc::channel::<()>(64);
    let name = path.file_name().map(ToOwned::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        // Editors replace files by renaming a temporary one over them: watch the folder and
        // pick the events that name our file.
        if event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
            let _ = tx.try_send(());
        }
    })
    .map_err(std::io::Error::other)?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    watcher
        .watch(&folder, RecursiveMode::NonRecursive)
        .map_err(std::io::Error::other)?;
    Ok(tokio::spawn(async move {
        // The watcher stops when dropped: keep it for the life of the task.
        let _watcher = watcher;
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = hup => {
                    tracing::info!("SIGHUP: reloading the configuration");
                }
                event = rx.recv() => {
                    if event.is_none() {
                        return;
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    tracing::info!(file = %path.display(), "configuration file changed: reloading");
                }
            }
            reload(&control, &path).await;
        }
    }))
}

async fn reload(control: &Control, path: &Path) {
    // Errors are logged and counted inside `reload_file`.
    let _ = control.reload_file(path).await;
}
