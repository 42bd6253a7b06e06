//! The published JSON Schema (`modtest/case-file.schema.json`) agrees with the case-file
//! model: every case file of the workspace is valid under it, and what the model refuses for
//! its shape (unknown fields, both `request` and `steps`) it refuses too.

use std::path::PathBuf;

use modtest::cases::{CaseFile, SCHEMA};

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

fn as_json(yaml: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

#[test]
fn every_case_file_of_the_workspace_is_valid_under_the_schema() {
    let validator = validator();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for dir in ["tests/cases", "modtest/examples/as-header-guard"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            CaseFile::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
            let errors: Vec<String> = validator
                .iter_errors(&as_json(&text))
                .map(|e| format!("{}: {e}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} files");
}

#[test]
fn the_schema_refuses_what_the_model_refuses() {
    let validator = validator();
    for yaml in [
        "plugin: x\ncases: []\nextra: 1",
        "plugin: x\ncases: [{name: a, expect: {stauts: 200}}]",
        "plugin: x\ncases: [{name: a, request: {heders: []}, expect: {}}]",
        "plugin: x\ncases: [{name: a, expect: {upstream: {reachd: false}}}]",
        "plugin: x\ncases: [{name: a, steps: [{expect: {}, x: 1}]}]",
        "plugin: x\ncases: [{name: a, expect: {}, steps: [{expect: {}}]}]",
        "plugin: x\ncases: [{name: a}]",
        "plugin: x\ncases: [{name: a, config: {}, config_text: b, expect: {}}]",
        "plugin: x\ncases: [{name: a, steps: [{advance: -1, expect: {}}]}]",
    ] {
        assert!(
            CaseFile::parse(yaml, "x.yaml".as_ref()).is_err(),
            "the model took {yaml}"
        );
        assert!(
            !validator.is_valid(&as_json(yaml)),
            "the schema took {yaml}"
        );
    }
    let fine = "plugin: x\ncases: [{name: a, config_text: raw, steps: [{advance: 60, request: {path: /a}, expect: {status: 200}}]}]";
    assert!(CaseFile::parse(fine, "x.yaml".as_ref()).is_ok());
    assert!(validator.is_valid(&as_json(fine)));
}

/// The case files docs/TESTING.md shows are what the model and the schema take.
#[test]
fn the_documented_examples_are_valid_case_files() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs = std::fs::read_to_string(root.join("docs/TESTING.md")).expect("docs/TESTING.md");
    let validator = validator();
    let mut checked = 0;
    for block in docs.split("```yaml\n").skip(1) {
        let Some((yaml, _)) = block.split_once("```") else {
            continue;
        };
        // Indented inside a list item: as written in the Markdown.
        let indent = yaml.len() - yaml.trim_start_matches(' ').len();
        let yaml: String = yaml
            .lines()
            .map(|l| {
                l.get(indent.min(l.len() - l.trim_start().len())..)
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("{e}:\n{yaml}"));
        if value.get("cases").is_none() {
            continue;
        }
        CaseFile::parse(&yaml, "docs/TESTING.md".as_ref()).unwrap_or_else(|e| panic!("{e}"));
        let errors: Vec<String> = validator
            .iter_errors(&as_json(&yaml))
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}\n{yaml}");
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} examples");
}
