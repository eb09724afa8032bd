//! Stop strings on decoded text. Text is released to the client only when no stop string can
//! still begin inside it: a tail that is a proper prefix of some stop string is held back until the
//! next piece settles it. Positions are always char boundaries found by the search itself, so no
//! input (any Unicode, any split into pieces) can make a slice panic.

/// The stop strings of one request and the text held back for them.
#[derive(Debug, Default, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What one piece of text settles.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Released {
    /// Text the client may have now.
    pub text: String,
    /// A stop string was found: `text` ends where it began, and generation ends.
    pub stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored (validation refuses them anyway).
    pub fn new(stops: &[String]) -> Self {
        StopMatcher { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new() }
    }

    /// Adds the next decoded piece and returns what is settled.
    pub fn push(&mut self, piece: &str) -> Released {
        self.held.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let mut text = std::mem::take(&mut self.held);
            text.truncate(at);
            return Released { text, stopped: true };
        }
        let keep_from = self.partial_stop_start();
        let rest = self.held.split_off(keep_from);
        Released { text: std::mem::replace(&mut self.held, rest), stopped: false }
    }

    /// The held text, when generation ends for another reason than a stop string.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Where the longest tail of the held text that could still grow into a stop string begins
    /// (the held text's length when there is none).
    fn partial_stop_start(&self) -> usize {
        self.held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = self.held.get(i..).unwrap_or_default();
                self.stops.iter().any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .unwrap_or(self.held.len())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Feeds `pieces` and returns (text released, stopped).
    fn run(stops: &[String], pieces: &[String]) -> (String, bool) {
        let mut m = StopMatcher::new(stops);
        let mut out = String::new();
        for p in pieces {
            let r = m.push(p);
            out.push_str(&r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    /// What the client must see: the whole text cut before the first stop string anywhere in it.
    fn expected(stops: &[String], whole: &str) -> (String, bool) {
        match stops.iter().filter(|s| !s.is_empty()).filter_map(|s| whole.find(s.as_str())).min() {
            Some(at) => (whole.get(..at).unwrap_or_default().to_string(), true),
            None => (whole.to_string(), false),
        }
    }

    #[test]
    fn a_stop_string_split_over_pieces_is_never_sent() {
        let stops = vec![" Lily".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("She saw"), Released { text: "She saw".into(), stopped: false });
        assert_eq!(m.push(" L"), Released { text: "".into(), stopped: false }, "\" L\" may begin \" Lily\"");
        assert_eq!(m.push("i"), Released { text: "".into(), stopped: false });
        assert_eq!(m.push("ly and"), Released { text: "".into(), stopped: true });
    }

    #[test]
    fn held_text_is_released_when_it_cannot_become_a_stop_string() {
        let stops = vec!["éclair".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("un é").text, "un ");
        assert_eq!(m.push("té").text, "ét", "the last \"é\" may still begin \"éclair\"");
        assert_eq!(m.flush(), "é");
    }

    #[test]
    fn multibyte_text_around_a_stop_does_not_panic() {
        let stops = vec!["é".to_string(), "🙂x".to_string()];
        assert_eq!(run(&stops, &["Ça va, très".into(), " bien é".into()]), ("Ça va, très bien ".into(), true));
        assert_eq!(run(&stops, &["a🙂".into(), "🙂".into(), "y".into()]), ("a🙂🙂y".into(), false));
    }

    #[allow(clippy::string_slice)] // test code (clippy.toml has no string-slice option): cuts are char boundaries
    fn pieces_of(text: &str, cuts: &[usize]) -> Vec<String> {
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
        let mut at: Vec<usize> = cuts.iter().map(|c| bounds[c % bounds.len()]).collect();
        at.extend([0, text.len()]);
        at.sort_unstable();
        at.dedup();
        at.windows(2).map(|w| text[w[0]..w[1]].to_string()).collect()
    }

    proptest! {
        #[test]
        fn released_text_equals_the_whole_text_cut_at_the_first_stop(
            whole in "\\PC{0,40}",
            stops in proptest::collection::vec("\\PC{0,4}", 0..4),
            cuts in proptest::collection::vec(0usize..64, 0..12),
        ) {
            let pieces = pieces_of(&whole, &cuts);
            prop_assert_eq!(run(&stops, &pieces), expected(&stops, &whole));
        }

        #[test]
        fn a_stop_taken_from_the_text_itself_is_always_found(
            whole in "[aé🙂 ]{1,30}",
            from in 0usize..30,
            len in 1usize..5,
            cuts in proptest::collection::vec(0usize..64, 0..12),
        ) {
            let chars: Vec<char> = whole.chars().collect();
            let from = from % chars.len();
            let stop: String = chars[from..(from + len).min(chars.len())].iter().collect();
            let stops = vec![stop];
            let (text, stopped) = run(&stops, &pieces_of(&whole, &cuts));
            prop_assert!(stopped);
            prop_assert_eq!((text, stopped), expected(&stops, &whole));
        }
    }
}
