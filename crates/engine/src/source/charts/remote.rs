//! Chart repositories (`index.yaml` + archives) and OCI registries (the distribution API) over
//! HTTPS: bounded in size and time, credentials sent only to the host they belong to.

use std::io::Read;
use std::time::Duration;

use base64::Engine as _;
use reqwest::blocking::{Client, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::credentials::Login;

/// Largest repository index read (bytes).
pub const MAX_INDEX_BYTES: usize = 32 * 1024 * 1024;

/// Largest chart archive read (bytes; Helm refuses charts that unpack beyond 100 MiB).
pub const MAX_ARCHIVE_BYTES: usize = 32 * 1024 * 1024;

/// Largest OCI manifest or token answer read (bytes).
const MAX_SMALL: usize = 1024 * 1024;

/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The media type of a Helm chart's layer in an OCI manifest.
pub const HELM_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";

/// An HTTP client for chart sources.
pub struct Http {
    client: Client,
}

/// A chart found in a repository's index or a registry's manifest.
#[derive(Debug, Clone)]
pub struct Found {
    /// `sha256:<hex>` of the archive, as the source states it.
    pub digest: Option<String>,
    /// Where the archive is.
    pub url: String,
}

impl Http {
    /// A client trusting the system's roots (and `SSL_CERT_FILE`), plus `extra_roots` (PEM).
    pub fn new(extra_roots: &[Vec<u8>]) -> Result<Http, String> {
        let mut certs = Vec::new();
        for pem in extra_roots {
            let found = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("reading a CA certificate: {e}"))?;
            certs.extend(found);
        }
        let client = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("lockstep/", env!("CARGO_PKG_VERSION")))
            .tls_certs_merge(certs)
            .build()
            .map_err(|e| format!("setting up HTTPS: {e}"))?;
        Ok(Http { client })
    }

    /// Finds `name` at `version` in the index of the repository at `repo`.
    pub fn find_in_repo(
        &self,
        repo: &str,
        name: &str,
        version: &str,
        login: Option<&Login>,
    ) -> Result<Found, String> {
        let index_url = parse_url(&format!("{repo}/index.yaml"))?;
        let body = self.get(&index_url, "application/yaml, */*", login, MAX_INDEX_BYTES)?;
        let index: Index = yaml_serde::from_slice(&body)
            .map_err(|e| format!("{index_url} is not a chart repository index: {e}"))?;
        let Some(versions) = index.entries.get(name) else {
            return Err(format!("the repository {repo} has no chart named {name:?}"));
        };
        let Some(entry) = versions.iter().find(|e| e.version == version) else {
            let mut known: Vec<&str> = versions.iter().map(|e| e.version.as_str()).collect();
            known.truncate(10);
            return Err(format!(
                "the repository {repo} has no version {version} of {name} (newest listed: {})",
                known.join(", ")
            ));
        };
        let Some(first) = entry.urls.first() else {
            return Err(format!(
                "{name} {version} in {index_url} lists no archive URL"
            ));
        };
        let url = index_url
            .join(first)
            .map_err(|e| format!("{name} {version}: archive URL {first:?}: {e}"))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(format!(
                "{name} {version}: archive URL {url} is not http(s)"
            ));
        }
        let digest = entry.digest.as_deref().filter(|d| !d.is_empty()).map(|d| {
            if d.starts_with("sha256:") {
                d.to_string()
            } else {
                format!("sha256:{d}")
            }
        });
        Ok(Found {
            digest,
            url: url.to_string(),
        })
    }

    /// Finds the chart layer of `reference` (`oci://host/path/name`) tagged `version`.
    pub fn find_in_registry(
        &self,
        reference: &str,
        version: &str,
        login: Option<&Login>,
    ) -> Result<Found, String> {
        let (host, path) = split_reference(reference)?;
        // OCI tags cannot hold `+`; Helm writes it as `_`.
        let tag = version.replace('+', "_");
        let url = parse_url(&format!("https://{host}/v2/{path}/manifests/{tag}"))?;
        let body = self.get_registry(
            &url,
            "application/vnd.oci.image.manifest.v1+json",
            login,
            MAX_SMALL,
        )?;
        let manifest: Manifest = serde_json::from_slice(&body).map_err(|e| {
            format!("{reference}:{tag}: the registry's manifest is not OCI JSON: {e}")
        })?;
        let Some(layer) = manifest
            .layers
            .iter()
            .find(|l| l.media_type == HELM_LAYER || l.media_type == "application/tar+gzip")
        else {
            return Err(format!(
                "{reference}:{tag} is not a Helm chart (its manifest has no {HELM_LAYER} layer)"
            ));
        };
        if layer.size > MAX_ARCHIVE_BYTES as u64 {
            return Err(format!(
                "{reference}:{tag}: the chart is {} bytes, more than the {MAX_ARCHIVE_BYTES} read",
                layer.size
            ));
        }
        Ok(Found {
            digest: Some(layer.digest.clone()),
            url: blob_url(reference, &layer.digest)?,
        })
    }

    /// Downloads an archive from a repository (with `login`, which the caller chose for its host).
    pub fn archive(&self, url: &str, login: Option<&Login>) -> Result<Vec<u8>, String> {
        let url = parse_url(url)?;
        self.get(&url, "application/gzip, */*", login, MAX_ARCHIVE_BYTES)
    }

    /// Downloads a blob of a registry by digest.
    pub fn blob(
        &self,
        reference: &str,
        digest: &str,
        login: Option<&Login>,
    ) -> Result<Vec<u8>, String> {
        let url = parse_url(&blob_url(reference, digest)?)?;
        self.get_registry(
            &url,
            "application/octet-stream, */*",
            login,
            MAX_ARCHIVE_BYTES,
        )
    }

    /// A GET with basic credentials (HTTPS only), bounded to `limit` bytes.
    fn get(
        &self,
        url: &Url,
        accept: &str,
        login: Option<&Login>,
        limit: usize,
    ) -> Result<Vec<u8>, String> {
        let auth = login.filter(|_| url.scheme() == "https").map(Login::basic);
        let response = self.send(url, accept, auth.as_ref().map(|a| a.as_str()))?;
        read(url, response, limit, login.is_some())
    }

    /// One GET with an `Authorization` header, if any.
    fn send(&self, url: &Url, accept: &str, auth: Option<&str>) -> Result<Response, String> {
        let mut request = self.client.get(url.clone()).header(ACCEPT, accept);
        if let Some(auth) = auth {
            request = request.header(AUTHORIZATION, auth);
        }
        request.send().map_err(|e| describe(url, &e))
    }

    /// A GET of the distribution API, answering its challenge: `Basic` with the login, or
    /// `Bearer` with a token from its realm (anonymous when there is no login).
    fn get_registry(
        &self,
        url: &Url,
        accept: &str,
        login: Option<&Login>,
        limit: usize,
    ) -> Result<Vec<u8>, String> {
        let send = |auth: Option<&str>| self.send(url, accept, auth);
        let first = send(None)?;
        if first.status() != StatusCode::UNAUTHORIZED {
            return read(url, first, limit, false);
        }
        let challenge = first
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let auth: Zeroizing<String> = match Challenge::parse(&challenge) {
            Challenge::Basic => match login {
                Some(login) => login.basic(),
                None => return Err(needs_login(url)),
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let token = self.token(&realm, service.as_deref(), scope.as_deref(), login)?;
                Zeroizing::new(format!("Bearer {}", token.as_str()))
            }
            Challenge::Unknown => return Err(needs_login(url)),
        };
        read(url, send(Some(auth.as_str()))?, limit, true)
    }

    /// A registry token from `realm`.
    fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
        login: Option<&Login>,
    ) -> Result<Zeroizing<String>, String> {
        let mut url = parse_url(realm)?;
        if url.scheme() != "https" {
            return Err(format!("the registry's token realm {url} is not https"));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            if let Some(scope) = scope {
                query.append_pair("scope", scope);
            }
        }
        let body = Zeroizing::new(self.get(&url, "application/json", login, MAX_SMALL)?);
        #[derive(Deserialize)]
        struct Token {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let token: Token = serde_json::from_slice(&body).map_err(|_| {
            format!("the registry's token service {url} did not answer with a token")
        })?;
        token
            .token
            .or(token.access_token)
            .map(Zeroizing::new)
            .ok_or_else(|| {
                format!("the registry's token service {url} did not answer with a token")
            })
    }
}

/// Reads a response's body, at most `limit` bytes; other statuses than success are errors.
fn read(url: &Url, response: Response, limit: usize, with_login: bool) -> Result<Vec<u8>, String> {
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(if with_login {
            format!("{url}: {status}: the credentials for this host were refused")
        } else {
            needs_login(url)
        });
    }
    if !status.is_success() {
        return Err(format!("{url}: {status}"));
    }
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("{url}: larger than the {limit} bytes read"));
    }
    let mut body = Vec::new();
    response
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("{url}: reading: {e}"))?;
    if body.len() > limit {
        return Err(format!("{url}: larger than the {limit} bytes read"));
    }
    Ok(body)
}

fn needs_login(url: &Url) -> String {
    format!(
        "{url}: the server asks for credentials, and none are known for {}",
        url.host_str().unwrap_or_default()
    )
}

/// A request error without the noise of its source chain's repeats.
fn describe(url: &Url, e: &reqwest::Error) -> String {
    let mut message = format!("{url}: ");
    if e.is_timeout() {
        message.push_str(&format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()));
        return message;
    }
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    message.push_str(&parts.join(": "));
    message
}

fn parse_url(url: &str) -> Result<Url, String> {
    Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))
}

/// `host[:port]` and the repository path of `oci://host/path/name`.
pub fn split_reference(reference: &str) -> Result<(&str, &str), String> {
    reference
        .strip_prefix(lockstep_render::project::OCI_SCHEME)
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| format!("{reference:?} is not oci://HOST/PATH"))
}

fn blob_url(reference: &str, digest: &str) -> Result<String, String> {
    let (host, path) = split_reference(reference)?;
    Ok(format!("https://{host}/v2/{path}/blobs/{digest}"))
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Unknown,
}

impl Challenge {
    fn parse(header: &str) -> Challenge {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Challenge::Basic;
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Challenge::Unknown;
        }
        let mut realm = None;
        let mut service = None;
        let mut scope = None;
        // key="value" pairs; values may hold commas (scopes do), so split on `",`.
        let mut rest = params.trim();
        while let Some((key, after)) = rest.split_once('=') {
            let key = key.trim().trim_start_matches(',').trim();
            let after = after.trim_start();
            let (value, next) = match after.strip_prefix('"') {
                Some(quoted) => match quoted.split_once('"') {
                    Some((v, next)) => (v, next),
                    None => (quoted, ""),
                },
                None => after.split_once(',').unwrap_or((after, "")),
            };
            match key {
                "realm" => realm = Some(value.to_string()),
                "service" => service = Some(value.to_string()),
                "scope" => scope = Some(value.to_string()),
                _ => {}
            }
            rest = next.trim_start_matches(',');
        }
        match realm {
            Some(realm) => Challenge::Bearer {
                realm,
                service,
                scope,
            },
            None => Challenge::Unknown,
        }
    }
}

/// The parts of a repository's `index.yaml` read.
#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    entries: std::collections::BTreeMap<String, Vec<IndexEntry>>,
}

#[derive(Deserialize)]
struct IndexEntry {
    #[serde(default)]
    version: String,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    digest: Option<String>,
}

/// The parts of an OCI image manifest read.
#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct Layer {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
}

/// `Basic <base64(user:password)>`.
pub(crate) fn basic(username: &str, password: &str) -> Zeroizing<String> {
    let pair = Zeroizing::new(format!("{username}:{password}"));
    Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_challenges_parse() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example.org/token",service="registry.example.org",scope="repository:charts/web:pull,push""#
            ),
            Challenge::Bearer {
                realm: "https://auth.example.org/token".into(),
                service: Some("registry.example.org".into()),
                scope: Some("repository:charts/web:pull,push".into()),
            }
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Challenge::Basic
        );
        assert_eq!(Challenge::parse("Negotiate"), Challenge::Unknown);
        assert_eq!(Challenge::parse("Bearer"), Challenge::Unknown);
    }

    #[test]
    fn references_split_into_host_and_path() {
        assert_eq!(
            split_reference("oci://127.0.0.1:5000/charts/web"),
            Ok(("127.0.0.1:5000", "charts/web"))
        );
        assert!(split_reference("https://x/y").is_err());
    }
}
