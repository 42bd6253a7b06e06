//! `gateway` runs the plugins as modules and never links their crates: it judges their configs
//! with the modules themselves. Checked before the tests, since a dependency that brought them
//! back (through the model, say) would break no test.

use std::collections::BTreeSet;

/// Fails, naming them, when `gateway` or `modtest` (which tests any module as the data
/// planes run it) links a plugin crate or the native schema checks.
pub fn check() -> Result<(), String> {
    let mut forbidden = crate::wasm::plugins()?;
    forbidden.push("wasmgate-plugin-schemas".into());
    for binary in ["gateway", "modtest"] {
        let linked: BTreeSet<String> = crate::pins::resolved(&["-p", binary], "normal,build")?
            .iter()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|name| forbidden.iter().any(|f| f == name))
            .map(str::to_owned)
            .collect();
        if !linked.is_empty() {
            return Err(format!(
                "{binary} links {linked:?}: it runs plugins as modules and must not link \
                 their crates (see `cargo tree -p {binary} -i <crate>`)"
            ));
        }
    }
    Ok(())
}
