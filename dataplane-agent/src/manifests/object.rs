//! The kinds a manifests directory may hold and how one document becomes a typed object.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Resource;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::model::{self, ValidationError};

/// The kinds skiff reads. Everything else in the directory is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Pod,
    Namespace,
    NetworkPolicy,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::Namespace,
        Kind::NetworkPolicy,
        Kind::Node,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => core::Service::KIND,
            Kind::EndpointSlice => discovery::EndpointSlice::KIND,
            Kind::Pod => core::Pod::KIND,
            Kind::Namespace => core::Namespace::KIND,
            Kind::NetworkPolicy => networking::NetworkPolicy::KIND,
            Kind::Node => core::Node::KIND,
        }
    }

    /// The one apiVersion skiff reads this kind in.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service => core::Service::API_VERSION,
            Kind::EndpointSlice => discovery::EndpointSlice::API_VERSION,
            Kind::Pod => core::Pod::API_VERSION,
            Kind::Namespace => core::Namespace::API_VERSION,
            Kind::NetworkPolicy => networking::NetworkPolicy::API_VERSION,
            Kind::Node => core::Node::API_VERSION,
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }

    pub fn from_name(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Identity of an object: two definitions with the same id are the same object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub kind: Kind,
    /// `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// A parsed and validated object.
#[derive(Clone, Debug, PartialEq)]
// Shared, not boxed: the store hands every object to each new version of its state, and
// only the objects of a changed file are new.
pub enum Object {
    Service(Arc<model::Service>),
    EndpointSlice(Arc<model::EndpointSlice>),
    Pod(Arc<core::Pod>),
    Namespace(Arc<core::Namespace>),
    NetworkPolicy(Arc<networking::NetworkPolicy>),
    Node(Arc<core::Node>),
}

/// Why a document of a known kind and name did not become an object.
#[derive(Debug)]
pub(crate) enum DecodeError {
    Schema(String),
    Invalid(ValidationError),
}

/// The id of a document of `kind`, read from its metadata before the full parse, so that a
/// broken object can still be named (and its last good version kept).
pub(crate) fn identify(kind: Kind, value: &Value) -> Result<ObjectId, ValidationError> {
    let meta = value.get("metadata");
    let field = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let partial = ObjectMeta {
        name: field("name"),
        namespace: field("namespace"),
        ..ObjectMeta::default()
    };
    if kind.namespaced() {
        let key = model::namespaced_key(kind.name(), &partial)?;
        Ok(ObjectId {
            kind,
            namespace: Some(key.namespace),
            name: key.name,
        })
    } else {
        Ok(ObjectId {
            kind,
            namespace: None,
            name: model::cluster_key(kind.name(), &partial)?,
        })
    }
}

/// Parse `value` as the object `id` names and validate it.
pub(crate) fn decode(id: &ObjectId, value: Value) -> Result<Object, DecodeError> {
    let namespace = id.namespace.clone();
    let object = match id.kind {
        Kind::Service => {
            let mut svc: core::Service = typed(value)?;
            svc.metadata.namespace = namespace;
            Object::Service(Arc::new(
                model::Service::from_k8s(&svc).map_err(DecodeError::Invalid)?,
            ))
        }
        Kind::EndpointSlice => {
            let mut slice: discovery::EndpointSlice = typed(value)?;
            slice.metadata.namespace = namespace;
            Object::EndpointSlice(Arc::new(
                model::EndpointSlice::from_k8s(&slice).map_err(DecodeError::Invalid)?,
            ))
        }
        Kind::Pod => {
            let mut pod: core::Pod = typed(value)?;
            pod.metadata.namespace = namespace;
            Object::Pod(Arc::new(pod))
        }
        Kind::NetworkPolicy => {
            let mut policy: networking::NetworkPolicy = typed(value)?;
            policy.metadata.namespace = namespace;
            // Stored as the k8s type, but only when valid (like Services).
            crate::policy::Policy::from_k8s(&policy).map_err(DecodeError::Invalid)?;
            Object::NetworkPolicy(Arc::new(policy))
        }
        Kind::Namespace => Object::Namespace(Arc::new(typed(value)?)),
        Kind::Node => Object::Node(Arc::new(typed(value)?)),
    };
    Ok(object)
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, DecodeError> {
    serde_yaml::from_value::<T>(value.clone()).map_err(|err| {
        DecodeError::Schema(with_field_path::<T>(&value).unwrap_or_else(|| err.to_string()))
    })
}

/// serde_yaml names the offending field (`spec.ports[0].port: invalid type ...`) only when it
/// parses text, not a `Value`: re-parse the document's text to get that path. The line it
/// reports is of the re-serialised text, so it is dropped.
fn with_field_path<T: DeserializeOwned>(value: &Value) -> Option<String> {
    let text = serde_yaml::to_string(value).ok()?;
    let err = serde_yaml::from_str::<T>(&text).err()?;
    let msg = err.to_string();
    let stripped = err.location().and_then(|loc| {
        msg.strip_suffix(&format!(" at line {} column {}", loc.line(), loc.column()))
            .map(str::to_string)
    });
    Some(stripped.unwrap_or(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(yaml: &str) -> Value {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn kinds_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(Kind::from_name("ConfigMap"), None);
        assert_eq!(Kind::EndpointSlice.api_version(), "discovery.k8s.io/v1");
        assert_eq!(Kind::NetworkPolicy.api_version(), "networking.k8s.io/v1");
    }

    #[test]
    fn identify_defaults_namespace_for_namespaced_kinds_only() {
        let v = value("metadata: {name: x}");
        assert_eq!(
            identify(Kind::Service, &v).unwrap().to_string(),
            "Service default/x"
        );
        let v = value("metadata: {name: x, namespace: ns}");
        assert_eq!(identify(Kind::Node, &v).unwrap().to_string(), "Node x");
        let err = identify(Kind::Pod, &value("metadata: {namespace: ns}")).unwrap_err();
        assert_eq!(err.field, "metadata.name");
    }

    #[test]
    fn schema_errors_name_the_field() {
        let v = value(
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: eighty}]}",
        );
        let id = identify(Kind::Service, &v).unwrap();
        match decode(&id, v) {
            Err(DecodeError::Schema(msg)) => {
                assert!(msg.starts_with("spec.ports[0].port: "), "{msg}");
                assert!(msg.contains("eighty"), "{msg}");
                assert!(!msg.contains("line"), "{msg}");
            }
            other => panic!("expected a schema error, got {other:?}"),
        }
    }

    #[test]
    fn decode_sets_namespace_and_validates() {
        let v = value("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n");
        let id = identify(Kind::Pod, &v).unwrap();
        match decode(&id, v).unwrap() {
            Object::Pod(pod) => assert_eq!(pod.metadata.namespace.as_deref(), Some("default")),
            other => panic!("{other:?}"),
        }
        let v =
            value("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 0}]}");
        let id = identify(Kind::Service, &v).unwrap();
        assert!(matches!(decode(&id, v), Err(DecodeError::Invalid(_))));
    }
}
