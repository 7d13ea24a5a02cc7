//! Helpers for the end-to-end tests: the real `edgevit` binary, built from
//! the same profile as the tests, the repository's fixtures, and ways to
//! damage bundles on purpose.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use edgevit::{file_entry, Manifest, SecretKey, MANIFEST, SIGNATURE};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repository").to_path_buf()
}

/// A path relative to the repository root.
pub fn repo(rel: &str) -> PathBuf {
    root().join(rel)
}

pub const DEV_KEY: &str = "models/keys/dev-test-only.key";
pub const DEV_PUB: &str = "models/keys/dev-test-only.pub";
pub const FP32_BUNDLE: &str = "models/fmnist-vit-ggem";
pub const INT8_BUNDLE: &str = "models/fmnist-vit-ggem-int8";
pub const SAMPLES: &str = "models/samples/fashion-mnist";
pub const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The `edgevit` binary of this build profile, built on first use so the
/// tests never run a stale one.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps layout");
        let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("profile dir name");
        let target_dir = profile_dir.parent().expect("target dir");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // The testing feature, as this crate's dependency on edgevit has:
        // the same features as the test build, so nothing is built twice.
        cmd.args(["build", "--quiet", "-p", "edgevit", "--bin", "edgevit", "--features", "testing"])
            .arg("--target-dir")
            .arg(target_dir);
        if profile != "debug" {
            cmd.args(["--profile", profile]);
        }
        let status = cmd.current_dir(root()).status().expect("run cargo build");
        assert!(status.success(), "cargo build of edgevit failed");
        profile_dir.join("edgevit")
    })
}

/// How a test says it cannot run here: `skipped: <why>` on stderr, then
/// the test returns and passes. Only for what this machine lacks (a GPU,
/// root), never to hide a failure: where the hardware is present, the test
/// runs.
pub fn skip(why: impl std::fmt::Display) {
    eprintln!("skipped: {why}");
}

/// What a finished `edgevit` run printed.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "edgevit failed:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// Asserts the failure contract: non-zero exit, no panic, and exactly one
    /// `edgevit: ` line on stderr that contains `needle`.
    pub fn fails_with(&self, needle: &str) -> &Self {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a failure, got {:?}:\n{}",
            self.code,
            self.stdout
        );
        assert!(!self.stderr.contains("panicked"), "panic:\n{}", self.stderr);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one error line, got:\n{}", self.stderr);
        assert!(lines[0].starts_with("edgevit: "), "unprefixed error: {}", lines[0]);
        assert!(lines[0].contains(needle), "expected {needle:?} in: {}", lines[0]);
        self
    }

    /// The stdout lines parsed as JSON objects.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect()
    }
}

/// Runs `edgevit` with `args` from the repository root.
pub fn edgevit<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    edgevit_env(args, &[])
}

/// The proxy variables edgevit reads; the tests' runs see only those a test sets.
const PROXY_VARS: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// `command` without the proxies of the machine the tests run on.
pub fn without_proxies(command: &mut Command) -> &mut Command {
    for var in PROXY_VARS {
        command.env_remove(var);
    }
    command
}

/// Runs `edgevit` with `args` and the environment variables `env` (which
/// may set `RUST_LOG`, `error` otherwise).
pub fn edgevit_env<I, S>(args: I, env: &[(&str, &str)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = without_proxies(&mut Command::new(binary()))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "error")
        .envs(env.iter().copied())
        .output()
        .expect("run edgevit");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Copies a bundle directory tree into `dst`.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// Reads a bundle directory's manifest.
pub fn manifest(dir: &Path) -> Manifest {
    toml::from_str(&std::fs::read_to_string(dir.join(MANIFEST)).unwrap()).unwrap()
}

/// Rewrites the manifest with `edit`, refreshes every listed file's size and
/// sha256, and signs it with the development key, so that a test reaches the
/// check it means to exercise rather than the hash or signature check.
pub fn rewrite_manifest(dir: &Path, edit: impl FnOnce(&mut Manifest)) {
    let mut m = manifest(dir);
    edit(&mut m);
    for (name, entry) in m.files.iter_mut() {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            *entry = file_entry(&bytes);
        }
    }
    write_signed_manifest(dir, toml::to_string(&m).unwrap().as_bytes());
}

/// Writes raw manifest bytes and a development-key signature over them.
pub fn write_signed_manifest(dir: &Path, bytes: &[u8]) {
    std::fs::write(dir.join(MANIFEST), bytes).unwrap();
    let key = SecretKey::load(&repo(DEV_KEY)).unwrap();
    std::fs::write(dir.join(SIGNATURE), format!("{}\n", hex(&key.sign(bytes).to_bytes()))).unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Little-endian f32 values of a file.
pub fn read_f32s(path: &Path) -> Vec<f32> {
    edgevit::f32s(&std::fs::read(path).unwrap())
}

/// The shipped sample images, in name order.
pub fn samples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo(SAMPLES))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    files.sort();
    files
}

/// The resident memory of process `pid`, in bytes (0 once it has gone).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits up to `within` for something to listen on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, within: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

/// An `edgevit` run in the background, killed when dropped. Its stdout
/// lines arrive on `lines`; its stderr is kept for [`Background::finish`].
pub struct Background {
    pub child: std::process::Child,
    pub lines: std::sync::mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Background {
    /// The longest [`Background::finish`] waits for the run to end.
    pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

    /// Starts `edgevit` with `args` (and `RUST_LOG=error` unless `env` sets it).
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Background {
        use std::io::{BufRead, Read};
        use std::process::Stdio;
        let mut child = without_proxies(&mut Command::new(binary()))
            .args(args)
            .current_dir(root())
            .env("RUST_LOG", "error")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start edgevit");
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Background { child, lines, stderr: Some(stderr) }
    }

    /// The process's resident memory, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.child.id())
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: a plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// Waits for the exit, at most [`Background::MAX_WAIT`] (then the run
    /// is killed and the test fails with its stderr): its code, the stdout
    /// lines not yet received, and stderr.
    pub fn finish(mut self) -> Run {
        let deadline = std::time::Instant::now() + Self::MAX_WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr.take().unwrap().join().unwrap();
                panic!("edgevit still ran after {} s:\n{stderr}", Self::MAX_WAIT.as_secs());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let stdout: Vec<String> = self.lines.iter().collect();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        Run { code: status.code(), stdout: stdout.join("\n"), stderr }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET (or any `method`) of `path` on 127.0.0.1:`port`, read to the end:
/// the status line, the header lines and the body.
pub fn http(port: u16, method: &str, path: &str) -> (String, Vec<String>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("read the response");
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let mut lines = head.lines().map(String::from);
    let status = lines.next().unwrap_or_default();
    (status, lines.collect(), all[end + 4..].to_vec())
}
