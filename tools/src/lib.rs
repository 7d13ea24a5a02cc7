//! Build and measurement tools of edgevit: firmware images, kernel prebuilds
//! per board, benchmarks against peers. Today the tools are scripts beside
//! this crate (`tools/*.sh`, `tools/bench/`, `tools/gpu/`); it holds no Rust
//! code yet.
