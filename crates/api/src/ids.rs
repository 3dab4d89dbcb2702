//! Identifiers of the domain. Each is a small validated newtype so a tenant can never be passed
//! where a stream id is expected.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A stream id must be `namespace/name` (the namespace and name of its StreamConnection).
    #[error(
        "stream id {0:?} must be `namespace/name`: two DNS labels (a-z, 0-9, '-') joined by '/'"
    )]
    Stream(String),
    /// Tenants and pod names are used in Redis keys and metric labels.
    #[error("{what} {value:?} must be 1..=63 characters of a-z, A-Z, 0-9, '-', '_', '.'")]
    Label {
        /// What kind of identifier it was.
        what: &'static str,
        /// The refused value.
        value: String,
    },
}

/// A DNS-1123 label (1..=63 of a-z, 0-9, '-', not starting or ending with '-'): what Kubernetes
/// accepts as a namespace and most object names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A stream's identity: `namespace/name` of its StreamConnection.
///
/// Shared (`Arc<str>`), as are [`Tenant`] and [`PodName`]: a running stream's id and tenant are
/// held by its supervisor, session, lease, hub, metrics and status, and one allocation each
/// replaces a dozen copies (26 small allocations per stream, ~830 bytes of a sidecar's RSS).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// Builds a stream id from its namespace and name.
    pub fn new(namespace: &str, name: &str) -> Result<Self, IdError> {
        format!("{namespace}/{name}").try_into()
    }

    /// The namespace part.
    pub fn namespace(&self) -> &str {
        self.0.split_once('/').map(|(ns, _)| ns).unwrap_or_default()
    }

    /// The name part.
    pub fn name(&self) -> &str {
        self.0.split_once('/').map(|(_, n)| n).unwrap_or_default()
    }

    /// The id as written: `namespace/name`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StreamId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        match s.split_once('/') {
            Some((ns, name)) if is_dns_label(ns) && is_dns_label(name) => Ok(Self(s.into())),
            _ => Err(IdError::Stream(s)),
        }
    }
}

impl std::str::FromStr for StreamId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        s.to_owned().try_into()
    }
}

impl From<StreamId> for String {
    fn from(id: StreamId) -> String {
        id.0.to_string()
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! label_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// The identifier as written.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                if is_label(&s) {
                    Ok(Self(s.into()))
                } else {
                    Err(IdError::Label { what: $what, value: s })
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                s.to_owned().try_into()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

label_id!(
    /// A tenant: the unit of pool limits, and the Redis hash tag of its keys.
    Tenant,
    "tenant"
);
impl schemars::JsonSchema for Tenant {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Tenant".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": 63,
            "pattern": "^[A-Za-z0-9._-]+$",
        })
    }
}

label_id!(
    /// A pod (one sidecar instance): the owner named in leases and transitions.
    PodName,
    "pod name"
);

/// One upstream socket's identity, unique within a sidecar process's lifetime. Shared
/// (`Arc`): the socket's link and the stream's status hold the same one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnectionId(pub Arc<str>);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A platform event's identity, stable for one platform event across sockets and pods.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub String);

impl EventId {
    /// The id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A fencing token: grows with every lease grant, so a stale owner's writes can be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fence(pub u64);

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_needs_namespace_and_name() {
        let id: StreamId = "cc/acme-queue-events".parse().expect("valid");
        assert_eq!((id.namespace(), id.name()), ("cc", "acme-queue-events"));
        for bad in ["acme", "cc/", "/x", "cc/Acme", "a/b/c", "cc/-x"] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn tenant_refuses_braces_that_would_break_the_hash_tag() {
        assert!("acme".parse::<Tenant>().is_ok());
        assert!("ac{me}".parse::<Tenant>().is_err());
        assert!("".parse::<Tenant>().is_err());
    }
}
