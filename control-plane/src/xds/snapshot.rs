//! A node's view of one config version: its resources, and what each subscription of its
//! stream gets from them, with a digest that says whether Envoy already has exactly that.

use std::collections::BTreeSet;
use std::sync::Arc;

use xds_api::pb::google::protobuf::Any;

use super::resources::{is_wildcard_type, Resources};
use crate::hub::{sha256_hex, ConfigVersion};

/// The resource names one type is subscribed to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    pub wildcard: bool,
    pub names: BTreeSet<String>,
}

impl Subscription {
    /// From a request's `resource_names`: for listeners and clusters an empty list (legacy)
    /// or `*` means everything.
    pub fn new(type_url: &str, names: &[String]) -> Subscription {
        let wildcard =
            is_wildcard_type(type_url) && (names.is_empty() || names.iter().any(|n| n == "*"));
        Subscription {
            wildcard,
            names: names.iter().filter(|n| *n != "*").cloned().collect(),
        }
    }
}

/// What one subscription gets.
pub struct Selection {
    pub resources: Vec<Any>,
    /// Identifies the content (names and resources), stable across translations.
    pub digest: String,
    /// Whether every resource of the type is in it (the node has all it needs).
    pub complete: bool,
}

pub struct Snapshot {
    pub version: Arc<ConfigVersion>,
    resources: Resources,
}

impl Snapshot {
    pub fn new(version: Arc<ConfigVersion>, resources: Resources) -> Snapshot {
        Snapshot { version, resources }
    }

    pub fn select(&self, type_url: &str, subscription: &Subscription) -> Selection {
        let mut text = String::new();
        let mut resources = Vec::new();
        let mut complete = true;
        for (name, resource) in self.resources.get(type_url).into_iter().flatten() {
            if subscription.wildcard || subscription.names.contains(name) {
                text.push_str(name);
                text.push('\n');
                text.push_str(&resource.json);
                text.push('\n');
                resources.push(resource.any.clone());
            } else {
                complete = false;
            }
        }
        Selection {
            resources,
            digest: sha256_hex(text.as_bytes()),
            complete,
        }
    }

    /// Whether the version has resources of this type at all.
    pub fn has(&self, type_url: &str) -> bool {
        self.resources.get(type_url).is_some_and(|r| !r.is_empty())
    }
}
