//! Real Git servers on loopback for integration tests: [`GitHttp`] (smart HTTP or HTTPS through the
//! real `git http-backend` CGI, optionally behind Basic auth) and [`GitSsh`] (a real OpenSSH `sshd`
//! running as the current user). Both serve the bare repositories under a directory and stop when
//! dropped.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

// -------------------------------------------------------------------------------------------- HTTP

/// One request [`GitHttp`] answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET` or `POST`.
    pub method: String,
    /// The request target as sent, query included (`/shop.git/info/refs?service=git-upload-pack`).
    pub path: String,
    /// The HTTP status of the answer.
    pub status: u16,
    /// The `Git-Protocol` request header (`version=2` for protocol v2), if any.
    pub git_protocol: Option<String>,
    /// Whether the request body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// The size of the answer's body (what the client downloaded).
    pub bytes: usize,
}

struct HttpShared {
    root: PathBuf,
    auth: Option<(String, String)>,
    stop: AtomicBool,
    log: Mutex<Vec<Request>>,
    conns: Mutex<HashMap<u64, TcpStream>>,
    tls: Option<Arc<ServerConfig>>,
    /// Serve the files under the root as they are (a Helm chart repository), not through Git.
    files: bool,
}

/// A smart-HTTP Git server on `127.0.0.1` serving the bare repositories under a directory through the
/// real `git http-backend` (protocol v0, v1 and v2; fetch and push), over plain HTTP or over TLS with
/// a throwaway CA. Stops when dropped.
pub struct GitHttp {
    addr: SocketAddr,
    shared: Arc<HttpShared>,
    acceptor: Option<JoinHandle<()>>,
    tls: Option<TestPki>,
}

impl GitHttp {
    /// Starts serving the repositories under `root` on a free loopback port. With `auth`
    /// (user, password), every request without that `Authorization: Basic` gets a 401.
    ///
    /// Pushing needs `http.receivepack = true` in the bare repository.
    pub fn start(root: &Path, auth: Option<(&str, &str)>) -> GitHttp {
        GitHttp::launch(root, auth, None, false)
    }

    /// Like [`GitHttp::start`], but over HTTPS: the server presents a certificate for `127.0.0.1` and
    /// `localhost` signed by a fresh CA, whose certificate [`GitHttp::ca_file`] names. Needs the
    /// `openssl` CLI.
    pub fn start_tls(root: &Path, auth: Option<(&str, &str)>) -> GitHttp {
        let pki = TestPki::generate();
        let config = pki.server_config();
        let mut server = GitHttp::launch(root, auth, Some(config), false);
        server.tls = Some(pki);
        server
    }

    /// A plain HTTPS file server for the files under `root` (read at each request), as a Helm chart
    /// repository is served (`helm package` + `helm repo index`); with `auth`, behind Basic auth.
    pub fn start_files_tls(root: &Path, auth: Option<(&str, &str)>) -> GitHttp {
        let pki = TestPki::generate();
        let config = pki.server_config();
        let mut server = GitHttp::launch(root, auth, Some(config), true);
        server.tls = Some(pki);
        server
    }

    /// The PEM files of the server's certificate and key (to serve another program with them).
    pub fn server_cert_and_key(&self) -> Option<(&Path, &Path)> {
        self.tls
            .as_ref()
            .map(|pki| (pki.cert.as_path(), pki.key.as_path()))
    }

    fn launch(
        root: &Path,
        auth: Option<(&str, &str)>,
        tls: Option<Arc<ServerConfig>>,
        files: bool,
    ) -> GitHttp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(HttpShared {
            root: root.to_path_buf(),
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            stop: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            conns: Mutex::new(HashMap::new()),
            tls,
            files,
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(listener, shared))
        };
        GitHttp {
            addr,
            shared,
            acceptor: Some(acceptor),
            tls: None,
        }
    }

    /// URL of repository `repo` (a path under the root, e.g. `shop.git`):
    /// `http://127.0.0.1:PORT/shop.git`, or `https://…` for a server from [`GitHttp::start_tls`].
    pub fn url(&self, repo: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/{}", self.addr, repo.trim_start_matches('/'))
    }

    /// The PEM file of the CA certificate that signed the server's certificate (for `SSL_CERT_FILE`,
    /// `GIT_SSL_CAINFO` or `git -c http.sslCAInfo=…`); `None` for a plain-HTTP server. It lives as
    /// long as the server.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|pki| pki.ca.as_path())
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.log.lock().unwrap().clone()
    }

    /// How many requests have been answered so far.
    pub fn request_count(&self) -> usize {
        self.shared.log.lock().unwrap().len()
    }

    /// Forgets the requests answered so far.
    pub fn clear_requests(&self) {
        self.shared.log.lock().unwrap().clear();
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor, then cut the open (keep-alive) connections.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(handle) = self.acceptor.take() {
            let _ = handle.join();
        }
        for (_, conn) in self.shared.conns.lock().unwrap().drain() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<HttpShared>) {
    let next_id = AtomicU64::new(0);
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = conn.try_clone() {
            shared.conns.lock().unwrap().insert(id, clone);
        }
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            let _ = handle_connection(conn, &shared);
            shared.conns.lock().unwrap().remove(&id);
        });
    }
}

/// Serves one accepted connection, in clear or behind a TLS handshake.
fn handle_connection(conn: TcpStream, shared: &HttpShared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let peer = conn.peer_addr()?;
    let Some(config) = &shared.tls else {
        let mut conn = conn;
        return serve_connection(&mut conn, peer, shared);
    };
    let tls = ServerConnection::new(Arc::clone(config)).map_err(std::io::Error::other)?;
    let mut stream = StreamOwned::new(tls, conn);
    serve_connection(&mut stream, peer, shared)?;
    stream.conn.send_close_notify();
    stream.flush()
}

/// A parsed HTTP/1.x request with its body fully read (chunked bodies decoded).
struct HttpRequest {
    method: String,
    target: String,
    keep_alive: bool,
    chunked: bool,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Answers the requests of one connection until the client closes it or asks to.
fn serve_connection<S: Read + Write>(
    stream: &mut S,
    peer: SocketAddr,
    shared: &HttpShared,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(&mut reader)? {
        let (status, headers, body) = answer(&req, peer, shared);
        shared.log.lock().unwrap().push(Request {
            method: req.method.clone(),
            path: req.target.clone(),
            status,
            git_protocol: req.header("Git-Protocol").map(str::to_string),
            chunked: req.chunked,
            bytes: body.len(),
        });
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        if !req.keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let writer = reader.get_mut();
        writer.write_all(head.as_bytes())?;
        writer.write_all(&body)?;
        writer.flush()?;
        if !req.keep_alive {
            break;
        }
    }
    Ok(())
}

fn read_line(reader: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one request; `None` when the client closed the connection between requests. Answers
/// `Expect: 100-continue` on the same stream.
fn read_request<S: Read + Write>(
    reader: &mut BufReader<S>,
) -> std::io::Result<Option<HttpRequest>> {
    let line = match read_line(reader)? {
        None => return Ok(None),
        Some(l) if l.is_empty() => match read_line(reader)? {
            None => return Ok(None),
            Some(l) => l,
        },
        Some(l) => l,
    };
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| bad("eof in headers"))?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| bad("malformed header"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = HttpRequest {
        method: method.to_string(),
        target: target.to_string(),
        keep_alive: false,
        chunked: false,
        headers,
        body: Vec::new(),
    };
    let connection = req.header("Connection").unwrap_or("").to_ascii_lowercase();
    req.keep_alive = if version == "HTTP/1.0" {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    if req
        .header("Expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        let writer = reader.get_mut();
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        writer.flush()?;
    }
    req.chunked = req
        .header("Transfer-Encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if req.chunked {
        loop {
            let size_line = read_line(reader)?.ok_or_else(|| bad("eof in chunk size"))?;
            let size = size_line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the blank line.
                while !read_line(reader)?
                    .ok_or_else(|| bad("eof in trailers"))?
                    .is_empty()
                {}
                break;
            }
            let start = req.body.len();
            req.body.resize(start + size, 0);
            reader.read_exact(&mut req.body[start..])?;
            read_line(reader)?; // the CRLF after the chunk
        }
    } else if let Some(len) = req.header("Content-Length") {
        let len: usize = len.parse().map_err(|_| bad("bad Content-Length"))?;
        req.body.resize(len, 0);
        reader.read_exact(&mut req.body)?;
    }
    Ok(Some(req))
}

/// The authenticated user: `Ok(None)` without auth configured, `Err(())` when credentials are wrong.
fn check_auth(req: &HttpRequest, shared: &HttpShared) -> Result<Option<String>, ()> {
    let Some((user, password)) = &shared.auth else {
        return Ok(None);
    };
    let given = req
        .header("Authorization")
        .and_then(|h| {
            let (scheme, value) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(value.trim())
        })
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok());
    match given.as_deref().and_then(|g| g.split_once(':')) {
        Some((u, p)) if u == user && p == password => Ok(Some(user.clone())),
        _ => Err(()),
    }
}

type Answer = (u16, Vec<(String, String)>, Vec<u8>);

fn answer(req: &HttpRequest, peer: SocketAddr, shared: &HttpShared) -> Answer {
    let user = match check_auth(req, shared) {
        Ok(user) => user,
        Err(()) => {
            return (
                401,
                vec![
                    ("WWW-Authenticate".into(), "Basic realm=\"git\"".into()),
                    ("Content-Type".into(), "text/plain".into()),
                ],
                b"authentication required\n".to_vec(),
            );
        }
    };
    if shared.files {
        return serve_file(req, shared);
    }
    match run_cgi(req, peer, user.as_deref(), shared) {
        Ok(answer) => answer,
        Err(e) => (
            500,
            vec![("Content-Type".into(), "text/plain".into())],
            format!("git http-backend: {e}\n").into_bytes(),
        ),
    }
}

/// A GET of a file under the root, as it is now.
fn serve_file(req: &HttpRequest, shared: &HttpShared) -> Answer {
    let path = percent_decode(req.target.split('?').next().unwrap_or_default());
    let rel = path.trim_start_matches('/');
    let text = |status: u16, body: &str| {
        (
            status,
            vec![("Content-Type".into(), "text/plain".into())],
            body.as_bytes().to_vec(),
        )
    };
    if req.method != "GET" {
        return text(405, "only GET\n");
    }
    if rel.split('/').any(|seg| seg == ".." || seg.is_empty()) {
        return text(404, "not found\n");
    }
    match std::fs::read(shared.root.join(rel)) {
        Ok(body) => (
            200,
            vec![("Content-Type".into(), "application/octet-stream".into())],
            body,
        ),
        Err(_) => text(404, "not found\n"),
    }
}

/// Runs `git http-backend` for one request and parses its CGI answer.
fn run_cgi(
    req: &HttpRequest,
    peer: SocketAddr,
    user: Option<&str>,
    shared: &HttpShared,
) -> std::io::Result<Answer> {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", &shared.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", &req.method)
        .env("PATH_INFO", percent_decode(path))
        .env("QUERY_STRING", query)
        .env("REMOTE_ADDR", peer.ip().to_string())
        .env("CONTENT_LENGTH", req.body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ct) = req.header("Content-Type") {
        cmd.env("CONTENT_TYPE", ct);
    }
    if let Some(user) = user {
        cmd.env("REMOTE_USER", user).env("AUTH_TYPE", "Basic");
    }
    if let Some(proto) = req.header("Git-Protocol") {
        cmd.env("GIT_PROTOCOL", proto);
    }
    // The other request headers as CGI meta-variables (HTTP_CONTENT_ENCODING matters: gzip bodies).
    for (k, v) in &req.headers {
        let name = k.to_ascii_uppercase().replace('-', "_");
        if !matches!(
            name.as_str(),
            "CONTENT_TYPE" | "CONTENT_LENGTH" | "AUTHORIZATION" | "TRANSFER_ENCODING"
        ) {
            cmd.env(format!("HTTP_{name}"), v);
        }
    }
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let body = req.body.clone();
    // Write the body from another thread: the backend may answer before it has read it all.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let out = child.wait_with_output()?;
    let _ = feeder.join();
    if !out.stderr.is_empty() {
        eprintln!(
            "git http-backend ({} {}): {}",
            req.method,
            req.target,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    parse_cgi(&out.stdout)
}

fn parse_cgi(out: &[u8]) -> std::io::Result<Answer> {
    let (head_len, sep_len) = [&b"\r\n\r\n"[..], b"\n\n"]
        .iter()
        .filter_map(|sep| {
            out.windows(sep.len())
                .position(|w| w == *sep)
                .map(|p| (p, sep.len()))
        })
        .min()
        .ok_or_else(|| bad("CGI answer without a header block"))?;
    let head = String::from_utf8_lossy(&out[..head_len]);
    let mut status = 200;
    let mut headers = Vec::new();
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("Status") {
            status = v
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("bad CGI Status"))?;
        } else if !k.eq_ignore_ascii_case("Content-Length") {
            headers.push((k.to_string(), v.to_string()));
        }
    }
    Ok((status, headers, out[head_len + sep_len..].to_vec()))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("-"), 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

// ------------------------------------------------------------------------------------ OCI registry

/// The real CNCF Distribution registry (the `registry` peer) on a free loopback port over HTTPS with
/// a throwaway CA, storing in a temporary directory. Stops when dropped.
pub struct Registry {
    child: Child,
    port: u16,
    pki: TestPki,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts the registry and waits until it accepts connections.
    pub fn start(program: &Path) -> Registry {
        let pki = TestPki::generate();
        let dir = tempfile::tempdir().expect("tempdir for the registry");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp:\n  addr: 127.0.0.1:{port}\n  tls: {{certificate: {}, key: {}}}\n",
                dir.path().join("data").display(),
                pki.cert.display(),
                pki.key.display()
            ),
        )
        .expect("write registry config");
        let child = Command::new(program)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the registry");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the registry did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            port,
            pki,
            _dir: dir,
        }
    }

    /// `host:port` of the registry.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The CA certificate its certificate is signed by.
    pub fn ca_file(&self) -> &Path {
        &self.pki.ca
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --------------------------------------------------------------------------------------------- TLS

/// A throwaway CA and a server certificate it signed for `127.0.0.1` and `localhost`, as PEM files in
/// a temporary directory that lives as long as this value.
struct TestPki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestPki {
    /// Generates the CA (P-256, `CA:TRUE`, `keyCertSign`) and the server certificate (a distinct
    /// end-entity certificate: `CA:FALSE`, `serverAuth`) with the `openssl` CLI.
    fn generate() -> TestPki {
        let dir = tempfile::tempdir().expect("tempdir for the test CA");
        let d = dir.path();
        const EC: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2";
        openssl(
            d,
            &format!(
                "req -x509 {EC} -subj /CN=lockstep-test-ca -keyout ca.key -out ca.pem \
                 -addext basicConstraints=critical,CA:TRUE \
                 -addext keyUsage=critical,keyCertSign,cRLSign \
                 -addext subjectKeyIdentifier=hash"
            ),
        );
        openssl(
            d,
            &format!("req -new {EC} -subj /CN=127.0.0.1 -keyout server.key -out server.csr"),
        );
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
             basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectKeyIdentifier=hash\n\
             authorityKeyIdentifier=keyid\n",
        )
        .expect("write server.ext");
        openssl(
            d,
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 \
             -extfile server.ext -out server.pem",
        );
        TestPki {
            ca: d.join("ca.pem"),
            cert: d.join("server.pem"),
            key: d.join("server.key"),
            _dir: dir,
        }
    }

    /// A rustls server configuration (aws-lc-rs, TLS 1.2 and 1.3, ALPN `http/1.1`) presenting the
    /// server certificate.
    fn server_config(&self) -> Arc<ServerConfig> {
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .expect("open server certificate PEM")
            .collect::<Result<Vec<_>, _>>()
            .expect("parse server certificate PEM");
        let key = PrivateKeyDer::from_pem_file(&self.key).expect("parse server key PEM");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// Runs `openssl` in `dir` with the whitespace-separated `args`; panics with its stderr when it fails.
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (is the openssl CLI installed?)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// --------------------------------------------------------------------------------------------- SSH

/// A real OpenSSH `sshd` on `127.0.0.1`, running as the current user with its own host key and
/// configuration, that lets one public key in. Git reaches the repositories under the served directory
/// by absolute path. Stops when dropped.
pub struct GitSsh {
    root: PathBuf,
    user: String,
    port: u16,
    host_key_pub: String,
    child: Child,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl GitSsh {
    /// Starts `sshd` on a free loopback port, accepting `authorized_key` (an `authorized_keys` line)
    /// for the current user. Panics with sshd's own log when it does not come up.
    pub fn start(root: &Path, authorized_key: &str) -> GitSsh {
        const SSHD: &str = "/usr/sbin/sshd";
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing: install openssh-server"
        );
        let user = command_stdout("id", &["-un"]);
        if command_stdout("id", &["-u"]) == "0" {
            // sshd started by root insists on its privilege-separation directory.
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let root = std::fs::canonicalize(root).expect("canonicalize the served directory");
        let dir = tempfile::tempdir().expect("tempdir for sshd");
        let host_key = dir.path().join("host_ed25519");
        keygen(&host_key);
        let host_key_pub = std::fs::read_to_string(host_key.with_extension("pub"))
            .expect("read host key")
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, format!("{}\n", authorized_key.trim())).unwrap();

        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.path().join("sshd_config");
            std::fs::write(
                &config,
                sshd_config(port, &host_key, &authorized, dir.path(), &user),
            )
            .unwrap();
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn sshd");
            let log = Arc::new(Mutex::new(String::new()));
            let (ready_tx, ready_rx) = mpsc::channel();
            {
                let stderr = child.stderr.take().expect("piped stderr");
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        if line.contains("Server listening on") {
                            let _ = ready_tx.send(());
                        }
                        let mut log = log.lock().unwrap();
                        log.push_str(&line);
                        log.push('\n');
                    }
                });
            }
            match ready_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(()) => {
                    return GitSsh {
                        root,
                        user,
                        port,
                        host_key_pub,
                        child,
                        log,
                        _dir: dir,
                    };
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    // Give the stderr reader a moment to collect sshd's last words.
                    std::thread::sleep(Duration::from_millis(50));
                    last_log = log.lock().unwrap().clone();
                    if !last_log.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("sshd did not start:\n{last_log}");
    }

    /// `ssh://USER@127.0.0.1:PORT/ABS/ROOT/repo` for repository `repo` under the served directory.
    pub fn url(&self, repo: &str) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            self.root.join(repo.trim_start_matches('/')).display()
        )
    }

    /// The `known_hosts` line for this server: `[127.0.0.1]:PORT ssh-ed25519 AAAA…`.
    pub fn known_hosts(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.host_key_pub)
    }

    /// The port sshd listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user sshd lets in (the current user).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// What sshd has logged so far (level VERBOSE: connections, accepted and refused keys).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for GitSsh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sshd_config(port: u16, host_key: &Path, authorized: &Path, dir: &Path, user: &str) -> String {
    format!(
        "\
ListenAddress 127.0.0.1:{port}
HostKey {host_key}
PidFile {pid}
AuthorizedKeysFile {authorized}
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AcceptEnv GIT_PROTOCOL
PermitUserEnvironment no
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
PrintMotd no
UseDNS no
MaxStartups 100
LoginGraceTime 30
LogLevel VERBOSE
",
        host_key = host_key.display(),
        pid = dir.join("sshd.pid").display(),
        authorized = authorized.display(),
    )
}

/// A fresh ed25519 key pair: (OpenSSH private key text, `ssh-ed25519 AAAA… comment` public key line).
/// The key files are generated in `dir` and removed again.
pub fn ssh_keypair(dir: &Path) -> (String, String) {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        ".keypair-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    keygen(&path);
    let public = path.with_extension("pub");
    let private_text = std::fs::read_to_string(&path).expect("read private key");
    let public_text = std::fs::read_to_string(&public).expect("read public key");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&public);
    (private_text, public_text.trim().to_string())
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "lockstep-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn command_stdout(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(out.status.success(), "{cmd} {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}
