//! Replays every fuzz input kept in the repository — the corpora
//! (`fuzz/corpus/<target>/`) and the inputs of crashes found and fixed
//! (`fuzz/regressions/<target>/`) — through the same target functions
//! cargo-fuzz runs (berth-fuzzing), on stable. A panic anywhere, in the
//! target or in a thread berth started, fails the test naming the file.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

#[test]
fn corpora_and_regressions_replay_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(info.to_string());
        default_hook(info);
    }));
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (target, run) in berth_fuzzing::TARGETS {
        // Regressions first: the request target keeps one registry per
        // process, and a crash input is replayed best on a new one.
        let inputs: Vec<PathBuf> = ["regressions", "corpus"]
            .iter()
            .flat_map(|kind| files(&root.join(kind).join(target)))
            .collect();
        for file in inputs {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            let panics = std::mem::take(&mut *PANICS.lock().unwrap_or_else(|p| p.into_inner()));
            if outcome.is_err() || !panics.is_empty() {
                failures.push(format!("{}: {}", file.display(), panics.join(" / ")));
            }
            replayed += 1;
        }
    }
    let _ = std::panic::take_hook();
    eprintln!("replayed {replayed} fuzz inputs");
    assert!(
        replayed > 0,
        "no fuzz inputs found under {}",
        root.display()
    );
    assert!(
        failures.is_empty(),
        "{} fuzz inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
