//! berth-test-tools: programs the end-to-end tests use in place of clients
//! that cannot be installed here (the Go CNB lifecycle). They speak HTTP to
//! the registry only, like the real ones; nothing in berth special-cases
//! them. Kept apart from `conformance/`, which judges any registry.
