//! The hostile-input corpus (`tests/hostile/`, written by its
//! `generate.py`): every file goes through the verb that would meet it and
//! must be refused with a non-zero exit, exactly one `edgevit:` line naming
//! the problem, no panic, a peak RSS under 256 MiB, and nothing written
//! outside the run's own directory.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use edgevit_tests::*;

/// Peak resident memory allowed to a child refusing one file.
const MAX_RSS_KIB: i64 = 256 * 1024;

/// How a corpus file reaches the runtime.
#[derive(Clone, Copy, Debug)]
enum Via {
    Classify,
    Run,
    BundleVerify,
    /// The file is the `model.onnx` of an otherwise valid, signed bundle.
    Model,
    Board,
    Channel,
    Eval,
}

/// Every file of the corpus, how it is fed, and what the error line must say.
const CASES: &[(&str, Via, &str)] = &[
    ("image-empty.png", Via::Classify, "the file is empty"),
    ("image-truncated.png", Via::Classify, "expected a PNG or JPEG image but"),
    ("image-bitflip.png", Via::Classify, "expected a PNG or JPEG image but"),
    ("image-wrong-magic.png", Via::Classify, "the content is neither"),
    ("image-huge-dimensions.png", Via::Classify, "expected a PNG or JPEG image but"),
    ("image-over-allocation.png", Via::Classify, "expected a PNG or JPEG image but"),
    ("image-gif.png", Via::Classify, "expected a PNG or JPEG image but"),
    ("image-truncated.jpg", Via::Classify, "expected a PNG or JPEG image but"),
    ("image-huge-dimensions.jpg", Via::Classify, "expected a PNG or JPEG image but"),
    ("image-zero-width.jpg", Via::Classify, "expected a PNG or JPEG image but"),
    ("clip-empty.y4m", Via::Run, "the file is empty"),
    ("clip-wrong-magic.y4m", Via::Run, "expected a YUV4MPEG2 header"),
    ("clip-huge-dimensions.y4m", Via::Run, "W (width)"),
    ("clip-truncated-frame.y4m", Via::Run, "frame 1 is truncated"),
    ("clip-no-frame-line.y4m", Via::Run, "expected a FRAME line"),
    ("clip-10-bit.y4m", Via::Run, "expected C420jpeg"),
    ("clip-endless-header.y4m", Via::Run, "y4m"),
    ("bundle-dotdot.tar", Via::BundleVerify, "not a plain relative path"),
    ("bundle-absolute.tar", Via::BundleVerify, "not a plain relative path"),
    ("bundle-symlink.tar", Via::BundleVerify, "not a link or device"),
    ("bundle-hardlink.tar", Via::BundleVerify, "not a link or device"),
    ("bundle-device.tar", Via::BundleVerify, "not a link or device"),
    ("bundle-sparse.tar", Via::BundleVerify, "corrupt tar archive"),
    ("bundle-oversized-entry.tar", Via::BundleVerify, "expected at most 4294967296 bytes of payload"),
    ("bundle-truncated.tar", Via::BundleVerify, "tar"),
    ("bundle-empty.tar", Via::BundleVerify, "manifest.toml: listed in manifest.toml but missing"),
    ("bundle-deep-nesting.tar", Via::BundleVerify, "manifest.sig is missing"),
    ("bundle-unknown-field.tar", Via::BundleVerify, "manifest.sig does not verify"),
    ("bundle-bad-signature.tar", Via::BundleVerify, "manifest.sig does not verify"),
    ("model-garbage.onnx", Via::Model, "expected an ONNX model tract can load"),
    ("model-truncated.onnx", Via::Model, "expected an ONNX model tract can load"),
    ("model-empty.onnx", Via::Model, "model.onnx"),
    ("model-wrong-input-rank.onnx", Via::Model, "but the model declares [1, 784]"),
    ("model-cycle.onnx", Via::Model, "model.onnx"),
    (
        "model-panics-in-inference.onnx",
        Via::Model,
        "inference failed at node y (Gather): tract failed while running the model: range start index",
    ),
    (
        "model-undefined-output.onnx",
        Via::Model,
        "tract failed while loading the model: no entry found for key",
    ),
    ("board-deep-nesting.toml", Via::Board, "board-deep-nesting.toml"),
    ("board-unknown-field.toml", Via::Board, "unknown field `turbo`"),
    ("board-binary.toml", Via::Board, "board-binary.toml"),
    ("channel-deep-nesting/channel.toml", Via::Channel, "channel"),
    ("channel-bad-signature/channel.toml", Via::Channel, "expected channel.sig to be one hex line"),
    ("idx-huge-dimensions.idx", Via::Eval, "idx-huge-dimensions.idx"),
    ("idx-truncated.idx", Via::Eval, "idx-truncated.idx"),
    ("idx-wrong-magic.idx", Via::Eval, "idx-wrong-magic.idx"),
];

/// A signed bundle whose `model.onnx` is `model`.
fn bundle_with_model(dir: &Path, model: &Path) -> PathBuf {
    let bundle = dir.join("bundle");
    copy_dir(&repo(FP32_BUNDLE), &bundle);
    std::fs::copy(model, bundle.join("model.onnx")).unwrap();
    rewrite_manifest(&bundle, |_| {});
    bundle
}

fn args(via: Via, file: &Path, work: &Path) -> Vec<String> {
    let f = file.display().to_string();
    let trust = repo(DEV_PUB).display().to_string();
    let v = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    match via {
        Via::Classify => v(&["classify", &f]),
        Via::Run => v(&["run", &format!("file://{f}"), "null://", "--frames", "5"]),
        Via::BundleVerify => v(&["bundle", "verify", "--bundle", &f, "--trust", &trust]),
        Via::Model => {
            let bundle = bundle_with_model(work, file).display().to_string();
            v(&["bundle", "verify", "--bundle", &bundle, "--trust", &trust])
        }
        Via::Board => v(&["boards", "--board-file", &f, "--current"]),
        Via::Channel => {
            let state = work.join("state").display().to_string();
            v(&[
                "update",
                "check",
                "--channel",
                &format!("file://{f}"),
                "--state-dir",
                &state,
                "--trust",
                &trust,
            ])
        }
        Via::Eval => v(&["eval", "--idx-images", &f, "--idx-labels", &f]),
    }
}

/// A child still running after this long is stuck (a FIFO read, say) and is killed.
const HANG: Duration = Duration::from_secs(20);

/// Runs the binary in `cwd` and returns its output and peak RSS in KiB. A
/// child that runs past [`HANG`] is killed, and so fails its case.
fn run_measured(args: &[String], cwd: &Path) -> (Run, i64) {
    let child = Command::new(binary())
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let output = std::thread::spawn(move || {
        let mut child = child;
        let (mut out, mut err) = (String::new(), String::new());
        use std::io::Read;
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (out, err)
    });
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(HANG) == Err(mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: kill has no memory preconditions; pid is our child,
            // not reaped before `done` is sent.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet reaped; both pointers are valid.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let _ = done.send(());
    watchdog.join().unwrap();
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    let (stdout, stderr) = output.join().unwrap();
    let status = std::process::ExitStatus::from_raw(status);
    (Run { code: status.code(), stdout, stderr }, usage.ru_maxrss)
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path.clone());
            }
            paths.push(path.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    paths.sort();
    paths
}

/// Runs `args` in `work` and checks the refusal contract: a non-zero exit,
/// no panic, exactly one `edgevit:` line containing `needle`, a peak RSS
/// under [`MAX_RSS_KIB`], nothing written into `work`. Returns the peak RSS
/// and what went wrong, if anything.
fn refused(args: &[String], work: &Path, needle: &str) -> (i64, Option<String>) {
    let prepared = tree(work);
    let (run, rss_kib) = run_measured(args, work);
    let lines: Vec<&str> = run.stderr.lines().collect();
    let problem = if run.code == Some(0) || run.code.is_none() {
        format!("exit {:?}", run.code)
    } else if run.stderr.contains("panicked") {
        "panic".into()
    } else if lines.len() != 1 || !lines[0].starts_with("edgevit: ") {
        "not one edgevit: line".into()
    } else if !lines[0].contains(needle) {
        format!("line lacks {needle:?}")
    } else if rss_kib > MAX_RSS_KIB {
        format!("peak RSS {} MiB", rss_kib / 1024)
    } else if tree(work) != prepared {
        format!("wrote into its directory: {:?}", tree(work))
    } else {
        return (rss_kib, None);
    };
    (rss_kib, Some(format!("{problem}\n    stderr: {}", run.stderr.trim_end())))
}

#[test]
fn every_hostile_file_is_refused_cleanly() {
    let corpus = repo("tests/hostile");
    let listed: Vec<PathBuf> = CASES.iter().map(|(f, _, _)| PathBuf::from(f)).collect();
    let mut on_disk: Vec<PathBuf> = tree(&corpus)
        .into_iter()
        .filter(|p| !corpus.join(p).is_dir() && p.extension().is_some_and(|x| x != "py" && x != "sig"))
        .collect();
    on_disk.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, on_disk, "every corpus file has a case, every case a file");
    assert!(CASES.len() >= 30);
    let corpus_before = tree(&corpus);
    let mut failures = Vec::new();
    let mut largest = (0, "");
    for &(name, via, needle) in CASES {
        let work = tempfile::tempdir().unwrap();
        let file = corpus.join(name);
        let args = args(via, &file, work.path());
        let (rss_kib, problem) = refused(&args, work.path(), needle);
        largest = largest.max((rss_kib, name));
        if let Some(problem) = problem {
            failures.push(format!("{name}: {problem}"));
        }
    }
    eprintln!("{} cases; largest peak RSS {} MiB ({})", CASES.len(), largest.0 / 1024, largest.1);
    assert_eq!(tree(&corpus), corpus_before, "the corpus changed");
    assert!(!Path::new("/tmp/edgevit-hostile-escaped").exists());
    assert!(!repo("hostile-escaped").exists() && !repo("tests/hostile-escaped").exists());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

/// Issue 16: files that never end, block, or are not files at all, named
/// where an image, a clip, a bundle or an idx set is expected: each is
/// refused at once with one line and bounded memory.
#[test]
fn issue_16_endless_and_special_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.png");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let folder = dir.path().join("x.png");
    std::fs::create_dir(&folder).unwrap();
    let big = dir.path().join("big.png");
    std::fs::File::create(&big).unwrap().set_len(2 << 30).unwrap();
    let device = "expected a regular file but it is a character device";
    let cases: &[(&Path, Via, &str)] = &[
        (Path::new("/dev/zero"), Via::Classify, device),
        (Path::new("/dev/zero"), Via::Run, device),
        (Path::new("/dev/zero"), Via::BundleVerify, device),
        (Path::new("/dev/zero"), Via::Eval, device),
        (Path::new("/dev/urandom"), Via::Classify, device),
        (Path::new("/dev/urandom"), Via::Run, device),
        (Path::new("/dev/urandom"), Via::BundleVerify, device),
        (Path::new("/dev/urandom"), Via::Eval, device),
        (&fifo, Via::Classify, "expected a regular file but it is a FIFO"),
        (&fifo, Via::Run, "expected a regular file but it is a FIFO"),
        (&fifo, Via::BundleVerify, "expected a regular file but it is a FIFO"),
        (&fifo, Via::Eval, "expected a regular file but it is a FIFO"),
        (&folder, Via::Classify, "expected a regular file but it is a directory"),
        (&folder, Via::Run, "expected .png, .jpg or .jpeg files but the directory has none"),
        (&folder, Via::BundleVerify, "manifest.toml: cannot read"),
        (&folder, Via::Eval, "expected a regular file but it is a directory"),
        (&big, Via::Classify, "expected at most 134217728 bytes but it has 2147483648"),
        (&big, Via::Run, "expected at most 134217728 bytes but it has 2147483648"),
        (&big, Via::BundleVerify, "manifest.toml: listed in manifest.toml but missing"),
        (&big, Via::Eval, "expected unsigned-byte data (type 0x08) but the file has type 0x00"),
    ];
    let mut failures = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    for &(file, via, needle) in cases {
        let work = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let (_, problem) = refused(&args(via, file, work.path()), work.path(), needle);
        slowest = slowest.max((started.elapsed(), format!("{} via {via:?}", file.display())));
        if let Some(problem) = problem {
            failures.push(format!("{} via {via:?}: {problem}", file.display()));
        }
    }
    eprintln!("{} cases; slowest {:.2} s ({})", cases.len(), slowest.0.as_secs_f64(), slowest.1);
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
