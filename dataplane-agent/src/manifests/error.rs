//! What can be wrong with a manifests directory. Every error names the file, and the object
//! (`Kind namespace/name`) or, when that is unknown, the document's position in the file.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use super::object::ObjectId;
use crate::model::ValidationError;

#[derive(Clone, Debug, Error)]
pub enum ManifestError {
    #[error("cannot read manifests directory {}: {error}", dir.display())]
    ReadDir { dir: PathBuf, error: Arc<io::Error> },

    #[error("{}: cannot read: {error}", file.display())]
    ReadFile {
        file: PathBuf,
        error: Arc<io::Error>,
    },

    /// The file is not valid YAML (or JSON): nothing in it can be trusted.
    #[error("{}: invalid {format}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        format: &'static str,
        /// 1-based line of the error, when the parser knows it.
        line: Option<usize>,
        message: String,
    },

    /// A document that cannot be tied to an object.
    #[error("{}: {at}: {problem}", file.display())]
    Document {
        file: PathBuf,
        at: DocPos,
        problem: DocProblem,
    },

    /// The object's fields do not fit the Kubernetes schema (wrong type, missing field).
    #[error("{}: {object}: {message}", file.display())]
    Schema {
        file: PathBuf,
        object: ObjectId,
        message: String,
    },

    /// The object parsed but a value is unusable (bad IP, port out of range, ...).
    #[error("{}: {error}", file.display())]
    Invalid {
        file: PathBuf,
        error: Box<ValidationError>,
    },

    /// A recognised kind under an apiVersion skiff does not read.
    #[error("{}: {object}: unsupported apiVersion {api_version:?} (expected {expected:?})", file.display())]
    UnsupportedVersion {
        file: PathBuf,
        object: ObjectId,
        api_version: String,
        expected: &'static str,
    },

    /// The same object defined twice; the first definition (in file-name order) wins.
    #[error("{}: {object}: already defined in {}; this definition is ignored", file.display(), first_file.display())]
    Duplicate {
        file: PathBuf,
        object: ObjectId,
        first_file: PathBuf,
    },
}

impl ManifestError {
    /// The file the problem is in (the directory for [`ManifestError::ReadDir`]).
    pub fn file(&self) -> &Path {
        match self {
            ManifestError::ReadDir { dir, .. } => dir,
            ManifestError::ReadFile { file, .. }
            | ManifestError::Syntax { file, .. }
            | ManifestError::Document { file, .. }
            | ManifestError::Schema { file, .. }
            | ManifestError::Invalid { file, .. }
            | ManifestError::UnsupportedVersion { file, .. }
            | ManifestError::Duplicate { file, .. } => file,
        }
    }
}

/// Where a document sits in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DocPos {
    /// 1-based index of the YAML document (`---`-separated) in the file.
    pub document: usize,
    /// 0-based index in the `items` of a `kind: List` document.
    pub item: Option<usize>,
}

impl fmt::Display for DocPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(i) = self.item {
            write!(f, ", items[{i}]")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DocProblem {
    #[error("not a mapping (expected a Kubernetes object)")]
    NotAMapping,
    #[error("missing apiVersion or kind")]
    MissingTypeMeta,
    #[error("kind List needs a list of objects under `items`")]
    BadList,
    #[error("a List inside a List is not supported")]
    NestedList,
    /// The object has no usable name.
    #[error("{0}")]
    Invalid(Box<ValidationError>),
}
