//! Logging refusals without letting a flood of them flood the log: the
//! first of a kind is logged at once, later ones are counted and summed up
//! at most once per interval.

use std::time::{Duration, Instant};

/// How often a kind of refusal may log.
const INTERVAL: Duration = Duration::from_secs(10);

/// One kind of refusal (a full server, a client over its share, ...).
#[derive(Debug)]
pub struct RefusalLog {
    what: &'static str,
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            last_logged: None,
            suppressed: 0,
        }
    }

    /// Records one refusal of `peer`, logging it unless this kind was
    /// logged less than an interval ago.
    pub fn refused(&mut self, peer: std::net::SocketAddr, detail: &dyn std::fmt::Display) {
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|last| now.duration_since(last) < INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        tracing::warn!(%peer, suppressed_since_last = suppressed, "{}: {detail}", self.what);
        self.last_logged = Some(now);
    }

    /// Refusals counted but not logged since the last line.
    #[cfg(test)]
    fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_and_counts_the_rest() {
        let mut log = RefusalLog::new("too many connections");
        let peer = "127.0.0.1:1".parse().unwrap();
        log.refused(peer, &"limit 1");
        assert_eq!(log.suppressed(), 0);
        for _ in 0..1000 {
            log.refused(peer, &"limit 1");
        }
        assert_eq!(log.suppressed(), 1000);
    }
}
