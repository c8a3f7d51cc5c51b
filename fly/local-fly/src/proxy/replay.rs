//! `fly-replay`: a machine's answer asking the proxy to deliver the
//! original request somewhere else, in its two documented forms
//! (<https://fly.io/docs/networking/dynamic-request-routing/>):
//!
//! - the header: "Your app can add a `fly-replay` header to its response",
//!   `;`-separated `key=value` fields (`region`, `instance`,
//!   `prefer_instance`, `app`, `state`, `elsewhere`); "A comma-separated
//!   list of regions must be quoted";
//! - the body: "Your app can set the response content-type to
//!   `application/vnd.fly.replay+json` and include replay instructions in
//!   the response body", the same fields plus `transform.path` ("Rewrite
//!   the path and query parameters of the request"),
//!   `transform.delete_headers` and `transform.set_headers` ("overwriting
//!   headers of the same name").
//!
//! `timeout`, `fallback` and `cache` are accepted and ignored: the local
//! proxy does not model them.

use serde::Deserialize;

/// The response header of the header form.
pub const REPLAY_HEADER: &str = "fly-replay";
/// The content type of the JSON form.
pub const REPLAY_CONTENT_TYPE: &str = "application/vnd.fly.replay+json";

/// Where and how to replay a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// Another app (of the same organisation); `None`: the same app.
    pub app: Option<String>,
    /// This machine and no other.
    pub instance: Option<String>,
    /// This machine if it can take the request, else another.
    pub prefer_instance: Option<String>,
    /// Region codes, in order of preference (`any`: anywhere).
    pub region: Option<Vec<String>>,
    /// Echoed to the target in `fly-replay-src`.
    pub state: Option<String>,
    /// Exclude the machine that answered from the choice.
    pub elsewhere: bool,
    pub transform: Transform,
}

/// Changes to the request before it is replayed (JSON form only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Transform {
    /// The new path and query.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub set_headers: Vec<SetHeader>,
    #[serde(default)]
    pub delete_headers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SetHeader {
    pub name: String,
    pub value: String,
}

/// Parses the `fly-replay` header form.
pub fn parse_header(value: &str) -> Result<Replay, String> {
    let mut replay = Replay::default();
    for field in split_fields(value)? {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        let (key, raw) = field
            .split_once('=')
            .ok_or_else(|| format!("field {field:?} is not key=value"))?;
        let key = key.trim().to_ascii_lowercase();
        let value = unquote(raw.trim());
        match key.as_str() {
            "app" => replay.app = non_empty(value),
            "instance" => replay.instance = non_empty(value),
            "prefer_instance" => replay.prefer_instance = non_empty(value),
            "region" => replay.region = regions(&value),
            "state" => replay.state = Some(value),
            "elsewhere" => replay.elsewhere = boolean(&value)?,
            // Documented, not modelled: a replay either works or errors.
            "timeout" | "fallback" => {}
            _ => return Err(format!("unknown field {key:?}")),
        }
    }
    Ok(replay)
}

/// Parses the `application/vnd.fly.replay+json` body form.
pub fn parse_json(body: &[u8]) -> Result<Replay, String> {
    #[derive(Deserialize)]
    struct Json {
        #[serde(default)]
        app: Option<String>,
        #[serde(default)]
        instance: Option<String>,
        #[serde(default)]
        prefer_instance: Option<String>,
        #[serde(default)]
        region: Option<String>,
        #[serde(default)]
        state: Option<String>,
        #[serde(default)]
        elsewhere: Option<bool>,
        #[serde(default)]
        transform: Option<Transform>,
    }
    let json: Json = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(Replay {
        app: json.app.and_then(non_empty),
        instance: json.instance.and_then(non_empty),
        prefer_instance: json.prefer_instance.and_then(non_empty),
        region: json.region.as_deref().and_then(regions),
        state: json.state,
        elsewhere: json.elsewhere.unwrap_or(false),
        transform: json.transform.unwrap_or_default(),
    })
}

/// Splits on `;` outside double quotes.
fn split_fields(value: &str) -> Result<Vec<&str>, String> {
    let mut fields = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => {
                fields.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("unterminated quote".to_owned());
    }
    fields.push(&value[start..]);
    Ok(fields)
}

fn unquote(value: &str) -> String {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
        .to_owned()
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn regions(value: &str) -> Option<Vec<String>> {
    let list: Vec<String> = value
        .split(',')
        .map(|r| r.trim().to_ascii_lowercase())
        .filter(|r| !r.is_empty())
        .collect();
    (!list.is_empty()).then_some(list)
}

fn boolean(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        other => Err(format!("elsewhere={other:?} is not a boolean")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields() {
        let replay = parse_header(
            r#"app=agents; instance=148e21ea7d9089;state=a=b;elsewhere=true;region="ams,any""#,
        );
        assert_eq!(
            replay,
            Ok(Replay {
                app: Some("agents".to_owned()),
                instance: Some("148e21ea7d9089".to_owned()),
                region: Some(vec!["ams".to_owned(), "any".to_owned()]),
                state: Some("a=b".to_owned()),
                elsewhere: true,
                ..Replay::default()
            })
        );
        assert_eq!(parse_header(""), Ok(Replay::default()));
        assert!(parse_header("instance").is_err());
        assert!(parse_header("elsewhere=perhaps").is_err());
        assert!(parse_header("region=\"ams").is_err());
        assert!(parse_header("colour=blue").is_err());
    }

    #[test]
    fn json_fields() {
        let replay = parse_json(
            br#"{"app":"agents","instance":"m1","state":"s","transform":{"path":"/x?y=1",
                "set_headers":[{"name":"a","value":"b"}],"delete_headers":["c"]},
                "cache":{"ttl":30}}"#,
        );
        assert_eq!(
            replay,
            Ok(Replay {
                app: Some("agents".to_owned()),
                instance: Some("m1".to_owned()),
                state: Some("s".to_owned()),
                transform: Transform {
                    path: Some("/x?y=1".to_owned()),
                    set_headers: vec![SetHeader {
                        name: "a".to_owned(),
                        value: "b".to_owned()
                    }],
                    delete_headers: vec!["c".to_owned()],
                },
                ..Replay::default()
            })
        );
        assert!(parse_json(b"not json").is_err());
    }
}
