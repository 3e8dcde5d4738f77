//! One read of a manifests directory: the manifest files' contents, with what identifies a
//! version of each (for change detection). Parsing happens later, on exactly these bytes.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

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
    pub content: Result<String, Arc<io::Error>>,
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
}

impl DirSnapshot {
    /// Read every manifest file in `dir` (not recursive). Hidden files are skipped (editors'
    /// temporaries, and the `..data` links of a mounted ConfigMap); symlinks are followed.
    pub fn read(dir: &Path) -> Result<DirSnapshot, ManifestError> {
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
            // fs::metadata follows symlinks; a dangling one shows up as a read error below.
            let meta = fs::metadata(&path).ok();
            if meta.as_ref().is_some_and(|m| !m.is_file()) {
                continue;
            }
            let content = fs::read_to_string(&path).map_err(Arc::new);
            let mut hasher = DefaultHasher::new();
            match &content {
                Ok(text) => text.hash(&mut hasher),
                Err(err) => err.to_string().hash(&mut hasher),
            }
            files.push(FileSnapshot {
                name,
                path,
                len: meta.as_ref().map_or(0, |m| m.len()),
                modified: meta.and_then(|m| m.modified().ok()),
                content_hash: hasher.finish(),
                content,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(DirSnapshot {
            dir: dir.to_path_buf(),
            files,
        })
    }

    /// Whether `other` holds the same files in the same versions.
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
