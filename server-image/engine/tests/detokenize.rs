//! Incremental detokenization on stories260k's real tokenizer (byte fallback included): for any
//! sequence of ids, the streamed pieces add up to decoding the sequence at once.

use llmserve_engine::tokenizer::{IncrementalDecoder, Tokenizer};
use proptest::prelude::*;

fn tokenizer() -> Tokenizer {
    Tokenizer::load(&llmserve_test_support::stories260k()).unwrap()
}

/// Everything `ids` adds after `context`, decoded in one go, as the client must see it; `None` when
/// the context's own text is not a prefix of the whole (no such prompt comes from text).
fn decoded_at_once(tok: &Tokenizer, context: &[u32], ids: &[u32]) -> Option<String> {
    let ctx = &context[context.len().saturating_sub(4)..];
    let before = tok.decode(ctx).unwrap();
    let all = tok.decode(&[ctx, ids].concat()).unwrap();
    all.strip_prefix(before.as_str()).map(String::from)
}

fn streamed(tok: &Tokenizer, context: &[u32], ids: &[u32]) -> String {
    let mut d = IncrementalDecoder::new(context);
    ids.iter().filter_map(|&id| d.push(tok, id).unwrap()).collect()
}

#[test]
fn a_story_streams_word_by_word_with_its_spaces() {
    let tok = tokenizer();
    let prompt = tok.encode("Once upon a time").unwrap();
    let ids = tok.encode("Once upon a time, there was a little girl named Lily.").unwrap()[prompt.len()..].to_vec();
    assert_eq!(streamed(&tok, &prompt, &ids), ", there was a little girl named Lily.");
}

/// Ids a model emits for real text: whole pieces (259..512), and characters spelled out as the
/// byte-fallback ids of their UTF-8 bytes (id 3 is byte 0x00). U+FFFD itself is left out: it is
/// what an incomplete character decodes to, so a stream holds it until the text goes on.
fn text_like_ids() -> impl Strategy<Value = Vec<u32>> {
    let chars = any::<char>().prop_filter("not U+FFFD", |c| *c != '\u{FFFD}');
    let token = prop_oneof![
        (259u32..512).prop_map(|id| vec![id]),
        chars.prop_map(|c| { c.to_string().bytes().map(|b| 3 + u32::from(b)).collect::<Vec<_>>() })
    ];
    proptest::collection::vec(token, 1..40).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn streamed_pieces_add_up_to_the_text_decoded_at_once(
        // A prompt is text, so its ids are whole pieces.
        context in proptest::collection::vec(259u32..512, 1..8),
        ids in text_like_ids(),
    ) {
        let tok = tokenizer();
        let whole = decoded_at_once(&tok, &context, &ids).expect("whole pieces decode prefix-stably");
        prop_assert_eq!(streamed(&tok, &context, &ids), whole);
    }

    /// Any ids at all, invalid byte runs included (decoded as U+FFFD by the tokenizer), stream
    /// without a panic, and everything streamed is text the ids decode to at once, up to a
    /// replacement character that later bytes may still turn into another.
    #[test]
    fn arbitrary_ids_stream_without_panic(
        context in proptest::collection::vec(0u32..512, 0..8),
        ids in proptest::collection::vec(0u32..512, 1..80),
    ) {
        let tok = tokenizer();
        let got = streamed(&tok, &context, &ids);
        if let Some(whole) = decoded_at_once(&tok, &context, &ids)
            && !whole.contains('\u{FFFD}')
        {
            prop_assert_eq!(got, whole);
        }
    }
}
