//! Polling for changes of a manifests directory. Polling (rather than inotify) also sees
//! ConfigMap volume updates, which swap a symlink; a poll reads only the files whose
//! attributes changed since the last read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::ManifestError;
use super::snapshot::DirSnapshot;

/// The last state reported to the caller.
enum Seen {
    Files(DirSnapshot),
    /// The directory could not be read (message of the error).
    Failed(String),
}

pub struct DirWatcher {
    dir: PathBuf,
    interval: Duration,
    last: Option<Seen>,
}

impl DirWatcher {
    pub fn new(dir: impl Into<PathBuf>, interval: Duration) -> DirWatcher {
        DirWatcher {
            dir: dir.into(),
            interval,
            last: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Read the directory now. Returns the new state if it differs from the last one returned
    /// (the first call always returns): a snapshot, or the error reading the directory (an
    /// error is reported once, not at every poll while it lasts).
    pub fn poll(&mut self) -> Option<Result<DirSnapshot, ManifestError>> {
        let previous = match &self.last {
            Some(Seen::Files(old)) => Some(old),
            _ => None,
        };
        let scan = DirSnapshot::read_reusing(&self.dir, previous);
        let unchanged = match (&self.last, &scan) {
            (Some(Seen::Files(old)), Ok(new)) => old.same_files(new),
            (Some(Seen::Failed(old)), Err(err)) => *old == err.to_string(),
            _ => false,
        };
        if unchanged {
            return None;
        }
        self.last = Some(match &scan {
            Ok(snapshot) => Seen::Files(snapshot.clone()),
            Err(err) => Seen::Failed(err.to_string()),
        });
        Some(scan)
    }

    /// Wait until the directory differs from the last state returned, checking every interval;
    /// the first call returns at once. Cancel-safe: dropping the future loses nothing.
    pub async fn changed(&mut self) -> Result<DirSnapshot, ManifestError> {
        loop {
            // A synchronous read: a manifests directory is a few small files.
            if let Some(scan) = self.poll() {
                return scan;
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdir::TestDir;
    use super::*;

    fn names(scan: Option<Result<DirSnapshot, ManifestError>>) -> Vec<String> {
        scan.expect("a change")
            .expect("a snapshot")
            .files
            .into_iter()
            .map(|f| f.name)
            .collect()
    }

    #[test]
    fn poll_reports_each_change_once() {
        let dir = TestDir::new();
        dir.write("a.yaml", "one");
        let mut w = DirWatcher::new(dir.path(), Duration::from_millis(10));
        assert_eq!(names(w.poll()), vec!["a.yaml"]);
        assert!(w.poll().is_none());

        dir.write("a.yaml", "two"); // same length
        assert_eq!(names(w.poll()), vec!["a.yaml"]);
        assert!(w.poll().is_none());

        dir.write("b.yml", "x");
        assert_eq!(names(w.poll()), vec!["a.yaml", "b.yml"]);

        dir.write("ignored.txt", "x");
        assert!(w.poll().is_none());

        dir.remove("a.yaml");
        assert_eq!(names(w.poll()), vec!["b.yml"]);
        assert!(w.poll().is_none());
    }

    #[test]
    fn directory_errors_are_reported_once() {
        let dir = TestDir::new();
        let missing = dir.path().join("manifests");
        let mut w = DirWatcher::new(&missing, Duration::from_millis(10));
        assert!(matches!(w.poll(), Some(Err(ManifestError::ReadDir { .. }))));
        assert!(w.poll().is_none());
        std::fs::create_dir(&missing).unwrap();
        assert_eq!(names(w.poll()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn changed_waits_for_a_change() {
        let dir = TestDir::new();
        dir.write("a.yaml", "one");
        let mut w = DirWatcher::new(dir.path(), Duration::from_millis(5));
        let first = w.changed().await.unwrap();
        assert_eq!(first.files.len(), 1);

        // Nothing changes: changed() keeps waiting.
        let waited = tokio::time::timeout(Duration::from_millis(50), w.changed()).await;
        assert!(waited.is_err());

        let path = dir.path().to_path_buf();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            std::fs::write(path.join("b.yaml"), "two").unwrap();
        });
        let next = tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("a change within 5s")
            .unwrap();
        writer.await.unwrap();
        assert_eq!(next.files.len(), 2);
    }
}
