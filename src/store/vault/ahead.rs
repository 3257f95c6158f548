//! Capability answers asked ahead: a pass tells the store which key paths it is about to look at
//! (`SecretStore::expect_paths`), and the first pre-flight that must ask Vault about the token's
//! capabilities asks about the next few of them in the same `sys/capabilities-self` request. An
//! answer noted for a path stands for that path's own pre-flight once, and only while it is
//! younger than [`FRESH`]: invariant 2 wants the destination writable now, and "now" is as old
//! as the answer the pre-flight takes (the version the write checks-and-sets against was read
//! earlier still, at the look under the claim).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long an answer asked ahead stands for its path's pre-flight.
pub(super) const FRESH: Duration = Duration::from_secs(2);

/// How many key paths one question asks about: the one pre-flighting and up to this many less one
/// of those expected next (three API paths each).
pub(super) const ASK_AHEAD: usize = 8;

/// The token's capabilities on a key path's three API paths, as Vault listed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct KeyCaps {
    pub data: Vec<String>,
    pub meta: Vec<String>,
    pub claim: Vec<String>,
}

/// The paths a pass expects to pre-flight, in its order, and the answers asked ahead for them.
#[derive(Debug, Default)]
pub(super) struct Ahead {
    order: Vec<String>,
    position: HashMap<String, usize>,
    answers: HashMap<String, (Instant, KeyCaps)>,
}

impl Ahead {
    /// The key paths a pass is about to look at, in its order; replaces what an earlier pass left.
    pub fn expect(&mut self, paths: impl IntoIterator<Item = String>) {
        self.order.clear();
        self.position.clear();
        for path in paths {
            if !self.position.contains_key(&path) {
                self.position.insert(path.clone(), self.order.len());
                self.order.push(path);
            }
        }
    }

    /// The answer asked ahead for `path`, if one is fresh at `now`; taken either way, so each
    /// answer serves one pre-flight.
    pub fn take(&mut self, path: &str, now: Instant) -> Option<KeyCaps> {
        let (asked, caps) = self.answers.remove(path)?;
        (now.saturating_duration_since(asked) < FRESH).then_some(caps)
    }

    /// The key paths to ask about with `path`: `path` first, then up to `ASK_AHEAD - 1` of those
    /// the pass expects right after it that hold no fresh answer (the keys it looks at next,
    /// wherever keys pre-flighting out of order left the others). Only `path` when the pass did
    /// not expect it.
    pub fn batch(&mut self, path: &str, now: Instant) -> Vec<String> {
        let mut batch = vec![path.to_owned()];
        let Some(&at) = self.position.get(path) else {
            return batch;
        };
        // Past a few questions' worth of fresh answers, the rest would be stale before its turn.
        let scan = self.order.iter().skip(at + 1).take(4 * ASK_AHEAD);
        for next in scan {
            if batch.len() == ASK_AHEAD {
                break;
            }
            let fresh = self
                .answers
                .get(next)
                .is_some_and(|(asked, _)| now.saturating_duration_since(*asked) < FRESH);
            if !fresh {
                batch.push(next.clone());
            }
        }
        batch
    }

    /// Notes the answer asked at `asked` for `path`; answers gone stale are dropped, so paths
    /// asked about and never pre-flighted (keys that were not due) do not pile up.
    pub fn note(&mut self, path: String, caps: KeyCaps, asked: Instant) {
        let now = Instant::now();
        self.answers
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < FRESH);
        self.answers.insert(path, (asked, caps));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(c: &str) -> KeyCaps {
        KeyCaps {
            data: vec![c.to_owned()],
            ..KeyCaps::default()
        }
    }

    fn paths(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("k{i}")).collect()
    }

    #[test]
    fn a_question_asks_about_the_paths_expected_next_and_each_answer_serves_once() {
        let mut ahead = Ahead::default();
        ahead.expect(paths(20));
        let now = Instant::now();
        let batch = ahead.batch("k0", now);
        assert_eq!(batch, paths(ASK_AHEAD), "k0 itself, then the next ones");
        for p in &batch[1..] {
            ahead.note(p.clone(), caps(p), now);
        }
        assert_eq!(ahead.take("k3", now), Some(caps("k3")));
        assert_eq!(
            ahead.take("k3", now),
            None,
            "taken: the next pre-flight asks"
        );
        // The next question starts at the first path after the asking one without an answer.
        let next = ahead.batch(&format!("k{ASK_AHEAD}"), now);
        assert_eq!(next, paths(2 * ASK_AHEAD)[ASK_AHEAD..].to_vec());
    }

    /// Keys pre-flight out of order (`concurrency` at a time): a question asks about the keys
    /// after the asking one, not about the first keys nobody asked about, which may be far ahead
    /// and go stale before their turn.
    #[test]
    fn a_question_asks_about_the_keys_right_after_the_asking_one() {
        let mut ahead = Ahead::default();
        ahead.expect(paths(40));
        let now = Instant::now();
        for p in ahead.batch("k1", now).into_iter().skip(1) {
            ahead.note(p, caps("x"), now);
        }
        // k0 comes late: it asks about itself and what k1's question left out after it.
        let late = ahead.batch("k0", now);
        assert_eq!(late[0], "k0");
        assert_eq!(late[1], "k1", "k1 took its own answer: none noted");
        assert_eq!(late[2..], paths(ASK_AHEAD + 7)[ASK_AHEAD + 1..]);
        // A path the pass did not expect is asked about alone.
        assert_eq!(ahead.batch("elsewhere", now), ["elsewhere"]);
    }

    #[test]
    fn an_answer_older_than_fresh_is_not_taken() {
        let mut ahead = Ahead::default();
        let asked = Instant::now();
        ahead.note("k1".into(), caps("k1"), asked);
        assert_eq!(ahead.take("k1", asked + FRESH), None);
        ahead.note("k1".into(), caps("k1"), asked);
        assert_eq!(
            ahead.take("k1", asked + FRESH - Duration::from_millis(1)),
            Some(caps("k1"))
        );
    }

    #[test]
    fn a_batch_skips_duplicates_and_paths_with_a_fresh_answer() {
        let mut ahead = Ahead::default();
        let now = Instant::now();
        ahead.note("b".into(), caps("b"), now);
        ahead.expect(["a", "b", "c", "a", "c", "d"].map(String::from));
        assert_eq!(ahead.batch("a", now), ["a", "c", "d"]);
        assert_eq!(ahead.batch("d", now), ["d"], "nothing left to ask ahead");
    }

    #[test]
    fn stale_answers_do_not_pile_up() {
        let mut ahead = Ahead::default();
        let long_ago = Instant::now()
            .checked_sub(FRESH * 2)
            .unwrap_or_else(Instant::now);
        for p in paths(50) {
            ahead.note(p, caps("x"), long_ago);
        }
        ahead.note("new".into(), caps("new"), Instant::now());
        assert!(ahead.answers.len() <= 2, "{}", ahead.answers.len());
    }
}
