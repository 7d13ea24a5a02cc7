//! Build and measurement tools of edgevit: firmware images, kernel prebuilds
//! per board, benchmarks against peers. Today it holds the test script
//! `tools/test.sh` and no Rust code yet.
