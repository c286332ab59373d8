//! Scratch directories for service files, removed when dropped.

use std::path::{Path, PathBuf};

/// `$TMPDIR/xlbt-<tag>`, removed on drop.
pub struct WorkDir {
    pub path: PathBuf,
}

impl WorkDir {
    /// Creates the directory.
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("xlbt-{tag}"));
        std::fs::create_dir_all(&path).expect("create work dir");
        Self { path }
    }

    /// Writes `name` atomically (write, then rename: a watcher never reads half a file).
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        write_atomic(&self.path.join(name), text)
    }
}

/// Writes `path` through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, text: &str) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
    path.to_owned()
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
