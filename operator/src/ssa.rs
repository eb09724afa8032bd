//! Server-side apply bodies the API server reads back exactly.
//!
//! An apply patch is sent as `application/apply-patch+yaml`, and the API server parses it as YAML.
//! JSON is YAML, except that YAML refuses some characters JSON may carry raw (DEL, the C1 controls,
//! U+FFFE and U+FFFF: "control characters are not allowed") and YAML 1.1 folds others as line
//! breaks (NEL, U+2028, U+2029). An environment variable's value or an image name may hold any of
//! them, so the body escapes them as `\uXXXX`, which JSON and YAML both read back as the character.

use std::io;

use kube::api::Patch;
use serde::Serialize;
use serde_json::value::RawValue;

/// `obj` as an apply patch whose text any YAML parser reads back as `obj`.
pub fn patch<T: Serialize>(obj: &T) -> Result<Patch<Box<RawValue>>, serde_json::Error> {
    let mut out = Vec::new();
    obj.serialize(&mut serde_json::Serializer::with_formatter(&mut out, YamlSafe))?;
    // The serialiser writes valid UTF-8; `from_utf8` cannot fail.
    let text = String::from_utf8(out).map_err(|e| serde::ser::Error::custom(e.to_string()))?;
    Ok(Patch::Apply(RawValue::from_string(text)?))
}

/// Characters YAML refuses or reads as a line break; every one is in the Basic Multilingual Plane,
/// so one `\uXXXX` escape spells it.
fn needs_escape(c: char) -> bool {
    matches!(c, '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}')
}

/// serde_json's compact output, with [`needs_escape`] characters escaped in strings too.
struct YamlSafe;

impl serde_json::ser::Formatter for YamlSafe {
    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        let mut rest = fragment;
        while let Some((i, c)) = rest.char_indices().find(|&(_, c)| needs_escape(c)) {
            let (head, tail) = rest.split_at(i);
            writer.write_all(head.as_bytes())?;
            write!(writer, "\\u{:04x}", u32::from(c))?;
            rest = tail.get(c.len_utf8()..).unwrap_or_default();
        }
        writer.write_all(rest.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn body(v: &serde_json::Value) -> String {
        match patch(v).unwrap() {
            Patch::Apply(raw) => raw.get().to_string(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn escapes_what_yaml_refuses() {
        assert_eq!(body(&json!({"v": "a\u{7f}b\u{85}c\u{2028}\u{fffe}"})), r#"{"v":"a\u007fb\u0085c\u2028\ufffe"}"#);
        assert_eq!(body(&json!({"v": "é🙂\u{202e}\n"})), "{\"v\":\"é🙂\u{202e}\\n\"}");
    }

    proptest! {
        #[test]
        fn yaml_reads_back_what_was_sent(s in "[\\s\\S]{0,64}|\\PC{0,64}", k in "\\PC{0,8}") {
            let v = json!({"metadata": {"name": "x"}, k: s, "list": [s]});
            let text = body(&v);
            let back: serde_json::Value =
                serde_yaml::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
            prop_assert_eq!(&back, &v);
            prop_assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), v);
        }
    }
}
