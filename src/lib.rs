//! The `berth` package's library: the TOML config (`config`) and the wiring
//! of a registry from it (`app`), shared by the `berth` binary, the fuzz
//! targets (fuzzing/) and anything else that runs berth in-process.

pub mod app;
pub mod config;
