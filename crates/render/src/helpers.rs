//! Template helpers users of Helm expect, aware of sealed references.
//!
//! | helper | as in Helm | with a sealed reference |
//! |---|---|---|
//! | `toyaml`/`toYaml`, `tojson`/`toJson` | yes | placeholders are kept as strings |
//! | `indent(n)` (every line), `nindent(n)` | yes | fine |
//! | `b64encode`/`b64enc` | yes | a reference marked `|base64` (encoded at apply time) |
//! | `b64decode`/`b64dec` | yes | an error: that would need the value |
//! | `sha256`/`sha256sum` | yes | of a reference: an error; of text holding placeholders (an `include`d Secret): a checksum that follows the ciphertexts |
//! | `quote`, `squote` | yes | fine |
//! | `required(msg)` filter, `required(msg, value)` function | yes | fine |
//! | `default` (built in), `include(name, **vars)`, `fail(msg)`, `trunc(n)` | yes | fine |
//! | `string`/`toString`, `join` | yes: booleans as `true`/`false`, lists and maps as flow YAML | the reference |

use std::cell::Cell;

use base64::Engine as _;
use minijinja::value::{Kwargs, ObjectRepr, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use sha2::Digest as _;

use super::budget;
use super::sealed::{SealedRef, Transform};

/// Deepest `include()` nesting allowed (templates come from Git; a self-include must not overflow the stack).
pub const MAX_INCLUDE_DEPTH: usize = 16;

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

fn sealed(v: &Value) -> Option<&SealedRef> {
    v.downcast_object_ref::<SealedRef>()
}

fn refuse_sealed(helper: &str, v: &Value, text: &str) -> Result<(), Error> {
    if let Some(r) = sealed(v) {
        return Err(invalid(format!(
            "{helper} cannot be applied to the sealed secret {}: it would need the plaintext, which render never has",
            r.display_path()
        )));
    }
    if SealedRef::mentioned_in(text) {
        return Err(invalid(format!(
            "{helper} cannot be applied to text that embeds a sealed secret: it would need the plaintext, which render never has"
        )));
    }
    Ok(())
}

/// Converts a template value into a YAML value; sealed references become their placeholders.
/// What it builds is sized against the render's budget as it goes (a lazily repeated list of
/// lists must fail, not fill memory).
pub fn to_yaml_value(v: &Value) -> Result<yaml_serde::Value, Error> {
    let mut left = budget::bytes_left();
    yaml_within(v, &mut left, 0)
}

/// Deepest nesting of maps and lists a helper serializes (Kubernetes objects stay far below; a
/// template-built list nested a million deep must not overflow the stack).
pub const MAX_VALUE_DEPTH: usize = 128;

fn over_budget(helper: &str) -> Error {
    invalid(format!(
        "{helper}: the value is larger than what is left of the render's output budget"
    ))
}

/// Takes `n` from `left`, or fails naming the helper.
fn spend(left: &mut usize, n: usize) -> Result<(), Error> {
    *left = left
        .checked_sub(n)
        .ok_or_else(|| over_budget("serializing"))?;
    Ok(())
}

fn yaml_within(v: &Value, left: &mut usize, depth: usize) -> Result<yaml_serde::Value, Error> {
    use yaml_serde::Value as Y;
    // Each node costs what it takes in memory, not only what it prints.
    spend(left, std::mem::size_of::<Y>())?;
    if depth > MAX_VALUE_DEPTH {
        return Err(invalid(format!(
            "the value is nested more than {MAX_VALUE_DEPTH} levels deep"
        )));
    }
    if let Some(r) = sealed(v) {
        return Ok(Y::String(r.placeholder()));
    }
    Ok(match v.kind() {
        ValueKind::Undefined => {
            return Err(Error::new(
                ErrorKind::UndefinedError,
                "cannot serialize an undefined value",
            ));
        }
        ValueKind::None => Y::Null,
        ValueKind::Bool => Y::Bool(v.is_true()),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                Y::Number(i.into())
            } else if let Ok(u) = u64::try_from(v.clone()) {
                Y::Number(u.into())
            } else {
                let f = f64::try_from(v.clone())?;
                Y::Number(f.into())
            }
        }
        ValueKind::String => {
            let text = v.as_str().unwrap_or_default();
            spend(left, text.len())?;
            Y::String(text.to_string())
        }
        ValueKind::Bytes => {
            let bytes = v.as_bytes().unwrap_or_default();
            spend(left, bytes.len())?;
            Y::String(String::from_utf8_lossy(bytes).into())
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let mut seq = Vec::new();
            for item in v.try_iter()? {
                seq.push(yaml_within(&item, left, depth + 1)?);
            }
            Y::Sequence(seq)
        }
        ValueKind::Map => {
            let mut map = yaml_serde::Mapping::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                map.insert(
                    yaml_within(&key, left, depth + 1)?,
                    yaml_within(&item, left, depth + 1)?,
                );
            }
            Y::Mapping(map)
        }
        ValueKind::Plain => plain_within(v, left)?,
        ValueKind::Invalid => {
            // Using the value surfaces the error it carries.
            v.try_iter()?;
            return Err(invalid("invalid value"));
        }
        _ => plain_within(v, left)?,
    })
}

/// An object without a map or sequence shape, as the string it prints.
fn plain_within(v: &Value, left: &mut usize) -> Result<yaml_serde::Value, Error> {
    let text = v.to_string();
    spend(left, text.len())?;
    Ok(yaml_serde::Value::String(text))
}

/// Charges a helper's result to the render's budget (it is charged again where it is printed;
/// this stops one expression from building a huge value that is never printed).
fn result_within(helper: &str, text: String) -> Result<String, Error> {
    if text.len() > budget::bytes_left() {
        return Err(over_budget(helper));
    }
    Ok(text)
}

fn to_json_value(v: &Value) -> Result<serde_json::Value, Error> {
    let y = to_yaml_value(v)?;
    serde_json::to_value(&y).map_err(|e| invalid(format!("cannot convert to JSON: {e}")))
}

fn toyaml(v: &Value) -> Result<String, Error> {
    let y = to_yaml_value(v)?;
    let text = yaml_serde::to_string(&y).map_err(|e| invalid(format!("toyaml: {e}")))?;
    result_within("toyaml", text.trim_end_matches('\n').to_string())
}

fn tojson(v: &Value, kwargs: Kwargs) -> Result<String, Error> {
    let pretty: Option<bool> = kwargs.get("pretty")?;
    kwargs.assert_all_used()?;
    let j = to_json_value(v)?;
    let out = if pretty.unwrap_or(false) {
        serde_json::to_string_pretty(&j)
    } else {
        serde_json::to_string(&j)
    };
    result_within("tojson", out.map_err(|e| invalid(format!("tojson: {e}")))?)
}

fn text_of(v: &Value) -> String {
    if v.kind() == ValueKind::Bool {
        return if v.is_true() { "true" } else { "false" }.to_string();
    }
    match v.as_bytes() {
        Some(b) if v.kind() == ValueKind::Bytes => String::from_utf8_lossy(b).into_owned(),
        _ => v.to_string(),
    }
}

fn b64encode(v: &Value) -> Result<Value, Error> {
    if let Some(r) = sealed(v) {
        if r.transform == Transform::Base64 {
            return Err(invalid(format!(
                "{} is already base64-encoded; apply b64encode once",
                r.display_path()
            )));
        }
        let mut r = r.clone();
        r.transform = Transform::Base64;
        return Ok(Value::from_object(r));
    }
    let text = text_of(v);
    if SealedRef::mentioned_in(&text) {
        return Err(invalid(
            "b64encode cannot encode text that embeds a sealed secret; put the text in the Secret's stringData instead (the API server encodes it)",
        ));
    }
    Ok(Value::from(
        base64::engine::general_purpose::STANDARD.encode(text.as_bytes()),
    ))
}

fn b64decode(v: &Value) -> Result<String, Error> {
    let text = text_of(v);
    refuse_sealed("b64decode", v, &text)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim().as_bytes())
        .map_err(|e| invalid(format!("b64decode: not valid base64: {e}")))?;
    String::from_utf8(bytes).map_err(|_| invalid("b64decode: the decoded bytes are not UTF-8 text"))
}

fn sha256(v: &Value) -> Result<String, Error> {
    let text = if v.kind() == ValueKind::Map || v.kind() == ValueKind::Seq {
        toyaml(v)?
    } else {
        text_of(v)
    };
    // A checksum of rendered text that holds placeholders (`include("secret.yaml") | sha256`)
    // is fine: placeholders carry their ciphertext's digest, so it changes when a value does. A
    // reference itself is refused: its hash would be taken for the value's.
    if let Some(r) = sealed(v) {
        return Err(invalid(format!(
            "sha256 cannot be applied to the sealed secret {}: it would need the plaintext, which render never has (for a checksum that rolls pods on a new value, hash the rendered Secret: include(\"secret.yaml\") | sha256)",
            r.display_path()
        )));
    }
    Ok(hex::encode(sha2::Sha256::digest(text.as_bytes())))
}

fn quote_with(v: &Value, single: bool) -> Result<String, Error> {
    if v.is_undefined() {
        return Err(Error::new(
            ErrorKind::UndefinedError,
            "quote of an undefined value",
        ));
    }
    let text = if v.is_none() {
        String::new()
    } else {
        text_of(v)
    };
    if single {
        Ok(format!("'{}'", text.replace('\'', "''")))
    } else {
        serde_json::to_string(&text).map_err(|e| invalid(format!("quote: {e}")))
    }
}

/// The widest `indent`/`nindent` accepted: a template from Git must not make the process allocate
/// without bound (minijinja charges fuel only after a filter returns).
pub const MAX_INDENT: usize = 1024;

/// `text` with every non-empty line indented by `width` spaces (at most [`MAX_INDENT`]).
fn indent(text: &str, width: usize, filter: &str) -> Result<String, Error> {
    if width > MAX_INDENT {
        return Err(invalid(format!(
            "{filter}({width}): at most {MAX_INDENT} columns"
        )));
    }
    let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
    let size = lines.saturating_mul(width).saturating_add(text.len());
    if size > budget::bytes_left() {
        return Err(over_budget(filter));
    }
    Ok(indent_lines(text, width))
}

fn indent_lines(text: &str, width: usize) -> String {
    let pad = " ".repeat(width);
    let mut out = String::with_capacity(text.len() + width * 4);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str(line);
        }
    }
    out
}

fn is_missing(v: &Value) -> bool {
    v.is_undefined() || v.is_none() || (v.kind() == ValueKind::String && v.as_str() == Some(""))
}

/// `v`, or an error with `message` when it is undefined, none or empty (as Helm's `required`).
fn require(v: &Value, message: &str) -> Result<Value, Error> {
    if is_missing(v) {
        return Err(Error::new(ErrorKind::UndefinedError, message.to_string()));
    }
    Ok(v.clone())
}

thread_local! {
    static INCLUDE_DEPTH: Cell<usize> = const { Cell::new(0) };
}

struct DepthGuard;

impl DepthGuard {
    fn enter(name: &str) -> Result<DepthGuard, Error> {
        let depth = INCLUDE_DEPTH.with(|d| d.get());
        if depth >= MAX_INCLUDE_DEPTH {
            return Err(invalid(format!(
                "include({name:?}): more than {MAX_INCLUDE_DEPTH} nested includes (does a template include itself?)"
            )));
        }
        INCLUDE_DEPTH.with(|d| d.set(depth + 1));
        Ok(DepthGuard)
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        INCLUDE_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

fn include(state: &State, name: &str, kwargs: Kwargs) -> Result<String, Error> {
    let _guard = DepthGuard::enter(name)?;
    let template = state.env().get_template(name)?;
    // Outside a render (a helper used on its own) an include gets a budget of its own.
    let budget = budget::current().unwrap_or_else(|| budget::Budget::new(Default::default()));
    let mut sink = budget::Sink::new(budget.clone());
    let captured = template.render_captured_to(Value::from(kwargs), &mut sink)?;
    charge_include_fuel(state, &captured)?;
    drop(captured);
    // The caller charges these bytes again where it prints them.
    budget.refund_bytes(sink.len());
    Ok(sink.into_string())
}

/// The included render had its own fuel; charge what it used to the caller so nesting cannot
/// multiply the budget.
fn charge_include_fuel(state: &State, captured: &minijinja::Captured<'_>) -> Result<(), Error> {
    if let Some((consumed, _)) = captured.state().fuel_levels() {
        state.consume_fuel(consumed)?;
    }
    Ok(())
}

/// Registers every helper on a template environment.
pub fn register(env: &mut Environment<'_>) {
    env.add_filter("toyaml", toyaml);
    env.add_filter("toYaml", toyaml);
    env.add_filter("to_yaml", toyaml);
    env.add_filter("tojson", tojson);
    env.add_filter("toJson", tojson);
    env.add_filter("to_json", tojson);
    env.add_filter("b64encode", b64encode);
    env.add_filter("b64enc", b64encode);
    env.add_filter("b64decode", b64decode);
    env.add_filter("b64dec", b64decode);
    env.add_filter("sha256", sha256);
    env.add_filter("sha256sum", sha256);
    env.add_filter("quote", |v: &Value| quote_with(v, false));
    env.add_filter("squote", |v: &Value| quote_with(v, true));
    env.add_filter("indent", |v: &Value, width: usize| {
        indent(&text_of(v), width, "indent")
    });
    env.add_filter("nindent", |v: &Value, width: usize| {
        Ok::<_, Error>(format!("\n{}", indent(&text_of(v), width, "nindent")?))
    });
    env.add_filter("trunc", |v: &Value, n: usize| {
        let text = text_of(v);
        Ok::<_, Error>(text.chars().take(n).collect::<String>())
    });
    env.add_filter("required", |v: &Value, message: Option<&str>| {
        require(v, message.unwrap_or("a required value is missing"))
    });
    // Helm's argument order: required "message" value.
    env.add_function("required", |message: &str, v: &Value| require(v, message));
    env.add_function("fail", |message: &str| -> Result<Value, Error> {
        Err(invalid(message.to_string()))
    });
    env.add_function("include", include);
    env.add_filter("string", string);
    env.add_filter("toString", string);
    env.add_filter("join", join);
}

/// `string`: what `{{ v }}` prints, as a string — booleans `true`/`false` and `none` `null` as
/// YAML and Helm's `toString` spell them (minijinja's own says `True`/`None`), lists and mappings
/// as flow YAML; a sealed reference stays one.
fn string(state: &State<'_, '_>, v: &Value) -> Result<Value, Error> {
    if sealed(v).is_some() {
        return minijinja::filters::string(state, v);
    }
    match v.kind() {
        ValueKind::Bool => Ok(Value::from(if v.is_true() { "true" } else { "false" })),
        ValueKind::None => Ok(Value::from("null")),
        ValueKind::Seq | ValueKind::Map => {
            check_printable(v)?;
            let text = serde_json::to_string(&to_json_value(v)?)
                .map_err(|e| invalid(format!("string: {e}")))?;
            Ok(Value::from(result_within("string", text)?))
        }
        _ => minijinja::filters::string(state, v),
    }
}

/// `join(joiner="", attribute=None)`: the items (or their dotted `attribute`) as text, booleans
/// spelled `true`/`false`, `none` as an empty string, as Jinja's `join` otherwise.
fn join(v: &Value, joiner: Option<&str>, attribute: Option<&str>) -> Result<Value, Error> {
    check_printable(v)?;
    let joiner = joiner.unwrap_or("");
    let mut out = String::new();
    let items: Vec<Value> = match v.as_str() {
        Some(text) => text.chars().map(Value::from).collect(),
        None => v.try_iter()?.collect(),
    };
    for (i, item) in items.into_iter().enumerate() {
        let mut item = item;
        for part in attribute
            .unwrap_or_default()
            .split('.')
            .filter(|p| !p.is_empty())
        {
            item = item.get_attr(part)?;
        }
        if i > 0 {
            out.push_str(joiner);
        }
        match item.kind() {
            ValueKind::Bool => out.push_str(if item.is_true() { "true" } else { "false" }),
            ValueKind::None | ValueKind::Undefined => {}
            _ => out.push_str(&item.to_string()),
        }
        if out.len() > budget::bytes_left() {
            return Err(over_budget("join"));
        }
    }
    Ok(Value::from(out))
}

/// Refuses a list or mapping too long to print within what is left of the render's budget
/// (each item prints at least two bytes), before anything walks it.
fn check_printable(v: &Value) -> Result<(), Error> {
    if let Some(len) = v.len()
        && matches!(
            v.kind(),
            ValueKind::Seq | ValueKind::Iterable | ValueKind::Map
        )
        && len.saturating_mul(2) > budget::bytes_left()
    {
        return Err(over_budget("printing"));
    }
    Ok(())
}

/// The output formatter: YAML spellings for `none` and booleans, no escaping.
pub fn format_value(
    out: &mut minijinja::Output<'_>,
    state: &mut State<'_, '_>,
    v: &Value,
) -> Result<(), Error> {
    if v.is_none() {
        out.write_str("null")?;
        return Ok(());
    }
    if v.kind() == ValueKind::Bool {
        out.write_str(if v.is_true() { "true" } else { "false" })?;
        return Ok(());
    }
    // A lazily repeated list too long for the budget is refused before minijinja walks it (its
    // formatter keeps iterating after a write fails).
    check_printable(v)?;
    if let Some(obj) = v.as_object()
        && matches!(obj.repr(), ObjectRepr::Map | ObjectRepr::Seq)
        && sealed(v).is_none()
    {
        // A whole mapping or list printed inline (e.g. `{{ values.labels }}`) is written as flow
        // YAML, with YAML's `true`/`false`/`null`.
        let text = serde_json::to_string(&to_json_value(v)?)
            .map_err(|e| invalid(format!("cannot print mapping: {e}")))?;
        out.write_str(&text)?;
        return Ok(());
    }
    minijinja::escape_formatter(out, state, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indent_pads_every_non_empty_line() {
        assert_eq!(indent_lines("a: 1\n\nb: 2", 2), "  a: 1\n\n  b: 2");
    }

    #[test]
    fn indent_widths_are_bounded_so_a_template_cannot_exhaust_memory_or_panic() {
        let mut env = Environment::new();
        register(&mut env);
        for width in ["100000000000", "18446744073709551615", "1025"] {
            for filter in ["indent", "nindent"] {
                let template = format!("{{{{ 'x' | {filter}({width}) }}}}");
                let err = env
                    .render_str(&template, ())
                    .expect_err("an error, not an allocation");
                assert!(err.to_string().contains("at most 1024 columns"), "{err}");
            }
        }
        assert_eq!(
            env.render_str("{{ 'x' | indent(1024) }}", ())
                .expect("renders")
                .len(),
            1025
        );
    }

    #[test]
    fn booleans_and_none_turn_into_text_as_yaml_and_helm_spell_them() {
        let mut env = Environment::new();
        register(&mut env);
        env.set_formatter(format_value);
        let ctx = minijinja::context! { off => false, on => true, nothing => () };
        let render = |t: &str| env.render_str(t, &ctx).expect("renders");
        assert_eq!(render("{{ off | string }}"), "false");
        assert_eq!(render("{{ on | toString | upper }}"), "TRUE");
        assert_eq!(render("{{ (off | string) == 'false' }}"), "true");
        assert_eq!(render("{{ nothing | string }}"), "null");
        assert_eq!(
            render("{{ [on, off, nothing] | join(',') }}"),
            "true,false,"
        );
        assert_eq!(render("{{ 'abc' | join('-') }}"), "a-b-c");
        assert_eq!(
            render("{{ [on, nothing, 1, 'a'] }}"),
            r#"[true,null,1,"a"]"#
        );
        assert_eq!(render("{{ [on, 'x'] | string }}"), r#"[true,"x"]"#);
        assert_eq!(render("{{ 7 | string }}{{ 'text' | string }}"), "7text");
    }

    #[test]
    fn quote_escapes_for_yaml() {
        assert_eq!(
            quote_with(&Value::from("a\"b"), false).expect("quote"),
            r#""a\"b""#
        );
        assert_eq!(
            quote_with(&Value::from("it's"), true).expect("squote"),
            "'it''s'"
        );
    }
}
