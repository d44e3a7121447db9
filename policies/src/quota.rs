//! Call quotas over calendar windows: a UTC day or a UTC month.
//!
//! A window starts at 00:00:00 UTC of its day, or of the first day of its
//! month, and ends where the next one starts; leap seconds do not exist in
//! Unix time, so a day is always 86 400 s. Dates come from Howard Hinnant's
//! `civil_from_days` / `days_from_civil` algorithms (proleptic Gregorian
//! calendar), so no date library is needed.
//!
//! The counting itself lives with the store; this module only says which
//! window a moment belongs to, what it is called, and whether one more call
//! fits.

const SECS_PER_DAY: u64 = 86_400;

/// The calendar window a quota is counted over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaWindow {
    Day,
    Month,
}

/// A quota's limits, checked once (at registration) with [`QuotaLimits::try_new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    pub per_day: Option<u64>,
    pub per_month: Option<u64>,
    /// Calls one client may have in flight at once.
    pub max_in_flight: Option<u32>,
}

impl QuotaLimits {
    /// Every limit that is given must be at least 1 (a zero quota would
    /// refuse every call; leave the limit out instead).
    pub fn try_new(
        per_day: Option<u64>,
        per_month: Option<u64>,
        max_in_flight: Option<u32>,
    ) -> Result<Self, String> {
        if per_day == Some(0) || per_month == Some(0) || max_in_flight == Some(0) {
            return Err("quota limits must be at least 1".into());
        }
        Ok(QuotaLimits {
            per_day,
            per_month,
            max_in_flight,
        })
    }
}

/// The answer for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaDecision {
    Admit,
    /// The window's quota is spent; it resets in `retry_after_s` seconds (>= 1).
    Exhausted {
        retry_after_s: u64,
    },
}

/// Start (Unix seconds) of the window that holds `unix_secs`.
pub fn window_start(window: QuotaWindow, unix_secs: u64) -> u64 {
    let day = unix_secs / SECS_PER_DAY;
    match window {
        QuotaWindow::Day => day * SECS_PER_DAY,
        QuotaWindow::Month => {
            let (y, m, _) = civil_from_days(day);
            day_to_secs(days_from_civil(y, m, 1))
        }
    }
}

/// Start (Unix seconds) of the window after the one that holds `unix_secs`
/// (saturating at `u64::MAX`, some 584 billion years from now).
pub fn next_reset(window: QuotaWindow, unix_secs: u64) -> u64 {
    let day = unix_secs / SECS_PER_DAY;
    match window {
        QuotaWindow::Day => day_to_secs(day.saturating_add(1)),
        QuotaWindow::Month => {
            let (y, m, _) = civil_from_days(day);
            let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            day_to_secs(days_from_civil(y, m, 1))
        }
    }
}

/// A stable name for the window that holds `unix_secs`, for store keys and
/// messages: `day:2026-11-22` or `month:2026-11`.
pub fn window_label(window: QuotaWindow, unix_secs: u64) -> String {
    let (y, m, d) = civil_from_days(unix_secs / SECS_PER_DAY);
    match window {
        QuotaWindow::Day => format!("day:{y:04}-{m:02}-{d:02}"),
        QuotaWindow::Month => format!("month:{y:04}-{m:02}"),
    }
}

/// Whether one more call fits: `used` calls were already admitted in the
/// window that holds `unix_secs`, and calls are admitted while `used < limit`,
/// so exactly `limit` calls fit in a window.
pub fn decide(window: QuotaWindow, used: u64, limit: u64, unix_secs: u64) -> QuotaDecision {
    if used < limit {
        QuotaDecision::Admit
    } else {
        let reset = next_reset(window, unix_secs);
        QuotaDecision::Exhausted {
            retry_after_s: reset.saturating_sub(unix_secs).max(1),
        }
    }
}

fn day_to_secs(days: u64) -> u64 {
    days.saturating_mul(SECS_PER_DAY)
}

/// `(year, month 1..=12, day 1..=31)` of day number `days` since 1970-01-01.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days end a year, then split
    // into 400-year eras of 146 097 days. Everything here is non-negative.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Day number since 1970-01-01 of `year-month-day`, for dates from 1970 on.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = year - u64::from(month <= 2);
    let era = y / 400;
    let yoe = y - era * 400; // [0, 399]
    let mp = if month > 2 { month - 3 } else { month + 9 }; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    (era * 146_097 + doe).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_of_zero_are_refused_and_absent_ones_are_fine() {
        assert!(QuotaLimits::try_new(Some(1), None, Some(1)).is_ok());
        assert!(QuotaLimits::try_new(None, None, None).is_ok());
        for (day, month, in_flight) in [
            (Some(0), None, None),
            (None, Some(0), None),
            (None, None, Some(0)),
        ] {
            assert!(QuotaLimits::try_new(day, month, in_flight).is_err());
        }
    }
    use QuotaWindow::{Day, Month};

    const DAY: u64 = SECS_PER_DAY;

    #[test]
    fn known_dates() {
        let cases = [
            (0, "1970-01-01"),
            (946_598_400, "1999-12-31"),
            (951_782_400, "2000-02-29"),
            (1_709_164_800, "2024-02-29"),
            (1_709_251_200, "2024-03-01"),
            (1_795_305_600, "2026-11-22"),
            (1_798_761_600, "2027-01-01"),
            (4_107_456_000, "2100-02-28"),
            (4_107_542_400, "2100-03-01"),
        ];
        for (secs, date) in cases {
            assert_eq!(window_label(Day, secs), format!("day:{date}"));
            assert_eq!(window_label(Day, secs + DAY - 1), format!("day:{date}"));
            assert_eq!(window_start(Day, secs + 12_345), secs);
            assert_eq!(window_label(Month, secs), format!("month:{}", &date[..7]));
        }
    }

    #[test]
    fn day_and_civil_round_trip() {
        let mut previous = civil_from_days(0);
        assert_eq!(previous, (1970, 1, 1));
        for day in 1..200_000u64 {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
            assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            assert!((y, m, d) > previous);
            previous = (y, m, d);
        }
    }

    #[test]
    fn last_second_of_a_day_resets_in_one_second() {
        let t = 1_795_305_600 + DAY - 1; // 2026-11-22T23:59:59Z
        assert_eq!(window_label(Day, t), "day:2026-11-22");
        assert_eq!(window_start(Day, t), 1_795_305_600);
        assert_eq!(next_reset(Day, t), 1_795_392_000);
        assert_eq!(
            decide(Day, 5, 5, t),
            QuotaDecision::Exhausted { retry_after_s: 1 }
        );
        assert_eq!(window_label(Day, t + 1), "day:2026-11-23");
    }

    #[test]
    fn months_roll_over_including_december_and_february() {
        let nov_22 = 1_795_305_600;
        assert_eq!(window_start(Month, nov_22), 1_793_491_200); // 2026-11-01
        assert_eq!(next_reset(Month, nov_22), 1_796_083_200); // 2026-12-01
        let dec_31_end = 1_798_675_200 + DAY - 1;
        assert_eq!(window_label(Month, dec_31_end), "month:2026-12");
        assert_eq!(window_start(Month, dec_31_end), 1_796_083_200);
        assert_eq!(next_reset(Month, dec_31_end), 1_798_761_600); // 2027-01-01
        assert_eq!(window_label(Month, dec_31_end + 1), "month:2027-01");

        // February 2024 (leap) has 29 days, February 2023 has 28.
        assert_eq!(next_reset(Month, 1_706_745_600), 1_709_251_200);
        assert_eq!(next_reset(Month, 1_709_164_800 + DAY - 1), 1_709_251_200);
        assert_eq!(next_reset(Month, 1_675_209_600), 1_677_628_800);
        assert_eq!(1_709_251_200 - 1_706_745_600, 29 * DAY);
        assert_eq!(1_677_628_800 - 1_675_209_600, 28 * DAY);
        // 2000 is a leap year (divisible by 400), 2100 is not.
        assert_eq!(window_label(Day, 951_782_400), "day:2000-02-29");
        assert_eq!(next_reset(Month, 4_107_456_000), 4_107_542_400);
    }

    #[test]
    fn exactly_limit_calls_are_admitted_per_window() {
        let t = 1_795_305_600 + 3_600;
        for limit in [0u64, 1, 7, 1_000] {
            let mut used = 0;
            while decide(Day, used, limit, t) == QuotaDecision::Admit {
                used += 1;
                assert!(used <= limit);
            }
            assert_eq!(used, limit);
        }
        assert_eq!(
            decide(Day, 3, 3, t),
            QuotaDecision::Exhausted {
                retry_after_s: DAY - 3_600
            }
        );
        assert_eq!(
            decide(Month, 10, 3, t),
            QuotaDecision::Exhausted {
                retry_after_s: 1_796_083_200 - t
            }
        );
        assert_eq!(decide(Month, 2, 3, t), QuotaDecision::Admit);
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        for window in [Day, Month] {
            let start = window_start(window, u64::MAX);
            assert!(next_reset(window, u64::MAX) >= start);
            assert!(!window_label(window, u64::MAX).is_empty());
            assert!(matches!(
                decide(window, 1, 1, u64::MAX),
                QuotaDecision::Exhausted { retry_after_s: 1 }
            ));
        }
    }
}
