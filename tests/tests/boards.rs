//! Board profiles: listed, validated, and used by `edgevit run` for its
//! defaults and to refuse bundles made for another board.

use edgevit_tests::*;

fn board_file(dir: &std::path::Path, compatible: &str, camera: &str, display: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo("boards/raspberry-pi-5.toml"))
        .unwrap()
        .replace("compatible = \"raspberry-pi-5\"", &format!("compatible = \"{compatible}\""))
        .replace("v4l2:///dev/video0", camera)
        .replace("fb:///dev/fb0", display);
    let path = dir.join("board.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn boards_lists_every_profile() {
    let run = edgevit(["boards", "--json"]);
    let boards = run.ok().json_lines();
    let names: Vec<&str> = boards.iter().map(|b| b["name"].as_str().unwrap()).collect();
    for expected in [
        "jetson-orin-nano",
        "jetson-orin-nx",
        "jetson-agx-orin",
        "jetson-thor",
        "jetson-xavier-nx",
        "jetson-agx-xavier",
        "jetson-nano",
        "raspberry-pi-5",
        "x86_64-host",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    let text = edgevit(["boards"]);
    assert!(
        text.ok().stdout.lines().any(|l| l.starts_with("jetson-thor") && l.contains(" 110 ")),
        "{}",
        text.stdout
    );
}

#[test]
fn a_profile_with_an_unknown_field_is_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("board.toml");
    let text = std::fs::read_to_string(repo("boards/jetson-nano.toml")).unwrap();
    std::fs::write(&path, format!("{text}overclock = true\n")).unwrap();
    edgevit(["boards", "--current", "--board-file", path.to_str().unwrap()])
        .fails_with("unknown field `overclock`");
    std::fs::write(&path, "name = [\n").unwrap();
    edgevit(["boards", "--current", "--board-file", path.to_str().unwrap()])
        .fails_with(&format!("board {}", path.display()));
}

#[test]
fn run_takes_its_uris_from_the_board() {
    let tmp = tempfile::tempdir().unwrap();
    let board = board_file(tmp.path(), "raspberry-pi-5", "pattern://", "null://");
    let run = edgevit(["run", "--board-file", board.to_str().unwrap(), "--frames", "3", "--json"]);
    assert_eq!(run.ok().json_lines().len(), 3);
}

#[test]
fn run_refuses_a_bundle_made_for_another_board() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    copy_dir(&repo(INT8_BUNDLE), &bundle);
    rewrite_manifest(&bundle, |m| m.compatible = vec!["jetson-orin".into()]);
    let board = board_file(tmp.path(), "raspberry-pi-5", "pattern://", "null://");
    edgevit([
        "run",
        "--board-file",
        board.to_str().unwrap(),
        "--frames",
        "1",
        "--bundle",
        bundle.to_str().unwrap(),
        "--trust",
        DEV_PUB,
    ])
    .fails_with("fits jetson-orin but this board is raspberry-pi-5");
}
