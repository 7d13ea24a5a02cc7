//! Remote updates end to end: a real nginx on 127.0.0.1 serves channels,
//! the real binary checks, applies, rolls back and hot-swaps, and every
//! fault leaves the device on its working model with one clear line.
//! The device id is in [`device`], staged rollouts in [`rollout`], HTTPS,
//! device identity and proxies in [`tls`].

mod device;
mod rollout;
mod tls;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgevit::channel::{self, Channel};
use edgevit::{SecretKey, CRASH_ENV, UPDATE_STEPS};
use edgevit_tests::*;

/// An nginx of its own for one test: prefix, logs and document root in a
/// temp dir, listening on free loopback ports: a plain HTTP server, and
/// any further servers (the TLS ones of [`tls`]) on the same document root.
struct Nginx {
    dir: tempfile::TempDir,
    port: u16,
    /// The further servers: name and port.
    servers: Vec<(String, u16)>,
    child: Child,
}

impl Nginx {
    fn start() -> Nginx {
        Nginx::with_servers(&[])
    }

    /// With further `server` blocks, each a name and the directives that
    /// follow its `listen 127.0.0.1:PORT` (`ssl;` and certificates for TLS).
    fn with_servers(blocks: &[(&str, String)]) -> Nginx {
        let exe = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is not installed: tools/test.sh installs it (apt-get install nginx)");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("www")).unwrap();
        std::fs::create_dir_all(d.join("tmp")).unwrap();
        let port = free_port();
        let servers: Vec<(String, u16)> =
            blocks.iter().map(|(name, _)| (name.to_string(), free_port())).collect();
        let extra: String = servers
            .iter()
            .zip(blocks)
            .map(|((_, port), (_, directives))| {
                format!("    server {{\n        listen 127.0.0.1:{port} {directives}\n        root {}/www;\n    }}\n", d.display())
            })
            .collect();
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 { "user root root;" } else { "" };
        let conf = format!(
            r#"{user}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format ranges '$request_uri $status $body_bytes_sent "$http_range"';
    access_log {d}/access.log ranges;
    log_format devices '$request_uri $status "$http_x_edgevit_device"';
    access_log {d}/devices.log devices;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        location ~ ^/error500/.*\.tar$ {{ return 500; }}
        location ~ ^/stall/.*\.tar$ {{ limit_rate_after 64k; limit_rate 1; }}
    }}
{extra}}}
"#,
            d = d.display()
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let child = Command::new(exe)
            .args(["-p", &d.display().to_string(), "-e", &d.join("error.log").display().to_string(), "-c"])
            .arg(d.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Nginx { dir, port, servers, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in std::iter::once(port).chain(nginx.servers.iter().map(|s| s.1)) {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "nginx did not start:\n{}", nginx.log("error.log"));
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        nginx
    }

    /// The port of the further server `name`.
    fn port_of(&self, name: &str) -> u16 {
        self.servers.iter().find(|s| s.0 == name).unwrap_or_else(|| panic!("no server {name}")).1
    }

    /// A served directory, created empty.
    fn site(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("www").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn channel_url(&self, site: &str) -> String {
        format!("http://127.0.0.1:{}/{site}/channel.toml", self.port)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new bundle directory: the shipped model as version `version`, after `edit`.
fn bundle_version(tmp: &Path, version: u64, edit: impl FnOnce(&Path)) -> PathBuf {
    let dir = tempfile::Builder::new().prefix(&format!("bundle-v{version}-")).tempdir_in(tmp).unwrap().keep();
    copy_dir(&repo(FP32_BUNDLE), &dir);
    edit(&dir);
    rewrite_manifest(&dir, |m| m.version = version);
    dir
}

fn publish(bundle: &Path, site: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["update", "publish", "--bundle"];
    let (bundle, site) = (bundle.display().to_string(), site.display().to_string());
    args.extend([bundle.as_str(), "--key", DEV_KEY, "--out", site.as_str()]);
    args.extend(extra);
    edgevit(args)
}

/// `edgevit update VERB` on `state`, trusting only the development key.
fn update(verb: &str, state: &Path, channel: Option<&str>, extra: &[&str]) -> Run {
    let mut args = vec!["update".to_string(), verb.to_string()];
    if let Some(url) = channel {
        args.extend(["--channel".into(), url.into()]);
    }
    args.extend(["--state-dir".into(), state.display().to_string()]);
    if verb != "status" {
        args.extend(["--trust", DEV_PUB, "--trust-dir", "/nonexistent"].map(String::from));
        if matches!(verb, "check" | "apply") && !extra.contains(&"--ca-dir") {
            args.extend(["--ca-dir", "/nonexistent"].map(String::from));
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    edgevit(args)
}

fn status(state: &Path) -> serde_json::Value {
    serde_json::from_str(update("status", state, None, &["--json"]).ok().stdout.trim()).unwrap()
}

/// A device with v1 installed from the `v1` site.
fn device_on_v1(nginx: &Nginx, tmp: &Path) -> PathBuf {
    let site = nginx.site("v1");
    if !site.join(channel::CHANNEL).exists() {
        publish(&repo(FP32_BUNDLE), &site, &[]).ok();
    }
    let state = tempfile::Builder::new().prefix("state-").tempdir_in(tmp).unwrap().keep();
    let run = update("apply", &state, Some(&nginx.channel_url("v1")), &[]);
    assert!(run.ok().stdout.contains("installed fmnist-vit-ggem v1 in slot a"), "{}", run.stdout);
    state
}

/// The device still runs v1 from slot a: status says so and it classifies
/// the first sample as the golden file does.
fn assert_on_v1(state: &Path) {
    let s = status(state);
    assert_eq!((s["active"].as_str(), s["installed"].as_u64()), (Some("a"), Some(1)), "{s}");
    assert_classifies(state, 1);
}

fn assert_classifies(state: &Path, version: u64) {
    let sample = samples()[0].display().to_string();
    let state = state.display().to_string();
    let run = edgevit(["classify", "--json", "--state-dir", &state, "--trust", DEV_PUB, &sample]);
    let line = &run.ok().json_lines()[0];
    assert_eq!(line["version"].as_u64(), Some(version), "{line}");
    let golden = manifest(&repo(FP32_BUNDLE)).golden.unwrap();
    assert_eq!(line["top_k"][0]["class"].as_u64(), Some(golden.top1[0] as u64), "{line}");
}

/// Publishes v2 on `site` and returns the site, the tarball and its size.
fn site_with_v2(nginx: &Nginx, tmp: &Path, name: &str) -> (PathBuf, PathBuf) {
    let site = nginx.site(name);
    publish(&bundle_version(tmp, 2, |_| {}), &site, &[]).ok();
    let tar = site.join("fmnist-vit-ggem-2.tar");
    (site, tar)
}

/// An apply of the `name` site that must fail with `needle`, leaving v1 in place.
fn apply_fails(nginx: &Nginx, state: &Path, name: &str, extra: &[&str], needle: &str) {
    update("apply", state, Some(&nginx.channel_url(name)), extra).fails_with(needle);
    assert_on_v1(state);
    let error = status(state)["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains(needle), "state.toml last_error {error:?} lacks {needle:?}");
}

#[test]
fn publish_check_apply_status_and_rollback() {
    let nginx = Nginx::start();
    let tmp = tempfile::tempdir().unwrap();
    let state = device_on_v1(&nginx, tmp.path());
    assert_on_v1(&state);
    site_with_v2(&nginx, tmp.path(), "v2");
    let url = nginx.channel_url("v2");

    let check = update("check", &state, Some(&url), &[]);
    assert!(check.ok().stdout.starts_with("update available: fmnist-vit-ggem v2"), "{}", check.stdout);
    let apply = update("apply", &state, Some(&url), &[]);
    assert!(
        apply.ok().stdout.starts_with("installed fmnist-vit-ggem v2 in slot b (was v1)"),
        "{}",
        apply.stdout
    );
    let s = status(&state);
    assert_eq!((s["active"].as_str(), s["installed"].as_u64()), (Some("b"), Some(2)), "{s}");
    assert_eq!((s["last_good"].as_str(), s["last_good_version"].as_u64()), (Some("a"), Some(1)), "{s}");
    assert_classifies(&state, 2);
    assert!(update("status", &state, None, &[]).ok().stdout.contains("active       slot b, v2"));
    assert!(update("apply", &state, Some(&url), &[])
        .ok()
        .stdout
        .starts_with("up to date: fmnist-vit-ggem v2"));

    let back = update("rollback", &state, None, &[]);
    assert!(back.ok().stdout.contains("to slot a (fmnist-vit-ggem v1)"), "{}", back.stdout);
    assert_on_v1(&state);
    assert_eq!(status(&state)["rolled_back"].as_u64(), Some(2));
    // The channel still offers v2: it stays rolled back until a newer version.
    let again = update("apply", &state, Some(&url), &[]);
    assert!(again.ok().stdout.contains("rolled back here"), "{}", again.stdout);
    assert_on_v1(&state);
}

#[test]
fn download_faults_leave_the_active_model() {
    let nginx = Nginx::start();
    let tmp = tempfile::tempdir().unwrap();
    let state = device_on_v1(&nginx, tmp.path());

    let (_, tar) = site_with_v2(&nginx, tmp.path(), "truncated");
    let size = std::fs::metadata(&tar).unwrap().len();
    let bytes = std::fs::read(&tar).unwrap();
    std::fs::write(&tar, &bytes[..bytes.len() / 2]).unwrap();
    let needle = format!("expected {size} bytes (from the channel) but the server has {}", size / 2);
    apply_fails(&nginx, &state, "truncated", &[], &needle);

    let (_, tar) = site_with_v2(&nginx, tmp.path(), "flipped");
    let mut bytes = std::fs::read(&tar).unwrap();
    bytes[2000] ^= 0x01;
    std::fs::write(&tar, &bytes).unwrap();
    apply_fails(&nginx, &state, "flipped", &[], "but the download has");

    let (_, tar) = site_with_v2(&nginx, tmp.path(), "larger");
    let mut bytes = std::fs::read(&tar).unwrap();
    bytes.extend([0u8; 512]);
    std::fs::write(&tar, &bytes).unwrap();
    let needle = format!("expected {size} bytes (from the channel) but the server has {}", size + 512);
    apply_fails(&nginx, &state, "larger", &[], &needle);

    site_with_v2(&nginx, tmp.path(), "error500");
    apply_fails(&nginx, &state, "error500", &[], "server answered HTTP 500");

    site_with_v2(&nginx, tmp.path(), "stall");
    apply_fails(&nginx, &state, "stall", &["--stall-timeout", "1s", "--timeout", "4s"], "timed out");
    // The staging file of the stalled download stays for a resume.
    let staged: Vec<_> = std::fs::read_dir(state.join("staging")).unwrap().collect();
    assert_eq!(staged.len(), 1);
}

#[test]
fn signature_expiry_and_replay_are_refused() {
    let nginx = Nginx::start();
    let tmp = tempfile::tempdir().unwrap();
    let state = device_on_v1(&nginx, tmp.path());
    let other = tmp.path().join("other");
    let stem = other.display().to_string();
    edgevit(["bundle", "keygen", "--out", &stem]).ok();
    let (other_key, other_pub) = (format!("{stem}.key"), format!("{stem}.pub"));

    // Channel signed by a key the device does not trust.
    let site = nginx.site("untrusted-channel");
    let v2 = bundle_version(tmp.path(), 2, |_| {});
    let out = site.display().to_string();
    let v2 = v2.display().to_string();
    edgevit(["update", "publish", "--bundle", &v2, "--key", &other_key, "--trust", DEV_PUB, "--out", &out])
        .ok();
    apply_fails(&nginx, &state, "untrusted-channel", &[], "channel.sig does not verify with any trusted key");

    // Channel signed by the trusted key, bundle by another one.
    let site = nginx.site("untrusted-bundle");
    let v2 = bundle_version(tmp.path(), 2, |_| {});
    let key = SecretKey::load(Path::new(&other_key)).unwrap();
    edgevit::sign_dir(&v2, &key).unwrap();
    publish(&v2, &site, &["--trust", &other_pub]).ok();
    apply_fails(&nginx, &state, "untrusted-bundle", &[], "manifest.sig does not verify with any trusted key");

    // Expired channel.
    let site = nginx.site("expired");
    publish(&bundle_version(tmp.path(), 2, |_| {}), &site, &["--expires", "0s"]).ok();
    apply_fails(&nginx, &state, "expired", &[], "but it expired at");

    // Replay: after v2, the old v1 channel is served again.
    site_with_v2(&nginx, tmp.path(), "replay");
    let url = nginx.channel_url("replay");
    update("apply", &state, Some(&url), &[]).ok();
    let v1 = nginx.site("v1");
    for name in [channel::CHANNEL, channel::CHANNEL_SIG, "fmnist-vit-ggem-1.tar"] {
        std::fs::copy(v1.join(name), nginx.site("replay").join(name)).unwrap();
    }
    update("apply", &state, Some(&url), &[])
        .fails_with("expected a version newer than v2 (installed v2) but the channel offers v1");
    assert_eq!(status(&state)["installed"].as_u64(), Some(2));
    assert_classifies(&state, 2);
}

/// One tar entry with a raw name, written without the `tar` crate's path
/// checks, which would refuse the hostile names these tests need.
fn raw_entry(builder: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, data: &[u8], link: &str) {
    let mut header = tar::Header::new_gnu();
    let gnu = header.as_gnu_mut().unwrap();
    gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(kind);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

#[test]
fn hostile_tarballs_are_refused_before_anything_is_written() {
    let nginx = Nginx::start();
    let tmp = tempfile::tempdir().unwrap();
    let state = device_on_v1(&nginx, tmp.path());
    let v2 = bundle_version(tmp.path(), 2, |_| {});
    let key = SecretKey::load(&repo(DEV_KEY)).unwrap();
    let cases: [(&str, &str, tar::EntryType, &str, &str); 3] = [
        ("dotdot", "../../escaped", tar::EntryType::Regular, "", "not a plain relative path"),
        ("absolute", "/tmp/edgevit-escaped", tar::EntryType::Regular, "", "not a plain relative path"),
        ("symlink", "model-link", tar::EntryType::Symlink, "/etc/passwd", "not a link or device"),
    ];
    for (site_name, evil, kind, link, needle) in cases {
        let mut builder = tar::Builder::new(Vec::new());
        for name in [
            "manifest.toml",
            "manifest.sig",
            "model.onnx",
            "labels.txt",
            "golden/input.bin",
            "golden/logits.bin",
        ] {
            raw_entry(
                &mut builder,
                name,
                tar::EntryType::Regular,
                &std::fs::read(v2.join(name)).unwrap(),
                "",
            );
        }
        raw_entry(&mut builder, evil, kind, b"payload", link);
        let bytes = builder.into_inner().unwrap();
        let site = nginx.site(site_name);
        std::fs::write(site.join("evil.tar"), &bytes).unwrap();
        let c = Channel {
            format: channel::FORMAT,
            name: "fmnist-vit-ggem".into(),
            version: 2,
            bundle: "evil.tar".into(),
            size: bytes.len() as u64,
            sha256: edgevit::sha256_hex(&bytes),
            expires: "2099-01-01T00:00:00Z".into(),
            rollout: None,
            rollout_devices: Vec::new(),
        };
        channel::write(&site, &c, &key).unwrap();
        apply_fails(&nginx, &state, site_name, &[], needle);
    }
    assert!(!Path::new("/tmp/edgevit-escaped").exists());
    assert!(!state.parent().unwrap().join("escaped").exists());
    assert!(!state.join("escaped").exists());
}

#[test]
fn a_failing_health_check_keeps_the_old_model() {
    let nginx = Nginx::start();
    let tmp = tempfile::tempdir().unwrap();
    let state = device_on_v1(&nginx, tmp.path());
    let site = nginx.site("unhealthy");
    // Reference logits off by 1.0: the model no longer reproduces them.
    let v2 = bundle_version(tmp.path(), 2, |dir| {
        let path = dir.join("golden/logits.bin");
        let shifted: Vec<f32> = read_f32s(&path).iter().map(|v| v + 1.0).collect();
        std::fs::write(&path, edgevit::f32_bytes(&shifted)).unwrap();
    });
    publish(&v2, &site, &[]).ok();
    apply_fails(
        &nginx,
        &state,
        "unhealthy",
        &[],
        "health check of fmnist-vit-ggem v2 (still on v1): golden top-1",
    );
    assert!(!state.join("slots/b").exists(), "a failed bundle must not take a slot");
}

/// A tmpfs of `bytes` mounted at `path` for the guard's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, bytes: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).unwrap();
        let target = std::ffi::CString::new(path.display().to_string()).unwrap();
        let options = std::ffi::CString::new(format!("size={bytes}")).unwrap();
        // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, options.as_ptr().cast())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(Tmpfs(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.0.display().to_string()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn a_full_disk_during_unpack_keeps_the_old_model() {
    let nginx = Nginx::start();
    let tmp = tempfile::tempdir().unwrap();
    let (_, tar) = site_with_v2(&nginx, tmp.path(), "diskfull");
    let tar_size = std::fs::metadata(&tar).unwrap().len();
    let slot_size: u64 =
        ["model.onnx", "labels.txt", "golden/input.bin", "golden/logits.bin", "manifest.toml"]
            .iter()
            .map(|f| std::fs::metadata(repo(FP32_BUNDLE).join(f)).unwrap().len())
            .sum();
    // Room for slot a and the staged tarball, but not a second slot beside them.
    let size = (slot_size + tar_size + slot_size / 2).next_multiple_of(4096);
    let mount_point = tmp.path().join("disk");
    let _disk = match Tmpfs::mount(&mount_point, size) {
        Ok(m) => m,
        // SAFETY: geteuid has no preconditions.
        Err(e) if unsafe { libc::geteuid() } != 0 => {
            skip(format!("mounting a tmpfs needs root ({e}); tools/test.sh runs this as root in CI"));
            return;
        }
        Err(e) => panic!("cannot mount a tmpfs at {}: {e}", mount_point.display()),
    };
    let state = mount_point.join("state");
    publish(&repo(FP32_BUNDLE), &nginx.site("v1"), &[]).ok();
    update("apply", &state, Some(&nginx.channel_url("v1")), &[]).ok();
    apply_fails(&nginx, &state, "diskfull", &[], "No space left on device");
    assert!(!state.join("slots/.incoming").exists());
}

#[test]
fn a_cut_download_resumes_from_its_offset() {
    let nginx = Nginx::start();
    a_cut_download_resumes(&nginx, &nginx.channel_url("resume"), &[]);
}

/// Kills an apply of the `resume` site's v2, served at `url`, halfway
/// through the download; the next apply fetches only the rest.
fn a_cut_download_resumes(nginx: &Nginx, url: &str, extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let state = device_on_v1(nginx, tmp.path());
    let (_, tar) = site_with_v2(nginx, tmp.path(), "resume");
    let size = std::fs::metadata(&tar).unwrap().len();
    let killed = apply_crashing_at(&state, url, "download-halfway", extra);
    assert_eq!(killed.signal(), Some(libc::SIGKILL), "the agent was not killed halfway");
    let staged: Vec<PathBuf> =
        std::fs::read_dir(state.join("staging")).unwrap().map(|e| e.unwrap().path()).collect();
    let have = std::fs::metadata(&staged[0]).unwrap().len();
    assert!(have >= size / 2 && have < size, "staged {have} of {size}");

    let run = update("apply", &state, Some(url), extra);
    let expected = format!("fetched {} bytes, resuming from byte {have}", size - have);
    assert!(run.ok().stdout.contains(&expected), "{}", run.stdout);
    let log = nginx.log("access.log");
    let last = log.lines().rfind(|l| l.starts_with("/resume/fmnist-vit-ggem-2.tar")).unwrap();
    assert_eq!(last, format!("/resume/fmnist-vit-ggem-2.tar 206 {} \"bytes={have}-\"", size - have));
    assert_classifies(&state, 2);
}

fn apply_crashing_at(state: &Path, url: &str, step: &str, extra: &[&str]) -> std::process::ExitStatus {
    without_proxies(&mut Command::new(binary()))
        .args(["update", "apply", "--channel", url, "--state-dir"])
        .arg(state)
        .args(["--trust", DEV_PUB, "--trust-dir", "/nonexistent", "--ca-dir", "/nonexistent"])
        .args(extra)
        .current_dir(root())
        .env(CRASH_ENV, step)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
}

/// Copies a state directory, links included.
fn copy_state(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &to).unwrap();
        } else if kind.is_dir() {
            copy_state(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

#[test]
fn a_kill_at_any_step_of_apply_leaves_a_working_device() {
    let nginx = Nginx::start();
    let tmp = tempfile::tempdir().unwrap();
    let template = device_on_v1(&nginx, tmp.path());
    site_with_v2(&nginx, tmp.path(), "crash");
    let url = nginx.channel_url("crash");
    for step in UPDATE_STEPS {
        for round in 0..5 {
            let state = tmp.path().join(format!("crash-{step}-{round}"));
            copy_state(&template, &state);
            let killed = apply_crashing_at(&state, &url, step, &[]);
            assert_eq!(killed.signal(), Some(libc::SIGKILL), "step {step} was not reached");
            let s = status(&state);
            let version = s["installed"].as_u64().unwrap();
            assert!(version == 1 || version == 2, "after a kill at {step}: {s}");
            assert_classifies(&state, version);
            update("apply", &state, Some(&url), &[]).ok();
            assert_eq!(status(&state)["installed"].as_u64(), Some(2), "after a kill at {step}");
            assert_classifies(&state, 2);
        }
    }
}

#[test]
fn a_bundle_that_fails_to_load_falls_back_to_the_last_good_slot() {
    let nginx = Nginx::start();
    let tmp = tempfile::tempdir().unwrap();
    let state = device_on_v1(&nginx, tmp.path());
    site_with_v2(&nginx, tmp.path(), "v2");
    update("apply", &state, Some(&nginx.channel_url("v2")), &[]).ok();
    let model = state.join("slots/b/model.onnx");
    let mut bytes = std::fs::read(&model).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&model, &bytes).unwrap();

    let out = Command::new(binary())
        .args(["classify", "--state-dir"])
        .arg(&state)
        .args(["--trust", DEV_PUB])
        .arg(&samples()[0])
        .current_dir(root())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("slot b failed to load") && stderr.contains("running slot a (v1)"), "{stderr}");
    let s = status(&state);
    assert_eq!(s["active"].as_str(), Some("a"), "{s}");
    assert!(s["last_error"].as_str().unwrap().contains("slot b failed to load"), "{s}");
    assert_on_v1(&state);
}

#[test]
fn run_swaps_in_a_new_version_between_frames() {
    let nginx = Nginx::start();
    let tmp = tempfile::tempdir().unwrap();
    let state = device_on_v1(&nginx, tmp.path());
    let site = nginx.site("hot");
    publish(&repo(FP32_BUNDLE), &site, &[]).ok();
    let mut child = without_proxies(&mut Command::new(binary()))
        .args(["run", "pattern://", "null://", "--json", "--input-rate", "30", "--state-dir"])
        .arg(&state)
        .args([
            "--trust",
            DEV_PUB,
            "--trust-dir",
            "/nonexistent",
            "--update-interval",
            "1s",
            "--update-channel",
        ])
        .arg(nginx.channel_url("hot"))
        .current_dir(root())
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut frames: Vec<(u64, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut published = false;
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        frames.push((v["frame"].as_u64().unwrap(), v["version"].as_u64().unwrap()));
        if frames.len() == 30 && !published {
            publish(&bundle_version(tmp.path(), 2, |_| {}), &site, &[]).ok();
            published = true;
        }
        if frames.iter().filter(|f| f.1 == 2).count() >= 30 {
            break;
        }
    }
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let first_v2 = frames.iter().position(|f| f.1 == 2).expect("no frame ran on v2");
    assert!(first_v2 >= 30, "v2 before it was published");
    assert!(frames[..first_v2].iter().all(|f| f.1 == 1) && frames[first_v2..].iter().all(|f| f.1 == 2));
    let gap = frames[first_v2].0 - frames[first_v2 - 1].0;
    assert!(gap <= 2, "{} frames skipped at the swap: {:?}", gap - 1, &frames[first_v2 - 3..first_v2 + 3]);
    assert_eq!(status(&state)["installed"].as_u64(), Some(2));
}
