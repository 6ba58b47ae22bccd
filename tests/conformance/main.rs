//! Conformance runner: checks the crate against the vectors in `tests/data/conformance`
//! (or the folder named by `TRIPLET_CONFORMANCE_DIR`), computed by PyTorch,
//! pytorch-metric-learning and TensorFlow Addons. Format: `triplet-conformance/1`.
//!
//! Each case is a test named `<op>::<case name>`, so the usual arguments select and list
//! them (`cargo test --test conformance -- triplet_batch`, `-- --list`). Cases of ops the
//! crate does not implement are reported as ignored. After the run it prints one line per
//! op with a selected case: `conformance <op>: <P> passed, <F> failed, <U> unsupported`.
//! Any failed case, or any case holding a field its op's checker did not read, fails the run.

mod case;
mod contrastive;
mod distance;
mod face;
mod miners;
mod nce;
mod proxy;
mod quadruplet;
mod retrieval;
mod triplet;

use case::Case;
use libtest_mimic::{Arguments, Completion, Trial};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

/// A checker for one op: `Ok` when the case passes, `Err(reason)` otherwise.
type Check = fn(&Case<'_>) -> Result<(), String>;

/// The checker for `op`, or `None` when the crate does not implement it yet.
fn checker(op: &str) -> Option<Check> {
    match op {
        "distance_matrix" => Some(distance::check),
        "contrastive" => Some(contrastive::check),
        "quadruplet" => Some(quadruplet::check),
        "arcface" => Some(face::check_arcface),
        "cosface" => Some(face::check_cosface),
        "ntxent" => Some(nce::check_ntxent),
        "supcon" => Some(nce::check_supcon),
        "proxy_nca" => Some(proxy::check_nca),
        "proxy_anchor" => Some(proxy::check_anchor),
        "retrieval" => Some(retrieval::check),
        "triplet_margin" => Some(triplet::check_margin),
        "triplet_batch" => Some(triplet::check_batch),
        "triplet_batch_ref" => Some(triplet::check_batch_ref),
        "triplet_mine" => Some(miners::check_triplet),
        "pair_mine" => Some(miners::check_pair),
        "multi_similarity_mine" => Some(miners::check_ms),
        "multi_similarity" => Some(miners::check_ms_loss),
        _ => None,
    }
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    unsupported: usize,
}

type Tallies = Arc<Mutex<BTreeMap<String, Tally>>>;

/// Runs one case of a supported op and counts its outcome.
fn run_case(
    check: Check,
    raw: &serde_json::Value,
    op: &str,
    tallies: &Tallies,
) -> Result<(), String> {
    let case = Case::new(raw);
    let outcome = check(&case).and_then(|()| case.all_fields_read());
    let mut t = tallies.lock().unwrap_or_else(PoisonError::into_inner);
    let tally = t.entry(op.to_owned()).or_default();
    match outcome {
        Ok(()) => tally.passed += 1,
        Err(_) => tally.failed += 1,
    }
    outcome
}

fn main() {
    let args = Arguments::from_args();
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

    let tallies: Tallies = Arc::default();
    let mut trials = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut doc: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        assert_eq!(
            doc["format"],
            "triplet-conformance/1",
            "{}: unknown format",
            path.display()
        );
        let op = doc["op"].as_str().expect("op is a string").to_owned();
        let cases = doc["cases"]
            .as_array_mut()
            .map(std::mem::take)
            .expect("cases is an array");
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        for raw in cases {
            let name = format!("{op}::{}", Case::new(&raw).name());
            let trial = match checker(&op) {
                Some(check) => {
                    let (op, file, tallies) = (op.clone(), file.to_string(), Arc::clone(&tallies));
                    Trial::test(name, move || {
                        run_case(check, &raw, &op, &tallies)
                            .map_err(|why| format!("{file}: {why}").into())
                    })
                }
                None => {
                    let reason = format!("op `{op}` is not implemented");
                    Trial::ignorable_test(name, move || Ok(Completion::ignored_with(reason)))
                        .with_ignored_flag(true)
                }
            };
            // Unsupported cases do not run: count those the arguments select.
            if !args.is_filtered_out(&trial) {
                let mut t = tallies.lock().unwrap_or_else(PoisonError::into_inner);
                let tally = t.entry(op.clone()).or_default();
                if trial.has_ignored_flag() {
                    tally.unsupported += 1;
                }
            }
            trials.push(trial);
        }
    }

    let conclusion = libtest_mimic::run(&args, trials);
    if !args.list {
        let tallies = tallies.lock().unwrap_or_else(PoisonError::into_inner);
        for (op, t) in tallies.iter() {
            println!(
                "conformance {op}: {} passed, {} failed, {} unsupported",
                t.passed, t.failed, t.unsupported
            );
        }
    }
    conclusion.exit();
}
