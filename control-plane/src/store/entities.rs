//! (being written)

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntityKind {
    Services,
    Routes,
    Plugins,
}

#[derive(Clone, Debug)]
pub struct StoredEntity {
    pub id: String,
    pub doc: serde_json::Value,
}
