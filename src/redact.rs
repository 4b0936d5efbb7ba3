//! Text fit to show: URLs and options with their secrets replaced by `***`,
//! and the rules for names that other tools read (pipeline ids).
//!
//! Every message, log line and record that names a location goes through
//! [`redact_url`]; option sets go through [`redact_options`]. A process that
//! holds secrets (the CLI) also keeps them in a [`Secrets`] set and scrubs
//! every byte it prints with it, so that a dependency's error that echoes a
//! URL cannot leak one either.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use url::Url;

use crate::error::{Error, Result};

/// What a secret is replaced by.
pub const MASK: &str = "***";

/// Words that make an option, query parameter or environment variable name
/// a secret's name.
const SECRET_WORDS: [&str; 8] = [
    "key",
    "secret",
    "token",
    "password",
    "passwd",
    "credential",
    "signature",
    "session",
];

/// Whether an option, query parameter or environment variable named `name`
/// holds a secret: its name says key, secret, token, password, credential,
/// signature or session (any case), and it does not end in `_id` (an
/// identifier such as `aws_access_key_id` is no secret, and AWS shows it in
/// every signed request).
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word)) && !name.ends_with("_id")
}

/// `text` (a URL, possibly `iceberg+` or `delta+` prefixed, possibly with a
/// `#fragment`) with its password and the values of secret query parameters
/// replaced by `***`. Text that is not a URL is returned with anything
/// between `://` and an `@` masked.
pub fn redact_url(text: &str) -> String {
    let (body, fragment) = match text.split_once('#') {
        Some((body, fragment)) => (body, Some(fragment)),
        None => (text, None),
    };
    let (prefix, location) = match body.split_once('+') {
        Some((prefix, rest)) if rest.contains("://") && !prefix.contains("://") => {
            (format!("{prefix}+"), rest)
        }
        _ => (String::new(), body),
    };
    let redacted = match Url::parse(location) {
        Ok(url) => redact_parsed(url),
        Err(_) => mask_userinfo(location),
    };
    match fragment {
        Some(fragment) => format!("{prefix}{redacted}#{fragment}"),
        None => format!("{prefix}{redacted}"),
    }
}

fn redact_parsed(mut url: Url) -> String {
    if url.password().is_some() {
        // Cannot fail: a URL with a password has a host.
        let _ = url.set_password(Some(MASK));
    }
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let value = if is_secret_name(&k) {
                MASK.to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), value)
        })
        .collect();
    if pairs.iter().any(|(_, v)| v == MASK) {
        url.set_query(None);
        url.query_pairs_mut().extend_pairs(pairs);
    }
    url.to_string().replace("%2A%2A%2A", MASK)
}

/// Masks what stands between `://` and the last `@` before the next `/`.
fn mask_userinfo(text: &str) -> String {
    let Some(start) = text.find("://").map(|i| i + 3) else {
        return text.to_string();
    };
    let authority_end = text[start..].find('/').map_or(text.len(), |i| start + i);
    match text[start..authority_end].rfind('@') {
        Some(at) => format!("{}{MASK}{}", &text[..start], &text[start + at..]),
        None => text.to_string(),
    }
}

/// `options` with the values of secret names replaced by `***`, sorted by name.
pub fn redact_options(options: &HashMap<String, String>) -> BTreeMap<String, String> {
    options
        .iter()
        .map(|(k, v)| {
            let value = if is_secret_name(k) {
                MASK.to_string()
            } else {
                v.clone()
            };
            (k.clone(), value)
        })
        .collect()
}

/// The secret values a process was given, to scrub from any text it shows.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// Longest first, so that a secret containing another is masked whole.
    values: Vec<String>,
}

impl Secrets {
    /// The secrets in command-line arguments (URL passwords, secret query
    /// values, `KEY=VALUE` options with a secret name) and in the environment
    /// (variables with a secret name).
    pub fn gather<'a>(
        args: impl IntoIterator<Item = &'a str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let mut found = BTreeSet::new();
        for arg in args {
            secrets_of_arg(arg, &mut found);
        }
        for (name, value) in env {
            if is_secret_name(&name) {
                found.insert(value);
            }
        }
        let mut values: Vec<String> = found
            .into_iter()
            .filter(|v| could_be_secret(v))
            .flat_map(|v| {
                let encoded: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
                let escaped = percent_escape(&v);
                [v, encoded, escaped]
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Secrets { values }
    }

    /// Whether no secret is known.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every known secret replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.values {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), MASK);
            }
        }
        text
    }
}

/// The shortest value taken for a secret: masking a shorter one everywhere
/// would garble numbers and words in all that is shown.
const MIN_SECRET_LEN: usize = 4;

/// Whether a value given under a secret's name can be a secret: not a flag
/// (`aws_skip_signature=true`), not shorter than [`MIN_SECRET_LEN`].
fn could_be_secret(value: &str) -> bool {
    let flag = matches!(
        value.to_ascii_lowercase().as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off"
    );
    value.chars().count() >= MIN_SECRET_LEN && !flag && value != MASK
}

/// Every byte outside the unreserved set percent-encoded, as URLs carry a
/// password.
fn percent_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn secrets_of_arg(arg: &str, found: &mut BTreeSet<String>) {
    let arg = arg.strip_prefix("--option=").unwrap_or(arg);
    if arg.contains("://") {
        let body = arg.split_once('#').map_or(arg, |(body, _)| body);
        let location = match body.split_once('+') {
            Some((prefix, rest)) if !prefix.contains("://") => rest,
            _ => body,
        };
        match Url::parse(location) {
            Ok(url) => {
                if let Some(password) = url.password() {
                    found.insert(password.to_string());
                    if let Ok(decoded) = urlencoding_decode(password) {
                        found.insert(decoded);
                    }
                }
                for (k, v) in url.query_pairs() {
                    if is_secret_name(&k) {
                        found.insert(v.into_owned());
                    }
                }
            }
            Err(_) => {
                // Keep what stands between `://` and `@` as a secret.
                let masked = mask_userinfo(location);
                if masked != location {
                    if let Some(start) = location.find("://") {
                        let rest = &location[start + 3..];
                        if let Some(at) = rest.rfind('@') {
                            found.insert(rest[..at].to_string());
                        }
                    }
                }
            }
        }
    } else if let Some((name, value)) = arg.split_once('=') {
        if is_secret_name(name) {
            found.insert(value.to_string());
        }
    }
}

fn urlencoding_decode(text: &str) -> std::result::Result<String, std::string::FromUtf8Error> {
    let bytes: Vec<u8> = url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned().into_bytes())
        .unwrap_or_default();
    String::from_utf8(bytes)
}

/// The longest pipeline id.
pub const MAX_PIPELINE_ID_LEN: usize = 128;

/// The rule a pipeline id follows, for messages.
pub const PIPELINE_ID_RULE: &str = "1 to 128 characters: ASCII letters, digits, `.`, `_` and `-`, \
     starting with a letter or digit (it becomes part of Delta txn app ids, Iceberg \
     table property keys and snapshot summaries, which other tools read)";

/// Whether `name` holds only ASCII letters, digits, `.`, `_` and `-`: safe in
/// object paths, table property keys and app ids.
pub(crate) fn is_plain_name(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Checks a pipeline id against [`PIPELINE_ID_RULE`].
pub fn validate_pipeline_id(id: &str) -> Result<()> {
    let starts_well = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if starts_well && id.len() <= MAX_PIPELINE_ID_LEN && is_plain_name(id) {
        Ok(())
    } else {
        Err(Error::InvalidPipelineId {
            id: id.escape_debug().to_string(),
            rule: PIPELINE_ID_RULE,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_secret_parameters_are_masked() {
        assert_eq!(
            redact_url(
                "iceberg+postgresql://u:s3cr%40t@db:5432/cat?warehouse=s3://b/w&password=x#ns.t"
            ),
            "iceberg+postgresql://u:***@db:5432/cat?warehouse=s3%3A%2F%2Fb%2Fw&password=***#ns.t"
        );
        assert_eq!(
            redact_url("delta+s3://bucket/t?aws_secret_access_key=abc&region=x"),
            "delta+s3://bucket/t?aws_secret_access_key=***&region=x"
        );
        assert_eq!(redact_url("s3://bucket/prefix"), "s3://bucket/prefix");
        assert_eq!(
            redact_url("not a url://u:p@host/x"),
            "not a url://***@host/x"
        );
    }

    #[test]
    fn secret_options_are_masked() {
        let options = HashMap::from([
            ("aws_access_key_id".to_string(), "AKIA".to_string()),
            ("aws_secret_access_key".to_string(), "abc".to_string()),
            ("aws_region".to_string(), "eu".to_string()),
            ("token".to_string(), "t".to_string()),
        ]);
        let redacted = redact_options(&options);
        assert_eq!(redacted["aws_secret_access_key"], MASK);
        assert_eq!(redacted["token"], MASK);
        assert_eq!(redacted["aws_region"], "eu");
        assert_eq!(redacted["aws_access_key_id"], "AKIA");
    }

    #[test]
    fn gathered_secrets_are_scrubbed_in_every_spelling() {
        let secrets = Secrets::gather(
            [
                "iceberg+postgresql://u:p%40ss@db/cat#ns.t",
                "aws_secret_access_key=k3y4",
                "--option=session_token=tok3n",
                "aws_region=eu",
            ],
            [("AWS_SECRET_ACCESS_KEY".to_string(), "envkey".to_string())],
        );
        let text = "u:p%40ss@db p@ss k3y4 tok3n envkey eu";
        assert_eq!(secrets.scrub(text), "u:***@db *** *** *** *** eu");
        // Flags and very short values under secret names are not secrets:
        // masking them would garble every `true` and `1` shown.
        let flags = Secrets::gather(["aws_skip_signature=true", "token=1"], []);
        assert!(flags.is_empty());
        assert_eq!(flags.scrub("\"clean\": true, 1"), "\"clean\": true, 1");
    }

    #[test]
    fn pipeline_ids_follow_the_rule() {
        for good in ["daily-docs", "a", "v1.2_x", &"a".repeat(128)] {
            assert!(validate_pipeline_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../../escape",
            "-x",
            "a/b",
            "a b",
            "é",
            &"a".repeat(129),
            "a\n",
        ] {
            assert!(validate_pipeline_id(bad).is_err(), "{bad:?}");
        }
    }
}
