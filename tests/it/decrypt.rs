//! The decrypt stage on the bundled example: sealed references become the real values (checked
//! against an independent decryption of the secrets file), SOPS manifests open, and a wrong key or a
//! tampered file stops everything with a message that names the file and no value.

use crate::support;

use base64::Engine as _;
use lockstep::decrypt::{self, DecryptError};
use lockstep::keys::KeyRing;
use lockstep::render::{self, Request};
use lockstep::sops::{self, SopsError, store::Format};
use lockstep::source::Snapshot;

fn shop() -> Snapshot {
    Snapshot::read_dir(&support::repo_root().join("examples/shop")).expect("read shop")
}

fn demo_ring() -> KeyRing {
    let key = std::fs::read(support::repo_root().join("keys-example/age.key")).expect("key");
    let mut ring = KeyRing::default();
    ring.add_text(&key, "keys-example/age.key")
        .expect("key parses");
    ring
}

fn rendered(snapshot: &Snapshot, env: &str) -> render::Rendered {
    render::render(
        snapshot,
        &Request {
            env: env.into(),
            ..Request::default()
        },
    )
    .expect("renders")
}

fn secret_value(snapshot: &Snapshot, file: &str, path: &[&str]) -> String {
    let opened = sops::decrypt(
        snapshot.get(file).expect("file"),
        Format::Yaml,
        &demo_ring(),
        false,
    )
    .expect("opens");
    let mut v = opened.docs[0]
        .items
        .iter()
        .find_map(|i| match i {
            lockstep::sops::tree::Item::Pair(k, v) if k == path[0] => Some(v),
            _ => None,
        })
        .expect("first key");
    for k in &path[1..] {
        v = v.get(k).expect("key");
    }
    v.scalar_text().expect("scalar").expose().to_string()
}

#[test]
fn references_become_values_and_string_data_is_folded_into_data() {
    let snapshot = shop();
    let set =
        decrypt::decrypt(&rendered(&snapshot, "dev"), &snapshot, &demo_ring()).expect("decrypts");
    let b64 = base64::engine::general_purpose::STANDARD;
    let password = secret_value(
        &snapshot,
        "environments/dev/secrets.yaml",
        &["postgres", "password"],
    );
    let session = secret_value(
        &snapshot,
        "environments/dev/secrets.yaml",
        &["web", "session_key"],
    );
    let app = set
        .objects
        .iter()
        .find(|o| o.id.kind == "Secret" && o.id.name == "shop-app")
        .expect("shop-app");
    let data = app.object.expose()["data"].as_object().expect("data");
    assert!(app.object.expose().get("stringData").is_none());
    assert_eq!(
        data["SESSION_KEY"].as_str(),
        Some(b64.encode(&session).as_str())
    );
    let url = b64
        .decode(data["DATABASE_URL"].as_str().expect("url"))
        .expect("b64");
    assert_eq!(
        String::from_utf8(url).expect("utf-8"),
        format!("postgresql://shop:{password}@postgres:5432/shop?sslmode=disable")
    );
    // The whole-file SOPS manifest is decrypted and placed in the environment's namespace.
    let webhook = set
        .objects
        .iter()
        .find(|o| o.id.name == "payment-webhook")
        .expect("payment-webhook");
    assert_eq!(webhook.id.namespace.as_deref(), Some("shop-dev"));
    let signing = webhook.object.expose()["data"]["WEBHOOK_SIGNING_SECRET"]
        .as_str()
        .expect("data");
    assert!(
        String::from_utf8(b64.decode(signing).expect("b64"))
            .expect("utf-8")
            .starts_with("whsec_")
    );
    // Nothing sealed or encrypted is left anywhere.
    for o in &set.objects {
        let text = serde_json::to_string(o.object.expose()).expect("json");
        assert!(
            !text.contains("<sealed:") && !text.contains("ENC[AES256_GCM"),
            "{}",
            o.id
        );
    }
}

#[test]
fn a_wrong_key_or_a_tampered_file_stops_with_the_file_named() {
    let snapshot = shop();
    let r = rendered(&snapshot, "dev");
    let mut other = KeyRing::default();
    let (key, _) = lockstep::keys::generate("2026-01-01T00:00:00Z");
    other.add_text(key.as_bytes(), "other").expect("key");
    match decrypt::decrypt(&r, &snapshot, &other) {
        Err(DecryptError::Sops {
            file,
            source: SopsError::NoMatchingIdentity { .. },
        }) => {
            assert_eq!(file, "environments/dev/secrets.yaml")
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a foreign key must not decrypt"),
    }
    // Change one ciphertext character of a value: the MAC or the value's tag catches it.
    let mut tampered = snapshot.clone();
    let text = String::from_utf8(
        snapshot
            .get("environments/dev/secrets.yaml")
            .expect("file")
            .to_vec(),
    )
    .expect("utf-8");
    let at = text.find("data:").expect("a value") + 6;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    tampered.insert("environments/dev/secrets.yaml", bytes);
    let err = match decrypt::decrypt(&r, &tampered, &demo_ring()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a tampered file must not decrypt"),
    };
    assert!(err.starts_with("environments/dev/secrets.yaml:"), "{err}");
}
