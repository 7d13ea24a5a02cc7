//! End-to-end tests of `edgevit-tools firmware pack` and `verify`: the real
//! binary on a staging tree shaped like a device root, with faults injected
//! into the packed image.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgevit::sha256_hex;

const BINARY: &[u8] = b"\x7fELF edgevit test binary\n";
const LONG_KERNEL: &str =
    "usr/lib/edgevit/kernels/sm_87/ggem_f16_with_a_name_long_enough_to_need_a_gnu_long_name_entry_in_tar.ptx";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgevit-tools"))
}

fn dev_key(ext: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("models/keys").join(format!("dev-test-only.{ext}"))
}

/// A staging tree shaped like a board's image (tools/src/image.rs).
fn staging(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let files: [(&str, &[u8]); 6] = [
        ("usr/bin/edgevit", BINARY),
        // Longer than a tar header's 100-byte name field: takes a GNU long-name entry.
        (LONG_KERNEL, b"// ptx\n"),
        ("etc/edgevit/board.toml", b"name = \"jetson-orin-nano\"\n"),
        ("etc/edgevit/keys/dev.pub", &fs::read(dev_key("pub")).unwrap()),
        ("etc/systemd/system/edgevit.service", b"[Service]\nExecStart=/usr/bin/edgevit run\n"),
        ("var/lib/edgevit/slots/a/manifest.toml", b"format = 1\n"),
    ];
    for (path, bytes) in files {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
    }
    fs::set_permissions(root.join("usr/bin/edgevit"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("slots/a", root.join("var/lib/edgevit/current")).unwrap();
    root
}

fn pack_with(root: &Path, key: &Path, out: &Path) -> Output {
    bin()
        .args(["firmware", "pack", "--root"])
        .arg(root)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn pack(root: &Path, out: &Path) -> Vec<u8> {
    let output = pack_with(root, &dev_key("key"), out);
    assert!(output.status.success(), "pack failed: {}", String::from_utf8_lossy(&output.stderr));
    fs::read(out).unwrap()
}

fn verify(image: &Path) -> Output {
    bin().args(["firmware", "verify"]).arg(image).arg("--trust").arg(dev_key("pub")).output().unwrap()
}

/// Asserts that verify fails with exactly `line` (after `image PATH: `) on stderr.
fn assert_rejects(image: &Path, line: &str) {
    assert_rejects_all(image, &[line]);
}

/// Asserts that verify fails with exactly `lines` on stderr, each as
/// `edgevit-tools: image PATH: LINE`.
fn assert_rejects_all(image: &Path, lines: &[&str]) {
    let output = verify(image);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "verify accepted a bad image");
    assert_eq!(output.status.code(), Some(1));
    let prefix = format!("edgevit-tools: image {}: ", image.display());
    let expected: String = lines.iter().map(|line| format!("{prefix}{line}\n")).collect();
    assert_eq!(stderr, expected);
}

/// One entry of an image read back: its header, path and data.
struct Entry {
    header: tar::Header,
    path: String,
    data: Vec<u8>,
}

fn read_entries(image: &Path) -> Vec<Entry> {
    let mut archive = tar::Archive::new(fs::File::open(image).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            Entry { header: e.header().clone(), path, data }
        })
        .collect()
}

fn write_entries(image: &Path, entries: &[Entry]) {
    let mut builder = tar::Builder::new(fs::File::create(image).unwrap());
    for e in entries {
        let mut header = e.header.clone();
        if header.entry_type().is_symlink() {
            let target = header.link_name().unwrap().unwrap().into_owned();
            builder.append_link(&mut header, &e.path, target).unwrap();
        } else {
            builder.append_data(&mut header, &e.path, e.data.as_slice()).unwrap();
        }
    }
    builder.into_inner().unwrap();
}

/// A regular file entry of `data` with mode 0644.
fn file_entry(path: &str, data: &[u8]) -> Entry {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    Entry { header, path: path.into(), data: data.to_vec() }
}

/// Replaces the manifest of `entries` with `manifest`, signed with the development key.
fn resign(entries: &mut [Entry], manifest: &str) {
    let key = edgevit::SecretKey::load(&dev_key("key")).unwrap();
    let signature = format!("{}\n", hex::encode(key.sign(manifest.as_bytes()).to_bytes()));
    for (entry, data) in entries.iter_mut().zip([manifest.as_bytes(), signature.as_bytes()]) {
        entry.header.set_size(data.len() as u64);
        entry.data = data.to_vec();
    }
}

#[test]
fn pack_is_reproducible_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let root = staging(dir.path());
    let first = pack(&root, &dir.path().join("first.tar"));
    let second = pack(&root, &dir.path().join("second.tar"));
    assert!(first == second, "two packs of the same tree differ");

    // New mtimes (and atimes) on every file must not change a byte.
    for path in ["usr/bin/edgevit", "etc/edgevit/board.toml", "var/lib/edgevit/slots/a/manifest.toml"] {
        let file = fs::File::options().write(true).open(root.join(path)).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        file.set_times(fs::FileTimes::new().set_modified(later).set_accessed(later)).unwrap();
    }
    let output = pack_with(&root, &dev_key("key"), &dir.path().join("third.tar"));
    assert!(output.status.success());
    assert!(fs::read(dir.path().join("third.tar")).unwrap() == first, "mtimes leaked into the image");

    let summary = String::from_utf8(output.stdout).unwrap();
    assert!(summary.contains(&format!("sha256 {}", sha256_hex(&first))), "{summary}");
    assert!(summary.contains(&format!("image is {} bytes", first.len())), "{summary}");
    assert!(summary.contains("25 entries (6 files"), "{summary}");

    let entries = read_entries(&dir.path().join("first.tar"));
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(&paths[..2], ["MANIFEST.toml", "MANIFEST.sig"]);
    let rest = &paths[2..];
    let mut sorted = rest.to_vec();
    sorted.sort();
    assert_eq!(rest, sorted);
    for e in &entries {
        let h = &e.header;
        assert_eq!((h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap()), (0, 0, 0), "{}", e.path);
        assert_eq!((h.username().unwrap(), h.groupname().unwrap()), (Some("root"), Some("root")));
    }
    let mode = |p: &str| entries.iter().find(|e| e.path == p).unwrap().header.mode().unwrap();
    assert_eq!(mode("usr/bin/edgevit"), 0o755);
    assert_eq!(mode("etc/edgevit/board.toml"), 0o644);
    assert_eq!(mode("etc/edgevit/"), 0o755);
    assert!(LONG_KERNEL.len() > 100 && paths.contains(&LONG_KERNEL));

    let output = verify(&dir.path().join("first.tar"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report = String::from_utf8(output.stdout).unwrap();
    assert!(report.contains("verified 6 files, 1 symlink and 16 directories"), "{report}");
}

#[test]
fn verify_rejects_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.tar");
    let mut bytes = pack(&staging(dir.path()), &image);
    let offset = {
        let mut archive = tar::Archive::new(bytes.as_slice());
        let entry = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path_bytes().as_ref() == b"usr/bin/edgevit")
            .unwrap();
        entry.raw_file_position() as usize
    };
    assert_eq!(&bytes[offset..offset + BINARY.len()], BINARY);
    bytes[offset + 5] ^= 0x01;
    let mut flipped = BINARY.to_vec();
    flipped[5] ^= 0x01;
    fs::write(&image, &bytes).unwrap();
    assert_rejects(
        &image,
        &format!(
            "usr/bin/edgevit: expected sha256 {} but image has {}",
            sha256_hex(BINARY),
            sha256_hex(&flipped)
        ),
    );
}

#[test]
fn verify_rejects_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.tar");
    pack(&staging(dir.path()), &image);
    let mut entries = read_entries(&image);
    entries.retain(|e| e.path != "etc/edgevit/board.toml");
    write_entries(&image, &entries);
    assert_rejects(&image, "etc/edgevit/board.toml: listed in MANIFEST.toml but missing");
}

#[test]
fn verify_rejects_an_extra_file() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.tar");
    pack(&staging(dir.path()), &image);
    let mut entries = read_entries(&image);
    let mut header = entries.iter().find(|e| e.path == "etc/edgevit/board.toml").unwrap().header.clone();
    header.set_size(6);
    entries.push(Entry { header, path: "etc/extra".into(), data: b"extra\n".to_vec() });
    write_entries(&image, &entries);
    assert_rejects(&image, "etc/extra: not listed in MANIFEST.toml");
}

#[test]
fn verify_rejects_a_changed_symlink_target() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.tar");
    pack(&staging(dir.path()), &image);
    let mut entries = read_entries(&image);
    let link = entries.iter_mut().find(|e| e.path == "var/lib/edgevit/current").unwrap();
    link.header.set_link_name("slots/b").unwrap();
    write_entries(&image, &entries);
    assert_rejects(&image, "var/lib/edgevit/current: expected symlink target slots/a but image has slots/b");
}

#[test]
fn verify_reports_every_entry_that_differs_from_its_listing() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.tar");
    pack(&staging(dir.path()), &image);
    let mut entries = read_entries(&image);
    let board = entries.iter_mut().find(|e| e.path == "etc/edgevit/board.toml").unwrap();
    let listed = board.data.len();
    *board = file_entry("etc/edgevit/board.toml", b"name = \"x\"\n");
    let binary = entries.iter_mut().find(|e| e.path == "usr/bin/edgevit").unwrap();
    binary.header.set_mode(0o700);
    let link = entries.iter().position(|e| e.path == "var/lib/edgevit/current").unwrap();
    entries[link] = file_entry("var/lib/edgevit/current", b"slots/a");
    entries.push(file_entry("etc/systemd/system/edgevit.service", b"[Service]\n"));
    let mut fifo = file_entry("etc/fifo", b"");
    fifo.header.set_entry_type(tar::EntryType::Fifo);
    entries.push(fifo);
    write_entries(&image, &entries);
    assert_rejects_all(
        &image,
        &[
            &format!("etc/edgevit/board.toml: expected {listed} bytes but image has 11"),
            "usr/bin/edgevit: expected mode 0755 but image has 0700",
            "var/lib/edgevit/current: expected a symlink but image has a regular file",
            "etc/systemd/system/edgevit.service: more than one entry with this path",
            "etc/fifo: expected a regular file, directory or symlink but image has a FIFO",
        ],
    );
}

#[test]
fn verify_refuses_an_image_not_led_by_its_manifest_and_signature() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.tar");
    pack(&staging(dir.path()), &image);
    let mut entries = read_entries(&image);
    let layout = |found: &str| {
        format!("expected MANIFEST.toml then MANIFEST.sig as the first entries but found {found}")
    };

    entries.swap(0, 1);
    write_entries(&image, &entries);
    assert_rejects(&image, &layout("MANIFEST.sig"));
    entries.swap(0, 1);

    write_entries(&image, &entries[..1]);
    assert_rejects(&image, &layout("the end of the archive"));

    let signature = entries[1].data.clone();
    entries[1].data = vec![b'#'; 5000];
    entries[1].header.set_size(5000);
    write_entries(&image, &entries);
    assert_rejects(&image, &layout("MANIFEST.sig of 5000 bytes"));

    entries[1].data = [signature.as_slice(), signature.as_slice()].concat();
    let size = entries[1].data.len() as u64;
    entries[1].header.set_size(size);
    write_entries(&image, &entries);
    assert_rejects(&image, "MANIFEST.sig: expected one line of hex but found more");
}

#[test]
fn verify_reports_every_bad_listing_of_a_signed_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.tar");
    pack(&staging(dir.path()), &image);
    let mut entries = read_entries(&image);
    let text = String::from_utf8(entries[0].data.clone()).unwrap();
    let mut manifest: edgevit_tools::firmware::ImageManifest = toml::from_str(&text).unwrap();
    manifest.directories.push("../x".into());
    manifest.directories.push("etc".into());
    let board = manifest.files.iter_mut().find(|f| f.path == "etc/edgevit/board.toml").unwrap();
    board.mode = "0700".into();

    resign(&mut entries, &toml::to_string(&manifest).unwrap());
    write_entries(&image, &entries);
    assert_rejects_all(
        &image,
        &[
            "MANIFEST.toml: ../x: expected a normalized relative path",
            "MANIFEST.toml: etc: listed more than once",
            "MANIFEST.toml: etc/edgevit/board.toml: expected mode 0755 or 0644 but manifest has 0700",
        ],
    );

    resign(&mut entries, &text.replace("format = 1", "format = 2"));
    write_entries(&image, &entries);
    assert_rejects(&image, "MANIFEST.toml: expected format 1 but manifest has 2");
}

#[test]
fn verify_rejects_a_signature_by_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let (other, _) =
        edgevit::SecretKey::generate().write_pair(&dir.path().join("other"), "test only").unwrap();
    let image = dir.path().join("image.tar");
    let output = pack_with(&staging(dir.path()), &other, &image);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_rejects(&image, "MANIFEST.sig does not verify with any trusted key");
}

#[test]
fn verify_rejects_unsafe_paths() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.tar");
    pack(&staging(dir.path()), &image);
    let entries = read_entries(&image);
    // The tar crate refuses to write `..`, so patch the name field in place.
    let mut bytes = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut bytes);
        for e in &entries {
            let mut header = e.header.clone();
            if e.path == "etc/edgevit/board.toml" {
                header.as_old_mut().name[..22].copy_from_slice(b"../edgevit/board.toml\0");
                header.set_cksum();
                builder.append(&header, e.data.as_slice()).unwrap();
            } else if header.entry_type().is_symlink() {
                let target = header.link_name().unwrap().unwrap().into_owned();
                builder.append_link(&mut header, &e.path, target).unwrap();
            } else {
                builder.append_data(&mut header, &e.path, e.data.as_slice()).unwrap();
            }
        }
        builder.finish().unwrap();
    }
    fs::write(&image, &bytes).unwrap();
    assert_rejects_all(
        &image,
        &[
            "../edgevit/board.toml: unsafe path (absolute, empty or with ..)",
            "etc/edgevit/board.toml: listed in MANIFEST.toml but missing",
        ],
    );
}

#[test]
fn pack_failure_leaves_no_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = staging(dir.path());
    let image = dir.path().join("image.tar");
    fs::write(&image, b"old image").unwrap();
    let status = Command::new("mkfifo").arg(root.join("etc/fifo")).status().unwrap();
    assert!(status.success());
    let output = pack_with(&root, &dev_key("key"), &image);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!(
            "edgevit-tools: staging tree {}: etc/fifo: expected a regular file, directory or symlink \
             but it is a FIFO\n",
            root.display()
        )
    );
    assert_eq!(fs::read(&image).unwrap(), b"old image");
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "a temp file was left behind: {names:?}");
}
