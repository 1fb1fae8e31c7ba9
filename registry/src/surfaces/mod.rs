//! berth's HTTP surfaces, one module each. A surface takes the operations
//! `routes::parse` made of its paths, decides access for each in one place
//! (through `auth`), and calls the handlers. A new endpoint is one variant
//! in `routes` plus one arm here and one handler.

pub mod admin;
pub mod hooks;
pub mod namespace;
pub mod oci;
pub mod ops;
pub mod tool;
pub mod ui;
