//! One read of a manifests directory: the manifest files' contents, with what identifies a
//! version of each (for change detection). Parsing happens later, on exactly these bytes.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::error::ManifestError;

const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

#[derive(Clone, Debug)]
pub struct FileSnapshot {
    /// File name inside the directory.
    pub name: String,
    pub path: PathBuf,
    pub len: u64,
    pub modified: Option<SystemTime>,
    /// Hash of the content (or of the read error): catches edits that keep mtime and length.
    pub content_hash: u64,
    /// Shared with the snapshots that reused it (see `DirSnapshot::read_reusing`).
    pub content: Result<Arc<str>, Arc<io::Error>>,
    /// Inode and status-change time: with `len` and `modified`, what says the file was not
    /// written since it was read.
    ino: u64,
    ctime: (i64, i64),
}

impl FileSnapshot {
    /// What decides whether the file changed between two snapshots.
    fn fingerprint(&self) -> (&str, u64, Option<SystemTime>, u64) {
        (&self.name, self.len, self.modified, self.content_hash)
    }
}

#[derive(Clone, Debug)]
pub struct DirSnapshot {
    pub dir: PathBuf,
    /// Sorted by name.
    pub files: Vec<FileSnapshot>,
    /// When the read began.
    scanned_at: SystemTime,
}

/// How far a file's modification time must lie before the previous read began for that
/// read's contents to be trusted without reading the file again: file times come from a
/// coarse clock (a few milliseconds), so a write in the same tick as a read looks older than
/// it is (git's "racily clean" entries).
const RACY_MARGIN: Duration = Duration::from_millis(50);

impl DirSnapshot {
    /// Read every manifest file in `dir` (not recursive). Hidden files are skipped (editors'
    /// temporaries, and the `..data` links of a mounted ConfigMap); symlinks are followed.
    pub fn read(dir: &Path) -> Result<DirSnapshot, ManifestError> {
        DirSnapshot::read_reusing(dir, None)
    }

    /// `read`, taking unchanged files' contents from `previous` (a read of the same
    /// directory) instead of reading them again: a poll of a directory of 10,000 manifests
    /// then reads only what changed. Unchanged means same length, modification time, inode
    /// and status-change time, modified well before `previous` began (see `RACY_MARGIN`).
    pub fn read_reusing(
        dir: &Path,
        previous: Option<&DirSnapshot>,
    ) -> Result<DirSnapshot, ManifestError> {
        let scanned_at = SystemTime::now();
        let read_dir_err = |source| ManifestError::ReadDir {
            dir: dir.to_path_buf(),
            error: Arc::new(source),
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(read_dir_err)? {
            let entry = entry.map_err(read_dir_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !is_manifest_name(&name) {
                continue;
            }
            let path = entry.path();
            // Follows symlinks: ConfigMap volumes are symlinks into a swapped directory.
            let meta = fs::metadata(&path).ok();
            if meta.as_ref().is_some_and(|m| !m.is_file()) {
                continue;
            }
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let ino = meta.as_ref().map_or(0, |m| m.ino());
            let ctime = meta
                .as_ref()
                .map_or((0, 0), |m| (m.ctime(), m.ctime_nsec()));
            let reused = previous.and_then(|prev| prev.unchanged(&name, len, modified, ino, ctime));
            let (content, content_hash) = match reused {
                Some(f) => (f.content.clone(), f.content_hash),
                None => {
                    let content = fs::read_to_string(&path)
                        .map(Arc::<str>::from)
                        .map_err(Arc::new);
                    let mut hasher = DefaultHasher::new();
                    match &content {
                        Ok(text) => text.hash(&mut hasher),
                        Err(err) => err.to_string().hash(&mut hasher),
                    }
                    (content, hasher.finish())
                }
            };
            files.push(FileSnapshot {
                name,
                path,
                len,
                modified,
                content_hash,
                content,
                ino,
                ctime,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(DirSnapshot {
            dir: dir.to_path_buf(),
            files,
            scanned_at,
        })
    }

    /// This read's file `name`, if a file with these attributes cannot have been written
    /// since this read took its contents.
    fn unchanged(
        &self,
        name: &str,
        len: u64,
        modified: Option<SystemTime>,
        ino: u64,
        ctime: (i64, i64),
    ) -> Option<&FileSnapshot> {
        let i = self
            .files
            .binary_search_by(|f| f.name.as_str().cmp(name))
            .ok()?;
        let f = &self.files[i];
        let settled = modified.is_some_and(|m| m + RACY_MARGIN < self.scanned_at);
        (settled && f.len == len && f.modified == modified && f.ino == ino && f.ctime == ctime)
            .then_some(f)
    }

    pub fn same_files(&self, other: &DirSnapshot) -> bool {
        self.files.len() == other.files.len()
            && self
                .files
                .iter()
                .zip(&other.files)
                .all(|(a, b)| a.fingerprint() == b.fingerprint())
    }
}

fn is_manifest_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .is_some_and(|ext| EXTENSIONS.iter().any(|want| ext.eq_ignore_ascii_case(want)))
}

#[cfg(test)]
mod tests {
    use super::super::testdir::TestDir;
    use super::*;

    #[test]
    fn reads_manifest_files_sorted() {
        let dir = TestDir::new();
        dir.write("b.yml", "b");
        dir.write("a.yaml", "a");
        dir.write("c.JSON", "{}");
        dir.write("notes.txt", "x");
        dir.write(".hidden.yaml", "x");
        dir.write("yaml", "x");
        fs::create_dir(dir.path().join("sub.yaml")).unwrap();
        let snap = DirSnapshot::read(dir.path()).unwrap();
        let names: Vec<_> = snap.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, vec!["a.yaml", "b.yml", "c.JSON"]);
        assert_eq!(snap.files[0].content.as_deref().unwrap(), "a");
        assert_eq!(snap.files[0].len, 1);
    }

    #[test]
    fn same_files_detects_content_changes() {
        let dir = TestDir::new();
        dir.write("a.yaml", "aaa");
        let one = DirSnapshot::read(dir.path()).unwrap();
        assert!(one.same_files(&DirSnapshot::read(dir.path()).unwrap()));
        // Same length, and quite possibly the same mtime: only the hash tells.
        dir.write("a.yaml", "bbb");
        assert!(!one.same_files(&DirSnapshot::read(dir.path()).unwrap()));
    }

    #[test]
    fn reuse_takes_only_settled_unchanged_files_from_the_previous_read() {
        let dir = TestDir::new();
        dir.write("a.yaml", "aaa");
        dir.write("b.yaml", "bbb");
        // Written just now: the read that follows cannot vouch for them.
        let fresh = DirSnapshot::read(dir.path()).unwrap();
        dir.write("a.yaml", "xxx");
        let again = DirSnapshot::read_reusing(dir.path(), Some(&fresh)).unwrap();
        assert_eq!(again.files[0].content.as_deref().unwrap(), "xxx");
        // Once they are settled, an unchanged file is taken over (the same allocation)...
        std::thread::sleep(RACY_MARGIN * 2);
        let settled = DirSnapshot::read(dir.path()).unwrap();
        let next = DirSnapshot::read_reusing(dir.path(), Some(&settled)).unwrap();
        let (Ok(old), Ok(new)) = (&settled.files[1].content, &next.files[1].content) else {
            panic!("both reads hold b.yaml");
        };
        assert!(Arc::ptr_eq(old, new), "b.yaml was read again");
        // ...and a rewritten one (same length) is read again.
        dir.write("b.yaml", "ccc");
        let after = DirSnapshot::read_reusing(dir.path(), Some(&settled)).unwrap();
        assert_eq!(after.files[1].content.as_deref().unwrap(), "ccc");
        assert!(!settled.same_files(&after));
    }

    #[test]
    fn unreadable_file_is_kept_with_its_error() {
        let dir = TestDir::new();
        fs::write(dir.path().join("bin.yaml"), [0xff, 0xfe, 0x00]).unwrap();
        let snap = DirSnapshot::read(dir.path()).unwrap();
        assert!(snap.files[0].content.is_err());
    }

    #[test]
    fn missing_dir_is_an_error() {
        let err = DirSnapshot::read(Path::new("/nonexistent/skiff")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/skiff"), "{err}");
    }
}
