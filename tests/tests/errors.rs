//! Bad image input: one `edgevit:` line naming the file and what was
//! expected, a non-zero exit, no panic, and no huge allocation.

use std::io::Write;

use edgevit_tests::*;

fn classify(path: &std::path::Path) -> Run {
    edgevit(["classify".as_ref(), path.as_os_str()])
}

#[test]
fn missing_file() {
    classify("no/such/image.png".as_ref()).fails_with("image no/such/image.png: cannot read");
}

#[test]
fn empty_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("empty.png");
    std::fs::write(&path, b"").unwrap();
    classify(&path).fails_with("expected a PNG or JPEG image but the file is empty");
}

#[test]
fn truncated_png() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cut.png");
    let bytes = std::fs::read(&samples()[0]).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    classify(&path).fails_with(&format!("image {}: expected a PNG or JPEG image but", path.display()));
}

#[test]
fn text_named_jpg() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("notes.jpg");
    std::fs::write(&path, "shopping list: eggs, milk\n").unwrap();
    classify(&path).fails_with(&format!("image {}: expected a PNG or JPEG image but", path.display()));
}

/// A valid PNG header (with a correct CRC) claiming 40000 x 40000 pixels and
/// no data: refused from the header, before any pixel buffer exists.
#[test]
fn png_header_claiming_40000_squared() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("huge.png");
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(40000u32.to_be_bytes());
    ihdr.extend(40000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    std::fs::File::create(&path).unwrap().write_all(&png).unwrap();
    let run = classify(&path);
    run.fails_with(&format!("image {}: expected a PNG or JPEG image but", path.display()));
    assert!(run.stderr.contains("limit"), "{}", run.stderr);
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn unknown_flag_is_a_usage_error_not_a_panic() {
    let run = edgevit(["classify", "--bogus", "x.png"]);
    assert_eq!(run.code, Some(2));
    assert!(!run.stderr.contains("panicked"));
}

#[test]
fn closed_stdout_exits_quietly() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(binary())
        .args(["classify", "--top-k", "0"])
        .args(samples())
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}
