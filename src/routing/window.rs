//! Weekly time windows in an IANA time zone: the dial plan's "this route only on weekdays
//! 08:00-18:00 Berlin time".
//!
//! A [`TimeWindow`] is a bitset of the 10,080 minutes of a week (Monday 00:00 local = minute 0)
//! plus the time zone the minutes are in. [`TimeWindow::contains`] converts a Unix time to the
//! local wall-clock time there and tests its minute, so DST is a matter of wall-clock time: on
//! the day clocks spring forward, local times in the skipped hour never occur and a window
//! inside it is never active; on the day they fall back, the repeated hour is active twice.

use std::fmt;

use jiff::tz::TimeZone;
use jiff::Timestamp;

const MINUTES_PER_DAY: usize = 24 * 60;
const MINUTES_PER_WEEK: usize = 7 * MINUTES_PER_DAY;
const WORDS: usize = MINUTES_PER_WEEK.div_ceil(64);

/// Day names in week order, Monday first (index = day of the week).
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A set of minutes of the week in local time of an IANA time zone.
#[derive(Clone)]
pub struct TimeWindow {
    /// Bit `m` set: minute `m` of the week (Monday 00:00 local = 0) is in the window.
    minutes: Box<[u64; WORDS]>,
    zone: TimeZone,
    /// The IANA name the window was parsed with.
    zone_name: String,
}

impl fmt::Debug for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let minutes: u32 = self.minutes.iter().map(|word| word.count_ones()).sum();
        f.debug_struct("TimeWindow")
            .field("timezone", &self.zone_name)
            .field("minutes_per_week", &minutes)
            .finish()
    }
}

impl TimeWindow {
    /// `spec`: one or more clauses separated by `;`, each `[DAYS] HH:MM-HH:MM`. DAYS is a comma
    /// list of days or day ranges (`mon tue wed thu fri sat sun`, case-insensitive; ranges may
    /// wrap: `fri-mon`); omitted, it is every day. The end may be `24:00`. An end before the
    /// start crosses midnight: the part after midnight belongs to the day after each listed day
    /// (`fri 22:00-06:00` is Friday 22:00 to Saturday 06:00). A start equal to the end is an
    /// error. `timezone`: an IANA name (`Europe/Berlin`, `UTC`).
    ///
    /// The error is one readable line naming the problem, e.g.
    /// `time 'mon-fri 8:00-18:00': expected HH:MM` or
    /// `timezone 'Europe/Berln': unknown time zone`.
    pub fn parse(spec: &str, timezone: &str) -> Result<TimeWindow, String> {
        let mut minutes = Box::new([0u64; WORDS]);
        for clause in spec.split(';') {
            add_clause(&mut minutes, clause.trim())
                .map_err(|problem| format!("time '{}': {problem}", clause.trim()))?;
        }
        let zone = TimeZone::get(timezone)
            .map_err(|_| format!("timezone '{timezone}': unknown time zone"))?;
        Ok(TimeWindow {
            minutes,
            zone,
            zone_name: timezone.to_owned(),
        })
    }

    /// True if the local wall-clock time at `unix_ms` (ms since the Unix epoch, UTC) lies in the
    /// window. Times outside jiff's range (years -9999..=9999) are never in it.
    pub fn contains(&self, unix_ms: u64) -> bool {
        let Ok(unix_ms) = i64::try_from(unix_ms) else {
            return false;
        };
        let Ok(timestamp) = Timestamp::from_millisecond(unix_ms) else {
            return false;
        };
        let local = self.zone.to_datetime(timestamp);
        let day = usize::from(local.weekday().to_monday_zero_offset() as u8);
        let minute = day * MINUTES_PER_DAY + local.hour() as usize * 60 + local.minute() as usize;
        self.minutes[minute / 64] & (1 << (minute % 64)) != 0
    }

    /// True if the two windows share a minute. Exact when both have the same time zone name.
    /// Windows in different zones are compared conservatively: true if both are non-empty,
    /// since whether they meet depends on the offsets of the week in question (DST).
    pub fn overlaps(&self, other: &TimeWindow) -> bool {
        if self.zone_name == other.zone_name {
            self.minutes
                .iter()
                .zip(other.minutes.iter())
                .any(|(a, b)| a & b != 0)
        } else {
            !self.is_empty() && !other.is_empty()
        }
    }

    /// The IANA time zone name the window was parsed with.
    pub fn timezone(&self) -> &str {
        &self.zone_name
    }

    fn is_empty(&self) -> bool {
        self.minutes.iter().all(|&word| word == 0)
    }
}

/// Sets the minutes of one `[DAYS] HH:MM-HH:MM` clause; the error names the problem.
fn add_clause(minutes: &mut [u64; WORDS], clause: &str) -> Result<(), String> {
    if clause.is_empty() {
        return Err("empty clause, expected [DAYS] HH:MM-HH:MM".to_owned());
    }
    let (days, times) = match clause.rsplit_once(char::is_whitespace) {
        Some((days, times)) => (parse_days(days.trim())?, times),
        None => ([true; 7], clause),
    };
    let (start, end) = times
        .split_once('-')
        .ok_or_else(|| format!("'{times}': expected HH:MM-HH:MM"))?;
    let start = parse_time(start)?;
    let end = parse_time(end)?;
    if start == MINUTES_PER_DAY {
        return Err(format!("'{times}': the start cannot be 24:00"));
    }
    if start == end {
        return Err(format!("'{times}': start equals end"));
    }
    for day in (0..7).filter(|&day| days[day]) {
        let day_start = day * MINUTES_PER_DAY;
        if start < end {
            set_range(minutes, day_start + start, day_start + end);
        } else {
            set_range(minutes, day_start + start, day_start + MINUTES_PER_DAY);
            let next_day_start = (day + 1) % 7 * MINUTES_PER_DAY;
            set_range(minutes, next_day_start, next_day_start + end);
        }
    }
    Ok(())
}

/// Which days a comma list of days and (possibly wrapping) day ranges names.
fn parse_days(list: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    for item in list.split(',').map(str::trim) {
        match item.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (parse_day(first.trim())?, parse_day(last.trim())?);
                let mut day = first;
                days[day] = true;
                while day != last {
                    day = (day + 1) % 7;
                    days[day] = true;
                }
            }
            None => days[parse_day(item)?] = true,
        }
    }
    Ok(days)
}

/// Day of the week (Monday = 0) of a three-letter day name, case-insensitive.
fn parse_day(name: &str) -> Result<usize, String> {
    DAY_NAMES
        .iter()
        .position(|day| day.eq_ignore_ascii_case(name))
        .ok_or_else(|| format!("'{name}' is not a day (mon tue wed thu fri sat sun)"))
}

/// Minute of the day of `HH:MM` (`00:00` to `24:00`).
fn parse_time(text: &str) -> Result<usize, String> {
    let bytes = text.as_bytes();
    let well_formed = bytes.len() == 5
        && bytes[2] == b':'
        && [0, 1, 3, 4].iter().all(|&i| bytes[i].is_ascii_digit());
    if !well_formed {
        return Err("expected HH:MM".to_owned());
    }
    let digit = |i: usize| usize::from(bytes[i] - b'0');
    let (hour, minute) = (digit(0) * 10 + digit(1), digit(3) * 10 + digit(4));
    if hour > 24 || minute > 59 || (hour == 24 && minute != 0) {
        return Err(format!("'{text}' is not a time of day (00:00 to 24:00)"));
    }
    Ok(hour * 60 + minute)
}

/// Sets bits `from..to` (`to` at most [`MINUTES_PER_WEEK`]).
fn set_range(minutes: &mut [u64; WORDS], from: usize, to: usize) {
    for minute in from..to {
        minutes[minute / 64] |= 1 << (minute % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a UTC date-time written `2026-03-29T01:00:00`.
    fn utc_ms(datetime: &str) -> u64 {
        let ts: Timestamp = format!("{datetime}Z").parse().unwrap();
        ts.as_millisecond() as u64
    }

    const MINUTE_MS: u64 = 60_000;

    fn window(spec: &str, timezone: &str) -> TimeWindow {
        TimeWindow::parse(spec, timezone).unwrap()
    }

    #[test]
    fn berlin_is_utc_plus_one_in_january() {
        // 2026-01-05 is a Monday; 08:00 Berlin (CET) is 07:00 UTC.
        let berlin = window("mon-fri 08:00-18:00", "Europe/Berlin");
        assert!(!berlin.contains(utc_ms("2026-01-05T06:59:59")));
        assert!(berlin.contains(utc_ms("2026-01-05T07:00:00")));
        assert!(berlin.contains(utc_ms("2026-01-05T16:59:59")));
        assert!(!berlin.contains(utc_ms("2026-01-05T17:00:00")));
        let utc = window("mon-fri 08:00-18:00", "UTC");
        assert!(!utc.contains(utc_ms("2026-01-05T07:00:00")));
        assert!(utc.contains(utc_ms("2026-01-05T08:00:00")));
        assert_eq!(berlin.timezone(), "Europe/Berlin");
        assert_eq!(utc.timezone(), "UTC");
    }

    #[test]
    fn spring_forward_skips_the_window_in_the_missing_hour() {
        // Berlin, 2026-03-29 01:00 UTC: 02:00 CET becomes 03:00 CEST, so 02:00-03:00 local
        // never happens on that day. The local day runs from 03-28 23:00 UTC to 03-29 22:00 UTC.
        let w = window("mon-sun 02:00-03:00", "Europe/Berlin");
        let day_start = utc_ms("2026-03-28T23:00:00");
        let day_end = utc_ms("2026-03-29T22:00:00");
        let active = (day_start..day_end)
            .step_by(MINUTE_MS as usize)
            .filter(|&ms| w.contains(ms))
            .count();
        assert_eq!(active, 0);
        // Just before and at the jump: 01:59 CET, then 03:00 CEST.
        assert!(!w.contains(utc_ms("2026-03-29T00:59:00")));
        assert!(!w.contains(utc_ms("2026-03-29T01:00:00")));
        // The day before and after, 02:30 local is 01:30 UTC (CET) and 00:30 UTC (CEST).
        assert!(w.contains(utc_ms("2026-03-28T01:30:00")));
        assert!(w.contains(utc_ms("2026-03-30T00:30:00")));
        assert!(!w.contains(utc_ms("2026-03-30T01:30:00")));
    }

    #[test]
    fn fall_back_makes_the_repeated_hour_active_twice() {
        // Berlin, 2026-10-25 01:00 UTC: 03:00 CEST becomes 02:00 CET, so 02:00-03:00 local
        // happens twice: 00:00-01:00 UTC (CEST) and 01:00-02:00 UTC (CET).
        let w = window("02:00-03:00", "Europe/Berlin");
        assert!(!w.contains(utc_ms("2026-10-24T23:59:00")));
        assert!(w.contains(utc_ms("2026-10-25T00:00:00")));
        assert!(w.contains(utc_ms("2026-10-25T00:30:00")));
        assert!(w.contains(utc_ms("2026-10-25T01:30:00")));
        assert!(w.contains(utc_ms("2026-10-25T01:59:59")));
        assert!(!w.contains(utc_ms("2026-10-25T02:00:00")));
        // The local day runs from 10-24 22:00 UTC to 10-25 23:00 UTC (25 hours).
        let day_start = utc_ms("2026-10-24T22:00:00");
        let day_end = utc_ms("2026-10-25T23:00:00");
        let active = (day_start..day_end)
            .step_by(MINUTE_MS as usize)
            .filter(|&ms| w.contains(ms))
            .count();
        assert_eq!(active, 120);
    }

    #[test]
    fn window_across_midnight_ends_on_the_next_day() {
        // 2026-01-09 is a Friday, 2026-01-10 a Saturday.
        let w = window("fri 22:00-06:00", "UTC");
        assert!(!w.contains(utc_ms("2026-01-09T21:59:00")));
        assert!(w.contains(utc_ms("2026-01-09T22:00:00")));
        assert!(w.contains(utc_ms("2026-01-10T00:00:00")));
        assert!(w.contains(utc_ms("2026-01-10T05:59:00")));
        assert!(!w.contains(utc_ms("2026-01-10T06:00:00")));
        // Not the night from Saturday to Sunday, nor Thursday to Friday.
        assert!(!w.contains(utc_ms("2026-01-10T23:00:00")));
        assert!(!w.contains(utc_ms("2026-01-09T03:00:00")));
    }

    #[test]
    fn sunday_night_wraps_to_monday_morning() {
        // 2026-01-11 is a Sunday, 2026-01-12 a Monday.
        let w = window("sun 23:00-01:00", "UTC");
        assert!(w.contains(utc_ms("2026-01-11T23:30:00")));
        assert!(w.contains(utc_ms("2026-01-12T00:30:00")));
        assert!(!w.contains(utc_ms("2026-01-12T01:00:00")));
    }

    #[test]
    fn omitted_days_mean_every_day() {
        let w = window("12:00-13:00", "UTC");
        for day in 5..=11 {
            assert!(w.contains(utc_ms(&format!("2026-01-{day:02}T12:30:00"))));
            assert!(!w.contains(utc_ms(&format!("2026-01-{day:02}T13:00:00"))));
        }
    }

    #[test]
    fn wrapping_day_range_fri_mon() {
        // 2026-01-09 Fri, 10 Sat, 11 Sun, 12 Mon, 13 Tue, 14 Wed, 15 Thu.
        let w = window("FRI-Mon 10:00-11:00", "UTC");
        let active: Vec<bool> = (9..=15)
            .map(|day| w.contains(utc_ms(&format!("2026-01-{day:02}T10:15:00"))))
            .collect();
        assert_eq!(active, [true, true, true, true, false, false, false]);
    }

    #[test]
    fn end_at_24_00_includes_the_last_minute() {
        let w = window("sat 18:00-24:00", "UTC");
        assert!(w.contains(utc_ms("2026-01-10T23:59:59")));
        assert!(!w.contains(utc_ms("2026-01-11T00:00:00")));
        assert!(!w.contains(utc_ms("2026-01-10T17:59:59")));
    }

    #[test]
    fn several_clauses_are_united() {
        let w = window(
            "mon-fri 08:00-12:00; mon, wed 13:00-17:00 ; sat 10:00-11:00",
            "UTC",
        );
        assert!(w.contains(utc_ms("2026-01-06T09:00:00"))); // Tue morning
        assert!(!w.contains(utc_ms("2026-01-06T14:00:00"))); // Tue afternoon
        assert!(w.contains(utc_ms("2026-01-07T14:00:00"))); // Wed afternoon
        assert!(w.contains(utc_ms("2026-01-10T10:30:00"))); // Sat
        assert!(!w.contains(utc_ms("2026-01-11T10:30:00"))); // Sun
    }

    #[test]
    fn times_outside_the_calendar_are_not_contained() {
        let w = window("00:00-24:00", "UTC");
        assert!(w.contains(0));
        assert!(!w.contains(u64::MAX));
    }

    fn parse_error(spec: &str, timezone: &str) -> String {
        TimeWindow::parse(spec, timezone).unwrap_err()
    }

    #[test]
    fn bad_specs_name_the_offending_text() {
        let cases = [
            ("mox 08:00-10:00", "'mox' is not a day"),
            (
                "mon-fri 8:00-18:00",
                "time 'mon-fri 8:00-18:00': expected HH:MM",
            ),
            ("mon 25:00-26:00", "'25:00' is not a time of day"),
            ("mon 08:60-09:00", "'08:60' is not a time of day"),
            (
                "mon 24:00-01:00",
                "'24:00-01:00': the start cannot be 24:00",
            ),
            ("mon 08:00-08:00", "'08:00-08:00': start equals end"),
            ("mon 08:00", "'08:00': expected HH:MM-HH:MM"),
            ("mon 08:00-10:00;", "empty clause"),
            ("", "empty clause"),
        ];
        for (spec, expected) in cases {
            let err = parse_error(spec, "UTC");
            assert!(err.contains(expected), "{spec:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn unknown_timezone_is_named() {
        assert_eq!(
            parse_error("08:00-10:00", "Europe/Berln"),
            "timezone 'Europe/Berln': unknown time zone"
        );
    }

    #[test]
    fn overlaps_in_the_same_zone_is_exact() {
        let mornings = window("mon-fri 08:00-12:00", "Europe/Berlin");
        let afternoons = window("mon-fri 12:00-18:00", "Europe/Berlin");
        let late_morning = window("fri 11:59-12:01", "Europe/Berlin");
        let weekend = window("sat,sun 00:00-24:00", "Europe/Berlin");
        let friday_night = window("fri 22:00-06:00", "Europe/Berlin");
        assert!(!mornings.overlaps(&afternoons));
        assert!(mornings.overlaps(&late_morning));
        assert!(afternoons.overlaps(&late_morning));
        assert!(!mornings.overlaps(&weekend));
        assert!(friday_night.overlaps(&weekend));
        assert!(mornings.overlaps(&mornings));
    }

    #[test]
    fn overlaps_across_zones_is_conservatively_true() {
        let berlin = window("mon 08:00-09:00", "Europe/Berlin");
        let utc = window("sun 08:00-09:00", "UTC");
        assert!(berlin.overlaps(&utc));
        assert!(utc.overlaps(&berlin));
    }
}
