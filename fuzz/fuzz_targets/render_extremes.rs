//! Fuzzes the whole render path as the controller runs it, with helpers and built-ins at the
//! extremes of their arguments (widths, counts, repeats, nesting): the render probe first (a
//! `lockstep` child process with a memory limit and a deadline: `LOCKSTEP_PROBE_EXE`, default
//! `target/release/lockstep`), then — only if the probe passed — the render in this process, which
//! must render or fail with diagnostics within its budget: never an abort, a panic, or memory past
//! libFuzzer's `-rss_limit_mb`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::probe::Probe;
use lockstep::render::{self, Request};
use lockstep::source::Snapshot;

/// Values to start a chain from.
const BASES: &[&str] = &[
    "'x'",
    "'a\\nb\\n' * 5000",
    "range(100000)",
    "[range(10000)] * 100000000",
    "[[range(1000)] * 1000] * 1000",
    "values.big",
    "values",
    "secrets.db.password",
    "{'a': [1, 2, {'b': none}]}",
    "'x' * 99999999",
    "include('_h.yaml')",
];

/// Filters applied in a chain, each with an argument slot.
const FILTERS: &[&str] = &[
    "indent",
    "nindent",
    "trunc",
    "toyaml",
    "tojson",
    "b64enc",
    "b64dec",
    "sha256",
    "quote",
    "squote",
    "join",
    "list",
    "string",
    "replace",
    "batch",
    "slice",
    "first",
    "last",
    "length",
    "sort",
    "unique",
    "reverse",
    "map",
    "items",
    "dictsort",
    "default",
    "required",
    "int",
    "float",
    "abs",
    "round",
    "lower",
    "upper",
    "title",
    "capitalize",
    "trim",
    "safe",
    "escape",
    "pprint",
    "tojson(pretty=true)|string",
    "select",
    "reject",
    "sum",
    "min",
    "max",
    "format",
];

/// Arguments at the extremes.
const ARGS: &[&str] = &[
    "",
    "0",
    "1",
    "-1",
    "2",
    "1024",
    "1025",
    "65536",
    "100000000",
    "100000000000",
    "2147483648",
    "9223372036854775807",
    "18446744073709551615",
    "-9223372036854775808",
    "'x' * 10000",
    "'attribute'",
    "'%99999999s'",
    "1e308",
    "none",
];

/// Ways to use the chain.
const USES: &[&str] = &[
    "{{ EXPR }}",
    "{% for i in EXPR %}{{ i }}{% endfor %}",
    "{% set x = EXPR %}{{ x ~ x ~ x }}",
    "{{ EXPR * 100000 }}",
    "{{ [EXPR] * 100000000 }}",
    "{% for i in range(100000) %}{{ EXPR }}{% endfor %}",
    "{{ include('_h.yaml', v=EXPR) }}",
];

fn pick<'a>(list: &[&'a str], byte: Option<&u8>) -> &'a str {
    list[usize::from(byte.copied().unwrap_or(0)) % list.len()]
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.iter();
    let mut expr = pick(BASES, bytes.next()).to_string();
    for _ in 0..4 {
        let Some(&b) = bytes.next() else { break };
        let filter = pick(FILTERS, Some(&b));
        let arg = pick(ARGS, bytes.next());
        expr = if arg.is_empty() || filter.contains('(') {
            format!("({expr}) | {filter}")
        } else {
            format!("({expr}) | {filter}({arg})")
        };
    }
    let body = pick(USES, bytes.next()).replace("EXPR", &expr);
    let template = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata:\n  a: |\n    {body}\n"
    );
    let mut snapshot = Snapshot::new();
    snapshot.insert(
        "lockstep.yaml",
        "project: f\nenvironments:\n  dev: {namespace: f-dev}\n",
    );
    snapshot.insert("templates/a.yaml", template.as_str());
    snapshot.insert(
        "templates/b.yaml",
        template.replace("name: c", "name: d").as_str(),
    );
    snapshot.insert(
        "templates/_h.yaml",
        "{{ v | default('h') }}{{ include('_h.yaml', v=v) }}",
    );
    snapshot.insert("values.yaml", "big: [1, 2, 3]\n");
    snapshot.insert(
        "environments/dev/secrets.yaml",
        "db:\n    password: ENC[AES256_GCM,data:AAAA,iv:AAAAAAAAAAAAAAAAAAAAAA==,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]\nsops:\n    age: []\n    lastmodified: \"2026-01-01T00:00:00Z\"\n    mac: ENC[AES256_GCM,data:AAAA,iv:AAAAAAAAAAAAAAAAAAAAAA==,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]\n    version: 3.9.0\n",
    );
    let req = Request {
        env: "dev".into(),
        ..Request::default()
    };
    let probe = Probe {
        exe: std::env::var_os("LOCKSTEP_PROBE_EXE")
            .map_or_else(|| "target/release/lockstep".into(), Into::into),
        memory: 128 * 1024 * 1024,
        time: std::time::Duration::from_secs(5),
    };
    if let Err(refused) = probe.check(&snapshot, &req) {
        // The controller reports it as the render's problem; the process itself never renders it.
        assert!(!refused.to_string().contains("cannot start"), "{refused}");
        return;
    }
    match render::render(&snapshot, &req) {
        Ok(rendered) => {
            let stream = rendered.to_yaml_stream();
            assert!(stream.len() <= 2 * render::budget::MAX_OUTPUT_BYTES);
        }
        Err(diagnostics) => {
            assert!(!lockstep::cli::render::draw(&diagnostics).is_empty());
        }
    }
});
