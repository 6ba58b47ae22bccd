//! Conformance runner: checks the crate against the vectors in `tests/data/conformance`
//! (or the folder named by `TRIPLET_CONFORMANCE_DIR`), computed by PyTorch,
//! pytorch-metric-learning and TensorFlow Addons. Format: `triplet-conformance/1`.
//!
//! Prints one line per op: `conformance <op>: <P> passed, <F> failed, <U> unsupported`.
//! Any failed case, or any case holding a field its op's checker did not read, fails the run.

mod case;
mod contrastive;
mod distance;
mod proxy;
mod quadruplet;
mod retrieval;
mod triplet;

use case::Case;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A checker for one op: `Ok` when the case passes, `Err(reason)` otherwise.
type Check = fn(&Case<'_>) -> Result<(), String>;

/// The checker for `op`, or `None` when the crate does not implement it yet.
fn checker(op: &str) -> Option<Check> {
    match op {
        "distance_matrix" => Some(distance::check),
        "contrastive" => Some(contrastive::check),
        "quadruplet" => Some(quadruplet::check),
        "proxy_nca" => Some(proxy::check_nca),
        "proxy_anchor" => Some(proxy::check_anchor),
        "retrieval" => Some(retrieval::check),
        "triplet_margin" => Some(triplet::check_margin),
        "triplet_batch" => Some(triplet::check_batch),
        _ => None,
    }
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    unsupported: usize,
}

fn main() {
    let dir = std::env::var_os("TRIPLET_CONFORMANCE_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/conformance"),
        PathBuf::from,
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.json in {}", dir.display());

    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let doc: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        assert_eq!(
            doc["format"],
            "triplet-conformance/1",
            "{}: unknown format",
            path.display()
        );
        let op = doc["op"].as_str().expect("op is a string").to_owned();
        let cases = doc["cases"].as_array().expect("cases is an array");
        let tally = tallies.entry(op.clone()).or_default();
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        for raw in cases {
            let case = Case::new(raw);
            let name = case.name();
            let Some(check) = checker(&op) else {
                tally.unsupported += 1;
                continue;
            };
            let outcome = check(&case).and_then(|()| case.all_fields_read());
            match outcome {
                Ok(()) => tally.passed += 1,
                Err(why) => {
                    tally.failed += 1;
                    failures.push(format!("{file} {op} {name}: {why}"));
                }
            }
        }
    }
    for f in &failures {
        println!("FAILED {f}");
    }
    for (op, t) in &tallies {
        println!(
            "conformance {op}: {} passed, {} failed, {} unsupported",
            t.passed, t.failed, t.unsupported
        );
    }
    if !failures.is_empty() {
        eprintln!("{} conformance case(s) failed", failures.len());
        std::process::exit(1);
    }
}
