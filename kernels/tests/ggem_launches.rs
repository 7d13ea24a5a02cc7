//! `tools/gpu/ggem_launches.json` records `launch_config` for the shapes the
//! GPU harness (`tools/gpu/ggem_check.py`, which runs without Rust) launches
//! and for the SM counts of the GPUs it may meet. The harness checks its own
//! port of `launch_config` against this file before launching anything, so
//! the two cannot drift apart silently; this test checks the file against the
//! Rust. `EDGEVIT_BLESS=1` rewrites it.

use std::path::PathBuf;

use edgevit_kernels::launch_config;
use serde_json::{json, Value};

/// `(B, N, C, G)`: the harness's correctness and timing shapes.
const SHAPES: &[(usize, usize, usize, usize)] = &[
    (1, 196, 192, 3),
    (1, 197, 384, 6),
    (64, 196, 768, 12),
    (256, 196, 768, 12),
    (2, 197, 384, 48),
    (3, 50, 4104, 513),
    (1, 1, 8, 1),
    (5, 7, 16, 2),
    (1, 4096, 64, 8),
    (2, 100, 2048, 1),
];

/// Orin, Xavier-class small parts, A100, H100 PCIe, H100 SXM / H200, B200.
const SM_COUNTS: &[u32] = &[1, 8, 16, 108, 114, 132, 148];

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/gpu/ggem_launches.json")
}

fn render() -> String {
    let mut cases = Vec::new();
    for &(b, n, c, g) in SHAPES {
        for &sm_count in SM_COUNTS {
            let l = launch_config(b, n, c, g, sm_count).unwrap();
            cases.push(json!({
                "b": b, "n": n, "c": c, "g": g, "sm_count": sm_count,
                "grid": l.grid, "block": l.block,
                "vec_tile": l.vec_tile, "row_walkers": l.row_walkers,
                "rows_per_split": l.rows_per_split,
                "workspace_len": l.workspace_len, "counters_len": l.counters_len,
            }));
        }
    }
    // One case per line, so that a change in launch_config reads as a diff
    // of the cases it changes.
    let cases: Vec<String> = cases.iter().map(|c| format!("    {c}")).collect();
    format!(
        "{{\n  \"generated_by\": {},\n  \"cases\": [\n{}\n  ]\n}}\n",
        Value::from("cargo test -p edgevit-kernels --test ggem_launches; EDGEVIT_BLESS=1 rewrites it"),
        cases.join(",\n")
    )
}

#[test]
fn harness_launch_table_is_current() {
    let want = render();
    let path = path();
    if std::env::var_os("EDGEVIT_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        have == want,
        "{} is out of date with launch_config; rerun this test with EDGEVIT_BLESS=1",
        path.display()
    );
}
