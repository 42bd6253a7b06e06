//! Kong's env vault references in a plugin configuration: what the data planes give a module
//! (exactly the variables its own configuration names) and what a schema check stands in for.

/// A secret a configuration references with Kong's env vault: `{vault://env/NAME}` or
/// `{vault://env/NAME/key}` (a string in a JSON object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretReference {
    /// The environment variable: Kong's env vault upper-cases the name and reads `-` as `_`.
    pub variable: String,
    pub key: Option<String>,
}

/// Every env-vault reference in a configuration's text. A module is given exactly the
/// variables its own configuration references, nothing else of the data plane's secrets.
pub fn secret_references(config_text: &str) -> Vec<SecretReference> {
    let mut references = Vec::new();
    for reference in config_text.split("vault://env/").skip(1) {
        let reference = reference.split(['}', '?', '"']).next().unwrap_or_default();
        let (name, key) = match reference.split_once('/') {
            Some((name, key)) => (name, Some(key.to_owned())),
            None => (reference, None),
        };
        let variable = name.to_ascii_uppercase().replace('-', "_");
        let found = SecretReference { variable, key };
        if !references.contains(&found) {
            references.push(found);
        }
    }
    references
}

/// The variables of [`secret_references`], each once.
pub fn secret_variables(config_text: &str) -> Vec<String> {
    let mut variables: Vec<String> = Vec::new();
    for reference in secret_references(config_text) {
        if !variables.contains(&reference.variable) {
            variables.push(reference.variable);
        }
    }
    variables
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_references_follow_kongs_env_vault_names() {
        let text = r#"{"add":{"headers":["a:{vault://env/backend-token}","b:{vault://env/DB/user}",
            "c:{vault://env/BACKEND_TOKEN}","d:{vault://hcv/x}"]}}"#;
        assert_eq!(secret_variables(text), vec!["BACKEND_TOKEN", "DB"]);
        assert_eq!(
            secret_references(text)[1],
            SecretReference {
                variable: "DB".into(),
                key: Some("user".into())
            }
        );
        assert!(secret_variables(r#"{"second":5}"#).is_empty());
    }
}
