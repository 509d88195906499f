//! What a responder (`--mode responder`) does with the calls a load test sends it: whether it
//! sends 100 Trying, how long it rings, which final responses it gives in what proportion,
//! how long a call lasts before it hangs up itself, and how much incoming traffic it loses on
//! purpose. The core owns these types; `config.rs` maps the `[responder]` section and the
//! flags onto them.

/// The responder's behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponderSettings {
    /// Send 100 Trying to an INVITE before the 180: always, never, or (None) only when the
    /// final response is not sent at once (a ring time): RFC 3261 §17.2.1 asks for a 100 when
    /// the answer takes longer than 200 ms, and an immediate 180 and final make it redundant.
    pub trying: Option<bool>,
    /// Time between the 180 and the final response (0: both at once).
    pub ring_ms: u64,
    /// Time after the ACK of a 200 at which the responder sends BYE itself (0: never; the
    /// caller hangs up).
    pub hold_ms: u64,
    /// Final responses to INVITE and their weights; a call's status is chosen by a hash of
    /// its Call-ID, so a retransmitted or replayed INVITE gets the same answer.
    pub mix: Vec<(u16, u32)>,
    /// Probability (0 to 1) that an incoming datagram is dropped unanswered, to simulate
    /// loss (drawn from a per-shard generator).
    pub drop: f64,
}

impl Default for ResponderSettings {
    fn default() -> Self {
        ResponderSettings {
            trying: None,
            ring_ms: 0,
            hold_ms: 0,
            mix: vec![(200, 100)],
            drop: 0.0,
        }
    }
}

impl ResponderSettings {
    /// True when an INVITE gets 100 Trying.
    pub fn sends_trying(&self) -> bool {
        self.trying.unwrap_or(self.ring_ms > 0)
    }

    /// The final status for a call whose Call-ID hashes to `hash`.
    pub fn status_for(&self, hash: u64) -> u16 {
        let total: u64 = self.mix.iter().map(|&(_, w)| u64::from(w)).sum();
        if total == 0 {
            return 200;
        }
        let mut pick = hash % total;
        for &(status, weight) in &self.mix {
            if pick < u64::from(weight) {
                return status;
            }
            pick -= u64::from(weight);
        }
        200
    }
}

/// Parses a response mix, `STATUS:WEIGHT` items separated by commas: `200:90,486:5,503:5`.
/// Statuses are final (200 to 699); weights are relative (they need not add up to 100).
pub fn parse_mix(s: &str) -> Result<Vec<(u16, u32)>, String> {
    let mut mix = Vec::new();
    for item in s.split(',').map(str::trim) {
        let Some((status, weight)) = item.split_once(':') else {
            return Err(format!("'{item}' is not STATUS:WEIGHT"));
        };
        let status: u16 = match status.trim().parse() {
            Ok(s @ 200..=699) => s,
            _ => {
                return Err(format!(
                    "'{item}': the status must be a final one, 200 to 699"
                ))
            }
        };
        let Ok(weight) = weight.trim().parse::<u32>() else {
            return Err(format!("'{item}': the weight must be a whole number"));
        };
        if mix.iter().any(|&(s, _)| s == status) {
            return Err(format!("status {status} is listed twice"));
        }
        mix.push((status, weight));
    }
    if mix.iter().all(|&(_, w)| w == 0) {
        return Err("every weight is 0".into());
    }
    Ok(mix)
}

/// The reason phrase of a final status (RFC 3261 §21 and the common extensions).
pub fn reason_phrase(status: u16) -> &'static [u8] {
    match status {
        200 => b"OK",
        202 => b"Accepted",
        300 => b"Multiple Choices",
        301 => b"Moved Permanently",
        302 => b"Moved Temporarily",
        380 => b"Alternative Service",
        400 => b"Bad Request",
        401 => b"Unauthorized",
        403 => b"Forbidden",
        404 => b"Not Found",
        407 => b"Proxy Authentication Required",
        408 => b"Request Timeout",
        410 => b"Gone",
        480 => b"Temporarily Unavailable",
        484 => b"Address Incomplete",
        486 => b"Busy Here",
        487 => b"Request Terminated",
        488 => b"Not Acceptable Here",
        500 => b"Server Internal Error",
        502 => b"Bad Gateway",
        503 => b"Service Unavailable",
        504 => b"Server Time-out",
        600 => b"Busy Everywhere",
        603 => b"Decline",
        604 => b"Does Not Exist Anywhere",
        606 => b"Not Acceptable",
        201..=299 => b"Success",
        303..=379 | 381..=399 => b"Redirection",
        402 | 405..=406 | 409 | 411..=479 | 481..=483 | 485 | 489..=499 => b"Client Error",
        501 | 505..=599 => b"Server Error",
        _ => b"Global Failure",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_picks_by_weight() {
        let mix = parse_mix("200:90, 486:5,503:5").unwrap();
        assert_eq!(mix, vec![(200, 90), (486, 5), (503, 5)]);
        let s = ResponderSettings {
            mix,
            ..Default::default()
        };
        assert_eq!(s.status_for(0), 200);
        assert_eq!(s.status_for(89), 200);
        assert_eq!(s.status_for(90), 486);
        assert_eq!(s.status_for(94), 486);
        assert_eq!(s.status_for(95), 503);
        assert_eq!(s.status_for(199), 503);
    }

    #[test]
    fn bad_mixes_name_the_item() {
        assert!(parse_mix("200").unwrap_err().contains("'200'"));
        assert!(parse_mix("180:5").unwrap_err().contains("200 to 699"));
        assert!(parse_mix("200:x").unwrap_err().contains("whole number"));
        assert!(parse_mix("200:1,200:2").unwrap_err().contains("twice"));
        assert!(parse_mix("200:0").unwrap_err().contains("0"));
    }
}
