//! The end-to-end tests: one binary, a module per topic, each driving the
//! real `edgevit` binary or the library as a user of the crate would.
//!
//! Tests that need hardware this machine may lack (a GPU, root for a
//! tmpfs) run where it is present and elsewhere print `skipped: <why>`
//! through [`edgevit_tests::skip`] and pass.

mod alloc;
mod backend;
mod bench;
mod boards;
mod bundle;
mod classify;
mod engine_options;
mod errors;
mod eval;
mod ggem_fusion;
mod gstreamer;
mod half;
mod hostile;
mod house;
mod http;
mod preprocess;
mod run;
mod soak;
mod update;
