//! Reads the `usage` out of an OpenAI SSE stream as it passes, and strips the usage-only chunk
//! when the router asked for it and the client did not. Events are forwarded as soon as they are
//! complete; nothing else is held back.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

/// Prompt and completion tokens of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// `usage.prompt_tokens`.
    pub prompt: u64,
    /// `usage.completion_tokens`.
    pub completion: u64,
}

impl Usage {
    /// The `usage` object of a response body or chunk, if it has one.
    pub fn of(v: &Value) -> Option<Usage> {
        let u = v.get("usage")?;
        Some(Usage { prompt: u.get("prompt_tokens")?.as_u64()?, completion: u.get("completion_tokens")?.as_u64()? })
    }
}

/// State of one stream.
#[derive(Debug)]
pub struct UsageFilter {
    pending: BytesMut,
    strip: bool,
    /// The usage seen so far (the last chunk that carried one).
    pub usage: Option<Usage>,
}

impl UsageFilter {
    /// `strip`: drop the usage-only chunk (the client did not ask for it).
    pub fn new(strip: bool) -> Self {
        UsageFilter { pending: BytesMut::new(), strip, usage: None }
    }

    /// Takes a chunk from the backend, returns what to send to the client now.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.pending.extend_from_slice(chunk);
        let Some(end) = last_event_end(&self.pending) else { return Bytes::new() };
        let complete = self.pending.split_to(end).freeze();
        if !contains(&complete, b"\"usage\":{") {
            return complete;
        }
        let mut out = BytesMut::with_capacity(complete.len());
        for event in split_events(&complete) {
            let chunk = data_json(event);
            if let Some(u) = chunk.as_ref().and_then(Usage::of) {
                self.usage = Some(u);
                let usage_only = chunk
                    .as_ref()
                    .and_then(|c| c.get("choices"))
                    .and_then(Value::as_array)
                    .is_some_and(|c| c.is_empty());
                if self.strip && usage_only {
                    continue;
                }
            }
            out.extend_from_slice(event);
        }
        out.freeze()
    }

    /// The rest, when the backend's stream ends.
    pub fn finish(&mut self) -> Bytes {
        std::mem::take(&mut self.pending).freeze()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The end (exclusive) of the last complete event: just after the last blank line.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).rposition(|w| w == b"\n\n").map(|i| i + 2)
}

/// Complete events, each with its terminating blank line.
fn split_events(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.windows(2).position(|w| w == b"\n\n").map(|i| i + 2).unwrap_or(rest.len());
        let (event, tail) = rest.split_at(end);
        rest = tail;
        Some(event)
    })
}

/// The JSON of an event's `data:` lines, if it is JSON.
fn data_json(event: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(event).ok()?;
    let data: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.strip_prefix(' ').unwrap_or(d)).collect();
    serde_json::from_str(&data.join("\n")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &str = "data: {\"choices\":[{\"index\":0,\"text\":\"Once\"}]}\n\n";
    const LAST: &str = "data: {\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"length\"}]}\n\n";
    const USAGE: &str =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn run(strip: bool, pieces: &[&[u8]]) -> (String, Option<Usage>) {
        let mut f = UsageFilter::new(strip);
        let mut out = Vec::new();
        for p in pieces {
            out.extend_from_slice(&f.push(p));
        }
        out.extend_from_slice(&f.finish());
        (String::from_utf8(out).unwrap(), f.usage)
    }

    #[test]
    fn strips_the_usage_chunk_only_when_asked() {
        let all = [CHUNK, LAST, USAGE, DONE].concat();
        let want = Some(Usage { prompt: 5, completion: 7 });
        assert_eq!(run(false, &[all.as_bytes()]), (all.clone(), want));
        assert_eq!(run(true, &[all.as_bytes()]), ([CHUNK, LAST, DONE].concat(), want));
    }

    #[test]
    fn events_split_across_chunks_are_forwarded_once_complete() {
        let all = [CHUNK, USAGE, DONE].concat();
        let bytes = all.as_bytes();
        for cut in 1..bytes.len() {
            let (out, usage) = run(true, &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(out, [CHUNK, DONE].concat(), "cut at {cut}");
            assert_eq!(usage, Some(Usage { prompt: 5, completion: 7 }));
        }
        let mut f = UsageFilter::new(true);
        assert_eq!(f.push(&CHUNK.as_bytes()[..10]), Bytes::new(), "an incomplete event waits");
        assert_eq!(f.push(&CHUNK.as_bytes()[10..]), Bytes::from(CHUNK), "and goes as soon as it is complete");
    }
}
