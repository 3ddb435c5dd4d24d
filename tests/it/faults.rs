//! Faults against the real control plane: the API server going away in the middle of an apply.
//! The client reaches the API server through a loopback TCP proxy the test can cut (TLS passes
//! through untouched), so the shared control plane keeps serving every other test. The same proxy
//! stands in front of the Git server for the controller's fault tests.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use crate::support;

const BIN: &str = env!("CARGO_BIN_EXE_lockstep");

/// A TCP proxy to `upstream` that counts the bytes clients send and can be cut: every open
/// connection is shut and new ones are closed at once, until it is restored.
pub(crate) struct Proxy {
    /// The port clients connect to.
    pub(crate) port: u16,
    sent: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    garbage: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    cut_at: Arc<AtomicUsize>,
}

impl Proxy {
    pub(crate) fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let proxy = Proxy {
            port,
            sent: Arc::default(),
            down: Arc::default(),
            garbage: Arc::default(),
            open: Arc::default(),
            cut_at: Arc::new(AtomicUsize::new(usize::MAX)),
        };
        let (sent, down, open, cut_at, garbage) = (
            proxy.sent.clone(),
            proxy.down.clone(),
            proxy.open.clone(),
            proxy.cut_at.clone(),
            proxy.garbage.clone(),
        );
        std::thread::spawn(move || {
            for mut client in listener.incoming().flatten() {
                if down.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                if garbage.load(Ordering::SeqCst) {
                    let mut buf = [0u8; 4096];
                    let _ = client.read(&mut buf);
                    let _ = client.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 23\r\n\r\n\x00\x01not git at all\xff\xfe\x00\x07");
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                if let Ok(mut o) = open.lock() {
                    o.extend(
                        [client.try_clone(), server.try_clone()]
                            .into_iter()
                            .flatten(),
                    );
                }
                let up = (client.try_clone(), server.try_clone());
                let (sent, down, open, cut_at) =
                    (sent.clone(), down.clone(), open.clone(), cut_at.clone());
                if let (Ok(mut from), Ok(mut to)) = up {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            if sent.fetch_add(n, Ordering::SeqCst) + n
                                >= cut_at.load(Ordering::SeqCst)
                            {
                                cut(&down, &open);
                            }
                        }
                    });
                }
                let (mut from, mut to) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                });
            }
        });
        proxy
    }

    /// Cuts every connection once clients have sent `bytes` more than so far.
    pub(crate) fn cut_after(&self, bytes: usize) {
        self.cut_at
            .store(self.sent.load(Ordering::SeqCst) + bytes, Ordering::SeqCst);
    }

    /// Cuts every connection now and refuses new ones.
    pub(crate) fn cut(&self) {
        cut(&self.down, &self.open);
    }

    /// Answers every new connection with bytes that are not the protocol.
    pub(crate) fn garble(&self) {
        self.down.store(false, Ordering::SeqCst);
        self.garbage.store(true, Ordering::SeqCst);
    }

    /// Forwards again.
    pub(crate) fn restore(&self) {
        self.cut_at.store(usize::MAX, Ordering::SeqCst);
        self.garbage.store(false, Ordering::SeqCst);
        self.down.store(false, Ordering::SeqCst);
    }

    fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// A copy of `kubeconfig` whose server is this proxy.
    pub(crate) fn kubeconfig(&self, kubeconfig: &Path, dir: &Path) -> PathBuf {
        let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
        let upstream = format!("{SERVER}{}", upstream_port(kubeconfig));
        let path = dir.join("proxied.kubeconfig");
        let proxied = text.replace(&upstream, &format!("{SERVER}{}", self.port));
        std::fs::write(&path, proxied).expect("write");
        path
    }
}

fn cut(down: &AtomicBool, open: &Mutex<Vec<TcpStream>>) {
    down.store(true, Ordering::SeqCst);
    if let Ok(mut o) = open.lock() {
        for s in o.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// How the test control plane's kubeconfigs (YAML or JSON) name its server, up to the port.
const SERVER: &str = "https://127.0.0.1:";

pub(crate) fn upstream_port(kubeconfig: &Path) -> u16 {
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let at = text.find(SERVER).expect("a loopback server") + SERVER.len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("a port")
}

/// A project of `n` ConfigMaps (`cm-000`…) in `namespace`.
fn project(dir: &Path, namespace: &str, n: usize) {
    std::fs::create_dir_all(dir.join("templates")).expect("mkdir");
    std::fs::write(
        dir.join("lockstep.yaml"),
        format!("project: faults\nenvironments:\n  dev: {{namespace: {namespace}}}\n"),
    )
    .expect("write");
    std::fs::write(
        dir.join("templates/cms.yaml"),
        format!(
            "{{% for i in range({n}) %}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{{{{ '%03d' | format(i) }}}}\ndata:\n  payload: \"{}\"\n{{% endfor %}}\n",
            "x".repeat(2000)
        ),
    )
    .expect("write");
}

fn apply(dir: &Path, kubeconfig: &Path, home: &Path) -> std::process::Output {
    support::run_isolated(
        Path::new(BIN),
        &[
            "apply",
            "--wait=false",
            "--env",
            "dev",
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
            &dir.to_string_lossy(),
        ],
        &[],
        home,
    )
}

async fn inventory_lines(client: &kube::Client, ns: &str) -> Vec<String> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.get_opt("lockstep-inventory-faults-dev")
        .await
        .expect("get")
        .and_then(|c| c.data)
        .and_then(|d| d.get("objects").cloned())
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// How many of the `cm-…` ConfigMaps a fault test writes exist in `ns`.
pub(crate) async fn config_maps(client: &kube::Client, ns: &str) -> usize {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.list(&Default::default())
        .await
        .expect("list")
        .items
        .iter()
        .filter(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("cm-"))
        })
        .count()
}

/// The API server goes away after part of the objects were written: the apply fails, nothing is
/// pruned, and every object it may have written is already in the inventory; once the server is
/// back, the next apply converges; a later commit prunes exactly what left Git (no orphan).
#[tokio::test]
async fn the_api_server_gone_mid_apply_loses_nothing_and_the_next_apply_converges() {
    let cluster = need!("control plane", support::cluster());
    let client = cluster.admin().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(upstream_port(&cluster.kubeconfig));
    let kubeconfig = proxy.kubeconfig(&cluster.kubeconfig, tmp.path());

    // How many bytes a whole apply of 200 objects sends, measured on a twin namespace.
    let twin_ns = cluster.namespace(&client, "faults-twin").await;
    let twin = tmp.path().join("twin");
    project(&twin, &twin_ns, 200);
    let before = proxy.sent();
    support::assert_success(&apply(&twin, &kubeconfig, tmp.path()));
    let whole = proxy.sent() - before;

    let ns = cluster.namespace(&client, "faults").await;
    let dir = tmp.path().join("project");
    project(&dir, &ns, 200);
    // Cut after the dry run and part of the writes (about three quarters of the bytes).
    proxy.cut_after(whole * 3 / 4);
    let out = apply(&dir, &kubeconfig, tmp.path());
    assert_ne!(out.status.code(), Some(0), "the apply cannot have finished");
    proxy.restore();
    let written = config_maps(&client, &ns).await;
    assert!(written < 200, "the cut came after every write");
    let recorded = inventory_lines(&client, &ns).await;
    assert_eq!(
        recorded.len(),
        200,
        "every object is in the inventory before it is written ({written} were written)"
    );

    let out = apply(&dir, &kubeconfig, tmp.path());
    support::assert_success(&out);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(report.contains(" 0 pruned"), "{report}");
    assert_eq!(config_maps(&client, &ns).await, 200);
    assert_eq!(inventory_lines(&client, &ns).await.len(), 200);

    // 50 objects leave Git: exactly those go.
    project(&dir, &ns, 150);
    support::assert_success(&apply(&dir, &kubeconfig, tmp.path()));
    assert_eq!(config_maps(&client, &ns).await, 150);
    assert_eq!(inventory_lines(&client, &ns).await.len(), 150);
}
