//! Change detection for the file source: inotify (through `notify`) for prompt reloads, plus a
//! slow poll of file metadata as a safety net (editors that replace directories, missed events).

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::files::files_of;

/// Quiet period after a file event before reloading (coalesces multi-write saves).
pub const QUIET: Duration = Duration::from_millis(20);

/// What identifies a file's content cheaply.
type Stamp = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn stamp(root: &Path) -> Stamp {
    let files = files_of(root).map(|(f, _)| f).unwrap_or_default();
    files
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(&f).ok();
            let modified = m.as_ref().and_then(|m| m.modified().ok());
            let len = m.map_or(0, |m| m.len());
            (f, modified, len)
        })
        .collect()
}

/// True for events that can change what the source reads: not our own reads (access events),
/// not hidden files (editor swap files, atomic-write temporaries before their rename).
fn relevant(ev: &notify::Event) -> bool {
    if matches!(ev.kind, notify::EventKind::Access(_)) {
        return false;
    }
    ev.paths.is_empty()
        || ev.paths.iter().any(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
}

/// Watches `root` (file or directory); sends a unit on every (coalesced) change.
pub struct Watch {
    _watcher: Option<notify::RecommendedWatcher>,
    rx: mpsc::Receiver<()>,
    root: PathBuf,
    last: Stamp,
    poll: Duration,
}

impl Watch {
    /// Starts watching. Falls back to polling alone if inotify is unavailable.
    pub fn new(root: &Path, poll: Duration) -> Self {
        let (tx, rx) = mpsc::channel(1);
        let watch_dir = if root.is_dir() {
            root.to_owned()
        } else {
            root.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_owned)
        };
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && relevant(&ev)
            {
                // A full channel already holds a pending reload: coalesce.
                let _ = tx.try_send(());
            }
        })
        .and_then(|mut w| w.watch(&watch_dir, RecursiveMode::NonRecursive).map(|()| w));
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(path = %watch_dir.display(), error = %e, "inotify unavailable, polling only");
                None
            }
        };
        Self {
            _watcher: watcher,
            rx,
            root: root.to_owned(),
            last: stamp(root),
            poll,
        }
    }

    /// Waits for the next change of the watched files, then for a short quiet period so a burst
    /// of writes (an editor saving, `kubectl`-style rewrites) triggers one reload. Returns when
    /// the change was first noticed.
    pub async fn changed(&mut self) -> std::time::Instant {
        loop {
            let event = tokio::select! {
                e = self.rx.recv() => e.is_some(),
                () = tokio::time::sleep(self.poll) => false,
            };
            let noticed = std::time::Instant::now();
            tokio::time::sleep(QUIET).await;
            while self.rx.try_recv().is_ok() {}
            let now = stamp(&self.root);
            // An inotify event always reloads (a same-size rewrite within the timestamp
            // granularity would not change the stamp); the poll only when the stamp moved.
            if event || now != self.last {
                self.last = now;
                return noticed;
            }
        }
    }
}
