//! End-to-end tests of `edgevit-tools firmware build`: real cross builds
//! for two aarch64 boards with different glibc floors, the images read back
//! entry by entry, and the Orin image's binary run under qemu against the
//! host engine.
//!
//! Cross builds are slow, so each board's image is built once per run and
//! shared by the tests (under the test target directory); the two boards
//! share their compiled dependencies and differ in the final link. Needs
//! what `tools/test.sh` installs: zig, cargo-zigbuild, the aarch64 standard
//! library, NVRTC (Orin's PTX), qemu-user-static and the arm64 C library.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use edgevit::{Bundle, Engine, EngineOptions, Image, SignaturePolicy, TrustStore};
use edgevit_kernels::{ggem, KernelStore};
use edgevit_tools::elf::{self, GlibcVersion};

const ORIN: &str = "jetson-orin-nano";
const XAVIER: &str = "jetson-xavier-nx";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn dev_key(ext: &str) -> PathBuf {
    workspace().join("models/keys").join(format!("dev-test-only.{ext}"))
}

/// A fleet CA certificate for `--ca`, made once per run.
fn fleet_ca() -> &'static Path {
    static CA: OnceLock<PathBuf> = OnceLock::new();
    CA.get_or_init(|| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "fleet CA");
        let cert = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet-ca.pem");
        fs::write(&path, cert.pem()).unwrap();
        path
    })
}

/// The file name images ship ggem.cu's PTX under, the source's hash in it.
fn ggem_ptx_name() -> String {
    edgevit_kernels::ptx::prebuilt_file_name("ggem", ggem::SOURCE)
}

fn bundle_dir() -> PathBuf {
    workspace().join("models/fmnist-vit-ggem")
}

/// Runs `firmware build` for `board` into `out` (dev profile), panicking
/// with the tool's output when it fails; returns the image path and stdout.
fn build(board: &str, out: &Path) -> (PathBuf, String) {
    let _ = fs::remove_dir_all(out);
    let output = Command::new(env!("CARGO_BIN_EXE_edgevit-tools"))
        .args(["firmware", "build", "--board", board, "--profile", "dev", "--bundle"])
        .arg(bundle_dir())
        .arg("--key")
        .arg(dev_key("key"))
        .arg("--ca")
        .arg(fleet_ca())
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "firmware build {board} failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (out.join(format!("edgevit-{board}.tar")), stdout)
}

/// An image built once per test run, shared by the tests that read it.
struct Built {
    image: PathBuf,
    summary: String,
}

fn image(board: &'static str) -> &'static Built {
    static ORIN_IMAGE: OnceLock<Built> = OnceLock::new();
    static XAVIER_IMAGE: OnceLock<Built> = OnceLock::new();
    let cell = match board {
        ORIN => &ORIN_IMAGE,
        XAVIER => &XAVIER_IMAGE,
        _ => unreachable!("no shared image for {board}"),
    };
    cell.get_or_init(|| {
        let (image, summary) =
            build(board, &Path::new(env!("CARGO_TARGET_TMPDIR")).join("firmware").join(board));
        Built { image, summary }
    })
}

/// What an image holds: regular files with their bytes, symlinks with
/// their targets, directories.
#[derive(Default)]
struct Contents {
    files: BTreeMap<String, Vec<u8>>,
    symlinks: BTreeMap<String, String>,
    directories: Vec<String>,
}

fn contents(image: &Path) -> Contents {
    let mut archive = tar::Archive::new(fs::File::open(image).unwrap());
    let mut contents = Contents::default();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            contents.directories.push(path.trim_end_matches('/').to_string());
        } else if kind.is_symlink() {
            let target = entry.link_name().unwrap().unwrap().to_string_lossy().into_owned();
            contents.symlinks.insert(path, target);
        } else {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            contents.files.insert(path, bytes);
        }
    }
    contents
}

#[test]
fn two_builds_in_a_row_give_identical_images() {
    let first = image(ORIN);
    let again = Path::new(env!("CARGO_TARGET_TMPDIR")).join("firmware-again").join(ORIN);
    let (second, _) = build(ORIN, &again);
    assert!(fs::read(&first.image).unwrap() == fs::read(&second).unwrap(), "two builds of {ORIN} differ");
    let verified = Command::new(env!("CARGO_BIN_EXE_edgevit-tools"))
        .args(["firmware", "verify"])
        .arg(&second)
        .arg("--trust")
        .arg(dev_key("pub"))
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
}

/// Reads the image's binary and checks its machine and glibc needs.
fn assert_glibc_floor(board: &'static str, floor: &str) {
    let built = image(board);
    let contents = contents(&built.image);
    let needs = elf::needs(&contents.files["usr/bin/edgevit"]).unwrap();
    assert_eq!(needs.arch, "aarch64");
    let floor = GlibcVersion::parse(floor).unwrap();
    let newest = needs.newest().expect("a glibc binary needs some GLIBC version");
    assert!(*newest <= floor, "{board}: the binary needs GLIBC_{newest}, newer than {floor}: {needs:?}");
    assert!(needs.glibc_other.is_empty(), "{board}: {needs:?}");
    assert!(
        built.summary.contains(&format!("needs GLIBC_{newest} at most; floor {floor}")),
        "{}",
        built.summary
    );
}

#[test]
fn orin_nano_binary_needs_no_glibc_newer_than_2_35() {
    assert_glibc_floor(ORIN, "2.35");
}

#[test]
fn xavier_nx_binary_needs_no_glibc_newer_than_2_31() {
    assert_glibc_floor(XAVIER, "2.31");
}

/// Issue 16: no crate of the build may generate bindings or probe for system
/// libraries at build time, so that a machine with only the Rust toolchain
/// (no libclang, no `-dev` packages) builds the binary natively, for every
/// board and for fuzzing. What the binary needs from the system it loads at
/// run time. The lock files list every package of every platform.
#[test]
fn issue_16_no_crate_builds_against_system_headers_or_libraries() {
    for lock in ["Cargo.lock", "fuzz/Cargo.lock"] {
        let text = fs::read_to_string(workspace().join(lock)).unwrap();
        let names: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("name = \"")?.strip_suffix('"')).collect();
        assert!(names.contains(&"tract-onnx"), "{lock}: {names:?}");
        for forbidden in ["bindgen", "clang-sys", "pkg-config", "system-deps", "vcpkg"] {
            assert!(!names.contains(&forbidden), "{lock} has {forbidden}: see `cargo tree -i {forbidden}`");
        }
    }
}

/// Thor (sm_110) under the pinned CUDA 12.9 NVRTC, which knows it only by
/// an older number: its image carries compute_90 PTX, which Thor's CUDA 13
/// driver JIT-compiles at first load, in the directory the device looks in.
#[test]
fn thor_image_carries_hopper_ptx_for_its_driver_to_jit() {
    let (image, summary) =
        build("jetson-thor", &Path::new(env!("CARGO_TARGET_TMPDIR")).join("firmware/thor"));
    let name = ggem_ptx_name();
    assert!(
        summary.contains(&format!("kernels  usr/lib/edgevit/kernels/sm_110/: {name} (compute_90 PTX")),
        "{summary}"
    );
    let thor = contents(&image);
    let ptx =
        String::from_utf8(thor.files[&format!("usr/lib/edgevit/kernels/sm_110/{name}")].clone()).unwrap();
    assert!(ptx.lines().any(|l| l.trim() == ".target sm_90"), "{}", &ptx[..ptx.len().min(400)]);
}

/// Issue 16: the crash-injection hook of the update tests stays out of
/// what ships.
#[test]
fn issue_16_image_binaries_carry_no_crash_hook() {
    let orin = contents(&image(ORIN).image);
    let binary = &orin.files["usr/bin/edgevit"];
    let hook = b"EDGEVIT_UPDATE_CRASH_AT";
    assert!(!binary.windows(hook.len()).any(|w| w == hook), "the image's binary has the crash hook");
}

#[test]
fn images_hold_the_device_tree() {
    let orin = contents(&image(ORIN).image);
    let board = fs::read(workspace().join("boards/jetson-orin-nano.toml")).unwrap();
    assert_eq!(orin.files["etc/edgevit/board.toml"], board);
    // The PTX lies where the binary's kernel store looks for its own source's.
    let store = KernelStore { prebuilt: "usr/lib/edgevit/kernels".into(), cache: None };
    let path = store.prebuilt_path("ggem", ggem::SOURCE, 87);
    assert!(path.ends_with(format!("sm_87/{}", ggem_ptx_name())), "{path:?}");
    let ptx = &orin.files[path.to_str().unwrap()];
    assert!(ptx.starts_with(b"//"));
    assert!(String::from_utf8_lossy(ptx).contains(".target sm_87"));
    let kernels: Vec<&String> =
        orin.files.keys().filter(|f| f.starts_with("usr/lib/edgevit/kernels/")).collect();
    assert_eq!(kernels, [&path.to_str().unwrap().to_string()], "one PTX file per source");
    let unit = String::from_utf8(orin.files["etc/systemd/system/edgevit.service"].clone()).unwrap();
    for line in ["ExecStart=/usr/bin/edgevit run", "Restart=on-failure", "WatchdogSec=30", "Type=notify"] {
        assert!(unit.lines().any(|l| l == line), "{line} missing from the unit:\n{unit}");
    }
    let key = String::from_utf8(orin.files["etc/edgevit/keys/dev-test-only.pub"].clone()).unwrap();
    let shipped = fs::read_to_string(dev_key("pub")).unwrap();
    assert_eq!(key.lines().last(), shipped.lines().last(), "the image trusts another key");
    assert_eq!(orin.files["etc/edgevit/ca/fleet-ca.pem"], fs::read(fleet_ca()).unwrap());
    for file in ["manifest.toml", "manifest.sig", "model.onnx", "labels.txt"] {
        assert_eq!(
            orin.files[&format!("var/lib/edgevit/slots/a/{file}")],
            fs::read(bundle_dir().join(file)).unwrap(),
            "slot a: {file}"
        );
    }
    assert_eq!(orin.symlinks["var/lib/edgevit/current"], "slots/a");

    let xavier = contents(&image(XAVIER).image);
    assert!(
        !xavier.directories.iter().any(|d| d.starts_with("usr/lib/edgevit/kernels")),
        "a CPU board's image holds kernels: {:?}",
        xavier.directories
    );
    assert!(image(XAVIER).summary.contains("kernels  none"), "{}", image(XAVIER).summary);
}

/// The index of the largest logit.
fn top1(logits: &[f32]) -> usize {
    (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap()
}

fn qemu() -> &'static str {
    for name in ["qemu-aarch64-static", "qemu-aarch64"] {
        if Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return name;
        }
    }
    panic!("qemu-aarch64-static not found (tools/test.sh installs qemu-user-static)");
}

/// The Orin image unpacked into a temporary root.
fn unpacked_orin() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    tar::Archive::new(fs::File::open(&image(ORIN).image).unwrap()).unpack(root.path()).unwrap();
    root
}

/// Runs the image's `edgevit ARGS --bundle <installed> --trust-dir <installed>`
/// under qemu; returns stdout, panicking with stderr when it fails.
fn qemu_edgevit(root: &Path, args: &[&str], more: &[PathBuf]) -> String {
    qemu_edgevit_on(root, None, Some(&root.join("var/lib/edgevit/current")), args, more)
}

/// [`qemu_edgevit`] with another bundle (or none: no `--bundle` and
/// `--trust-dir`), on qemu's CPU model `cpu` when given.
fn qemu_edgevit_on(
    root: &Path,
    cpu: Option<&str>,
    bundle: Option<&Path>,
    args: &[&str],
    more: &[PathBuf],
) -> String {
    let sysroot = Path::new("/usr/aarch64-linux-gnu");
    assert!(sysroot.join("lib/ld-linux-aarch64.so.1").exists(), "libc6-arm64-cross is not installed");
    let mut qemu = Command::new(qemu());
    if let Some(cpu) = cpu {
        qemu.args(["-cpu", cpu]);
    }
    qemu.arg("-L").arg(sysroot).arg(root.join("usr/bin/edgevit")).args(args);
    if let Some(bundle) = bundle {
        qemu.arg("--bundle").arg(bundle).arg("--trust-dir").arg(root.join("etc/edgevit/keys"));
    }
    let output = qemu.args(more).output().unwrap();
    assert!(
        output.status.success(),
        "qemu run of {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn qemu_run_of_the_image_agrees_with_the_host_on_every_sample() {
    let root = unpacked_orin();
    let mut samples: Vec<PathBuf> = fs::read_dir(workspace().join("models/samples/fashion-mnist"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    samples.sort();
    assert_eq!(samples.len(), 20);

    let stdout = qemu_edgevit(root.path(), &["classify", "--json"], &samples);
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), samples.len());

    let trust = TrustStore::load(&[dev_key("pub")], None).unwrap();
    let bundle = Bundle::open(&bundle_dir(), &trust, SignaturePolicy::Require).unwrap();
    let mut engine = Engine::load(&bundle, &EngineOptions::default()).unwrap();
    for (sample, line) in samples.iter().zip(&lines) {
        engine.set_image(Image::open(sample).unwrap().view());
        let host = top1(engine.run().unwrap());
        let logits: Vec<f32> =
            line["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let emulated = top1(&logits);
        assert_eq!(
            emulated,
            host,
            "{}: aarch64 under qemu says {} but the host says {}",
            sample.display(),
            engine.labels[emulated],
            engine.labels[host]
        );
    }
}

/// The ARM build's own kernels (our NEON products and attention, the
/// LayerNorm and GGeM ops) reproduce the golden logits, and `bench` runs
/// them batched on two threads. Times under emulation mean nothing; they
/// are not read.
#[test]
fn qemu_bench_of_the_image_exercises_the_arm_kernels() {
    let root = unpacked_orin();
    let verified = qemu_edgevit(root.path(), &["bundle", "verify"], &[]);
    assert!(verified.contains("golden top-1 20/20"), "{verified}");
    let stdout = qemu_edgevit(
        root.path(),
        &["bench", "--json", "--iterations", "2", "--warmup", "1", "--batch", "2", "--threads", "2", "--ops"],
        &[],
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((r["batch"].as_u64(), r["threads"].as_u64()), (Some(2), Some(2)), "{r}");
    let ops = r["ops"].as_array().unwrap();
    let count = |name: &str| ops.iter().find(|o| o["op"] == name).and_then(|o| o["count"].as_u64());
    assert_eq!((count("Attention"), count("Ggem"), count("RowSoftmax")), (Some(4), Some(1), None), "{r}");
    assert!(count("Linear").is_some_and(|n| n >= 6), "{r}");
    assert_eq!(r["cpu_kernel"].as_str(), Some("neon 8x12"), "{r}");
}

/// Issue 15: on arm64 the int8 bundle runs all its products on the dot
/// product kernel (`sdot`); on a Cortex-A57, which has no dot product, they
/// run in f32 and `bench` and `doctor` say so. The f32 products on the
/// int8 weights are the exact reference of the quantized model: on every
/// sample the dot product kernel, which quantizes activations in 8 bits,
/// stays within 1% of the largest logit of it. The host has the same top-1
/// and stays within the bundle's own int8 tolerance: its kernel may
/// quantize activations in 7 bits (AVX2 without VNNI), twice as coarse.
#[test]
fn qemu_int8_bundle_runs_the_dot_product_kernel_and_agrees_with_the_host() {
    let root = unpacked_orin();
    let int8 = workspace().join("models/fmnist-vit-ggem-int8");
    let bench = ["bench", "--json", "--iterations", "1", "--warmup", "0", "--ops"];
    for (cpu, kernel, op) in [(None, "neon sdot 8x12", "QLinear"), (Some("cortex-a57"), "f32", "Linear")] {
        let r: serde_json::Value =
            serde_json::from_str(qemu_edgevit_on(root.path(), cpu, Some(&int8), &bench, &[]).trim()).unwrap();
        let ops = r["ops"].as_array().unwrap();
        let count = |name: &str| ops.iter().find(|o| o["op"] == name).and_then(|o| o["count"].as_u64());
        assert_eq!((r["int8_kernel"].as_str(), count(op)), (Some(kernel), Some(18)), "{cpu:?}: {r}");
    }
    let doctor = qemu_edgevit_on(root.path(), Some("cortex-a57"), None, &["doctor"], &[]);
    assert!(doctor.contains("int8      none: no fast int8 dot product"), "{doctor}");

    let mut samples: Vec<PathBuf> = fs::read_dir(workspace().join("models/samples/fashion-mnist"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    samples.sort();
    let logits = |cpu: Option<&str>| -> Vec<Vec<f32>> {
        let stdout = qemu_edgevit_on(root.path(), cpu, Some(&int8), &["classify", "--json"], &samples);
        let line = |l: &str| -> Vec<f32> {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
        };
        stdout.lines().map(line).collect()
    };
    let (sdot, exact) = (logits(None), logits(Some("cortex-a57")));
    assert_eq!((sdot.len(), exact.len()), (samples.len(), samples.len()));
    let trust = TrustStore::load(&[dev_key("pub")], None).unwrap();
    let bundle = Bundle::open(&int8, &trust, SignaturePolicy::Require).unwrap();
    let tolerance = bundle.manifest.golden.as_ref().unwrap().tolerance;
    let mut engine = Engine::load(&bundle, &EngineOptions::default()).unwrap();
    let apart = |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    for ((sample, arm), exact) in samples.iter().zip(&sdot).zip(&exact) {
        let largest = exact.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = apart(arm, exact);
        assert!(diff <= 0.01 * largest, "{}: sdot {diff} from f32 (largest {largest})", sample.display());
        engine.set_image(Image::open(sample).unwrap().view());
        let host = engine.run().unwrap();
        assert_eq!(top1(arm), top1(host), "{}", sample.display());
        let diff = apart(arm, host);
        assert!(diff <= tolerance, "{}: host {diff} from arm (tolerance {tolerance})", sample.display());
    }
}

/// Runs `firmware build` expected to fail before compiling anything;
/// returns stderr and checks that `out` holds nothing afterwards.
fn build_error(args: &[&std::ffi::OsStr], out: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_edgevit-tools"))
        .args(["firmware", "build", "--profile", "dev", "--out"])
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stdout));
    let leftovers: Vec<_> =
        fs::read_dir(out).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "a failed build left {leftovers:?}");
    String::from_utf8(output.stderr).unwrap()
}

/// A copy of the shipped bundle listing `compatible`, signed with `key`.
fn bundle_copy(dir: &Path, compatible: &str, key: &edgevit::SecretKey) -> PathBuf {
    let copy = dir.join("bundle");
    fs::create_dir_all(&copy).unwrap();
    for entry in fs::read_dir(bundle_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
        }
    }
    copy_dir(&bundle_dir().join("golden"), &copy.join("golden"));
    let manifest = fs::read_to_string(copy.join("manifest.toml")).unwrap();
    fs::write(copy.join("manifest.toml"), manifest.replace("compatible = [\"any\"]", compatible)).unwrap();
    edgevit::sign_dir(&copy, key).unwrap();
    copy
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn bad_requests_fail_with_one_line_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dist");
    let key = dev_key("key");
    let bundle = bundle_dir();
    let os = |s: &str| std::ffi::OsString::from(s);
    let args = |board: &str, bundle: &Path, key: &Path| {
        vec![os("--board"), os(board), os("--bundle"), bundle.into(), os("--key"), key.into()]
    };
    let run = |args: Vec<std::ffi::OsString>| {
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        build_error(&refs, &out)
    };

    let err = run(args("jetson-orin-max", &bundle, &key));
    assert!(
        err.starts_with("edgevit-tools: board jetson-orin-max: expected one of jetson-orin-nano"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let err = run(args(ORIN, &bundle, &dir.path().join("missing.key")));
    assert!(
        err.starts_with("edgevit-tools: signing key ") && err.contains("missing.key: cannot read"),
        "{err}"
    );

    let stranger = edgevit::SecretKey::generate();
    let unsigned = bundle_copy(&dir.path().join("a"), "compatible = [\"any\"]", &stranger);
    let err = run(args(ORIN, &unsigned, &key));
    assert_eq!(
        err,
        format!(
            "edgevit-tools: bundle {}: manifest.sig does not verify with any trusted key (tried 1)\n",
            unsigned.display()
        )
    );

    let xavier_only = bundle_copy(&dir.path().join("b"), "compatible = [\"jetson-xavier\"]", &stranger);
    let mut with_trust = args(ORIN, &xavier_only, &key);
    let stranger_pub = dir.path().join("stranger.pub");
    stranger.write_pair(&dir.path().join("stranger"), "test key").unwrap();
    with_trust.extend([os("--trust"), stranger_pub.into()]);
    let err = run(with_trust);
    assert_eq!(
        err,
        format!(
            "edgevit-tools: bundle {}: fits jetson-xavier but this board is {ORIN} (family jetson-orin)\n",
            xavier_only.display()
        )
    );

    let not_pem = dir.path().join("fleet.pem");
    fs::write(&not_pem, "not a certificate\n").unwrap();
    let mut with_ca = args(ORIN, &bundle, &key);
    with_ca.extend([os("--ca"), not_pem.clone().into()]);
    let err = run(with_ca);
    let expected = format!(
        "edgevit-tools: {}: expected PEM certificates (-----BEGIN CERTIFICATE-----) but found none\n",
        not_pem.display()
    );
    assert_eq!(err, expected);
    let mut misnamed = args(ORIN, &bundle, &key);
    misnamed.extend([os("--ca"), dev_key("pub").into()]);
    let err = run(misnamed);
    let expected = format!(
        "edgevit-tools: CA certificate {}: expected a name ending in .pem or .crt\n",
        dev_key("pub").display()
    );
    assert_eq!(err, expected);
}
