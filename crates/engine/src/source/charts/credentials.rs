//! Credentials for chart repositories and registries, from where Helm users keep them: Helm's
//! `repositories.yaml` and its registry login file (a Docker `config.json`), or, for the
//! controller, a Secret in the same Docker config form. Passwords live in wiping strings and are
//! never printed.

use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use serde::Deserialize;
use zeroize::Zeroizing;

/// A username and password for one host or repository.
pub struct Login {
    username: String,
    password: Zeroizing<String>,
}

impl Login {
    /// A login.
    pub fn new(username: String, password: Zeroizing<String>) -> Login {
        Login { username, password }
    }

    /// The `Authorization` header value of HTTP basic authentication.
    pub(crate) fn basic(&self) -> Zeroizing<String> {
        super::remote::basic(&self.username, &self.password)
    }
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Login({}, <password>)", self.username)
    }
}

/// Every login known, and extra CA certificates.
#[derive(Debug, Default)]
pub struct Credentials {
    /// Logins for repository URLs (prefix match, Helm's `repositories.yaml`).
    repos: Vec<(String, Login)>,
    /// Logins by registry host (`host[:port]`).
    hosts: Vec<(String, Login)>,
    /// PEM CA bundles to trust besides the system's.
    pub(crate) roots: Vec<Vec<u8>>,
}

impl Credentials {
    /// No credentials.
    pub fn none() -> Credentials {
        Credentials::default()
    }

    /// Helm's own: `$HELM_REPOSITORY_CONFIG` (default `<helm config>/repositories.yaml`) and
    /// `$HELM_REGISTRY_CONFIG` (default `<helm config>/registry/config.json`), where `<helm
    /// config>` is `$HELM_CONFIG_HOME`, else `$XDG_CONFIG_HOME/helm`, else `~/.config/helm`.
    /// Missing files are no credentials; unreadable ones are errors naming the file.
    pub fn from_helm() -> Result<Credentials, String> {
        let config = helm_config_home();
        let repos = env_path("HELM_REPOSITORY_CONFIG")
            .or_else(|| config.as_ref().map(|c| c.join("repositories.yaml")));
        let registry = env_path("HELM_REGISTRY_CONFIG")
            .or_else(|| config.as_ref().map(|c| c.join("registry/config.json")));
        let mut out = Credentials::default();
        if let Some(path) = repos
            && let Some(text) = read_optional(&path)?
        {
            out.add_repositories(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if let Some(path) = registry
            && let Some(text) = read_optional(&path)?
        {
            out.add_docker_config(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(out)
    }

    /// Adds the logins of a Docker `config.json` (`auths: {host: {auth | username+password}}`),
    /// used for registries and for repositories on those hosts.
    pub fn add_docker_config(&mut self, json: &[u8]) -> Result<(), String> {
        #[derive(Deserialize)]
        struct Config {
            #[serde(default)]
            auths: std::collections::BTreeMap<String, Auth>,
        }
        #[derive(Deserialize)]
        struct Auth {
            #[serde(default)]
            auth: Option<Zeroizing<String>>,
            #[serde(default)]
            username: Option<String>,
            #[serde(default)]
            password: Option<Zeroizing<String>>,
        }
        let config: Config =
            serde_json::from_slice(json).map_err(|e| format!("not a Docker config.json ({e})"))?;
        for (host, auth) in config.auths {
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let login = match (auth.auth, auth.username, auth.password) {
                (Some(pair), _, _) if !pair.is_empty() => {
                    let decoded = Zeroizing::new(
                        base64::engine::general_purpose::STANDARD
                            .decode(pair.trim())
                            .map_err(|_| format!("auths.{host}.auth is not base64"))?,
                    );
                    let text = std::str::from_utf8(&decoded)
                        .map_err(|_| format!("auths.{host}.auth is not user:password"))?;
                    let Some((user, pass)) = text.split_once(':') else {
                        return Err(format!("auths.{host}.auth is not user:password"));
                    };
                    Login::new(user.to_string(), Zeroizing::new(pass.to_string()))
                }
                (_, Some(user), Some(pass)) => Login::new(user, pass),
                _ => continue,
            };
            self.hosts.push((host, login));
        }
        Ok(())
    }

    /// Adds the logins of Helm's `repositories.yaml`.
    fn add_repositories(&mut self, text: &[u8]) -> Result<(), String> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            repositories: Vec<Entry>,
        }
        #[derive(Deserialize)]
        struct Entry {
            #[serde(default)]
            url: String,
            #[serde(default)]
            username: Option<String>,
            #[serde(default)]
            password: Option<Zeroizing<String>>,
            #[serde(default, rename = "caFile")]
            ca_file: Option<PathBuf>,
        }
        let file: File = yaml_serde::from_slice(text)
            .map_err(|e| format!("not a Helm repositories file: {e}"))?;
        for entry in file.repositories {
            if let Some(ca) = entry.ca_file.filter(|p| !p.as_os_str().is_empty()) {
                let pem =
                    std::fs::read(&ca).map_err(|e| format!("caFile {}: {e}", ca.display()))?;
                self.roots.push(pem);
            }
            if let (Some(user), Some(pass)) = (entry.username, entry.password)
                && !user.is_empty()
            {
                let url = entry.url.trim_end_matches('/').to_string();
                self.repos.push((url, Login::new(user, pass)));
            }
        }
        Ok(())
    }

    /// Adds a PEM CA bundle to trust.
    pub fn add_root(&mut self, pem: Vec<u8>) {
        self.roots.push(pem);
    }

    /// Whether any login is known.
    pub fn is_empty(&self) -> bool {
        self.repos.is_empty() && self.hosts.is_empty()
    }

    /// The login for a repository URL: one whose URL it starts with, else its host's.
    pub fn for_repo(&self, url: &str) -> Option<&Login> {
        self.repos
            .iter()
            .filter(|(prefix, _)| {
                url == prefix
                    || url
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, login)| login)
            .or_else(|| self.for_host(host_of(url)?))
    }

    /// The login for a registry or repository host (`host[:port]`).
    pub fn for_host(&self, host: &str) -> Option<&Login> {
        self.hosts
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, login)| login)
    }
}

/// `host[:port]` of an `http(s)://` URL.
pub fn host_of(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    rest.split(['/', '?', '#']).next()
}

fn helm_config_home() -> Option<PathBuf> {
    env_path("HELM_CONFIG_HOME")
        .or_else(|| env_path("XDG_CONFIG_HOME").map(|p| p.join("helm")))
        .or_else(|| env_path("HOME").map(|p| p.join(".config/helm")))
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn read_optional(path: &std::path::Path) -> Result<Option<Vec<u8>>, String> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_logins_match_their_host() {
        let mut c = Credentials::none();
        c.add_docker_config(
            br#"{"auths":{"registry.example.org":{"auth":"dXNlcjpTZWtyaXQtOQ=="},"https://other:5000/v2/":{"username":"u","password":"p"}}}"#,
        )
        .expect("valid");
        assert_eq!(
            c.for_host("registry.example.org")
                .map(|l| l.basic().to_string()),
            Some("Basic dXNlcjpTZWtyaXQtOQ==".into())
        );
        assert!(c.for_host("other:5000").is_some());
        assert!(c.for_host("evil.example.org").is_none());
        assert!(c.for_repo("https://registry.example.org/charts").is_some());
        assert!(!format!("{c:?}").contains("Sekrit"), "{c:?}");
    }

    #[test]
    fn repository_logins_match_by_url_prefix() {
        let mut c = Credentials::none();
        c.add_repositories(
            b"repositories:\n- name: a\n  url: https://charts.example.org/team\n  username: u\n  password: p\n",
        )
        .expect("valid");
        assert!(c.for_repo("https://charts.example.org/team").is_some());
        assert!(c.for_repo("https://charts.example.org/team/sub").is_some());
        assert!(c.for_repo("https://charts.example.org/teamevil").is_none());
        assert!(c.for_repo("https://charts.example.org").is_none());
    }
}
