//! The conformance suite against the real `berth` binary over TCP.
//! Every check, required and optional, must pass.

mod common;

#[test]
fn berth_passes_every_conformance_check() {
    let dir = tempfile::tempdir().unwrap();
    let berth = common::Berth::start(&dir.path().join("data"));
    // A namespace account, so every request goes through the token flow
    // with scoped tokens, as docker and the CNB lifecycle use it.
    let password = berth.namespace_credentials("tool-conformance");
    let target = berth_conformance::Target {
        url: berth.url(),
        namespace: "tool-conformance".into(),
        credentials: Some(("tool-conformance".into(), password)),
    };
    let outcomes = berth_conformance::run(&target, "");
    let report = berth_conformance::report(&outcomes);
    println!("{report}");
    assert!(outcomes.len() >= 40, "the suite should run all its checks");
    let failed: Vec<_> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "conformance failures:\n{report}\nberth log:\n{}",
        berth.log_text()
    );
}
