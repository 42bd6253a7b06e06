//! A node's view of one config version: its resources, and what each subscription of its
//! stream gets from them, with a digest that says whether Envoy already has exactly that.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::resources::{is_wildcard_type, Resource, Resources, CLUSTER};
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
    /// Shared with the snapshot: a selection made only for its digest copies no module.
    pub resources: Vec<Arc<Resource>>,
    /// Identifies the content (names and resources), stable across translations.
    pub digest: String,
    /// Whether every resource of the type is in it (the node has all it needs).
    pub complete: bool,
}

/// Clusters by name.
pub type Clusters = BTreeMap<String, Arc<Resource>>;

pub struct Snapshot {
    pub version: Arc<ConfigVersion>,
    resources: Arc<Resources>,
    /// Clusters of earlier versions that the node's routes may still name: its clusters keep
    /// them until it has acknowledged this version's listener, filters and routes, so no
    /// request is routed to a cluster it no longer has (make-before-break, the xDS protocol's
    /// "eventual consistency considerations").
    lingering: Clusters,
}

impl Snapshot {
    /// `version`'s resources, for a node that may still route to `earlier` clusters (what it
    /// was sent before): those `version` has no more linger.
    pub fn new(
        version: Arc<ConfigVersion>,
        resources: Arc<Resources>,
        earlier: Clusters,
    ) -> Snapshot {
        let current = resources.get(CLUSTER);
        let lingering = earlier
            .into_iter()
            .filter(|(name, _)| !current.is_some_and(|c| c.contains_key(name)))
            .collect();
        Snapshot {
            version,
            resources,
            lingering,
        }
    }

    /// Every cluster the node gets from this snapshot, lingering ones included.
    pub fn clusters(&self) -> Clusters {
        let mut clusters = self.lingering.clone();
        for (name, cluster) in self.resources.get(CLUSTER).into_iter().flatten() {
            clusters.insert(name.clone(), Arc::clone(cluster));
        }
        clusters
    }

    /// Lets the lingering clusters go; whether there were any.
    pub fn drop_lingering(&mut self) -> bool {
        let had = !self.lingering.is_empty();
        self.lingering.clear();
        had
    }

    pub fn select(&self, type_url: &str, subscription: &Subscription) -> Selection {
        let mut text = String::new();
        let mut resources = Vec::new();
        let mut complete = true;
        let mut of_type: BTreeMap<&String, &Arc<Resource>> =
            self.resources.get(type_url).into_iter().flatten().collect();
        if type_url == CLUSTER {
            of_type.extend(&self.lingering);
        }
        for (name, resource) in of_type {
            if subscription.wildcard || subscription.names.contains(name) {
                text.push_str(name);
                text.push('\n');
                text.push_str(&resource.digest);
                text.push('\n');
                resources.push(Arc::clone(resource));
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
