//! Only a dependency list: see Cargo.toml.
