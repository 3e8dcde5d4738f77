//! One manifest file's text into objects: split into documents, expand `kind: List`, dispatch
//! on apiVersion/kind.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;
use tracing::debug;

use super::error::{DocPos, DocProblem, ManifestError};
use super::object::{self, DecodeError, Kind, Object, ObjectId};

/// What a file that is valid YAML (or JSON) holds.
#[derive(Clone, Debug, Default)]
pub struct ParsedFile {
    /// Objects of the recognised kinds, in file order, each parsed and validated or not.
    pub objects: Vec<(ObjectId, Result<Object, ManifestError>)>,
    /// Documents that could not be tied to an object (no apiVersion/kind, no name, ...).
    pub unidentified: Vec<ManifestError>,
}

/// Parse one file. `Err` means the file as a whole is unreadable (a syntax error): none of its
/// documents can be trusted. Format follows the extension: `.json` is JSON, anything else YAML.
pub fn parse_file(path: &Path, text: &str) -> Result<ParsedFile, ManifestError> {
    let is_json = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
    let documents = if is_json {
        json_documents(path, text)?
    } else {
        yaml_documents(path, text)?
    };
    let mut parsed = ParsedFile::default();
    let mut ctx = FileCtx {
        file: path.to_path_buf(),
        out: &mut parsed,
    };
    for (i, doc) in documents.into_iter().enumerate() {
        ctx.document(
            DocPos {
                document: i + 1,
                item: None,
            },
            doc,
        );
    }
    Ok(parsed)
}

fn yaml_documents(path: &Path, text: &str) -> Result<Vec<Value>, ManifestError> {
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        // A syntax error poisons the rest of the stream: stop at the first one.
        let mut value = Value::deserialize(de).map_err(|err| ManifestError::Syntax {
            file: path.to_path_buf(),
            format: "YAML",
            line: err.location().map(|loc| loc.line()),
            message: err.to_string(),
        })?;
        value.apply_merge().map_err(|err| ManifestError::Syntax {
            file: path.to_path_buf(),
            format: "YAML",
            line: None,
            message: err.to_string(),
        })?;
        docs.push(value);
    }
    Ok(docs)
}

fn json_documents(path: &Path, text: &str) -> Result<Vec<Value>, ManifestError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let syntax = |line: Option<usize>, message: String| ManifestError::Syntax {
        file: path.to_path_buf(),
        format: "JSON",
        line,
        message,
    };
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|err| syntax(Some(err.line()), err.to_string()))?;
    let value = serde_yaml::to_value(json).map_err(|err| syntax(None, err.to_string()))?;
    Ok(vec![value])
}

struct FileCtx<'a> {
    file: PathBuf,
    out: &'a mut ParsedFile,
}

impl FileCtx<'_> {
    fn unidentified(&mut self, at: DocPos, problem: DocProblem) {
        self.out.unidentified.push(ManifestError::Document {
            file: self.file.clone(),
            at,
            problem,
        });
    }

    fn document(&mut self, at: DocPos, value: Value) {
        if value.is_null() {
            return; // empty document (e.g. a trailing `---`)
        }
        if !value.is_mapping() {
            return self.unidentified(at, DocProblem::NotAMapping);
        }
        let type_meta = (
            value.get("apiVersion").and_then(Value::as_str),
            value.get("kind").and_then(Value::as_str),
        );
        let (Some(api_version), Some(kind)) = type_meta else {
            return self.unidentified(at, DocProblem::MissingTypeMeta);
        };
        if kind == "List" {
            return self.list(at, value);
        }
        let Some(kind) = Kind::from_name(kind) else {
            debug!(file = %self.file.display(), %at, api_version, kind, "ignoring a kind skiff does not use");
            return;
        };
        let api_version = api_version.to_string();
        let id = match object::identify(kind, &value) {
            Ok(id) => id,
            Err(err) => return self.unidentified(at, DocProblem::Invalid(Box::new(err))),
        };
        let result = if api_version != kind.api_version() {
            Err(ManifestError::UnsupportedVersion {
                file: self.file.clone(),
                object: id.clone(),
                api_version,
                expected: kind.api_version(),
            })
        } else {
            object::decode(&id, value).map_err(|err| match err {
                DecodeError::Schema(message) => ManifestError::Schema {
                    file: self.file.clone(),
                    object: id.clone(),
                    message,
                },
                DecodeError::Invalid(source) => ManifestError::Invalid {
                    file: self.file.clone(),
                    error: Box::new(source),
                },
            })
        };
        self.out.objects.push((id, result));
    }

    fn list(&mut self, at: DocPos, mut value: Value) {
        if at.item.is_some() {
            return self.unidentified(at, DocProblem::NestedList);
        }
        let items = match value.get_mut("items").map(std::mem::take) {
            None | Some(Value::Null) => return, // an empty List
            Some(Value::Sequence(items)) => items,
            Some(_) => return self.unidentified(at, DocProblem::BadList),
        };
        for (i, item) in items.into_iter().enumerate() {
            let item_at = DocPos {
                document: at.document,
                item: Some(i),
            };
            self.document(item_at, item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> Result<ParsedFile, ManifestError> {
        parse_file(Path::new(name), text)
    }

    fn ids(parsed: &ParsedFile) -> Vec<String> {
        parsed
            .objects
            .iter()
            .map(|(id, _)| id.to_string())
            .collect()
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n";

    #[test]
    fn multiple_documents_and_empty_ones() {
        let text = format!("---\n{SVC}---\n---\n# only a comment\n---\napiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\n");
        let parsed = parse("a.yaml", &text).unwrap();
        assert_eq!(ids(&parsed), vec!["Service demo/web", "Node n1"]);
        assert!(parsed.objects.iter().all(|(_, r)| r.is_ok()));
        assert!(parsed.unidentified.is_empty());
    }

    #[test]
    fn empty_files_hold_nothing() {
        for (name, text) in [
            ("a.yaml", ""),
            ("a.yaml", "\n# nothing\n"),
            ("a.json", " \n"),
        ] {
            let parsed = parse(name, text).unwrap();
            assert!(parsed.objects.is_empty() && parsed.unidentified.is_empty());
        }
    }

    #[test]
    fn other_kinds_are_ignored() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
        let parsed = parse("a.yaml", text).unwrap();
        assert!(parsed.objects.is_empty() && parsed.unidentified.is_empty());
    }

    #[test]
    fn document_without_type_meta_is_an_error() {
        // e.g. the node config put in the manifests directory by mistake.
        let text = format!("{SVC}---\nnodeName: n1\nnodeIPs: [192.0.2.1]\n");
        let parsed = parse("a.yaml", &text).unwrap();
        assert_eq!(ids(&parsed), vec!["Service demo/web"]);
        let msg = parsed.unidentified[0].to_string();
        assert_eq!(msg, "a.yaml: document 2: missing apiVersion or kind");
    }

    #[test]
    fn scalars_and_nameless_objects_are_errors() {
        let parsed = parse(
            "a.yaml",
            "just a string\n---\napiVersion: v1\nkind: Pod\nmetadata: {}\n",
        )
        .unwrap();
        assert!(parsed.objects.is_empty());
        let msgs: Vec<_> = parsed.unidentified.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            msgs[0],
            "a.yaml: document 1: not a mapping (expected a Kubernetes object)"
        );
        assert_eq!(
            msgs[1],
            "a.yaml: document 2: Pod default/<unnamed>: metadata.name: required but missing"
        );
    }

    #[test]
    fn syntax_error_reports_line() {
        let text = format!("{SVC}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: [x\n");
        match parse("a.yaml", &text).unwrap_err() {
            ManifestError::Syntax { line, message, .. } => {
                assert!(line.is_some_and(|l| l >= 8), "{line:?} {message}");
                assert!(message.contains("line"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match parse("a.json", "{\n  \"kind\": \n").unwrap_err() {
            ManifestError::Syntax { format, line, .. } => {
                assert_eq!(format, "JSON");
                assert_eq!(line, Some(3));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn schema_and_validation_errors_name_the_object() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: demo}\nspec: {ports: [{port: x}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: demo}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 70000}]}\n";
        let parsed = parse("dir/s.yaml", text).unwrap();
        let msgs: Vec<_> = parsed
            .objects
            .iter()
            .map(|(_, r)| r.as_ref().unwrap_err().to_string())
            .collect();
        assert!(
            msgs[0].starts_with("dir/s.yaml: Service demo/a: spec.ports[0].port: "),
            "{}",
            msgs[0]
        );
        assert_eq!(
            msgs[1],
            "dir/s.yaml: Service demo/b: spec.ports[0].port: port 70000 is out of range (1-65535)"
        );
    }

    #[test]
    fn lists_are_expanded() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: demo}\n- {kind: Pod}\n- apiVersion: v1\n  kind: List\n  items: []\n";
        let parsed = parse("l.yaml", text).unwrap();
        assert_eq!(ids(&parsed), vec!["Namespace demo"]);
        let msgs: Vec<_> = parsed.unidentified.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            msgs,
            vec![
                "l.yaml: document 1, items[1]: missing apiVersion or kind",
                "l.yaml: document 1, items[2]: a List inside a List is not supported",
            ]
        );
        let parsed = parse("l.yaml", "apiVersion: v1\nkind: List\nitems: {a: b}\n").unwrap();
        assert!(matches!(
            parsed.unidentified[0],
            ManifestError::Document {
                problem: DocProblem::BadList,
                ..
            }
        ));
    }

    #[test]
    fn json_files() {
        let text = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"j"},"spec":{"clusterIP":"10.0.0.1","ports":[{"port":53,"protocol":"UDP"}]}}"#;
        let parsed = parse("j.json", text).unwrap();
        assert_eq!(ids(&parsed), vec!["Service default/j"]);
        assert!(parsed.objects[0].1.is_ok());
    }

    #[test]
    fn unsupported_api_version_is_an_error() {
        let text = "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\nendpoints: []\n";
        let parsed = parse("a.yaml", text).unwrap();
        let err = parsed.objects[0].1.as_ref().unwrap_err();
        assert!(matches!(err, ManifestError::UnsupportedVersion { .. }));
        assert!(
            err.to_string().contains("discovery.k8s.io/v1beta1"),
            "{err}"
        );
    }

    #[test]
    fn yaml_merge_keys_apply() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: m}\nspec:\n  <<: {clusterIP: 10.0.0.9}\n  ports: [{port: 80}]\n";
        let parsed = parse("a.yaml", text).unwrap();
        match parsed.objects[0].1.as_ref().unwrap() {
            Object::Service(s) => assert_eq!(
                s.cluster_ips,
                crate::model::ClusterIps::Ips(vec!["10.0.0.9".parse().unwrap()])
            ),
            other => panic!("{other:?}"),
        }
    }
}
