//! Stop strings over streamed text. The detokenizer feeds text deltas in; out comes the text that is
//! safe to show now. A suffix that could still grow into a stop string is held back, so a stop
//! string never reaches the client, not even in part; when one completes, the text is cut where it
//! starts and generation ends.
//!
//! Which stop wins when several complete: the one that *ends* first in the text, then the one that
//! starts first. That is the first moment a character-by-character stream would have stopped, so the
//! outcome does not depend on how the text was split into deltas.

/// The outcome of feeding one delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopStatus {
    /// No stop string has completed.
    Running,
    /// `stops[stop]` completed; the output ends just before it.
    Stopped {
        /// Index of the stop string in the list given to [`StopMatcher::new`].
        stop: usize,
    },
}

/// Holds back text that may be the start of a stop string.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Length in bytes of the longest stop string.
    max_len: usize,
    /// Text received but not yet emitted: at most `max_len − 1` bytes between calls.
    pending: String,
    stopped: Option<usize>,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored; [`crate::SamplingParams::validate`]
    /// rejects them).
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let max_len = stops.iter().map(String::len).max().unwrap_or(0);
        // room for the held suffix plus a typical delta, so pushes rarely reallocate
        StopMatcher { stops, max_len, pending: String::with_capacity(2 * max_len + 64), stopped: None }
    }

    /// Whether there is any stop string to look for.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// The stop that ended the text, if one did.
    pub fn stopped(&self) -> Option<usize> {
        self.stopped
    }

    /// Feeds the next text `delta` and appends to `out` the text that is now safe to emit. After a
    /// stop has matched, further deltas are ignored.
    pub fn push(&mut self, delta: &str, out: &mut String) -> StopStatus {
        if let Some(stop) = self.stopped {
            return StopStatus::Stopped { stop };
        }
        if self.stops.is_empty() {
            out.push_str(delta);
            return StopStatus::Running;
        }
        self.pending.push_str(delta);

        // the earliest-ending complete stop (each stop's first occurrence is its earliest end)
        let mut best: Option<(usize, usize, usize)> = None; // (end, start, index)
        for (i, s) in self.stops.iter().enumerate() {
            if let Some(start) = self.pending.find(s.as_str()) {
                let m = (start + s.len(), start, i);
                if best.is_none_or(|b| (m.0, m.1) < (b.0, b.1)) {
                    best = Some(m);
                }
            }
        }
        if let Some((_, start, stop)) = best {
            out.push_str(&self.pending[..start]);
            self.pending.clear();
            self.stopped = Some(stop);
            return StopStatus::Stopped { stop };
        }

        let keep = self.held_suffix_len();
        let emit = self.pending.len() - keep;
        out.push_str(&self.pending[..emit]);
        self.pending.drain(..emit);
        StopStatus::Running
    }

    /// Ends the text without a stop match (EOS, length): appends the held-back text to `out`.
    pub fn finish(&mut self, out: &mut String) {
        out.push_str(&self.pending);
        self.pending.clear();
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of some stop string.
    fn held_suffix_len(&self) -> usize {
        let bytes = self.pending.as_bytes();
        let longest = bytes.len().min(self.max_len.saturating_sub(1));
        (1..=longest)
            .rev()
            .find(|&n| {
                let start = bytes.len() - n;
                self.pending.is_char_boundary(start)
                    && self.stops.iter().any(|s| s.as_bytes().starts_with(&bytes[start..]))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    /// Feeds `deltas`, checking after each that what was emitted never ends inside a stop string's
    /// prefix that later completed, and returns (emitted text, status).
    fn run(stops: &[&str], deltas: &[&str]) -> (String, StopStatus, Vec<String>) {
        let mut m = matcher(stops);
        let mut out = String::new();
        let mut emitted = Vec::new();
        let mut status = StopStatus::Running;
        for d in deltas {
            let before = out.len();
            status = m.push(d, &mut out);
            emitted.push(out[before..].to_string());
            if status != StopStatus::Running {
                break;
            }
        }
        if status == StopStatus::Running {
            m.finish(&mut out);
        }
        (out, status, emitted)
    }

    #[test]
    fn stop_split_across_many_deltas_never_leaks() {
        let text = "Hello world<|im_end|>trailing";
        let deltas: Vec<String> = text.chars().map(String::from).collect();
        let deltas: Vec<&str> = deltas.iter().map(String::as_str).collect();
        let (out, status, emitted) = run(&["<|im_end|>"], &deltas);
        assert_eq!(out, "Hello world");
        assert_eq!(status, StopStatus::Stopped { stop: 0 });
        for chunk in &emitted {
            assert!(!chunk.contains('<') && !chunk.contains('|'), "leaked {chunk:?}");
        }
    }

    #[test]
    fn held_prefix_is_released_when_it_stops_matching() {
        let mut m = matcher(&["STOP"]);
        let mut out = String::new();
        assert_eq!(m.push("abc ST", &mut out), StopStatus::Running);
        assert_eq!(out, "abc ");
        assert_eq!(m.push("OP", &mut out), StopStatus::Stopped { stop: 0 });
        assert_eq!(out, "abc ");

        let mut m = matcher(&["STOP"]);
        let mut out = String::new();
        m.push("abc ST", &mut out);
        m.push("A", &mut out);
        assert_eq!(out, "abc STA");
    }

    #[test]
    fn multiple_stops_earliest_end_wins() {
        let (out, status, _) = run(&["world", "lo"], &["Hello world"]);
        assert_eq!((out.as_str(), status), ("Hel", StopStatus::Stopped { stop: 1 }));
        // the same text in one delta or character by character stops at the same place
        let (out, status, _) = run(&["abcd", "bc"], &["xabcd"]);
        assert_eq!((out.as_str(), status), ("xa", StopStatus::Stopped { stop: 1 }));
        let (out, _, _) = run(&["abcd", "bc"], &["x", "a", "b", "c", "d"]);
        assert_eq!(out, "xa");
    }

    #[test]
    fn overlapping_prefixes() {
        // "ab" completes inside "aab" before "abc" could
        let (out, status, emitted) = run(&["abc", "ab"], &["a", "a", "b"]);
        assert_eq!((out.as_str(), status), ("a", StopStatus::Stopped { stop: 1 }));
        assert_eq!(emitted, vec!["", "a", ""]); // the first "a" was held: it may start "ab"
                                                // equal ends: the longer (earlier-starting) stop is reported
        let (out, status, _) = run(&["bc", "abc"], &["zab", "c"]);
        assert_eq!((out.as_str(), status), ("z", StopStatus::Stopped { stop: 1 }));
        // a held prefix of one stop that is the middle of another
        let (out, status, _) = run(&["aab"], &["aa", "aa", "b"]);
        assert_eq!((out.as_str(), status), ("aa", StopStatus::Stopped { stop: 0 }));
    }

    #[test]
    fn emit_all_at_end_without_match() {
        let (out, status, emitted) = run(&["</s>"], &["a <", "/", "x"]);
        assert_eq!((out.as_str(), status), ("a </x", StopStatus::Running));
        assert_eq!(emitted, vec!["a ", "", "</x"]);
        let (out, _, emitted) = run(&["</s>"], &["tail <"]);
        assert_eq!(emitted, vec!["tail "]);
        assert_eq!(out, "tail <"); // flushed by finish()
        let (out, _, _) = run(&[], &["no ", "stops"]);
        assert_eq!(out, "no stops");
    }

    #[test]
    fn multibyte_text_and_stops() {
        let (out, status, _) = run(&["。終"], &["こんにちは", "。", "終わり"]);
        assert_eq!((out.as_str(), status), ("こんにちは", StopStatus::Stopped { stop: 0 }));
        let (out, _, _) = run(&["éa"], &["caf", "é", "!"]);
        assert_eq!(out, "café!");
    }

    #[test]
    fn ignores_input_after_stop() {
        let mut m = matcher(&["x"]);
        let mut out = String::new();
        assert_eq!(m.push("axb", &mut out), StopStatus::Stopped { stop: 0 });
        assert_eq!(m.push("more", &mut out), StopStatus::Stopped { stop: 0 });
        m.finish(&mut out);
        assert_eq!(out, "a");
        assert_eq!(m.stopped(), Some(0));
    }
}
