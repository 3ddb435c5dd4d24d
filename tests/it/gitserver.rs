//! The loopback Git servers of the test harness, checked with the real `git` CLI: clone and push over
//! smart HTTP and HTTPS (with and without Basic auth, protocol v0 and v2, chunked pushes) and clone
//! over SSH.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::gitserver::{GitHttp, GitSsh, ssh_keypair};

/// The project at the root of `url` at `rev`, fetched without credentials into `scratch`.
fn fetch_anonymous(
    url: &str,
    rev: &lockstep::source::git::Revision,
    scratch: &Path,
) -> Result<lockstep::source::git::Fetched, lockstep::source::git::GitError> {
    lockstep::source::git::fetch(
        url,
        rev,
        ".",
        &lockstep::source::git::Auth::None,
        scratch,
        None,
        None,
        &std::sync::atomic::AtomicBool::new(false),
    )
}

/// Runs `git` in `dir` with an isolated configuration and no prompts; `env` adds variables.
fn git_env(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let home = dir.join(".git-home");
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .args(args)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "")
        .env("SSH_ASKPASS", "")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com");
    // Trust only what a test hands over explicitly.
    for var in [
        "GIT_SSL_NO_VERIFY",
        "GIT_SSL_CAINFO",
        "GIT_SSL_CAPATH",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run git")
}

/// Runs `git` and panics with its stderr when it fails.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_env(dir, &[], args);
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A temp dir with `served/shop.git`, a bare repository with one commit (`app.yaml`) that accepts pushes
/// over HTTP, and a `work` directory for clones.
struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let seed = tmp.path().join("seed");
        std::fs::create_dir_all(&seed).unwrap();
        std::fs::create_dir_all(tmp.path().join("served")).unwrap();
        std::fs::create_dir_all(tmp.path().join("work")).unwrap();
        git(&seed, &["init", "-q", "-b", "main"]);
        std::fs::write(seed.join("app.yaml"), "replicas: 1\n").unwrap();
        git(&seed, &["add", "."]);
        git(&seed, &["commit", "-q", "-m", "first"]);
        let bare = tmp.path().join("served/shop.git");
        git(
            tmp.path(),
            &["clone", "-q", "--bare", "seed", bare.to_str().unwrap()],
        );
        git(&bare, &["config", "http.receivepack", "true"]);
        Fixture { tmp }
    }

    fn served(&self) -> PathBuf {
        self.tmp.path().join("served")
    }

    fn work(&self) -> PathBuf {
        self.tmp.path().join("work")
    }

    fn head(&self) -> String {
        git(&self.served().join("shop.git"), &["rev-parse", "main"])
    }
}

/// Whether the server answered in protocol v2, from the `GIT_TRACE_PACKET` trace of a git command.
fn spoke_v2(out: &Output) -> bool {
    String::from_utf8_lossy(&out.stderr).contains("< version 2")
}

fn with_credentials(url: &str, user: &str, password: &str) -> String {
    url.replacen("://", &format!("://{user}:{password}@"), 1)
}

#[test]
fn http_clone_with_protocol_v0_and_v2() {
    let fx = Fixture::new();
    let server = GitHttp::start(&fx.served(), None);
    let url = server.url("shop.git");
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/shop.git"));

    for version in ["0", "2"] {
        let dest = format!("v{version}");
        let proto = format!("protocol.version={version}");
        let out = git_env(
            &fx.work(),
            &[("GIT_TRACE_PACKET", "1")],
            &["-c", &proto, "clone", "-q", &url, &dest],
        );
        support::assert_success(&out);
        assert_eq!(spoke_v2(&out), version == "2");
        let cloned = std::fs::read_to_string(fx.work().join(&dest).join("app.yaml")).unwrap();
        assert_eq!(cloned, "replicas: 1\n");
        assert_eq!(
            git(&fx.work().join(&dest), &["rev-parse", "HEAD"]),
            fx.head()
        );
    }

    let requests = server.requests();
    assert_eq!(requests.len(), server.request_count());
    assert!(requests.iter().all(|r| r.status == 200), "{requests:#?}");
    let v2: Vec<_> = requests
        .iter()
        .filter(|r| r.git_protocol.as_deref() == Some("version=2"))
        .collect();
    assert!(
        v2.iter()
            .any(|r| r.method == "POST" && r.path == "/shop.git/git-upload-pack"),
        "{requests:#?}"
    );
    assert!(
        requests.iter().any(|r| r.method == "GET"
            && r.path == "/shop.git/info/refs?service=git-upload-pack"
            && r.git_protocol.is_none()),
        "the v0 clone sends no Git-Protocol header: {requests:#?}"
    );

    // A repository that does not exist is a 404 and a failed clone.
    let out = git_env(
        &fx.work(),
        &[],
        &["clone", "-q", &server.url("missing.git"), "missing"],
    );
    assert!(!out.status.success());
    assert_eq!(server.requests().last().unwrap().status, 404);
}

/// Commits `replicas: N` in the clone, pushes it to origin with `env`, and checks the server has it.
fn push_replicas(fx: &Fixture, clone: &Path, env: &[(&str, &str)], replicas: u32) {
    std::fs::write(clone.join("app.yaml"), format!("replicas: {replicas}\n")).unwrap();
    git(
        clone,
        &["commit", "-q", "-am", &format!("{replicas} replicas")],
    );
    let out = git_env(clone, env, &["push", "-q", "origin", "main"]);
    support::assert_success(&out);
    assert_eq!(fx.head(), git(clone, &["rev-parse", "HEAD"]));
}

/// Clones each (name, url) with `git [pre…] clone` and expects every one to be refused for its
/// credentials, and every request the server saw to have been answered 401.
fn assert_refused(fx: &Fixture, server: &GitHttp, pre: &[&str], attempts: &[(&str, String)]) {
    for (name, url) in attempts {
        let mut args: Vec<&str> = pre.to_vec();
        args.extend(["clone", "-q", url.as_str(), name]);
        let out = git_env(&fx.work(), &[], &args);
        assert!(!out.status.success(), "{name} clone must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("Authentication failed") || stderr.contains("could not read"),
            "{name}: {stderr}"
        );
    }
    let requests = server.requests();
    assert!(!requests.is_empty() && requests.iter().all(|r| r.status == 401));
}

#[test]
fn http_basic_auth() {
    let fx = Fixture::new();
    let server = GitHttp::start(&fx.served(), Some(("deploy", "s3cret")));
    let url = server.url("shop.git");

    assert_refused(
        &fx,
        &server,
        &[],
        &[
            ("anonymous", url.clone()),
            ("wrong", with_credentials(&url, "deploy", "nope")),
            ("wronguser", with_credentials(&url, "other", "s3cret")),
        ],
    );

    server.clear_requests();
    git(
        &fx.work(),
        &[
            "clone",
            "-q",
            &with_credentials(&url, "deploy", "s3cret"),
            "right",
        ],
    );
    assert_eq!(
        git(&fx.work().join("right"), &["rev-parse", "HEAD"]),
        fx.head()
    );
    assert!(server.requests().iter().any(|r| r.status == 200));
}

#[test]
fn http_push_small_and_chunked() {
    let fx = Fixture::new();
    let server = GitHttp::start(&fx.served(), Some(("deploy", "s3cret")));
    let url = with_credentials(&server.url("shop.git"), "deploy", "s3cret");
    git(&fx.work(), &["clone", "-q", &url, "clone"]);
    let clone = fx.work().join("clone");

    push_replicas(&fx, &clone, &[], 2);

    // A pack larger than http.postBuffer (1 MiB) goes out as a chunked POST.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(clone.join("blob.bin"), noise).unwrap();
    git(&clone, &["add", "blob.bin"]);
    git(&clone, &["commit", "-q", "-m", "a large blob"]);
    git(&clone, &["push", "-q", "origin", "main"]);
    assert_eq!(fx.head(), git(&clone, &["rev-parse", "HEAD"]));

    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.method == "POST" && r.path == "/shop.git/git-receive-pack" && r.chunked),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.path.contains("receive-pack"))
            .all(|r| r.status == 200 || r.status == 401),
        "{requests:#?}"
    );
}

fn ssh_command(key: &Path, known_hosts: &Path) -> String {
    format!(
        "ssh -F /dev/null -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes \
         -o IdentitiesOnly=yes -o BatchMode=yes",
        key.display(),
        known_hosts.display()
    )
}

#[test]
fn ssh_clone_and_push() {
    let sshd = std::path::Path::new("/usr/sbin/sshd");
    need!(
        "sshd (openssh-server)",
        if sshd.is_file() {
            Ok(())
        } else {
            Err("/usr/sbin/sshd is missing".to_string())
        }
    );
    let fx = Fixture::new();
    let keys = fx.tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (private, public) = ssh_keypair(&keys);
    assert!(private.contains("OPENSSH PRIVATE KEY"));
    assert!(public.starts_with("ssh-ed25519 "));
    let (other_private, _) = ssh_keypair(&keys);
    assert_ne!(private, other_private);
    support::write_private(&keys.join("right"), &private);
    support::write_private(&keys.join("wrong"), &other_private);

    let server = GitSsh::start(&fx.served(), &public);
    let known_hosts = keys.join("known_hosts");
    std::fs::write(&known_hosts, format!("{}\n", server.known_hosts())).unwrap();
    assert!(
        server
            .known_hosts()
            .starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", server.port()))
    );
    let url = server.url("shop.git");
    assert!(url.starts_with(&format!("ssh://{}@127.0.0.1:", server.user())));
    assert!(url.ends_with("/served/shop.git"));

    let wrong = ssh_command(&keys.join("wrong"), &known_hosts);
    let out = git_env(
        &fx.work(),
        &[("GIT_SSH_COMMAND", &wrong)],
        &["clone", "-q", &url, "wrong"],
    );
    assert!(
        !out.status.success(),
        "a clone with the wrong key must fail"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An unknown host key is refused too.
    let empty_known_hosts = keys.join("empty_known_hosts");
    std::fs::write(&empty_known_hosts, "").unwrap();
    let unknown = ssh_command(&keys.join("right"), &empty_known_hosts);
    let out = git_env(
        &fx.work(),
        &[("GIT_SSH_COMMAND", &unknown)],
        &["clone", "-q", &url, "unknown"],
    );
    assert!(!out.status.success(), "an unknown host key must fail");

    let right = ssh_command(&keys.join("right"), &known_hosts);
    let env = [("GIT_SSH_COMMAND", right.as_str())];
    for version in ["0", "2"] {
        let dest = format!("v{version}");
        let proto = format!("protocol.version={version}");
        let out = git_env(
            &fx.work(),
            &[env[0], ("GIT_TRACE_PACKET", "1")],
            &["-c", &proto, "clone", "-q", &url, &dest],
        );
        assert!(
            out.status.success(),
            "ssh clone (v{version}) failed: {}\nsshd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        assert_eq!(spoke_v2(&out), version == "2");
        assert_eq!(
            git(&fx.work().join(&dest), &["rev-parse", "HEAD"]),
            fx.head()
        );
    }

    let clone = fx.work().join("v2");
    push_replicas(&fx, &clone, &env, 3);
    assert!(
        server.log().contains("Accepted publickey"),
        "{}",
        server.log()
    );
}

#[test]
fn https_clone_and_push_with_basic_auth() {
    let fx = Fixture::new();
    let server = GitHttp::start_tls(&fx.served(), Some(("deploy", "s3cret")));
    let url = server.url("shop.git");
    assert!(
        url.starts_with(&format!("https://127.0.0.1:{}/", server.port()))
            && url.ends_with("/shop.git"),
        "{url}"
    );
    let ca = server.ca_file().expect("an HTTPS server has a CA file");
    assert!(
        std::fs::read_to_string(ca)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let ca_info = format!("http.sslCAInfo={}", ca.display());
    let right = with_credentials(&url, "deploy", "s3cret");

    // Without the CA the handshake fails before any request is answered.
    let out = git_env(&fx.work(), &[], &["clone", "-q", &right, "untrusted"]);
    assert!(!out.status.success(), "a clone without the CA must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.to_ascii_lowercase().contains("certificate"),
        "{stderr}"
    );
    assert_eq!(server.request_count(), 0, "{:#?}", server.requests());

    assert_refused(
        &fx,
        &server,
        &["-c", &ca_info],
        &[
            ("anonymous", url.clone()),
            ("wrong", with_credentials(&url, "deploy", "nope")),
        ],
    );
    server.clear_requests();

    // The right credentials, with the CA from the configuration and then from the environment.
    for version in ["0", "2"] {
        let dest = format!("v{version}");
        let proto = format!("protocol.version={version}");
        let out = git_env(
            &fx.work(),
            &[("GIT_TRACE_PACKET", "1")],
            &["-c", &ca_info, "-c", &proto, "clone", "-q", &right, &dest],
        );
        support::assert_success(&out);
        assert_eq!(spoke_v2(&out), version == "2");
        assert_eq!(
            git(&fx.work().join(&dest), &["rev-parse", "HEAD"]),
            fx.head()
        );
    }
    let ca_env = [("GIT_SSL_CAINFO", ca.to_str().unwrap())];
    let out = git_env(&fx.work(), &ca_env, &["clone", "-q", &right, "env"]);
    support::assert_success(&out);

    let clone = fx.work().join("env");
    push_replicas(&fx, &clone, &ca_env, 4);
    let requests = server.requests();
    assert!(
        requests.iter().any(|r| r.method == "POST"
            && r.path == "/shop.git/git-receive-pack"
            && r.status == 200),
        "{requests:#?}"
    );
}

/// What a rustls client that trusts only `ca` (through the webpki verifier, as
/// rustls-platform-verifier does on Linux) gets for `GET /shop.git/info/refs` from `server_name`.
fn rustls_get_refs(server: &GitHttp, ca: &Path, server_name: &str, auth: &str) -> String {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::io::{Read as _, Write as _};
    use std::sync::Arc;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, auth);
    write!(
        tls,
        "GET /shop.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: {server_name}\r\n\
         Authorization: Basic {encoded}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)
        .expect("the server ends the TLS stream with close_notify");
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn https_certificate_satisfies_webpki() {
    let fx = Fixture::new();
    let server = GitHttp::start_tls(&fx.served(), Some(("deploy", "s3cret")));
    let ca = server.ca_file().unwrap();
    for name in ["127.0.0.1", "localhost"] {
        let answer = rustls_get_refs(&server, ca, name, "deploy:s3cret");
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "{name}: {answer}"
        );
        assert!(answer.contains("refs/heads/main"), "{name}: {answer}");
    }
    let answer = rustls_get_refs(&server, ca, "127.0.0.1", "deploy:nope");
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");

    // A plain-HTTP server has no CA and keeps its http:// URL.
    let plain = GitHttp::start(&fx.served(), None);
    assert!(plain.ca_file().is_none());
    assert!(plain.url("shop.git").starts_with("http://127.0.0.1:"));
}

/// A tag and a branch of the same name on different commits: each ref kind fetches its own commit,
/// over the real `git http-backend` (a branch must never stand in for a protected tag).
#[test]
fn a_tag_and_a_same_named_branch_each_fetch_their_own_commit() {
    use lockstep::source::git::Revision;
    let tmp = tempfile::tempdir().unwrap();
    let seed = seed_repo(tmp.path(), "project: p\n", "tagged");
    git(&seed, &["tag", "v1"]);
    let tagged = git(&seed, &["rev-parse", "HEAD"]);
    git(&seed, &["checkout", "-q", "-b", "v1"]);
    std::fs::write(seed.join("lockstep.yaml"), "project: pushed-to-a-branch\n").unwrap();
    git(&seed, &["commit", "-q", "-am", "branch"]);
    let branch = git(&seed, &["rev-parse", "HEAD"]);
    std::fs::create_dir_all(tmp.path().join("served")).unwrap();
    git(
        tmp.path(),
        &["clone", "-q", "--bare", "seed", "served/shop.git"],
    );
    let server = GitHttp::start(&tmp.path().join("served"), None);
    let fetch =
        |rev: Revision| fetch_anonymous(&server.url("shop.git"), &rev, &tmp.path().join("scratch"));
    let got = fetch(Revision::Tag("v1".into())).expect("the tag");
    assert_eq!(got.revision, tagged, "tag: v1 is the tag, not the branch");
    let got = fetch(Revision::Branch("v1".into())).expect("the branch");
    assert_eq!(got.revision, branch);
    // A name that is only a branch is no tag, and the other way round.
    git(&seed, &["branch", "only-branch", "main"]);
    git(&seed, &["tag", "only-tag", &tagged]);
    git(
        &tmp.path().join("served/shop.git"),
        &[
            "fetch",
            "-q",
            "../../seed",
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        ],
    );
    assert!(fetch(Revision::Tag("only-branch".into())).is_err());
    assert!(fetch(Revision::Branch("only-tag".into())).is_err());
}

/// A tree that points 80 times at one 1 MiB blob packs to almost nothing; reading it must stop at
/// the project budget instead of expanding it in memory (a "Git bomb").
#[test]
fn a_tree_of_many_entries_for_one_big_blob_is_refused_at_the_project_budget() {
    use lockstep::source::git::Revision;
    let tmp = tempfile::tempdir().unwrap();
    let seed = tmp.path().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "-q", "-b", "main"]);
    std::fs::write(tmp.path().join("zeros"), vec![0u8; 1024 * 1024]).unwrap();
    let zeros = tmp.path().join("zeros").to_string_lossy().into_owned();
    let oid = git(&seed, &["hash-object", "-w", &zeros]);
    for i in 0..80 {
        git(
            &seed,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("100644,{oid},templates/f{i}.yaml"),
            ],
        );
    }
    git(&seed, &["commit", "-q", "-m", "bomb"]);
    std::fs::create_dir_all(tmp.path().join("served")).unwrap();
    git(
        tmp.path(),
        &["clone", "-q", "--bare", "seed", "served/bomb.git"],
    );
    let server = GitHttp::start(&tmp.path().join("served"), None);
    let got = fetch_anonymous(
        &server.url("bomb.git"),
        &Revision::Default,
        &tmp.path().join("scratch"),
    );
    let e = got.err().expect("refused");
    assert!(
        e.to_string()
            .contains("the project is bigger than lockstep reads"),
        "{e}"
    );
}

/// Symbolic links inside the project are followed the same way by the Git reader (the controller)
/// and the directory reader (the CLI), and links out of the project by neither: the same commit
/// renders the same everywhere.
#[test]
fn symlinks_read_the_same_from_git_as_from_a_checkout() {
    use lockstep::source::Snapshot;
    use lockstep::source::git::Revision;
    let tmp = tempfile::tempdir().unwrap();
    let seed = tmp.path().join("seed");
    for dir in [
        "environments/dev",
        "environments/prod",
        "templates",
        "shared",
    ] {
        std::fs::create_dir_all(seed.join(dir)).unwrap();
    }
    std::fs::write(seed.join("lockstep.yaml"), "project: p\n").unwrap();
    std::fs::write(seed.join("environments/dev/values.yaml"), "replicas: 2\n").unwrap();
    std::fs::write(seed.join("shared/cm.yaml"), "kind: ConfigMap\n").unwrap();
    std::fs::write(tmp.path().join("outside.yaml"), "secret: elsewhere\n").unwrap();
    let link = |target: &str, at: &str| std::os::unix::fs::symlink(target, seed.join(at)).unwrap();
    link("../dev/values.yaml", "environments/prod/values.yaml");
    link("../shared", "templates/shared");
    link("../../outside.yaml", "templates/outside.yaml");
    git(&seed, &["init", "-q", "-b", "main"]);
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "-q", "-m", "links"]);
    std::fs::create_dir_all(tmp.path().join("served")).unwrap();
    git(
        tmp.path(),
        &["clone", "-q", "--bare", "seed", "served/links.git"],
    );
    let server = GitHttp::start(&tmp.path().join("served"), None);
    let fetched = fetch_anonymous(
        &server.url("links.git"),
        &Revision::Default,
        &tmp.path().join("scratch"),
    )
    .expect("fetch");
    let files = |s: &Snapshot| {
        s.under("")
            .map(|(p, b)| (p.to_string(), b.to_vec()))
            .collect::<Vec<_>>()
    };
    let from_git = files(&fetched.snapshot);
    let from_dir = files(&Snapshot::read_dir(&seed).expect("read the checkout"));
    assert_eq!(from_git, from_dir);
    let paths: Vec<&str> = from_git.iter().map(|(p, _)| p.as_str()).collect();
    assert!(
        paths.contains(&"environments/prod/values.yaml"),
        "{paths:?}"
    );
    assert!(paths.contains(&"templates/shared/cm.yaml"), "{paths:?}");
    assert!(!paths.iter().any(|p| p.contains("outside")), "{paths:?}");
}

/// The walk enters only the project's own entries: a repository with 100,000 files elsewhere
/// costs nothing, and directories nested past the walk's depth are refused, not followed.
#[test]
fn the_tree_walk_stays_inside_the_project_and_is_bounded() {
    use lockstep::source::git::{MAX_TREE_DEPTH, Revision};
    let tmp = tempfile::tempdir().unwrap();
    let seed = tmp.path().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "-q", "-b", "main"]);
    std::fs::write(tmp.path().join("one"), "x\n").unwrap();
    let one = tmp.path().join("one").to_string_lossy().into_owned();
    let oid = git(&seed, &["hash-object", "-w", &one]);
    let mut index: String = (0..100_000)
        .map(|i| format!("100644 {oid}\tdocs/d{}/f{i}.md\n", i % 100))
        .collect();
    index.push_str(&format!("100644 {oid}\tlockstep.yaml\n"));
    let deep: Vec<String> = (0..=MAX_TREE_DEPTH).map(|i| format!("d{i}")).collect();
    let feed = |text: &str| {
        let mut child = std::process::Command::new("git")
            .args(["update-index", "--index-info"])
            .current_dir(&seed)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    };
    feed(&index);
    git(&seed, &["commit", "-q", "-m", "wide"]);
    let wide = git(&seed, &["rev-parse", "HEAD"]);
    feed(&format!(
        "100644 {oid}\ttemplates/{}/f.yaml\n",
        deep.join("/")
    ));
    git(&seed, &["commit", "-q", "-m", "deep"]);
    std::fs::create_dir_all(tmp.path().join("served")).unwrap();
    git(
        tmp.path(),
        &["clone", "-q", "--bare", "seed", "served/walk.git"],
    );
    let server = GitHttp::start(&tmp.path().join("served"), None);
    let fetch =
        |rev: Revision| fetch_anonymous(&server.url("walk.git"), &rev, &tmp.path().join("scratch"));
    let fetched = fetch(Revision::Commit(wide)).expect("the wide commit");
    let paths: Vec<&str> = fetched.snapshot.under("").map(|(p, _)| p).collect();
    assert_eq!(paths, ["lockstep.yaml"]);
    let e = fetch(Revision::Default)
        .err()
        .expect("the deep commit is refused");
    assert!(e.to_string().contains("nested more than 64 deep"), "{e}");
}

/// An SSH source without credentials is refused before `ssh` runs: the host's agent, keys and
/// known_hosts play no part, and no unknown host key is ever trusted.
#[test]
fn anonymous_ssh_is_refused_before_connecting() {
    use lockstep::source::git::Revision;
    let tmp = tempfile::tempdir().unwrap();
    for url in ["ssh://git@127.0.0.1:9/r.git", "git@127.0.0.1:org/r.git"] {
        let got = fetch_anonymous(url, &Revision::Default, &tmp.path().join("scratch"));
        let e = got.err().expect("refused");
        assert!(
            e.to_string().contains("never trusts an unknown host key"),
            "{url}: {e}"
        );
    }
}

/// What `verify.mode: Tag` and `verify.requireFastForward` read from a fetch: the annotated tag
/// object (checked to point at the commit read), and whether the commit descends from an earlier
/// one — also when the earlier one lies deeper than the first, shallow fetch reaches.
#[test]
fn a_fetch_reports_the_tag_object_and_whether_the_commit_descends() {
    use lockstep::source::git::{ANCESTRY_DEPTH, Auth, Pin, Pinned, Revision, fetch};
    let tmp = tempfile::tempdir().unwrap();
    let seed = seed_repo(tmp.path(), "project: p\n", "first");
    let first = git(&seed, &["rev-parse", "HEAD"]);
    // More commits on top than the first, shallow fetch brings.
    let script: String = (0..ANCESTRY_DEPTH + 20)
        .map(|i| {
            format!(
                "commit refs/heads/main\ncommitter T <t@example.com> {} +0000\ndata 2\n{}\n\n",
                1_700_000_000 + i,
                i % 10
            )
        })
        .collect();
    let mut import = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(&seed)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("git fast-import");
    use std::io::Write as _;
    let mut stdin = import.stdin.take().unwrap();
    stdin
        .write_all(format!("reset refs/heads/main\nfrom {first}\n\n{script}").as_bytes())
        .unwrap();
    drop(stdin);
    assert!(import.wait().unwrap().success());
    git(&seed, &["reset", "-q", "--hard", "main"]);
    let tip = git(&seed, &["rev-parse", "HEAD"]);
    let middle = git(&seed, &["rev-parse", "HEAD~5"]);
    git(&seed, &["tag", "-a", "-m", "annotated", "v1"]);
    git(&seed, &["tag", "light"]);
    git(&seed, &["checkout", "-q", "-b", "other", &first]);
    std::fs::write(seed.join("lockstep.yaml"), "project: q\n").unwrap();
    git(&seed, &["commit", "-q", "-am", "diverged"]);
    let diverged = git(&seed, &["rev-parse", "HEAD"]);
    std::fs::create_dir_all(tmp.path().join("served")).unwrap();
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            "--mirror",
            "seed",
            "served/shop.git",
        ],
    );
    let server = GitHttp::start(&tmp.path().join("served"), None);
    let url = server.url("shop.git");
    let scratch = tmp.path().join("scratch");
    let got = |rev: Revision, from: Option<&str>| {
        fetch(
            &url,
            &rev,
            ".",
            &Auth::None,
            &scratch,
            from,
            None,
            &std::sync::atomic::AtomicBool::new(false),
        )
        .expect("fetch")
    };
    let pinned = |commit: &str, from: &str| {
        let pin = Pin {
            commit: commit.into(),
            from: from.into(),
        };
        fetch(
            &url,
            &Revision::Branch("main".into()),
            ".",
            &Auth::None,
            &scratch,
            None,
            Some(&pin),
            &std::sync::atomic::AtomicBool::new(false),
        )
    };
    let main = || Revision::Branch("main".into());
    assert_eq!(got(main(), None).descends, None, "not asked");
    assert_eq!(
        got(main(), Some(&tip)).descends,
        Some(true),
        "the same commit"
    );
    assert_eq!(
        got(main(), Some(&middle)).descends,
        Some(true),
        "within the first fetch"
    );
    assert_eq!(
        got(main(), Some(&first)).descends,
        Some(true),
        "deeper than {ANCESTRY_DEPTH}: found after fetching all history"
    );
    let other = got(Revision::Branch("other".into()), Some(&tip));
    assert_eq!(other.descends, Some(false), "a diverged branch");
    assert_eq!(got(main(), Some(&"0".repeat(40))).descends, Some(false));
    // The annotated tag's object comes along; a lightweight tag has none.
    let tagged = got(Revision::Tag("v1".into()), None);
    assert_eq!(tagged.revision, tip);
    let tag = tagged.tag.expect("a tag object");
    assert!(tag.starts_with(format!("object {tip}\ntype commit\ntag v1\n").as_bytes()));
    assert!(got(Revision::Tag("light".into()), None).tag.is_none());
    assert!(got(main(), None).tag.is_none());

    // A rollback's pin: the pinned commit is read while the tip is the one rolled back from —
    // also deeper than the first fetch reaches —, the tip once it descends from that one, and
    // the pinned commit still when the tip was rewritten (not newer).
    let held = pinned(&first, &tip).expect("held");
    assert_eq!(held.pinned, Some(Pinned::Held { rewritten: None }));
    assert_eq!(held.revision, first);
    assert_eq!(held.descends, None);
    let ended = pinned(&first, &middle).expect("ended");
    assert_eq!(ended.pinned, Some(Pinned::Ended));
    assert_eq!(ended.revision, tip);
    let rewritten = pinned(&first, &diverged).expect("rewritten");
    assert_eq!(
        rewritten.pinned,
        Some(Pinned::Held {
            rewritten: Some(tip.clone())
        })
    );
    assert_eq!(rewritten.revision, first);
    let elsewhere = pinned(&diverged, &tip)
        .err()
        .expect("not in main's history");
    assert!(
        elsewhere
            .to_string()
            .contains("is not in the history of branch main"),
        "{elsewhere}"
    );
    assert!(
        scratch.join("objects").is_dir(),
        "the cache is kept, one for the URL whatever the ref"
    );
}

/// The cache a fetch keeps per URL: a poll with nothing new is only the ref advertisement (no
/// pack negotiated), a new commit brings just what is new, and a force-pushed branch, a corrupt
/// cache and an unreachable server are all handled.
#[test]
fn a_kept_cache_fetches_only_what_is_new_and_recovers() {
    use lockstep::source::git::{Auth, Revision, fetch};
    let tmp = tempfile::tempdir().unwrap();
    let seed = seed_repo(tmp.path(), "project: one\n", "one");
    std::fs::create_dir_all(tmp.path().join("served")).unwrap();
    git(
        tmp.path(),
        &["clone", "-q", "--bare", "seed", "served/app.git"],
    );
    let bare = tmp.path().join("served/app.git");
    let push = |force: bool| {
        let target = bare.to_string_lossy().into_owned();
        let mut args = vec!["push", "-q"];
        if force {
            args.push("--force");
        }
        args.extend([target.as_str(), "main"]);
        git(&seed, &args);
    };
    let server = GitHttp::start(&tmp.path().join("served"), None);
    let url = server.url("app.git");
    let cache = tmp.path().join("cache/app.git");
    let got = || {
        fetch(
            &url,
            &Revision::Branch("main".into()),
            ".",
            &Auth::None,
            &cache,
            None,
            None,
            &std::sync::atomic::AtomicBool::new(false),
        )
    };
    let project = |f: &lockstep::source::git::Fetched| {
        f.snapshot
            .get("lockstep.yaml")
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let posts = || {
        server
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count()
    };
    let first = got().expect("first fetch");
    assert_eq!(first.revision, git(&seed, &["rev-parse", "HEAD"]));

    // Nothing new: the refs are asked for, no pack is negotiated.
    server.clear_requests();
    let again = got().expect("no-change poll");
    assert_eq!(again.revision, first.revision);
    assert_eq!(posts(), 1, "only ls-refs: {:#?}", server.requests());

    // One new commit: one fetch after the refs.
    std::fs::write(seed.join("lockstep.yaml"), "project: two\n").unwrap();
    git(&seed, &["commit", "-q", "-am", "two"]);
    push(false);
    server.clear_requests();
    let second = got().expect("a new commit");
    assert_eq!(second.revision, git(&seed, &["rev-parse", "HEAD"]));
    assert_eq!(project(&second).as_deref(), Some("project: two\n"));
    assert_eq!(posts(), 2, "ls-refs and fetch: {:#?}", server.requests());

    // A force-pushed branch is followed.
    git(&seed, &["reset", "-q", "--hard", "HEAD~1"]);
    std::fs::write(seed.join("lockstep.yaml"), "project: three\n").unwrap();
    git(&seed, &["commit", "-q", "-am", "three"]);
    push(true);
    let forced = got().expect("a force-pushed branch");
    assert_eq!(forced.revision, git(&seed, &["rev-parse", "HEAD"]));
    assert_eq!(project(&forced).as_deref(), Some("project: three\n"));

    // A corrupt cache: every pack overwritten. It is rebuilt.
    for e in std::fs::read_dir(cache.join("objects/pack"))
        .unwrap()
        .flatten()
    {
        std::fs::write(e.path(), b"not a pack").unwrap();
    }
    let rebuilt = got().expect("a corrupt cache is rebuilt");
    assert_eq!(rebuilt.revision, forced.revision);
    assert_eq!(project(&rebuilt).as_deref(), Some("project: three\n"));

    // The server gone: the fetch fails naming it, and the cache stays for when it is back.
    drop(server);
    let down = got().err().expect("the server is down");
    assert!(down.to_string().contains("127.0.0.1"), "{down}");
    assert!(cache.join("objects").is_dir());
}

/// A repository `seed` under `dir` on branch `main` with one commit of `lockstep.yaml`.
fn seed_repo(dir: &Path, project: &str, message: &str) -> PathBuf {
    let seed = dir.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "-q", "-b", "main"]);
    std::fs::write(seed.join("lockstep.yaml"), project).unwrap();
    git(&seed, &["add", "."]);
    git(&seed, &["commit", "-q", "-m", message]);
    seed
}

/// A `ref.commit` is fetched alone: by its id, one commit deep — not the default branch's history.
/// A later poll of the same commit negotiates nothing; a commit the server does not hold is refused
/// naming it.
#[test]
fn a_commit_ref_fetches_that_commit_and_not_the_history() {
    use lockstep::source::git::{Auth, Revision, fetch};
    let tmp = tempfile::tempdir().unwrap();
    let seed = tmp.path().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "-q", "-b", "main"]);
    // 40 commits, each rewriting a 64 KiB file of fresh random bytes: a history of ~2.5 MB.
    let mut pinned = String::new();
    for n in 0..40 {
        let mut noise = vec![0u8; 64 * 1024];
        getrandom::fill(&mut noise).unwrap();
        std::fs::write(seed.join("blob.bin"), &noise).unwrap();
        std::fs::write(seed.join("lockstep.yaml"), format!("project: p{n}\n")).unwrap();
        git(&seed, &["add", "."]);
        git(&seed, &["commit", "-q", "-m", &format!("c{n}")]);
        if n == 20 {
            pinned = git(&seed, &["rev-parse", "HEAD"]);
        }
    }
    std::fs::create_dir_all(tmp.path().join("served")).unwrap();
    git(
        tmp.path(),
        &["clone", "-q", "--bare", "seed", "served/big.git"],
    );
    let server = GitHttp::start(&tmp.path().join("served"), None);
    let url = server.url("big.git");
    let cache = tmp.path().join("cache/big.git");
    let got = |rev: &Revision| {
        fetch(
            &url,
            rev,
            ".",
            &Auth::None,
            &cache,
            None,
            None,
            &std::sync::atomic::AtomicBool::new(false),
        )
    };
    let downloaded = || server.requests().iter().map(|r| r.bytes).sum::<usize>();
    let first = got(&Revision::Commit(pinned.clone())).expect("the pinned commit");
    assert_eq!(first.revision, pinned);
    assert_eq!(
        first.snapshot.get("lockstep.yaml").map(|b| b.to_vec()),
        Some(b"project: p20\n".to_vec())
    );
    let one_commit = downloaded();
    eprintln!("a commit ref: first fetch {one_commit} bytes");
    assert!(
        one_commit < 200 * 1024,
        "{one_commit} bytes for one commit of a ~2.5 MB history: {:#?}",
        server.requests()
    );
    server.clear_requests();
    let again = got(&Revision::Commit(pinned.clone())).expect("again");
    assert_eq!(again.revision, pinned);
    eprintln!("a commit ref: second fetch {} bytes", downloaded());
    assert!(
        downloaded() < 16 * 1024,
        "a second fetch of the same commit: {:#?}",
        server.requests()
    );
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let e = got(&Revision::Commit(missing.into()))
        .err()
        .expect("a commit the server does not hold");
    assert!(e.to_string().contains(missing), "{e}");
}
